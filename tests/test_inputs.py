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
