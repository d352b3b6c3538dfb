"""HDF5 feature shards: layout, atomic commit, verification, index, merge and npy output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from flowkit.errors import FlowkitError
from flowkit.outputs.hdf5 import (
    VIDEO_ATTR,
    ShardError,
    ShardWriter,
    describe,
    list_videos,
    load_index,
    merge_shards,
    read_video,
    shard_filename,
    verify_shard,
    write_index,
    write_npy_features,
)

FILE_ATTRS = {
    "flowkit_version": "0.1.0",
    "config": json.dumps({"model": "c3d", "stride": 16}),
    "checkpoint_hash": "sha256:abc123",
    "random_weights": False,
}


def video_data(
    seed: int, rows: int = 6, dim: int = 32, dtype: type = np.float32
) -> dict[str, np.ndarray]:
    """Features and window metadata for one synthetic video, plus a spatial map family."""
    rng = np.random.default_rng(seed)
    starts = np.arange(rows, dtype=np.int64) * 16
    return {
        "features": np.maximum(rng.standard_normal((rows, dim)), 0).astype(dtype),
        "frame_indices": np.stack([starts, starts + 16], axis=1),
        "timestamps": np.stack([starts / 25.0, (starts + 16) / 25.0], axis=1),
        "spatial": rng.standard_normal((2, 4, 3, 3)).astype(np.float16),
        "spatial_window_indices": np.array([0, rows - 1], dtype=np.int64),
    }


def video_attrs(video_id: str) -> dict[str, object]:
    return {
        "source": f"/data/{video_id}.mp4",
        "num_frames": 100,
        "fps": 25.0,
        "model": "c3d",
        "layer": "fc6",
        "stream": "rgb",
    }


def write_shard(path: Path, ids: list[str], seed: int = 0, **kwargs: object) -> Path:
    with ShardWriter(path, FILE_ATTRS) as writer:
        for k, video_id in enumerate(ids):
            writer.add_video(video_id, video_data(seed + k, **kwargs), video_attrs(video_id))
    return path


def write_run(out: Path, groups: list[list[str]]) -> dict[str, str]:
    """Write one shard per id group plus index.json; return the index."""
    index = {}
    for k, ids in enumerate(groups):
        name = shard_filename("c3d", k, len(groups))
        write_shard(out / name, ids, seed=100 * k)
        index.update(dict.fromkeys(ids, name))
    write_index(out, index)
    return index


IDS = ["walk/a", "walk/b b", "run/ü ñ"]


def test_shard_filename() -> None:
    assert shard_filename("c3d", 3, 10) == "c3d-00003-of-00010.h5"
    assert shard_filename("i3d_rgb", 0, 1) == "i3d_rgb-00000-of-00001.h5"
    for args in [("c3d", 10, 10), ("c3d", -1, 10), ("", 0, 1), ("a/b", 0, 1)]:
        with pytest.raises(ValueError):
            shard_filename(*args)


def test_layout_and_attrs_round_trip(tmp_path: Path) -> None:
    path = write_shard(tmp_path / "s.h5", IDS)
    assert list_videos(path) == sorted(IDS)
    for k, video_id in enumerate(IDS):
        got = read_video(path, video_id)
        want = video_data(k)
        assert set(got["datasets"]) == set(want)
        for name, array in want.items():
            np.testing.assert_array_equal(got["datasets"][name], array)
            assert got["datasets"][name].dtype == array.dtype
        assert got["attrs"] == video_attrs(video_id)
    with h5py.File(path, "r") as f:
        assert f.attrs["complete"] == 1
        assert json.loads(f.attrs["config"]) == {"model": "c3d", "stride": 16}
        assert f.attrs["checkpoint_hash"] == "sha256:abc123"
        assert not f.attrs["random_weights"]
        # Nested ids are nested groups; the marker tells videos from plain folders.
        assert isinstance(f["walk"], h5py.Group) and VIDEO_ATTR not in f["walk"].attrs
        dset = f["walk/a/features"]
        assert dset.chunks is not None and dset.chunks[1:] == (32,)
        assert dset.compression is None


def test_chunks_stay_near_one_mebibyte(tmp_path: Path) -> None:
    path = tmp_path / "big.h5"
    with ShardWriter(path, {}) as writer:
        writer.add_video("v", {"features": np.zeros((600, 4096), np.float16)}, {})
    with h5py.File(path, "r") as f:
        chunks = f["v/features"].chunks
    assert chunks == (128, 4096)  # 128 rows x 8 KiB = 1 MiB


def test_float16_is_about_half_the_size(tmp_path: Path) -> None:
    ids = [f"v{k}" for k in range(4)]
    f32 = write_shard(tmp_path / "f32.h5", ids, rows=200, dim=512, dtype=np.float32)
    f16 = write_shard(tmp_path / "f16.h5", ids, rows=200, dim=512, dtype=np.float16)
    ratio = f16.stat().st_size / f32.stat().st_size
    assert 0.45 < ratio < 0.6, ratio


def test_tmp_is_never_final_and_commit_renames(tmp_path: Path) -> None:
    final = tmp_path / "s.h5"
    with ShardWriter(final, FILE_ATTRS) as writer:
        writer.add_video("a", video_data(0), {})
        assert writer.tmp_path.exists() and not final.exists()
    assert final.exists() and not writer.tmp_path.exists()
    assert os.listdir(tmp_path) == ["s.h5"]
    with pytest.raises(ValueError, match="closed"):
        writer.add_video("b", video_data(1), {})


KILLED_WRITER = """
import os, signal, sys
import numpy as np
from flowkit.outputs.hdf5 import ShardWriter
writer = ShardWriter(sys.argv[1], {"flowkit_version": "0.1.0"})
for k in range(3):
    writer.add_video(f"v{k}", {"features": np.full((4, 8), k, np.float32)}, {})
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_killed_writer_leaves_a_readable_tmp_and_no_final(tmp_path: Path) -> None:
    final = tmp_path / "s.h5"
    root = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(final)], env=env, check=False)
    assert proc.returncode == -signal.SIGKILL
    assert not final.exists()
    tmp = tmp_path / "s.h5.tmp"
    # Flushed after each video, so a killed worker's tmp still opens with every video in it.
    assert list_videos(tmp) == ["v0", "v1", "v2"]
    with pytest.raises(ShardError, match="incomplete"):
        verify_shard(tmp)


