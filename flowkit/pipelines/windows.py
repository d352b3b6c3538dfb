"""Temporal windows over a video, assembled while decoding: RGB clips and (optionally) flow clips.

The plan (which decoded frames are kept, which kept frames form each window) is computed first from
the stream timestamps; frames then stream through a small buffer, so memory stays bounded by about
one window plus one flow batch whatever the video length.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from flowkit import sampling
from flowkit.video import Frame, to_gray

FlowFn = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (B,H,W) uint8 x2 -> (B,2,H,W) float32
FlowLookup = Callable[[int], np.ndarray]  # decoded index k -> flow k -> k+1, (2,H,W)


@dataclass(frozen=True)
class WindowPlan:
    """kept: decoded indices of the frames used; windows: (W, clip_len) positions into `kept`."""

    kept: np.ndarray
    windows: np.ndarray
    timestamps: np.ndarray

    def frame_ranges(self) -> np.ndarray:
        """(W, 2) decoded frame indices (start, end-exclusive) of each window."""
        if len(self.windows) == 0:
            return np.zeros((0, 2), np.int64)
        return np.stack([self.kept[self.windows[:, 0]], self.kept[self.windows[:, -1]] + 1], axis=1)

    def time_ranges(self) -> np.ndarray:
        """(W, 2) seconds: start of the first frame to the start of the frame after the last one."""
        ranges = self.frame_ranges()
        ts = self.timestamps
        step = float(np.median(np.diff(ts))) if len(ts) > 1 else 0.0
        padded = np.append(ts, ts[-1] + step) if len(ts) else ts
        return (
            np.stack([padded[ranges[:, 0]], padded[ranges[:, 1]]], axis=1)
            if len(ranges)
            else np.zeros((0, 2))
        )


def plan_windows(
    timestamps: np.ndarray, clip_len: int, stride: int, fps: float | None, pad_last: bool
) -> WindowPlan:
    """Resample to `fps` (by timestamp) if given, then cut windows of clip_len every `stride` frames."""
    n = len(timestamps)
    kept = sampling.fps_resample(timestamps, fps) if fps else np.arange(n, dtype=np.int64)
    windows = sampling.dense_clips(len(kept), clip_len, stride, 1, "pad" if pad_last else "drop")
    return WindowPlan(kept, windows, np.asarray(timestamps, np.float64))


@dataclass
class Window:
    """One window ready for a model: its number, RGB frames (T,H,W,3) and flows (T,2,H,W) if asked."""

    number: int
    frames: np.ndarray | None
    flows: np.ndarray | None


class WindowAssembler:
    """Feeds decoded frames in, yields complete windows out, computing flow between kept frames in batches."""

    def __init__(self, plan: WindowPlan, need_rgb: bool, flow_fn: FlowFn | None, flow_batch: int = 8,
                 flow_lookup: FlowLookup | None = None) -> None:
        self.plan, self.need_rgb, self.flow_fn, self.flow_batch = plan, need_rgb, flow_fn, flow_batch
        self.flow_lookup = flow_lookup  # precomputed flows by decoded frame index, instead of flow_fn
        self.uses_flow = flow_fn is not None or flow_lookup is not None
        self.flow_color = bool(getattr(flow_fn, "color", False))
        self.position = {int(d): p for p, d in enumerate(plan.kept)}
        self.frames: dict[int, np.ndarray] = {}
        self.grays: dict[int, np.ndarray] = {}
        self.flows: dict[int, np.ndarray] = {}
        self.pending: list[int] = []
        self.next_window = 0
        self.last = len(plan.kept) - 1
        # Flows past the last window's frames are never used: skip computing them.
        self.last_needed = int(plan.windows.max()) if len(plan.windows) else -1

    def feed(self, frames: Iterator[Frame]) -> Iterator[Window]:
        """Consume decoded frames; yield windows in order as soon as their data is complete."""
        for frame in frames:
            p = self.position.get(frame.index)
            if p is None:
                continue
            self.frames[p] = frame.image
            if self.uses_flow:
                if self.flow_fn is not None:
                    # colour engines (RAFT) read the BGR frame itself
                    self.grays[p] = frame.image if self.flow_color else to_gray(frame.image)
                if p > 0 and p - 1 <= self.last_needed:
                    self.pending.append(p - 1)
                if len(self.pending) >= self.flow_batch:
                    self._compute_flows()
            yield from self._ready(final=False)
        self._compute_flows()
        yield from self._ready(final=True)

    def _compute_flows(self) -> None:
        if self.flow_lookup is not None:
            for q in self.pending:
                self.flows[q] = np.asarray(self.flow_lookup(int(self.plan.kept[q])), np.float32)
            self.pending.clear()
            return
        # A pair whose frames were evicted is no longer needed by any window.
        self.pending = [q for q in self.pending if q in self.grays and q + 1 in self.grays]
        if not self.pending or self.flow_fn is None:
            return
        prev = np.stack([self.grays[q] for q in self.pending])
        nxt = np.stack([self.grays[q + 1] for q in self.pending])
        for q, flow in zip(self.pending, self.flow_fn(prev, nxt), strict=True):
            self.flows[q] = np.asarray(flow, np.float32)
        self.pending.clear()

    def _flow_at(self, q: int) -> np.ndarray:
        # The last kept frame has no successor: its window reuses the flow before it.
        return self.flows[min(q, self.last - 1)] if self.last > 0 else np.zeros((2, 1, 1), np.float32)

    def _complete(self, positions: np.ndarray, final: bool) -> bool:
        top = int(positions.max())
        if top not in self.frames:
            return False
        if not self.uses_flow or self.last == 0:
            return True
        return final or all(min(int(q), self.last - 1) in self.flows for q in positions)

    def _ready(self, final: bool) -> Iterator[Window]:
        windows = self.plan.windows
        while self.next_window < len(windows) and self._complete(windows[self.next_window], final):
            positions = windows[self.next_window]
            frames = np.stack([self.frames[int(p)] for p in positions]) if self.need_rgb else None
            flows = np.stack([self._flow_at(int(p)) for p in positions]) if self.uses_flow else None
            yield Window(self.next_window, frames, flows)
            self.next_window += 1
            self._evict()

    def _evict(self) -> None:
        if self.next_window >= len(self.plan.windows):
            keep_from = self.last + 1
        else:
            keep_from = int(self.plan.windows[self.next_window].min())
        for store in (self.frames, self.grays, self.flows):
            for p in [p for p in store if p < keep_from - 1]:
                del store[p]
