"""HDF5 feature shards: atomic writer, reader, verification, index and merge.

A run writes ``<out>/<name>-NNNNN-of-MMMMM.h5`` shards plus ``<out>/index.json`` (video_id ->
shard file name). Each video is a group at its video_id (``class/video`` gives nested groups)
holding the caller's datasets and attributes plus the :data:`VIDEO_ATTR` marker, a JSON record of
each dataset's shape that lets readers find video groups and lets :func:`verify_shard` detect
damage. A shard is written to ``<final>.tmp`` and renamed into place only once complete, with
``complete=1`` as the last file attribute written. Open one writer per file, inside the process
that writes it (HDF5 is not safe with several writers or with files open across a fork).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np

from flowkit.atomic import atomic_write
from flowkit.errors import FlowkitError

INDEX_NAME = "index.json"
VIDEO_ATTR = "flowkit_video"
COMPLETE_ATTR = "complete"
SHARDS_ATTR = "shards"
WINDOW_SUFFIX = "_window_indices"
# h5py recommends chunks of 10 KiB to 1 MiB; rows of a [N, 4096] float16 matrix give 128 per chunk.
CHUNK_BYTES = 1 << 20


class ShardError(FlowkitError):
    """A feature shard, index or merge input that is missing, incomplete or inconsistent."""

    def __init__(self, path: str | Path, cause: str) -> None:
        self.path = str(path)
        self.cause = cause
        super().__init__(f"{self.path}: {cause}")


def shard_filename(name: str, index: int, count: int) -> str:
    """File name of shard ``index`` (0-based) of ``count``, e.g. ``c3d-00003-of-00010.h5``."""
    if not name or "/" in name or os.sep in name:
        raise ValueError(f"shard name must be a non-empty file name stem, got {name!r}")
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"need 0 <= index < count, got index={index}, count={count}")
    return f"{name}-{index:05d}-of-{count:05d}.h5"


def _check_video_id(video_id: str) -> str:
    parts = video_id.split("/") if isinstance(video_id, str) else [""]
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(
            f"video id must be a relative path like 'class/video' without empty, '.' or '..' "
            f"parts, got {video_id!r}"
        )
    return video_id


def _tmp_path(final_path: Path) -> Path:
    return final_path.with_name(final_path.name + ".tmp")


def _fsync_path(path: Path) -> None:
    """fsync a file or directory so a rename that follows survives a power loss, not just a kill.

    A file's fsync error (ENOSPC, EIO) is real and raised; directories are excused, since some
    platforms and filesystems refuse to open or fsync them while the rename stays atomic.
    """
    is_dir = path.is_dir()
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if is_dir:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not is_dir:
            raise
    finally:
        os.close(fd)


def _to_attr(key: str, value: Any) -> Any:
    """Convert a caller's attribute value into something h5py stores natively."""
    if isinstance(value, Mapping):
        return json.dumps(value, sort_keys=True, default=str)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value) and value:
        return list(value)
    if isinstance(value, (str, bytes, bool, int, float, np.generic, np.ndarray, list, tuple)):
        return value
    raise ValueError(f"attribute {key!r}: cannot store a {type(value).__name__} in HDF5")


