"""Per-video folders of JPEG/PNG frames in the naming presets trainers read, written atomically.

A video's files go to a hidden temporary folder beside the final one and the folder is renamed into
place only when complete, so a killed run never leaves a half-written folder under the final name.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from flowkit.atomic import remove_temporaries_of, temp_path
from flowkit.errors import ConfigError, FlowkitError


@dataclass(frozen=True)
class Layout:
    """A naming preset (DESIGN §2): first file index and whether RGB file k is the second frame of pair k."""

    name: str
    first_index: int
    rgb_is_second_frame: bool
    rgb_prefix: str = "img"
    flow_prefix: str = "flow"

    def rgb_name(self, k: int, ext: str = "jpg") -> str:
        """File name of the k-th RGB file written (k counts from 0)."""
        return f"{self.rgb_prefix}_{k + self.first_index:05d}.{ext}"

    def flow_name(self, axis: str, k: int, ext: str = "jpg") -> str:
        """File name of flow k (frame k -> k+step) for axis 'x' or 'y'."""
        return f"{self.flow_prefix}_{axis}_{k + self.first_index:05d}.{ext}"

    def rgb_frames(self, num_frames: int, step: int = 1) -> range:
        """Decoded frame indices written as RGB: all N, or (TSN) the second frame of each pair."""
        return range(step, num_frames) if self.rgb_is_second_frame else range(num_frames)

    def trainer_hint(self) -> str:
        """The mmaction2 RawframeDataset settings that read this layout."""
        return (
            f"filename_tmpl='{self.rgb_prefix}_{{:05}}.jpg' (RGB) / "
            f"'{self.flow_prefix}_{{}}_{{:05d}}.jpg' (flow), start_index={self.first_index}"
        )


LAYOUTS: dict[str, Layout] = {
    "mmaction2": Layout("mmaction2", first_index=1, rgb_is_second_frame=False),
    "denseflow": Layout("denseflow", first_index=0, rgb_is_second_frame=False),
    "tsn": Layout("tsn", first_index=1, rgb_is_second_frame=True),
}


def get_layout(name: str) -> Layout:
    """Look up a naming preset by name."""
    try:
        return LAYOUTS[name]
    except KeyError:
        raise ConfigError(f"unknown layout {name!r}; choose from {', '.join(LAYOUTS)}") from None


def encode_image(image: np.ndarray, ext: str, jpeg_quality: int = 95) -> bytes:
    """Encode an image (gray or BGR uint8) as JPEG or PNG bytes."""
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if ext == "jpg" else []
    ok, buf = cv2.imencode(f".{ext}", image, params)
    if not ok:
        raise OSError(f"could not encode a {image.shape} image as {ext}")
    return buf.tobytes()


def _write_bytes(path: str | Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)  # no buffered-file object per frame
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


class FolderWriter:
    """Writes one video's files into a temporary folder on a small thread pool, then renames it into place."""

    def __init__(self, final_dir: Path, threads: int | None = None, max_pending: int = 64,
                 jpeg_encoder: Callable[[Sequence[np.ndarray], int], list[bytes]] | None = None,
                 resume_dir: Path | None = None) -> None:
        from flowkit.threads import current_budget

        budget = current_budget()  # encode threads: the budget's I/O share of this worker
        threads = threads or (budget.io if budget is not None else 2)
        self.final_dir = Path(final_dir)
        # A resumable folder (extract-flow's `.NAME.partial`) is reused and survives Ctrl-C / SIGTERM.
        self.resumable = resume_dir is not None
        self.tmp_dir = Path(resume_dir) if resume_dir else temp_path(self.final_dir, "tmp")
        remove_stale(self.final_dir)
        self._made = _missing_parents(self.tmp_dir)
        self.tmp_dir.mkdir(parents=True, exist_ok=self.resumable)
        self._prefix = f"{self.tmp_dir}{os.sep}"  # str paths: pathlib costs more than a JPEG's write
        self._pool = ThreadPoolExecutor(max_workers=threads)
        self._pending: list[Future[None]] = []
        self._max_pending = max_pending
        self._jpeg = jpeg_encoder  # None: cv2.imencode (flowkit.outputs.jpeg for the others)
        self.count = 0

    def write_image(self, name: str, image: np.ndarray, jpeg_quality: int = 95) -> None:
        """Queue an image for encoding and writing; bounded, so memory stays small."""
        ext = name.rsplit(".", 1)[-1]
        self._pending.append(self._pool.submit(self._encode_write, name, image, ext, jpeg_quality))
        self.count += 1
        if len(self._pending) >= self._max_pending:
            self._drain(self._max_pending // 2)

    def write_images(self, names: Sequence[str], images: Sequence[np.ndarray],
                     jpeg_quality: int = 95) -> None:
        """Queue a batch of images as one task (fewer hand-offs; a GPU JPEG encoder takes it in one call)."""
        if not names:
            return
        self._pending.append(self._pool.submit(self._encode_batch, list(names), list(images), jpeg_quality))
        self.count += len(names)
        if len(self._pending) >= self._max_pending:
            self._drain(self._max_pending // 2)

    def _encode_batch(self, names: list[str], images: list[np.ndarray], quality: int) -> None:
        ext = names[0].rsplit(".", 1)[-1]
        if ext == "jpg" and self._jpeg is not None:
            encoded = self._jpeg(images, quality)
        else:
            encoded = [encode_image(image, ext, quality) for image in images]
        for name, data in zip(names, encoded, strict=True):
            _write_bytes(self._prefix + name, data)

    def write_file(self, name: str, data: bytes) -> None:
        """Write raw bytes (e.g. a JSON sidecar) into the folder."""
        _write_bytes(self.tmp_dir / name, data)

    def _encode_write(self, name: str, image: np.ndarray, ext: str, quality: int) -> None:
        if ext == "jpg" and self._jpeg is not None:
            _write_bytes(self._prefix + name, self._jpeg([image], quality)[0])
            return
        _write_bytes(self._prefix + name, encode_image(image, ext, quality))

    def flush(self) -> None:
        """Wait until every queued file is written (a checkpoint can then count them)."""
        self._drain()

    def _drain(self, keep: int = 0) -> None:
        while len(self._pending) > keep:
            self._pending.pop(0).result()

    def commit(self) -> Path:
        """Wait for all writes, then atomically replace the final folder with the temporary one."""
        try:
            self._drain()
        except BaseException:
            # A failed write (disk full) surfaces here: drop the partial folder, as on any error.
            self.abort()
            raise
        self._pool.shutdown()
        old = None
        if self.final_dir.exists():
            try:
                check_replaceable(self.final_dir, set(os.listdir(self.tmp_dir)))
            except BaseException:
                self.abort()
                raise
            old = temp_path(self.final_dir, "old")
            os.replace(self.final_dir, old)
        os.replace(self.tmp_dir, self.final_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.final_dir

    def abort(self) -> None:
        """Drop everything written so far; the final folder (if any) is untouched."""
        with contextlib.suppress(Exception):
            self._drain()
        self._pool.shutdown(cancel_futures=True)
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        for folder in self._made:  # deepest first; one another writer filled meanwhile stays
            with contextlib.suppress(OSError):
                folder.rmdir()

    def __enter__(self) -> FolderWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.commit()
        elif self.resumable and isinstance(exc_type, type) and issubclass(exc_type, KeyboardInterrupt):
            self._pool.shutdown(cancel_futures=True)  # interrupted: keep what is finished for the rerun
        else:
            self.abort()


def remove_stale(final: Path) -> None:
    """Delete temporary leftovers of `final` from killed runs (same unit, so never another run's work)."""
    remove_temporaries_of(final)


# What a video's output folder may hold: frames and flows of any layout, and the per-video files.
_OUTPUT_FILE = re.compile(r"^[A-Za-z]+(?:_[xy])?_\d+\.(?:jpg|png)$")
_OUTPUT_NAMES = frozenset({"flow.h5", "flow.npy", "timestamps.npy", "sampling.json"})


def check_replaceable(final: Path, written: set[str]) -> None:
    """Refuse to replace a folder that is not a video's own output: one holding a sub-folder (other
    videos' outputs, OUT itself) or files flowkit does not write. Defence in depth behind safe ids."""
    with os.scandir(final) as entries:
        for entry in entries:
            ours = entry.name in written or _OUTPUT_FILE.match(entry.name) or entry.name in _OUTPUT_NAMES
            if entry.is_dir(follow_symlinks=False) or not ours:
                raise FlowkitError(
                    f"{final}: not replacing this folder, it holds {entry.name!r}, which is not part of "
                    "one video's output (another video's output or a foreign file)"
                )


def _missing_parents(folder: Path) -> list[Path]:
    """The ancestors of `folder` that do not exist yet, deepest first (to remove them on abort)."""
    missing = []
    parent = folder.parent
    while not parent.exists() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    return missing


def count_files(folder: Path, prefix: str) -> int:
    """Number of files in `folder` whose name starts with `prefix` (how trainers count frames)."""
    try:
        return sum(1 for p in folder.iterdir() if p.name.startswith(prefix))
    except FileNotFoundError:
        return 0