def test_exception_aborts_and_leaves_nothing(tmp_path: Path) -> None:
    final = tmp_path / "s.h5"
    with pytest.raises(RuntimeError), ShardWriter(final, FILE_ATTRS) as writer:
        writer.add_video("a", video_data(0), {})
        raise RuntimeError("worker died")
    assert os.listdir(tmp_path) == []
    writer = ShardWriter(final, FILE_ATTRS)
    writer.abort()
    assert os.listdir(tmp_path) == []


def test_commit_replaces_a_previous_shard(tmp_path: Path) -> None:
    final = write_shard(tmp_path / "s.h5", ["old"])
    write_shard(final, ["new"])
    assert list_videos(final) == ["new"]


def test_add_video_rejects_bad_input(tmp_path: Path) -> None:
    with ShardWriter(tmp_path / "s.h5", {}) as writer:
        writer.add_video("a", video_data(0), {})
        bad = {
            "duplicate": ("a", video_data(1), {}),
            "rows": ("b", {"features": np.zeros((3, 2)), "timestamps": np.zeros((4, 2))}, {}),
            "window": (
                "c",
                {"spatial": np.zeros((3, 2)), "spatial_window_indices": np.zeros(2)},
                {},
            ),
            "empty part": ("d//e", video_data(2), {}),
            "dotdot": ("../e", video_data(2), {}),
            "strings": ("f", {"names": np.array(["x", "y"])}, {}),
            "reserved": ("g", video_data(2), {VIDEO_ATTR: "x"}),
            "no data": ("h", {}, {}),
        }
        for case, args in bad.items():
            with pytest.raises(ValueError):
                writer.add_video(*args)
                pytest.fail(case)
    # Rejected videos left no trace.
    assert list_videos(tmp_path / "s.h5") == ["a"]
    with pytest.raises(ValueError, match="reserved"):
        ShardWriter(tmp_path / "t.h5", {"complete": 1})


