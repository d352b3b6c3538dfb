"""Frame samplers: pure functions from a video's length (or timestamps) to frame indices.

Every sampler returns int64 indices that are sorted (non-decreasing) and lie in
``[0, num_frames - 1]``; a video with 0 frames gives an empty result. Indices refer to decoded
frames (frame i is the i-th decoded frame), never to container frame counts.
"""

from __future__ import annotations

import operator

import numpy as np

_TRAIN_MODES = ("train", "test")
_LAST_MODES = ("drop", "pad")
# Relative slack for float comparisons of timestamps: keeps grid points that land a rounding
# error past the last frame, and makes exact ties between two frames resolve to the earlier one.
_TIME_EPS = 1e-9


def _count(name: str, value: int, minimum: int) -> int:
    """Return ``value`` as an int after checking it is an integer >= ``minimum``."""
    try:
        value = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _empty(*shape: int) -> np.ndarray:
    return np.zeros((0, *shape), dtype=np.int64)


def every_frame(num_frames: int, step: int = 1) -> np.ndarray:
    """Every ``step``-th frame starting at frame 0 (all frames with the default step)."""
    num_frames = _count("num_frames", num_frames, 0)
    step = _count("step", step, 1)
    return np.arange(0, num_frames, step, dtype=np.int64)


def _check_timestamps(timestamps: np.ndarray) -> np.ndarray:
    ts = np.asarray(timestamps, dtype=np.float64)
    if ts.ndim != 1:
        raise ValueError(f"timestamps must be 1-D, got shape {ts.shape}")
    if not np.all(np.isfinite(ts)):
        raise ValueError("timestamps must be finite")
    if np.any(np.diff(ts) < 0):
        raise ValueError("timestamps must be non-decreasing (decode order PTS)")
    return ts


