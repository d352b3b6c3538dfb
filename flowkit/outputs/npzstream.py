"""An .npz written as a stream: frames go to a temporary file as they arrive, never all in memory.

np.savez needs every frame stacked in memory (a 20-minute video is ~20 GB). Here each frame is appended
to a raw temporary file; at the end the npz (a zip of .npy members, stored uncompressed as np.savez does)
is written by copying that file in chunks after an .npy header with the final shape. np.load reads it as
before: `frames` [N, H, W, 3] uint8 RGB, `indices` [N] int64, `timestamps` [N] float64, `groups` (JSON).
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from flowkit.atomic import atomic_write
from flowkit.errors import VideoError
from flowkit.outputs.rawframes import remove_stale

CHUNK = 1 << 20


class NpzStreamWriter:
    """Append frames one at a time, then `commit()` writes `target` atomically; `abort()` drops it all."""

    def __init__(self, target: Path) -> None:
        self.target = Path(target)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(self.target)
        self.raw_path = self.target.with_name(f".{self.target.name}.frames-{os.getpid()}.tmp")
        self.raw: BinaryIO = open(self.raw_path, "wb")  # noqa: SIM115 - closed in commit/abort
        self.shape: tuple[int, ...] | None = None
        self.indices: list[int] = []
        self.timestamps: list[float] = []

    @property
    def count(self) -> int:
        """Frames added so far."""
        return len(self.indices)

    def add(self, image: np.ndarray, index: int, timestamp: float) -> None:
        """Append one frame (H, W, 3) uint8 with its decoded index and timestamp."""
        if self.shape is None:
            self.shape = image.shape
        elif image.shape != self.shape:
            raise VideoError(self.target, f"frame size changed mid-video ({self.shape} -> {image.shape})")
        self.raw.write(np.ascontiguousarray(image, dtype=np.uint8).data)
        self.indices.append(index)
        self.timestamps.append(timestamp)

    def commit(self, groups: dict[str, Any]) -> Path:
        """Write the npz beside its final name and rename it into place; the raw file is removed."""
        self.raw.close()
        try:
            atomic_write(self.target, lambda fh: self._write_zip(fh, groups))
        finally:
            self.raw_path.unlink(missing_ok=True)
        return self.target

    def abort(self) -> None:
        """Drop the raw file (nothing was written under the final name)."""
        self.raw.close()
        self.raw_path.unlink(missing_ok=True)

    def _write_zip(self, fh: BinaryIO, groups: dict[str, Any]) -> None:
        shape = (self.count, *(self.shape or (0, 0, 3)))
        with zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            with zf.open("frames.npy", "w", force_zip64=True) as member:
                header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
                          "fortran_order": False, "shape": shape}
                np.lib.format.write_array_header_2_0(member, header)
                with open(self.raw_path, "rb") as raw:
                    shutil.copyfileobj(raw, member, CHUNK)
            arrays = {"indices": np.asarray(self.indices, dtype=np.int64),
                      "timestamps": np.asarray(self.timestamps, dtype=np.float64),
                      "groups": np.asarray(json.dumps(groups))}
            for name, array in arrays.items():
                with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, array, allow_pickle=False)