def _from_attr(value: Any) -> Any:
    """Turn an h5py attribute value into plain Python (str, int, float, bool, list of str)."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray) and value.dtype.kind in "OSU":
        return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in value.tolist()]
    return value


def _convert_attrs(attrs: Mapping[str, Any], reserved: str) -> dict[str, Any]:
    """Validate and convert caller attributes up front; None values are left out."""
    if reserved in attrs:
        raise ValueError(f"attribute {reserved!r} is reserved for flowkit")
    return {key: _to_attr(key, value) for key, value in attrs.items() if value is not None}


def _rows(shape: tuple[int, ...]) -> int:
    return int(shape[0]) if shape else 1


def _row_problems(shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
    """Row-count rules: ``X_window_indices`` has the rows of ``X``; all other datasets share one."""
    problems = []
    paired = set()
    for name, shape in shapes.items():
        if name.endswith(WINDOW_SUFFIX):
            base = name[: -len(WINDOW_SUFFIX)]
            paired.update((name, base))
            if base not in shapes:
                problems.append(f"{name} has no matching dataset {base!r}")
            elif _rows(shapes[base]) != _rows(shape):
                problems.append(
                    f"{name} has {_rows(shape)} rows but {base} has {_rows(shapes[base])}"
                )
    per_window = {name: _rows(shape) for name, shape in shapes.items() if name not in paired}
    if len(set(per_window.values())) > 1:
        problems.append(f"datasets disagree on the number of rows: {per_window}")
    return problems


def _chunks(array: np.ndarray) -> tuple[int, ...] | None:
    """Row-aligned chunks of at most about CHUNK_BYTES (one row if a row is larger)."""
    if array.ndim == 0 or array.size == 0:
        return None
    row_bytes = max(1, array[0].nbytes)
    rows = int(np.clip(CHUNK_BYTES // row_bytes, 1, array.shape[0]))
    return (rows, *array.shape[1:])


class ShardWriter:
    """Write one feature shard to ``<final>.tmp`` and rename it into place on :meth:`commit`.

    Use as a context manager: a clean exit commits, an exception aborts (the tmp is deleted).
    """

    def __init__(self, final_path: Path, file_attrs: Mapping[str, Any]) -> None:
        self.final_path = Path(final_path)
        self.tmp_path = _tmp_path(self.final_path)
        self.final_path.parent.mkdir(parents=True, exist_ok=True)
        attrs = _convert_attrs(file_attrs, reserved=COMPLETE_ATTR)
        try:
            self._file: h5py.File | None = h5py.File(self.tmp_path, "w")
        except OSError as exc:
            raise ShardError(self.tmp_path, f"cannot create shard ({exc})") from exc
        try:
            self._file.attrs.update(attrs)
        except BaseException:
            self.abort()
            raise

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.abort()
            return
        try:
            self.commit()
        except BaseException:
            self.abort()
            raise

    def _open_file(self) -> h5py.File:
        if self._file is None:
            raise ValueError(f"shard writer for {self.final_path} is already closed")
        return self._file

    def _new_group(self, video_id: str) -> h5py.Group:
        f = self._open_file()
        existing = f.get(_check_video_id(video_id))
        if existing is None:
            return f.create_group(video_id)
        # Ids "a" and "a/b" may both exist: "a" can already be there as a plain parent group.
        if isinstance(existing, h5py.Group) and VIDEO_ATTR not in existing.attrs:
            return existing
        raise ValueError(f"video {video_id!r} is already in {self.tmp_path}")

    def add_video(
        self, video_id: str, datasets: Mapping[str, np.ndarray], attrs: Mapping[str, Any]
    ) -> None:
        """Store one video's datasets (row-chunked, uncompressed) and attributes, then flush."""
        arrays = {name: np.asarray(value) for name, value in datasets.items()}
        _check_datasets(video_id, arrays)
        converted = _convert_attrs(attrs, reserved=VIDEO_ATTR)
        group = self._new_group(video_id)
        for name, array in arrays.items():
            group.create_dataset(name, data=array, chunks=_chunks(array))
        group.attrs.update(converted)
        # The marker goes last: a group without it is invisible to readers.
        group.attrs[VIDEO_ATTR] = _shape_record(arrays)
        # A flush per video keeps the tmp readable up to the last video if the process is killed.
        self._open_file().flush()

    def copy_video(self, source: Path, video_id: str) -> None:
        """Copy a finished video group (datasets and attributes) from another shard."""
        with _open_shard(source) as src:
            self._copy_from(src, video_id)

    def _copy_from(self, src: h5py.File, video_id: str) -> None:
        source_group = _video_group(src, video_id)
        group = self._new_group(video_id)
        # Copy datasets one by one: copying the group would also copy nested videos ("a/b" in "a").
        for name, dset in _datasets(source_group).items():
            if dset.is_virtual:
                # A copied VDS would still point at its sources; the copy must stand alone.
                data = dset[()]
                group.create_dataset(name, data=data, chunks=_chunks(data))
            else:
                src.copy(dset, group, name=name)
        group.attrs.update(source_group.attrs)
        self._open_file().flush()

    def _link_from(self, src: h5py.File, video_id: str, rel_source: str) -> None:
        """Add a video whose datasets are virtual views into ``rel_source`` (a relative path)."""
        source_group = _video_group(src, video_id)
        group = self._new_group(video_id)
        for name, dset in _datasets(source_group).items():
            _virtual_copy(group, name, dset, rel_source)
        group.attrs.update(source_group.attrs)

    def commit(self) -> Path:
        """Mark the shard complete, close and fsync it, and atomically rename it into place."""
        f = self._open_file()
        f.attrs[COMPLETE_ATTR] = 1
        f.close()
        self._file = None
        _fsync_path(self.tmp_path)
        os.replace(self.tmp_path, self.final_path)
        _fsync_path(self.final_path.parent)
        return self.final_path

    def abort(self) -> None:
        """Close the shard without committing and delete the tmp file."""
        if self._file is not None:
            try:
                self._file.close()
            finally:
                self._file = None
        self.tmp_path.unlink(missing_ok=True)


