"""Frame samplers: exact small cases, a VFR case, and hypothesis properties for every sampler."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowkit.sampling import (
    dense_clips,
    every_frame,
    fps_resample,
    slowfast,
    tsn_segments,
    uniform,
)

frames = st.integers(min_value=0, max_value=400)
small = st.integers(min_value=1, max_value=40)


def assert_valid(indices: np.ndarray, num_frames: int) -> None:
    """Shared contract: int64, non-decreasing along the last axis, inside the video."""
    assert indices.dtype == np.int64
    flat = indices.reshape(-1)
    if num_frames == 0:
        assert flat.size == 0
        return
    assert np.all(np.diff(indices, axis=-1) >= 0)
    assert flat.min(initial=0) >= 0
    assert flat.max(initial=0) <= num_frames - 1


# ---------------------------------------------------------------- exact examples


def test_every_frame_examples() -> None:
    np.testing.assert_array_equal(every_frame(5), [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(every_frame(10, step=4), [0, 4, 8])
    assert every_frame(0).shape == (0,)


def test_uniform_examples() -> None:
    np.testing.assert_array_equal(uniform(10, 2), [2, 7])
    np.testing.assert_array_equal(uniform(100, 4), [12, 37, 62, 87])
    # Fewer frames than requested: indices repeat, length stays n.
    np.testing.assert_array_equal(uniform(3, 5), [0, 0, 1, 2, 2])
    assert uniform(0, 4).shape == (0,)


def test_tsn_segments_test_mode_centres() -> None:
    np.testing.assert_array_equal(tsn_segments(10, 3), [1, 5, 8])
    np.testing.assert_array_equal(tsn_segments(2, 4), [0, 0, 1, 1])


def test_tsn_segments_train_mode_one_frame_per_segment() -> None:
    picks = np.stack([tsn_segments(10, 3, "train", seed=s) for s in range(200)])
    # Segments of 10 frames / 3 are [0, 3), [3, 6), [6, 10).
    for k, (lo, hi) in enumerate([(0, 3), (3, 6), (6, 10)]):
        assert set(picks[:, k].tolist()) == set(range(lo, hi))
    np.testing.assert_array_equal(tsn_segments(10, 3, "train", seed=7), picks[7])


def test_dense_clips_drop_and_pad() -> None:
    np.testing.assert_array_equal(dense_clips(10, 4, 4), [[0, 1, 2, 3], [4, 5, 6, 7]])
    np.testing.assert_array_equal(
        dense_clips(10, 4, 4, last="pad"), [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 9, 9]]
    )


def test_dense_clips_frame_step_and_short_videos() -> None:
    np.testing.assert_array_equal(dense_clips(10, 3, 3, frame_step=2), [[0, 2, 4], [3, 5, 7]])
    np.testing.assert_array_equal(
        dense_clips(10, 3, 3, frame_step=2, last="pad"), [[0, 2, 4], [3, 5, 7], [6, 8, 8]]
    )
    assert dense_clips(3, 4, 4).shape == (0, 4)
    np.testing.assert_array_equal(dense_clips(3, 4, 4, last="pad"), [[0, 1, 2, 2]])
    assert dense_clips(0, 4, 4, last="pad").shape == (0, 4)


def test_dense_clips_pad_skips_a_partial_clip_that_adds_nothing() -> None:
    # Overlapping clips: the last full clip already ends at frame 9.
    np.testing.assert_array_equal(
        dense_clips(10, 4, 2, last="pad"), [[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7], [6, 7, 8, 9]]
    )


def test_slowfast_centred_clip() -> None:
    slow, fast = slowfast(100, alpha=4, tau=8, num_slow=4)
    np.testing.assert_array_equal(slow, [34, 42, 50, 58])
    np.testing.assert_array_equal(fast, np.arange(34, 66, 2))
    # Video shorter than the clip: still centred, clamped into range.
    slow, fast = slowfast(5, alpha=4, tau=8, num_slow=4)
    np.testing.assert_array_equal(slow, [0, 0, 2, 4])
    assert fast.min() == 0 and fast.max() == 4 and len(fast) == 16


def test_fps_resample_cfr_downsample() -> None:
    ts = np.arange(90) / 30.0
    np.testing.assert_array_equal(fps_resample(ts, 10), np.arange(0, 90, 3))
    # 30 -> 20 fps: half-way targets tie and go to the earlier frame.
    np.testing.assert_array_equal(fps_resample(ts[:9], 20), [0, 1, 3, 4, 6, 7])


def test_fps_resample_vfr_nearest_by_timestamp() -> None:
    # Variable frame rate: a burst of frames, then a long gap; frame 1 duplicates frame 0's PTS.
    ts = np.array([0.0, 0.0, 0.05, 0.1, 0.3, 0.31, 0.32, 0.6, 1.0])
    # Targets 0.0, 0.1, ..., 1.0; 0.2 and 0.8 are exact ties -> earlier frame.
    np.testing.assert_array_equal(fps_resample(ts, 10), [0, 3, 4, 6, 7, 8])


def test_fps_resample_upsample_returns_each_frame_once() -> None:
    ts = np.arange(20) / 10.0
    np.testing.assert_array_equal(fps_resample(ts, 60), np.arange(20))


def test_fps_resample_cap_spreads_over_whole_duration() -> None:
    ts = np.arange(3000) / 30.0  # 100 s at 30 fps: 300 candidates at 3 fps
    picked = fps_resample(ts, 3, max_frames=129)
    assert len(picked) == 129
    assert picked[0] == 0 and picked[-1] == 2990
    gaps = np.diff(picked)
    assert gaps.min() >= 20 and gaps.max() <= 30
    # Under the cap nothing changes.
    np.testing.assert_array_equal(fps_resample(ts[:300], 3, max_frames=129), np.arange(0, 300, 10))


@pytest.mark.parametrize(
    "call",
    [
        lambda: every_frame(10, step=0),
        lambda: every_frame(-1),
        lambda: uniform(10, 0),
        lambda: tsn_segments(10, 0),
        lambda: tsn_segments(10, 3, mode="val"),
        lambda: dense_clips(10, 0, 1),
        lambda: dense_clips(10, 4, 0),
        lambda: dense_clips(10, 4, 4, last="wrap"),
        lambda: slowfast(10, alpha=3, tau=8, num_slow=4),
        lambda: slowfast(10, alpha=0, tau=8, num_slow=4),
        lambda: fps_resample(np.arange(5.0), 0),
        lambda: fps_resample(np.arange(5.0), float("nan")),
        lambda: fps_resample(np.arange(5.0), 3, max_frames=0),
        lambda: fps_resample(np.array([0.0, 1.0, 0.5]), 3),
        lambda: fps_resample(np.zeros((2, 2)), 3),
        lambda: uniform(2.5, 3),
    ],
)
def test_bad_arguments_raise_value_error(call) -> None:
    with pytest.raises(ValueError):
        call()


# ---------------------------------------------------------------- properties


@given(frames, small)
def test_every_frame_properties(n: int, step: int) -> None:
    out = every_frame(n, step)
    assert_valid(out, n)
    assert len(out) == -(-n // step)
    assert np.all(np.diff(out) == step)


@given(frames, small)
def test_uniform_properties(n: int, count: int) -> None:
    out = uniform(n, count)
    assert_valid(out, n)
    assert len(out) == (count if n else 0)
    if n >= count:
        assert len(np.unique(out)) == count


@given(frames, small, st.integers(min_value=0, max_value=2**31))
def test_tsn_properties(n: int, segments: int, seed: int) -> None:
    for mode in ("test", "train"):
        out = tsn_segments(n, segments, mode=mode, seed=seed)
        assert_valid(out, n)
        assert len(out) == (segments if n else 0)
    if n >= segments:
        # One frame per segment: strictly increasing picks.
        assert np.all(np.diff(tsn_segments(n, segments, "train", seed=seed)) > 0)
    a = tsn_segments(n, segments, "train", seed=seed)
    np.testing.assert_array_equal(a, tsn_segments(n, segments, "train", seed=seed))


@given(frames, small, small, st.integers(min_value=1, max_value=5))
def test_dense_clips_properties(n: int, clip_len: int, stride: int, step: int) -> None:
    span = (clip_len - 1) * step + 1
    drop = dense_clips(n, clip_len, stride, step, last="drop")
    pad = dense_clips(n, clip_len, stride, step, last="pad")
    for out in (drop, pad):
        assert out.ndim == 2 and out.shape[1] == clip_len
        assert_valid(out, n)
        assert np.all(np.diff(out[:, 0]) == stride)
    assert len(drop) == (max(n - span, -1) // stride + 1 if n >= span else 0)
    np.testing.assert_array_equal(pad[: len(drop)], drop)
    assert len(pad) - len(drop) in (0, 1)
    if n and (stride % step == 0 or stride >= span):
        # Pad mode never loses the tail: the last frame any clip position reaches is covered.
        starts = np.arange(0, n, stride)
        reach = np.minimum(starts + (n - 1 - starts) // step * step, starts + span - 1)
        assert pad.max() == reach.max()
    if len(drop):
        np.testing.assert_array_equal(np.diff(drop, axis=1), step)


@given(frames, st.sampled_from([1, 2, 4, 8]), st.integers(1, 4), st.integers(1, 16))
def test_slowfast_properties(n: int, alpha: int, tau_mult: int, num_slow: int) -> None:
    tau = alpha * tau_mult
    slow, fast = slowfast(n, alpha, tau, num_slow)
    assert_valid(slow, n)
    assert_valid(fast, n)
    assert len(slow) == (num_slow if n else 0)
    assert len(fast) == (alpha * num_slow if n else 0)
    if n:
        # The slow pathway is every alpha-th frame of the fast one.
        np.testing.assert_array_equal(fast[::alpha], slow)
    if n >= num_slow * tau:
        assert np.all(np.diff(slow) == tau)


@st.composite
def vfr_timestamps(draw: st.DrawFn) -> np.ndarray:
    """Non-decreasing PTS in milliseconds (0 steps give duplicate timestamps), in seconds."""
    steps = draw(st.lists(st.integers(min_value=0, max_value=200), min_size=0, max_size=120))
    start = draw(st.integers(min_value=0, max_value=5000))
    if not steps:
        return np.zeros(0)
    return (start + np.cumsum([0, *steps[1:]])) / 1000.0


@settings(max_examples=150)
@given(vfr_timestamps(), st.floats(0.5, 120.0), st.one_of(st.none(), st.integers(1, 50)))
def test_fps_resample_properties(ts: np.ndarray, fps: float, cap: int | None) -> None:
    out = fps_resample(ts, fps, max_frames=cap)
    assert_valid(out, len(ts))
    assert np.all(np.diff(out) > 0)
    if len(ts) == 0:
        return
    assert out[0] == 0
    # Without the cap: each target's nearest frame is picked, earliest among equal timestamps.
    uncapped = fps_resample(ts, fps)
    targets = ts[0] + np.arange(int((ts[-1] - ts[0]) * fps) + 2) / fps
    targets = targets[targets <= ts[-1] + 1e-9]
    best = np.abs(ts[None, :] - targets[:, None]).min(axis=1)
    # Every target is served by a nearest frame, and every picked frame is nearest to a target.
    served = np.abs(ts[uncapped][None, :] - targets[:, None]) <= best[:, None] + 1e-9
    assert served.any(axis=1).all()
    assert served.any(axis=0).all()
    # Among equal timestamps the earliest frame is the one picked.
    np.testing.assert_array_equal(np.searchsorted(ts, ts[uncapped]), uncapped)
    if cap is not None:
        assert len(out) == min(cap, len(uncapped))
        assert set(out.tolist()) <= set(uncapped.tolist())