def _nearest_frames(ts: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """For each target time, the frame with the nearest timestamp; ties go to the earlier frame."""
    right = np.clip(np.searchsorted(ts, targets, side="left"), 0, len(ts) - 1)
    left = np.maximum(right - 1, 0)
    # Among equal timestamps the earliest frame wins, so step back to the start of left's run.
    left = np.searchsorted(ts, ts[left], side="left")
    scale = _TIME_EPS * max(1.0, float(np.abs(ts).max()))
    take_left = (targets - ts[left]) <= (ts[right] - targets) + scale
    return np.where(take_left, left, right).astype(np.int64)


def fps_resample(
    timestamps: np.ndarray, target_fps: float, max_frames: int | None = None
) -> np.ndarray:
    """Resample a (possibly variable frame rate) video to ``target_fps`` using frame timestamps.

    For each grid time ``t_k = t_0 + k / target_fps`` up to the last timestamp the nearest frame
    is picked (ties to the earlier one) and duplicates are dropped, so a target rate above the
    source rate returns each frame once. If ``max_frames`` is set and more frames qualify, exactly
    ``max_frames`` of them are taken, evenly spread over the whole list (so over the duration).
    """
    ts = _check_timestamps(timestamps)
    if not target_fps > 0 or not np.isfinite(target_fps):
        raise ValueError(f"target_fps must be a positive number, got {target_fps}")
    if max_frames is not None:
        max_frames = _count("max_frames", max_frames, 1)
    if len(ts) == 0:
        return _empty()
    span = ts[-1] - ts[0]
    num_targets = int(np.floor(span * target_fps + _TIME_EPS * max(1.0, span * target_fps))) + 1
    targets = ts[0] + np.arange(num_targets, dtype=np.float64) / target_fps
    picked = np.unique(_nearest_frames(ts, targets))
    if max_frames is not None and len(picked) > max_frames:
        picked = picked[_spread(len(picked), max_frames)]
    return picked


def _spread(length: int, n: int) -> np.ndarray:
    """``n <= length`` positions evenly spread over ``range(length)``, first and last included."""
    if n == 1:
        return np.zeros(1, dtype=np.int64)
    return np.rint(np.linspace(0, length - 1, n)).astype(np.int64)


def uniform(num_frames: int, n: int) -> np.ndarray:
    """``n`` frames evenly spread: the centre of each of ``n`` equal segments.

    When ``num_frames < n`` indices repeat (the result still has length ``n`` and is sorted), as
    TSN-style loaders expect a fixed count; a video with 0 frames gives an empty array.
    """
    num_frames = _count("num_frames", num_frames, 0)
    n = _count("n", n, 1)
    if num_frames == 0:
        return _empty()
    k = np.arange(n, dtype=np.int64)
    # Integer form of floor((k + 0.5) * num_frames / n): exact, no float rounding at boundaries.
    return ((2 * k + 1) * num_frames) // (2 * n)


def tsn_segments(
    num_frames: int, num_segments: int, mode: str = "test", seed: int | None = None
) -> np.ndarray:
    """TSN sampling: split the video into ``num_segments`` equal segments and take one frame each.

    ``mode="test"`` takes each segment's centre; ``mode="train"`` a random frame of each segment
    drawn from ``numpy.random.default_rng(seed)``. Fewer frames than segments repeat indices.
    """
    num_frames = _count("num_frames", num_frames, 0)
    num_segments = _count("num_segments", num_segments, 1)
    if mode not in _TRAIN_MODES:
        raise ValueError(f"mode must be one of {_TRAIN_MODES}, got {mode!r}")
    if num_frames == 0:
        return _empty()
    if mode == "test":
        return uniform(num_frames, num_segments)
    k = np.arange(num_segments + 1, dtype=np.int64)
    bounds = (k * num_frames) // num_segments
    starts = bounds[:-1]
    # A segment is empty when there are fewer frames than segments: it then repeats its start.
    ends = np.maximum(bounds[1:], starts + 1)
    rng = np.random.default_rng(seed)
    return rng.integers(starts, ends).astype(np.int64)


def dense_clips(
    num_frames: int, clip_len: int, stride: int, frame_step: int = 1, last: str = "drop"
) -> np.ndarray:
    """Dense sliding clips as a ``(num_clips, clip_len)`` index array.

    Clip c starts at ``c * stride`` and holds frames ``start + j * frame_step``. ``last="drop"``
    keeps only complete clips. ``last="pad"`` also keeps the first incomplete clip when it
    reaches frames no complete clip covers, padded by repeating its last valid index.
    """
    num_frames = _count("num_frames", num_frames, 0)
    clip_len = _count("clip_len", clip_len, 1)
    stride = _count("stride", stride, 1)
    frame_step = _count("frame_step", frame_step, 1)
    if last not in _LAST_MODES:
        raise ValueError(f"last must be one of {_LAST_MODES}, got {last!r}")
    span = (clip_len - 1) * frame_step + 1
    num_full = (num_frames - span) // stride + 1 if num_frames >= span else 0
    offsets = np.arange(clip_len, dtype=np.int64) * frame_step
    clips = np.arange(num_full, dtype=np.int64)[:, None] * stride + offsets[None, :]
    if last == "pad" and num_frames > 0:
        start = num_full * stride
        covered = int(clips[-1, -1]) if num_full else -1
        last_valid = start + (num_frames - 1 - start) // frame_step * frame_step
        partial = np.minimum(start + offsets, last_valid)
        if start < num_frames and partial[-1] > covered:
            clips = np.concatenate([clips, partial[None, :]])
    return clips


def slowfast(num_frames: int, alpha: int, tau: int, num_slow: int) -> tuple[np.ndarray, np.ndarray]:
    """SlowFast (Feichtenhofer et al., 2019) indices for one clip centred in the video.

    The clip spans ``num_slow * tau`` frames; the slow pathway takes ``num_slow`` frames with
    stride ``tau``, the fast pathway ``alpha * num_slow`` frames with stride ``tau / alpha``.
    Indices outside the video are clamped to its first/last frame. Returns ``(slow, fast)``.
    """
    num_frames = _count("num_frames", num_frames, 0)
    alpha = _count("alpha", alpha, 1)
    tau = _count("tau", tau, 1)
    num_slow = _count("num_slow", num_slow, 1)
    if tau % alpha:
        raise ValueError(f"tau ({tau}) must be a multiple of alpha ({alpha})")
    if num_frames == 0:
        return _empty(), _empty()
    # Floor division keeps the clip centred also when it is longer than the video (start < 0).
    start = (num_frames - num_slow * tau) // 2
    slow = start + np.arange(num_slow, dtype=np.int64) * tau
    fast = start + np.arange(alpha * num_slow, dtype=np.int64) * (tau // alpha)
    return np.clip(slow, 0, num_frames - 1), np.clip(fast, 0, num_frames - 1)
