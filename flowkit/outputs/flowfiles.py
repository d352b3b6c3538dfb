"""Flow sinks inside a video's (temporary) folder: 8-bit JPEG/PNG pairs, or lossless float16 HDF5 / npy.

Every sink streams: flows are appended batch by batch, so memory does not grow with the video length.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, BinaryIO

import h5py
import numpy as np

from flowkit.choices import FLOW_FORMATS  # noqa: F401 - re-exported
from flowkit.flow.quantize import quantize
from flowkit.outputs.rawframes import FolderWriter, Layout


class ImagePairSink:
    """flow_x_/flow_y_ grayscale images, quantized with the cvRound formula and the given bound."""

    def __init__(self, writer: FolderWriter, layout: Layout, ext: str, bound: float, quality: int) -> None:
        self.writer, self.layout, self.ext = writer, layout, ext
        self.bound, self.quality = bound, quality
        self.count = 0

    def add(self, flows: np.ndarray, timestamps: np.ndarray) -> None:
        """Append a batch of flows (B, 2, H, W) float32; timestamps are unused in image form."""
        levels = quantize(flows, self.bound)
        names, images = [], []
        for q in levels:
            names += [self.layout.flow_name(axis, self.count, self.ext) for axis in "xy"]
            images += [q[0], q[1]]
            self.count += 1
        self.writer.write_images(names, images, self.quality)

    def close(self) -> None:
        """Nothing to flush here: the folder writer drains on commit."""


class H5Sink:
    """One `flow.h5` per video: `flow` float16 [N-1, 2, H, W] (x, y), `timestamps` [N-1, 2] (from, to)."""

    def __init__(self, path: Path, attrs: dict[str, Any]) -> None:
        self.file = h5py.File(path, "w")
        self.file.attrs.update({k: json.dumps(v) if isinstance(v, dict) else v for k, v in attrs.items()})
        self.flow: h5py.Dataset | None = None
        self.times: h5py.Dataset | None = None
        self.count = 0

    def add(self, flows: np.ndarray, timestamps: np.ndarray) -> None:
        """Append a batch of flows and their (from, to) frame timestamps in seconds."""
        if self.flow is None:
            _, c, h, w = flows.shape
            self.flow = self.file.create_dataset("flow", (0, c, h, w), np.float16, maxshape=(None, c, h, w),
                                                 chunks=(1, c, h, w))
            self.times = self.file.create_dataset("timestamps", (0, 2), np.float64, maxshape=(None, 2))
        n = self.count + len(flows)
        self.flow.resize(n, axis=0)
        self.times.resize(n, axis=0)
        self.flow[self.count : n] = flows.astype(np.float16)
        self.times[self.count : n] = timestamps
        self.count = n

    def close(self) -> None:
        """Create empty datasets for a flowless (1-frame) video, then close the file."""
        if self.flow is None:
            self.file.create_dataset("flow", (0, 2, 0, 0), np.float16)
            self.file.create_dataset("timestamps", (0, 2), np.float64)
        self.file.attrs["num_flows"] = self.count
        self.file.close()


class NpySink:
    """`flow.npy` float16 [N-1, 2, H, W] written as a stream; the header's shape is patched at the end.

    The header is padded to a fixed length up front so the real shape fits when rewritten; `timestamps.npy`
    [N-1, 2] and `flow.json` (the metadata an h5 file holds as attributes) are written beside it.
    """

    HEADER_LEN = 128

    def __init__(self, folder: Path, attrs: dict[str, Any] | None = None) -> None:
        self.folder = folder
        self.attrs = dict(attrs or {})
        self.fh: BinaryIO = open(folder / "flow.npy", "wb")  # noqa: SIM115 - closed in close()
        self.fh.write(b"\x00" * self.HEADER_LEN)
        self.shape: tuple[int, ...] = (0, 2, 0, 0)
        self.times: list[np.ndarray] = []

    @property
    def count(self) -> int:
        """Flows written so far."""
        return self.shape[0]

    def add(self, flows: np.ndarray, timestamps: np.ndarray) -> None:
        """Append a batch of flows and their (from, to) frame timestamps in seconds."""
        self.fh.write(np.ascontiguousarray(flows, dtype="<f2").tobytes())
        self.shape = (self.shape[0] + len(flows), *flows.shape[1:])
        self.times.append(np.asarray(timestamps, np.float64))

    def close(self) -> None:
        """Write the final header and the timestamps file."""
        header = repr({"descr": "<f2", "fortran_order": False, "shape": self.shape})
        preamble = b"\x93NUMPY\x01\x00"
        body_len = self.HEADER_LEN - len(preamble) - 2
        text = header.encode("latin1").ljust(body_len - 1, b" ") + b"\n"
        self.fh.seek(0)
        self.fh.write(preamble + body_len.to_bytes(2, "little") + text)
        self.fh.close()
        times = np.concatenate(self.times) if self.times else np.zeros((0, 2))
        np.save(self.folder / "timestamps.npy", times)
        meta = {**self.attrs, "num_flows": self.count}
        (self.folder / "flow.json").write_text(json.dumps(meta, indent=1, default=str), encoding="utf-8")


def resize_flow(flow: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize a (2, H, W) flow field to (2, height, width), scaling the vectors with the frame.

    Flow is in pixels of the frame it was computed on: resizing by (sx, sy) = (width/W, height/H)
    multiplies u by sx and v by sy.
    """
    import cv2

    _, h, w = flow.shape
    out = np.stack([cv2.resize(np.ascontiguousarray(c, np.float32), (width, height),
                               interpolation=cv2.INTER_LINEAR) for c in flow])
    out[0] *= np.float32(width / w)
    out[1] *= np.float32(height / h)
    return out


class FlowFolderReader:
    """Reads back one video's flows from an extract-flow output folder: flow k (frame k -> k+1) as float32.

    8-bit images are dequantized with the bound they were written with; h5/npy are memory-mapped, so a
    long video is not loaded whole.
    """

    def __init__(self, folder: Path, layout: Layout, fmt: str, bound: float) -> None:
        self.folder, self.layout, self.fmt, self.bound = folder, layout, fmt, bound
        self._array: Any = None
        if fmt == "npy":
            self._array = np.load(folder / "flow.npy", mmap_mode="r")
        elif fmt == "h5":
            self._file = h5py.File(folder / "flow.h5", "r")
            self._array = self._file["flow"]

    def frame_size(self) -> tuple[int, int]:
        """(width, height) of the frames the flow was computed on; (0, 0) for a video without flow."""
        if self._array is not None:
            return (int(self._array.shape[3]), int(self._array.shape[2])) if len(self._array) else (0, 0)
        try:
            height, width = self._read(self.layout.flow_name("x", 0, self.fmt)).shape
        except FileNotFoundError:
            return 0, 0
        return width, height

    def __call__(self, k: int) -> np.ndarray:
        """Flow k as (2, H, W) float32 pixels."""
        if self._array is not None:
            if k >= len(self._array):
                raise IndexError(f"{self.folder}: no flow {k} (it holds {len(self._array)})")
            return np.asarray(self._array[k], np.float32)
        from flowkit.flow.quantize import dequantize

        planes = [self._read(self.layout.flow_name(axis, k, self.fmt)) for axis in "xy"]
        return dequantize(np.stack(planes), self.bound)

    def _read(self, name: str) -> np.ndarray:
        import cv2

        image = cv2.imread(str(self.folder / name), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise FileNotFoundError(f"{self.folder / name}: missing or unreadable flow image")
        return image
