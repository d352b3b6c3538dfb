"""Input discovery: recursive folders, ids without collisions, list files, odd entries as failed items."""

from __future__ import annotations

import os

import pytest

from flowkit.errors import ConfigError
from flowkit.inputs import discover


def test_folder_ids_are_relative_paths_without_extension(tmp_path):
    for rel in ("a/x.mp4", "b/x.mp4", "c/d/y.avi", "notes.txt", "z.MKV"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"0")
    items = discover(tmp_path)
    assert [i.video_id for i in items] == ["a/x", "b/x", "c/d/y", "z"]
    assert all(i.error is None for i in items)


def test_single_file_and_list_file(tmp_path):
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "one.mp4").write_bytes(b"0")
    assert [i.video_id for i in discover(tmp_path / "v" / "one.mp4")] == ["one"]
    listing = tmp_path / "list.txt"
    listing.write_text("# my videos\nv/one.mp4\n\n" + str(tmp_path / "v" / "two.mp4") + "\n")
    assert [i.video_id for i in discover(listing)] == ["v/one", "v/two"]


def test_folder_named_like_a_video_and_symlink_loop_become_failed_items(tmp_path):
    (tmp_path / "fake.mp4").mkdir()
    (tmp_path / "ok.mp4").write_bytes(b"0")
    os.symlink("loop.mp4", tmp_path / "loop.mp4")
    os.symlink(".", tmp_path / "again")  # a folder loop: walked once, not forever
    items = {i.video_id: i for i in discover(tmp_path)}
    assert items["fake"].error == "is a directory, not a video file"
    assert items["loop"].error == "symlink loop"
    assert items["ok"].error is None
    assert len(items) == 3


def test_ids_that_collide_or_are_a_folder_keep_their_extension(tmp_path):
    names = ("a/x.mp4", "a/x.avi", "a/q.mp4", "a/q.avi", "a/q.mp4.avi", "b/x.mp4", "b/x/y.mp4", "c/v.mp4")
    for rel in names:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"0")
    items = discover(tmp_path)
    assert [(i.video_id, i.path.relative_to(tmp_path).as_posix()) for i in items] == [
        ("a/q.avi", "a/q.avi"),
        ("a/q.mp4", "a/q.mp4"),
        ("a/q.mp4.avi", "a/q.mp4.avi"),  # its id 'a/q.mp4' became q.mp4's: it keeps .avi too
        ("a/x.avi", "a/x.avi"),
        ("a/x.mp4", "a/x.mp4"),
        ("b/x.mp4", "b/x.mp4"),  # 'b/x' is the folder of b/x/y: the video keeps its extension
        ("b/x/y", "b/x/y.mp4"),
        ("c/v", "c/v.mp4"),
    ]
    assert all(i.error is None for i in items)
    with pytest.raises(ConfigError, match="input not found"):
        discover(tmp_path / "nope")


def touch(root, *names):
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"0")


def test_ids_never_leave_their_folder_and_bad_ones_fail_alone(tmp_path):
    touch(tmp_path, "a/v1.mp4", "a/..mp4", "..mp4", ".hidden/h.mp4", "a/.h.mp4")
    # A folder walk skips hidden names, as glob does: `..mp4` is one of them.
    assert [i.video_id for i in discover(tmp_path)] == ["a/v1"]
    listing = tmp_path / "list.txt"
    listing.write_text("a/v1.mp4\na/..mp4\n..mp4\na/.h.mp4\n")
    items = {i.path.relative_to(tmp_path).as_posix(): i for i in discover(listing)}
    assert items["a/v1.mp4"].video_id == "a/v1" and items["a/v1.mp4"].error is None
    assert "'a/.' has an empty, '.' or '..' part" in items["a/..mp4"].error
    assert "'.' has an empty, '.' or '..' part" in items["..mp4"].error
    assert "hidden part" in items["a/.h.mp4"].error
    assert len({i.video_id for i in items.values()}) == 4  # unit ids stay distinct
    (single,) = discover(tmp_path / "..mp4")
    assert single.error and single.video_id == "."


def test_list_ids_come_from_root_or_the_list_folder_or_the_common_folder(tmp_path):
    touch(tmp_path, "data/c1/x.mp4", "data/c2/y.mp4", "vids/keep.mp4")
    absolute = tmp_path / "lists" / "abs.txt"
    absolute.parent.mkdir()
    absolute.write_text(f"{tmp_path}/data/c1/x.mp4\n{tmp_path}/data/c2/y.mp4\n/nowhere/typo.mp4\n")
    items = discover(absolute)  # the shared folder of what exists, not tmp/... nor the typo's /
    assert [(i.video_id, i.error) for i in items if i.error is None] == [("c1/x", None), ("c2/y", None)]
    assert [i.error for i in items if i.path.name == "typo.mp4"] == ["file not found"]
    up = tmp_path / "data" / "up.txt"
    up.write_text("c1/x.mp4\n../vids/keep.mp4\n")
    ids = {i.path: i.video_id for i in discover(up)}
    assert ids == {tmp_path / "data/c1/x.mp4": "data/c1/x", tmp_path / "vids/keep.mp4": "vids/keep"}
    rooted = {i.path.name: i for i in discover(up, root=tmp_path / "data")}
    assert (rooted["x.mp4"].video_id, rooted["x.mp4"].error) == ("c1/x", None)
    assert "not inside the id root" in rooted["keep.mp4"].error


def test_paths_are_absolute_whatever_the_spelling(tmp_path, monkeypatch):
    touch(tmp_path, "in/c/v.mp4")
    os.symlink(tmp_path / "in", tmp_path / "link")
    monkeypatch.chdir(tmp_path)
    spellings = ["in", "./in/", str(tmp_path / "in"), "link", "in/../in"]
    found = [[(i.video_id, i.path) for i in discover(s)] for s in spellings]
    assert all(f == [("c/v", tmp_path / "in" / "c" / "v.mp4")] for f in found), found
    assert discover("in/c/v.mp4")[0].path == tmp_path / "in" / "c" / "v.mp4"


def test_control_characters_in_names_are_escaped_in_ids(tmp_path):
    touch(tmp_path, "c/x\ny.mp4", "c/tab\there.mp4")
    assert [i.video_id for i in discover(tmp_path)] == ["c/tab\\there", "c/x\\ny"]


def test_a_clash_no_rule_resolves_fails_only_those_videos(tmp_path):
    touch(tmp_path, "a/x\ny.mp4", "a/x\\ny.mp4", "a/z.mp4")  # a newline, and a backslash + n
    items = {i.path.name: i for i in discover(tmp_path)}
    for name in ("x\ny.mp4", "x\\ny.mp4"):
        assert items[name].error.startswith("two inputs have the video id 'a/x")
    assert len({i.video_id for i in items.values()}) == 3
    assert (items["z.mp4"].video_id, items["z.mp4"].error) == ("a/z", None)
    listing = tmp_path / "list.txt"  # a missing file never blocks the id of a real one
    listing.write_text("a/z/missing.mp4\na/z.mp4\n")
    assert [(i.video_id, i.error) for i in discover(listing)] == [
        ("a/z", None), ("a/z/missing", "file not found")
    ]