def test_parent_and_child_ids_coexist(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    with ShardWriter(path, {}) as writer:
        writer.add_video("a/b", video_data(0), {})
        writer.add_video("a", video_data(1), {})
    assert list_videos(path) == ["a", "a/b"]
    assert set(read_video(path, "a")["datasets"]) == set(video_data(1))
    assert verify_shard(path) == ["a", "a/b"]


def test_verify_accepts_a_good_shard_and_checks_expected(tmp_path: Path) -> None:
    path = write_shard(tmp_path / "s.h5", IDS)
    assert verify_shard(path) == sorted(IDS)
    assert verify_shard(path, expected=IDS) == sorted(IDS)
    with pytest.raises(ShardError, match="missing videos 'other'"):
        verify_shard(path, expected=[*IDS, "other"])
    with pytest.raises(ShardError, match="unexpected videos"):
        verify_shard(path, expected=IDS[:1])


@pytest.mark.parametrize("keep", [0.5, 0.95])
def test_verify_detects_truncated_file(tmp_path: Path, keep: float) -> None:
    path = write_shard(tmp_path / "s.h5", IDS, rows=64, dim=256)
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(int(size * keep))
    with pytest.raises(ShardError) as info:
        verify_shard(path)
    assert isinstance(info.value, FlowkitError)
    assert str(path) in str(info.value)


def test_verify_detects_missing_complete(tmp_path: Path) -> None:
    path = write_shard(tmp_path / "s.h5", IDS)
    with h5py.File(path, "a") as f:
        del f.attrs["complete"]
    with pytest.raises(ShardError, match="incomplete"):
        verify_shard(path)


def test_verify_detects_damaged_groups(tmp_path: Path) -> None:
    path = write_shard(tmp_path / "s.h5", IDS)
    with h5py.File(path, "a") as f:
        del f["walk/a/timestamps"]
        del f["walk/b b/features"]
        f["walk/b b/features"] = np.zeros((2, 32), np.float32)
    with pytest.raises(ShardError) as info:
        verify_shard(path)
    assert "walk/a: dataset 'timestamps' is missing" in str(info.value)
    assert "walk/b b: dataset 'features' has shape (2, 32)" in str(info.value)


def test_verify_missing_file_and_garbage(tmp_path: Path) -> None:
    with pytest.raises(ShardError, match="not found"):
        verify_shard(tmp_path / "nope.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not an hdf5 file" * 100)
    with pytest.raises(ShardError, match="cannot open"):
        verify_shard(junk)


def test_copy_video(tmp_path: Path) -> None:
    source = write_shard(tmp_path / "src.h5", IDS)
    dest = tmp_path / "dst.h5"
    with ShardWriter(dest, {"note": "copied"}) as writer:
        writer.copy_video(source, "run/ü ñ")
        with pytest.raises(ShardError, match="no video"):
            writer.copy_video(source, "walk")  # a folder group, not a video
    assert verify_shard(dest) == ["run/ü ñ"]
    got, want = read_video(dest, "run/ü ñ"), read_video(source, "run/ü ñ")
    assert got["attrs"] == want["attrs"]
    for name, array in want["datasets"].items():
        np.testing.assert_array_equal(got["datasets"][name], array)


def test_index_round_trip(tmp_path: Path) -> None:
    mapping = {"walk/b b": "c3d-00000-of-00002.h5", "run/ü ñ": "c3d-00001-of-00002.h5"}
    path = write_index(tmp_path / "out", mapping)
    assert path == tmp_path / "out" / "index.json"
    assert load_index(tmp_path / "out") == mapping
    assert "ü" in path.read_text(encoding="utf-8")
    assert sorted(os.listdir(tmp_path / "out")) == ["index.json"]
    with pytest.raises(ShardError, match="not found"):
        load_index(tmp_path)
    (tmp_path / "index.json").write_text("[1, 2]")
    with pytest.raises(ShardError, match="JSON object"):
        load_index(tmp_path)
    with pytest.raises(ValueError):
        write_index(tmp_path, {"a": "sub/dir.h5"})


def test_merge_copy(tmp_path: Path) -> None:
    out = tmp_path / "out"
    index = write_run(out, [["walk/a", "walk/b b"], ["run/ü ñ"]])
    merged = merge_shards(out, tmp_path / "merged.h5")
    assert verify_shard(merged, expected=index) == sorted(index)
    with h5py.File(merged, "r") as f:
        assert list(f.attrs["shards"]) == sorted(set(index.values()))
        assert f.attrs["checkpoint_hash"] == "sha256:abc123"
        assert not f["walk/a/features"].is_virtual
    for video_id, shard in index.items():
        np.testing.assert_array_equal(
            read_video(merged, video_id)["datasets"]["features"],
            read_video(out / shard, video_id)["datasets"]["features"],
        )
    # A copy stands alone: removing the shards does not affect it.
    for shard in set(index.values()):
        (out / shard).unlink()
    assert verify_shard(merged) == sorted(index)


def test_merge_virtual_reads_through_from_another_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    index = write_run(out, [["walk/a", "walk/b b"], ["run/ü ñ"]])
    merged = merge_shards(out, out / "merged.h5", virtual=True)
    monkeypatch.chdir(tmp_path)
    with h5py.File(merged, "r") as f:
        dset = f["run/ü ñ/features"]
        assert dset.is_virtual
        assert dset.fillvalue != dset.fillvalue  # NaN fill for floats
        assert all(not os.path.isabs(src.file_name) for src in dset.virtual_sources())
    assert verify_shard(merged, expected=index) == sorted(index)
    for video_id, shard in index.items():
        got, want = read_video(merged, video_id), read_video(out / shard, video_id)
        assert got["attrs"] == want["attrs"]
        for name, array in want["datasets"].items():
            np.testing.assert_array_equal(got["datasets"][name], array)
    assert "(virtual)" in describe(merged)
    # Merged file in another folder: sources are found through '..' paths.
    elsewhere = merge_shards(out, tmp_path / "merged" / "m.h5", virtual=True)
    np.testing.assert_array_equal(
        read_video(elsewhere, "walk/a")["datasets"]["features"],
        read_video(out / index["walk/a"], "walk/a")["datasets"]["features"],
    )
    # Copying a video out of a virtual merge gives real data that no longer needs the shards.
    with ShardWriter(tmp_path / "copy.h5", {}) as writer:
        writer.copy_video(elsewhere, "walk/a")
    for shard in set(index.values()):
        (out / shard).unlink()
    with h5py.File(tmp_path / "copy.h5", "r") as f:
        assert not f["walk/a/features"].is_virtual
        assert not np.isnan(f["walk/a/features"][()]).any()


def test_merge_virtual_refuses_missing_or_bad_shard(tmp_path: Path) -> None:
    out = tmp_path / "out"
    index = write_run(out, [["walk/a"], ["walk/b b"], ["run/ü ñ"]])
    (out / index["walk/b b"]).unlink()
    with pytest.raises(ShardError, match="not found") as info:
        merge_shards(out, tmp_path / "merged.h5", virtual=True)
    assert index["walk/b b"] in str(info.value)
    assert not (tmp_path / "merged.h5").exists()
    # A shard that lost its complete flag is refused too, in both modes.
    write_shard(out / index["walk/b b"], ["walk/b b"])
    with h5py.File(out / index["walk/a"], "a") as f:
        del f.attrs["complete"]
    for virtual in (True, False):
        with pytest.raises(ShardError, match="incomplete"):
            merge_shards(out, tmp_path / "merged.h5", virtual=virtual)
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_merge_refuses_index_disagreeing_with_shard(tmp_path: Path) -> None:
    out = tmp_path / "out"
    index = write_run(out, [["walk/a"], ["run/ü ñ"]])
    index["walk/ghost"] = index["walk/a"]
    write_index(out, index)
    with pytest.raises(ShardError, match="missing videos 'walk/ghost'"):
        merge_shards(out, tmp_path / "merged.h5")


def test_describe_lists_attrs_and_videos(tmp_path: Path) -> None:
    path = write_shard(tmp_path / "s.h5", [f"v{k:02d}" for k in range(5)])
    text = describe(path, max_videos=2)
    assert "checkpoint_hash = sha256:abc123" in text
    assert "videos: 5" in text
    assert "features: (6, 32) float32" in text
    assert "v00" in text and "v01" in text and "v02" not in text
    assert "... and 3 more" in text


def test_write_npy_features(tmp_path: Path) -> None:
    array = np.random.default_rng(3).standard_normal((7, 16)).astype(np.float32)
    path = write_npy_features(tmp_path / "npy", "walk/ü ñ.v1", array)
    assert path == tmp_path / "npy" / "walk" / "ü ñ.v1.npy"
    np.testing.assert_array_equal(np.load(path), array)
    assert os.listdir(path.parent) == ["ü ñ.v1.npy"]
    with pytest.raises(ValueError):
        write_npy_features(tmp_path, "../escape", array)