def _check_datasets(video_id: str, arrays: Mapping[str, np.ndarray]) -> None:
    if not arrays:
        raise ValueError(f"video {video_id!r}: no datasets given")
    for name, array in arrays.items():
        if not name or "/" in name:
            raise ValueError(f"video {video_id!r}: bad dataset name {name!r}")
        if array.ndim == 0 or array.dtype.kind not in "biuf":
            raise ValueError(
                f"video {video_id!r}: dataset {name!r} must be a numeric array with at least one "
                f"dimension, got dtype {array.dtype} shape {array.shape}"
            )
    problems = _row_problems({name: array.shape for name, array in arrays.items()})
    if problems:
        raise ValueError(f"video {video_id!r}: " + "; ".join(problems))


def _shape_record(arrays: Mapping[str, np.ndarray]) -> str:
    return json.dumps({name: list(array.shape) for name, array in arrays.items()}, sort_keys=True)


def _fill_value(dtype: np.dtype) -> Any:
    """An impossible value for rows whose source is missing: NaN for floats, -1 for signed ints."""
    if dtype.kind == "f":
        return np.nan
    return -1 if dtype.kind == "i" else 0


def _virtual_copy(group: h5py.Group, name: str, dset: h5py.Dataset, rel_source: str) -> None:
    if dset.size == 0:
        # HDF5 cannot map a zero-sized selection; an empty real dataset reads the same.
        group.create_dataset(name, shape=dset.shape, dtype=dset.dtype)
        return
    layout = h5py.VirtualLayout(shape=dset.shape, dtype=dset.dtype)
    layout[...] = h5py.VirtualSource(rel_source, dset.name, shape=dset.shape, dtype=dset.dtype)
    group.create_virtual_dataset(name, layout, fillvalue=_fill_value(dset.dtype))


def _open_shard(path: Path) -> h5py.File:
    path = Path(path)
    if not path.is_file():
        raise ShardError(path, "file not found")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise ShardError(path, f"cannot open as HDF5 ({exc})") from exc


def _video_group(f: h5py.File, video_id: str) -> h5py.Group:
    group = f.get(_check_video_id(video_id))
    if not isinstance(group, h5py.Group) or VIDEO_ATTR not in group.attrs:
        raise ShardError(f.filename, f"no video {video_id!r}")
    return group


def _datasets(group: h5py.Group) -> dict[str, h5py.Dataset]:
    return {name: obj for name, obj in group.items() if isinstance(obj, h5py.Dataset)}


def _video_ids(f: h5py.File) -> list[str]:
    found: list[str] = []

    def visit(name: str, obj: h5py.HLObject) -> None:
        if isinstance(obj, h5py.Group) and VIDEO_ATTR in obj.attrs:
            found.append(name)

    f.visititems(visit)
    return sorted(found)


def list_videos(path: Path) -> list[str]:
    """Sorted ids of the video groups in a shard (or merged file)."""
    with _open_shard(path) as f:
        return _video_ids(f)


def read_video(path: Path, video_id: str) -> dict[str, Any]:
    """One video's data: ``{"datasets": {name: ndarray}, "attrs": {name: value}}``."""
    with _open_shard(path) as f:
        group = _video_group(f, video_id)
        datasets = {name: dset[()] for name, dset in _datasets(group).items()}
        attrs = {k: _from_attr(v) for k, v in group.attrs.items() if k != VIDEO_ATTR}
    return {"datasets": datasets, "attrs": attrs}


def _group_problems(group: h5py.Group) -> list[str]:
    """Compare a video group with its shape record and the row-count rules."""
    try:
        recorded = {k: tuple(v) for k, v in json.loads(group.attrs[VIDEO_ATTR]).items()}
    except (TypeError, ValueError, AttributeError):
        return [f"unreadable {VIDEO_ATTR} attribute"]
    problems = []
    for name, shape in recorded.items():
        dset = group.get(name)
        if not isinstance(dset, h5py.Dataset):
            problems.append(f"dataset {name!r} is missing")
        elif dset.shape != shape:
            problems.append(f"dataset {name!r} has shape {dset.shape}, expected {shape}")
    return problems + _row_problems(recorded)


def verify_shard(path: Path, expected: Iterable[str] | None = None) -> list[str]:
    """Check a shard is complete and consistent (and holds exactly ``expected``); return its ids.

    Raises :class:`ShardError` naming the file and the first problems found.
    """
    with _open_shard(path) as f:
        try:
            if f.attrs.get(COMPLETE_ATTR) != 1:
                raise ShardError(path, f"incomplete shard (no {COMPLETE_ATTR}=1 attribute)")
            ids = _video_ids(f)
            problems = [f"{vid}: {p}" for vid in ids for p in _group_problems(f[vid])]
        except (OSError, KeyError, RuntimeError) as exc:
            raise ShardError(path, f"damaged HDF5 file ({exc})") from exc
    if expected is not None:
        wanted = set(expected)
        missing, extra = sorted(wanted - set(ids)), sorted(set(ids) - wanted)
        if missing:
            problems.append(f"missing videos {_preview(missing)}")
        if extra:
            problems.append(f"unexpected videos {_preview(extra)}")
    if problems:
        raise ShardError(path, "; ".join(problems[:5]) + _more(len(problems) - 5))
    return ids


