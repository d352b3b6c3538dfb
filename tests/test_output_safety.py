"""Nothing outside a video's own output is ever replaced: unsafe or overlapping ids fail alone (or keep
their extension), the commit step refuses foreign folders, names stay one line, paths are absolute."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from clirun import run

from flowkit.errors import FlowkitError
from flowkit.jobs.manifest import Manifest
from flowkit.outputs.rawframes import FolderWriter
from flowkit.synthetic import moving_video


def failed_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("FAILED ")]


def frames_of(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_ids_that_would_escape_fail_alone_and_nothing_is_lost(tmp_path):
    data = tmp_path / "data"
    for name in ("a/v1.mp4", "a/v2.mp4", "a/..mp4", "..mp4"):
        moving_video(data / name, n=3, height=32, width=32)
    listing = data / "list.txt"
    listing.write_text("a/v1.mp4\na/v2.mp4\n")
    out = tmp_path / "out"
    assert run("sample-frames", listing, "-o", out).exit_code == 0
    before = {vid: frames_of(out / vid) for vid in ("a/v1", "a/v2")}
    listing.write_text("a/v1.mp4\na/v2.mp4\na/..mp4\n..mp4\n")  # ids 'a/.' and '.': OUT/a and OUT
    result = run("sample-frames", listing, "-o", out)
    assert result.exit_code == 1, result.output
    failed = failed_lines(result.output)
    assert len(failed) == 2 and all("'.' or '..' part" in line for line in failed), result.output
    assert {vid: frames_of(out / vid) for vid in before} == before
    assert Manifest(out).read_job() is not None and "skipped 2" in result.output


def test_overlapping_and_colliding_ids_are_all_processed(tmp_path):
    data = tmp_path / "data"
    for name in ("a/x.mp4", "a/x.avi", "a/x/y.mp4", "b/v.mp4"):
        moving_video(data / name, n=3, height=32, width=32)
    out = tmp_path / "out"
    result = run("sample-frames", data, "-o", out)
    assert result.exit_code == 0 and "done 4" in result.output, result.output
    for vid in ("a/x.mp4", "a/x.avi", "a/x/y", "b/v"):
        assert frames_of(out / vid) == ["img_00001.jpg", "img_00002.jpg", "img_00003.jpg", "sampling.json"]
    listed = [line.split()[0] for line in (out / "list_rgb.txt").read_text().splitlines()]
    assert listed == ["a/x.avi", "a/x.mp4", "a/x/y", "b/v"]


def test_a_list_line_outside_the_list_folder_never_replaces_a_foreign_folder(tmp_path):
    moving_video(tmp_path / "vids" / "keep.mp4", n=3, height=32, width=32)
    moving_video(tmp_path / "data" / "c" / "v.mp4", n=3, height=32, width=32)
    (tmp_path / "vids" / "keep").mkdir()
    (tmp_path / "vids" / "keep" / "notes.txt").write_text("mine")
    listing = tmp_path / "data" / "list.txt"
    listing.write_text("c/v.mp4\n../vids/keep.mp4\n")
    # ids relative to the videos' common folder (tmp_path): OUT=tmp_path puts vids/keep on the notes.
    result = run("sample-frames", listing, "-o", tmp_path)
    assert (tmp_path / "vids" / "keep" / "notes.txt").read_text() == "mine"
    (line,) = failed_lines(result.output)
    assert "keep.mp4" in line and "not replacing this folder" in line and "notes.txt" in line
    assert frames_of(tmp_path / "data" / "c" / "v")[0] == "img_00001.jpg"


@pytest.mark.parametrize("foreign", ["sub/other.jpg", "notes.txt"])
def test_commit_refuses_a_folder_that_is_not_one_videos_output(tmp_path, foreign):
    target = tmp_path / "out" / "a"
    (target / foreign).parent.mkdir(parents=True)
    (target / foreign).write_text("keep")
    writer = FolderWriter(target)
    writer.write_image("img_00001.jpg", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(FlowkitError, match="not replacing this folder"):
        writer.commit()
    assert (target / foreign).read_text() == "keep"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a"]  # the temporary is gone


def test_a_previous_output_of_the_same_video_is_replaced(tmp_path):
    target = tmp_path / "out" / "a"
    for count in (3, 2):  # a shorter rerun (another config) replaces the longer folder
        with FolderWriter(target) as writer:
            for k in range(count):
                writer.write_image(f"img_{k + 1:05d}.jpg", np.zeros((8, 8, 3), np.uint8))
            writer.write_file("sampling.json", b"{}")
    assert frames_of(target) == ["img_00001.jpg", "img_00002.jpg", "sampling.json"]


def test_names_with_newlines_stay_on_one_line(tmp_path):
    data = tmp_path / "data"
    moving_video(data / "c" / "good\nname.mp4", n=3, height=32, width=32)
    (data / "c" / "bad\nname.mp4").write_text("not a video")
    out = tmp_path / "out"
    result = run("sample-frames", data, "-o", out)
    assert result.exit_code == 1
    (line,) = failed_lines(result.output)
    assert "bad\\nname.mp4: " in line  # the name escaped, the cause after it on the same line
    assert (out / "list_rgb.txt").read_text().splitlines() == ["c/good\\nname 3 0"]
    assert frames_of(out / "c" / "good\\nname")[0] == "img_00001.jpg"  # the folder the list names


def test_failed_videos_leave_no_empty_folders(tmp_path):
    (tmp_path / "data" / "c2").mkdir(parents=True)
    (tmp_path / "data" / "c2" / "broken.mp4").write_text("garbage")
    moving_video(tmp_path / "data" / "c3" / "ok.mp4", n=3, height=32, width=32)
    listing = tmp_path / "data" / "list.txt"
    listing.write_text("c1/deep/missing.mp4\nc2/broken.mp4\nc3/ok.mp4\n")
    out = tmp_path / "out"
    result = run("sample-frames", listing, "-o", out)
    assert result.exit_code == 1 and len(failed_lines(result.output)) == 2
    assert sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")) == ["c3"]


def test_sources_are_stored_as_absolute_paths(tmp_path, monkeypatch):
    moving_video(tmp_path / "in" / "v.mp4", n=16, height=32, width=32)
    monkeypatch.chdir(tmp_path)
    source = str(tmp_path / "in" / "v.mp4")
    for spelling in ("in", "./in/"):  # a rerun with another spelling changes nothing
        result = run("features", spelling, "-o", "c3d", "--model", "c3d_test", "--random-weights")
        assert result.exit_code == 0, result.output
    with h5py.File(tmp_path / "c3d" / "c3d_test-00000-of-00001.h5") as fh:
        assert fh["v"].attrs["source"] == source
    assert run("sample-frames", "in/v.mp4", "-o", "frames").exit_code == 0
    (record,) = Manifest(tmp_path / "frames").all_done()
    assert record["source"] == source
    assert json.loads(json.dumps(record))["video_id"] == "v"


def test_root_sets_the_ids_of_a_list_of_absolute_paths(tmp_path):
    for name in ("ds/c1/a.mp4", "ds/c2/b.mp4"):
        moving_video(tmp_path / name, n=3, height=32, width=32)
    listing = tmp_path / "elsewhere" / "train.txt"
    listing.parent.mkdir()
    listing.write_text(f"{tmp_path}/ds/c1/a.mp4\n{tmp_path}/ds/c2/b.mp4\n")
    out = tmp_path / "out"
    assert run("sample-frames", listing, "-o", out).exit_code == 0  # the videos' common folder
    assert (out / "c1" / "a").is_dir() and (out / "c2" / "b").is_dir()
    rooted = tmp_path / "rooted"
    assert run("sample-frames", listing, "-o", rooted, "--root", tmp_path).exit_code == 0
    ids = [line.split()[0] for line in (rooted / "list_rgb.txt").read_text().splitlines()]
    assert ids == ["ds/c1/a", "ds/c2/b"]
