"""Annotation lists: labels from every class folder of the input, published class maps, split lists."""

from __future__ import annotations

import pytest
from clirun import run

from flowkit.errors import ConfigError
from flowkit.outputs.lists import read_class_map


def labels(path):
    return {line.split()[0]: int(line.split()[2]) for line in path.read_text().splitlines()}


@pytest.fixture
def classes_input(make_video, tmp_path):
    """cls_a holds only a broken file; cls_b and cls_c one good video each."""
    root = tmp_path / "in"
    (root / "cls_a").mkdir(parents=True)
    (root / "cls_a" / "broken.mp4").write_bytes(b"not a video" * 40)
    for cls in ("cls_b", "cls_c"):
        make_video(f"in/{cls}/v.mp4", n=4, height=32, width=32)
    return root


def test_labels_come_from_every_class_folder_not_from_what_succeeded(classes_input, tmp_path):
    out = tmp_path / "out"
    result = run("extract-flow", classes_input, "-o", out, "-a", "dis")
    assert result.exit_code == 1  # the broken video
    assert labels(out / "list_rgb.txt") == {"cls_b/v": 1, "cls_c/v": 2}
    assert (out / "classes.txt").read_text() == "0 cls_a\n1 cls_b\n2 cls_c\n"
    # A later shard or rerun that sees the same input writes the same labels.
    assert run("merge", out).exit_code == 0
    assert labels(out / "list_flow.txt") == {"cls_b/v": 1, "cls_c/v": 2}


def test_published_class_map_and_unknown_class(classes_input, tmp_path):
    ind = tmp_path / "classInd.txt"
    ind.write_text("1 cls_c\n2 cls_b\n3 cls_a\n")  # UCF101 style, numbered from 1
    out = tmp_path / "out"
    run("extract-flow", classes_input, "-o", out, "-a", "dis", "--classes", ind)
    assert labels(out / "list_rgb.txt") == {"cls_b/v": 1, "cls_c/v": 0}
    assert (out / "classes.txt").read_text() == "0 cls_c\n1 cls_b\n2 cls_a\n"
    names = tmp_path / "names.txt"
    names.write_text("cls_b\ncls_a\n")  # one name per line, 0-based; cls_c is missing
    out2 = tmp_path / "out2"
    result = run("sample-frames", classes_input, "-o", out2, "--sampler", "uniform", "--num-frames", "2",
                 "--classes", names)
    assert result.exit_code == 1
    assert "FAILED cls_c/v: class 'cls_c' is not in the class map" in result.output
    assert labels(out2 / "list_rgb.txt") == {"cls_b/v": 0}
    # merge --classes relabels an existing output.
    assert run("merge", out2, "--classes", ind).exit_code == 0
    assert labels(out2 / "list_rgb.txt") == {"cls_b/v": 1, "cls_c/v": 0}


def test_read_class_map_forms_and_errors(tmp_path):
    path = tmp_path / "m.txt"
    path.write_text("0 a\n1 b\n")
    assert read_class_map(path) == {"a": 0, "b": 1}
    path.write_text("# comment\nApplyEyeMakeup\n\nApplyLipstick\n")
    assert read_class_map(path) == {"ApplyEyeMakeup": 0, "ApplyLipstick": 1}
    for bad in ("2 a\n3 b\n", "a\na\n", ""):
        path.write_text(bad)
        with pytest.raises(ConfigError, match="m.txt"):
            read_class_map(path)


@pytest.mark.parametrize(("fmt", "rgb", "lists"), [("h5", True, ["list_rgb.txt"]), ("npy", False, []),
                                                   ("jpg", True, ["list_flow.txt", "list_rgb.txt"])])
def test_flow_formats_write_the_lists_that_match_their_files(make_video, tmp_path, fmt, rgb, lists):
    make_video("in/c/v.mp4", n=4, height=32, width=32)
    out = tmp_path / "out"
    args = ["extract-flow", tmp_path / "in", "-o", out, "-a", "dis", "--format", fmt]
    assert run(*args, *([] if rgb else ["--no-rgb"])).exit_code == 0
    assert sorted(p.name for p in out.glob("list_*.txt")) == lists
    if rgb:
        assert (out / "list_rgb.txt").read_text() == "c/v 4 0\n"
    assert run("merge", out).exit_code == 0
    assert sorted(p.name for p in out.glob("list_*.txt")) == lists


def test_split_files_in_the_common_formats(tmp_path):
    from flowkit.outputs.splits import match_entries, read_split_file, read_splits

    ucf = tmp_path / "trainlist01.txt"
    ucf.write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\nArchery/v_Archery_g01_c01.avi 3\n")
    assert read_split_file(ucf) == {"train01": [("ApplyEyeMakeup", "v_ApplyEyeMakeup_g08_c01"),
                                                ("Archery", "v_Archery_g01_c01")]}
    hmdb = [tmp_path / "brush_hair_test_split1.txt", tmp_path / "cartwheel_test_split1.txt"]
    hmdb[0].write_text("a.avi 1\nb.avi 2\nc.avi 0\n")
    hmdb[1].write_text("d.avi 1\n")
    assert read_splits(hmdb) == {"train1": [("brush_hair", "a"), ("cartwheel", "d")],
                                 "test1": [("brush_hair", "b")]}
    kinetics = tmp_path / "k400.csv"
    kinetics.write_text("label,youtube_id,time_start,time_end,split\n"
                        "air drumming,abc,10,20,train\nabseiling,xyz,0.0,10.0,val\n")
    assert read_split_file(kinetics) == {"train": [("air drumming", "abc_000010_000020")],
                                         "val": [("abseiling", "xyz_000000_000010")]}
    ids = ["air_drumming/abc_000010_000020", "x/dup", "y/dup"]
    assert match_entries([("air drumming", "abc_000010_000020"), ("y", "dup"), (None, "dup")], ids) == (
        ["air_drumming/abc_000010_000020", "y/dup"], [(None, "dup")])
    other = tmp_path / "videos.txt"
    other.write_text("x\n")
    with pytest.raises(ConfigError, match="unknown split file"):
        read_split_file(other)


def test_merge_writes_per_split_lists(make_video, tmp_path):
    for vid in ("cls_a/v1", "cls_a/v2", "cls_b/v3"):
        make_video(f"in/{vid}.mp4", n=3, height=32, width=32)
    out = tmp_path / "out"
    assert run("sample-frames", tmp_path / "in", "-o", out, "--sampler", "uniform", "--num-frames", "2"
               ).exit_code == 0
    ind = tmp_path / "classInd.txt"
    ind.write_text("1 cls_b\n2 cls_a\n")
    (tmp_path / "trainlist01.txt").write_text("cls_a/v1.avi 2\ncls_b/v3.avi 1\n")
    (tmp_path / "testlist01.txt").write_text("cls_a/v2.avi\ncls_a/missing.avi\n")
    result = run("merge", out, "--classes", ind, "--split-file", tmp_path / "trainlist01.txt",
                 "--split-file", tmp_path / "testlist01.txt")
    assert result.exit_code == 0, result.output
    assert (out / "list_rgb_train01.txt").read_text() == "cls_a/v1 2 1\ncls_b/v3 2 0\n"
    assert (out / "list_rgb_test01.txt").read_text() == "cls_a/v2 2 1\n"
    assert (out / "list_rgb.txt").read_text().count("\n") == 3