def _preview(items: list[str], limit: int = 5) -> str:
    return ", ".join(repr(i) for i in items[:limit]) + _more(len(items) - limit)


def _more(count: int) -> str:
    return f" (and {count} more)" if count > 0 else ""


def write_index(out_dir: Path, mapping: Mapping[str, str]) -> Path:
    """Atomically write ``<out_dir>/index.json`` mapping each video id to its shard file name."""
    for video_id, shard in mapping.items():
        _check_video_id(video_id)
        if not isinstance(shard, str) or not shard or "/" in shard:
            raise ValueError(f"index entry {video_id!r}: shard must be a file name, got {shard!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / INDEX_NAME
    text = json.dumps(dict(sorted(mapping.items())), indent=1, ensure_ascii=False)
    atomic_write(path, lambda fh: fh.write((text + "\n").encode("utf-8")))
    return path


def load_index(out_dir: Path) -> dict[str, str]:
    """Read ``<out_dir>/index.json`` (video id -> shard file name)."""
    path = Path(out_dir) / INDEX_NAME
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ShardError(path, "index not found") from None
    except (OSError, ValueError) as exc:
        raise ShardError(path, f"unreadable index ({exc})") from exc
    if not isinstance(mapping, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()
    ):
        raise ShardError(path, "index must be a JSON object of video id -> shard file name")
    return mapping


def _shard_members(out_dir: Path) -> dict[str, list[str]]:
    """Shard file name -> sorted video ids, from the index, after verifying every shard."""
    members: dict[str, list[str]] = {}
    for video_id, shard in sorted(load_index(out_dir).items()):
        members.setdefault(shard, []).append(video_id)
    if not members:
        raise ShardError(Path(out_dir) / INDEX_NAME, "index lists no videos")
    for shard, ids in sorted(members.items()):
        verify_shard(Path(out_dir) / shard, expected=ids)
    return dict(sorted(members.items()))


def merge_shards(out_dir: Path, dest: Path, virtual: bool = False) -> Path:
    """Merge the shards listed in ``<out_dir>/index.json`` into one file at ``dest``.

    Copy mode duplicates every video group. Virtual mode writes datasets that read through to the
    shards (relative paths, so move the folder as a whole). Every shard must exist and verify
    first: a missing VDS source would otherwise read silently as fill values.
    """
    out_dir, dest = Path(out_dir), Path(dest)
    members = _shard_members(out_dir)
    shards = list(members)
    if any((out_dir / s).resolve() == dest.resolve() for s in shards):
        raise ValueError(f"merge destination {dest} is one of the shards")
    with _open_shard(out_dir / shards[0]) as first:
        attrs = {k: v for k, v in first.attrs.items() if k != COMPLETE_ATTR}
    attrs[SHARDS_ATTR] = shards
    with ShardWriter(dest, attrs) as writer:
        for shard, ids in members.items():
            source = out_dir / shard
            rel = os.path.relpath(source.resolve(), dest.parent.resolve())
            with _open_shard(source) as src:
                for video_id in ids:
                    if virtual:
                        writer._link_from(src, video_id, rel)
                    else:
                        writer._copy_from(src, video_id)
    return dest


def _describe_value(value: Any, limit: int = 120) -> str:
    text = str(_from_attr(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe(path: Path, max_videos: int = 20) -> str:
    """Human-readable summary: file attributes, video count, and datasets of the first videos."""
    with _open_shard(path) as f:
        lines = [str(path), "file attributes:"]
        lines += [f"  {k} = {_describe_value(v)}" for k, v in sorted(f.attrs.items())]
        ids = _video_ids(f)
        lines.append(f"videos: {len(ids)}")
        for video_id in ids[:max_videos]:
            lines.append(f"  {video_id}")
            for name, dset in _datasets(f[video_id]).items():
                kind = " (virtual)" if dset.is_virtual else ""
                lines.append(f"    {name}: {dset.shape} {dset.dtype}{kind}")
        if len(ids) > max_videos:
            lines.append(f"  ... and {len(ids) - max_videos} more")
    return "\n".join(lines)


def write_npy_features(out_dir: Path, video_id: str, array: np.ndarray) -> Path:
    """Write ``<out_dir>/<video_id>.npy`` atomically (``--format npy``), creating parent folders."""
    path = Path(out_dir) / f"{_check_video_id(video_id)}.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    # np.save gets a file object: given a name it would append ".npy" to the tmp name.
    atomic_write(path, lambda fh: np.save(fh, np.asarray(array), allow_pickle=False))
    return path
