"""End-to-end agreement of the "tvl1" engine with cv2.optflow DualTVL1 and with known motion."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from flowdata import epe, moved_pair, pair_batch

from flowkit.flow import create_engine, tvl1_native
from flowkit.flow.tvl1 import TORCH_KERNELS, TVL1Engine, _compile_available

ONE_LEVEL = dict(nscales=1, warps=1, median_filtering=1)
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _eager(**params) -> TVL1Engine:
    return TVL1Engine("cpu", compile=False, **params)



@pytest.fixture(scope="module")
def pairs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return pair_batch(4, 64, 64, seed=3, noise=2.0)


@pytest.mark.parametrize("extra", [{}, {"gamma": 0.2}, {"inner_iterations": 7, "epsilon": 0.0}])
def test_single_level_single_warp_matches_cv2(pairs, extra) -> None:
    prev, nxt, _ = pairs
    params = {**ONE_LEVEL, **extra}
    ours = _eager(**params)(prev[:2], nxt[:2])
    ref = create_engine("tvl1-opencv", "cpu", **params)(prev[:2], nxt[:2])
    assert np.abs(ours - ref).max() < 1e-5


def _cv2_self_sensitivity(prev: np.ndarray, nxt: np.ndarray, ref: np.ndarray) -> float:
    """Mean |cv2(uint8) - cv2(float/255 + 1e-6 noise)|: OpenCV's own noise floor on these pairs."""
    rng = np.random.default_rng(11)
    diffs = []
    for i in range(prev.shape[0]):
        a, b = (x.astype(np.float32) / np.float32(255.0)
                + rng.uniform(-1e-6, 1e-6, x.shape).astype(np.float32) for x in (prev[i], nxt[i]))
        flow = cv2.optflow.DualTVL1OpticalFlow_create().calc(a, b, None)
        diffs.append(np.abs(np.moveaxis(flow, -1, 0) - ref[i]).mean())
    return float(np.mean(diffs))


def test_defaults_within_cv2_noise_floor_and_equal_epe(pairs) -> None:
    prev, nxt, truth = pairs
    ours = _eager()(prev, nxt)
    ref = create_engine("tvl1-opencv", "cpu")(prev, nxt)
    assert np.abs(ours - ref).mean() <= _cv2_self_sensitivity(prev, nxt, ref)
    assert epe(ours, truth) <= 1.05 * epe(ref, truth)
    assert epe(ours, truth) < 0.05  # and the motion is actually recovered


def test_pure_torch_kernels_within_cv2_noise_floor(pairs) -> None:
    """On CPU the oracle warps and medians with cv2 itself; the PyTorch warp and median (what CUDA
    runs) must meet the same end-to-end bounds."""
    prev, nxt, truth = pairs
    engine = _eager()
    engine._kernels = TORCH_KERNELS
    ours = engine(prev, nxt)
    ref = create_engine("tvl1-opencv", "cpu")(prev, nxt)
    assert np.abs(ours - ref).mean() <= _cv2_self_sensitivity(prev, nxt, ref)
    assert epe(ours, truth) <= 1.05 * epe(ref, truth)


@pytest.mark.parametrize("compact", [True, False])
def test_batch_equals_single_runs(pairs, compact: bool) -> None:
    prev, nxt, _ = pairs
    engine = _eager(compact=compact, sync_every=3)
    batch = engine(prev, nxt)
    batch_iters = engine.last_stats["iterations"]
    for i in range(prev.shape[0]):
        single = engine(prev[i], nxt[i])
        np.testing.assert_allclose(batch[i], single, atol=1e-6, rtol=0)
        assert engine.last_stats["iterations"] == [batch_iters[i]]


def test_masked_lockstep_equals_compaction(pairs) -> None:
    prev, nxt, _ = pairs
    masked = _eager(compact=False, sync_every=4)
    compact = _eager(compact=True)
    np.testing.assert_allclose(masked(prev, nxt), compact(prev, nxt), atol=1e-6, rtol=0)
    assert masked.last_stats["iterations"] == compact.last_stats["iterations"]
    assert masked.last_stats["batch_iterations"] >= compact.last_stats["batch_iterations"]


def test_initial_flow_matches_cv2_use_initial_flow() -> None:
    prev, nxt, truth = moved_pair(48, 56, 1.7, -1.2, seed=4)
    params = dict(nscales=2, warps=1, median_filtering=1)
    init = np.ascontiguousarray(truth * np.float32(0.9))
    ours = _eager(**params).compute(prev, nxt, initial_flow=init)
    algo = cv2.optflow.DualTVL1OpticalFlow_create(nscales=2, warps=1, medianFiltering=1,
                                                  useInitialFlow=True)
    ref = np.moveaxis(algo.calc(prev, nxt, np.ascontiguousarray(np.moveaxis(init, 0, -1))), -1, 0)
    without = _eager(**params)(prev, nxt)
    assert np.abs(ours - ref).max() < 1e-4
    assert np.abs(without - ref).max() > 1e-3  # the initial flow did change the result


def test_small_images_truncate_the_pyramid_per_call() -> None:
    engine = _eager()
    prev, nxt, truth = moved_pair(30, 30, 0.8, 0.4, seed=5)
    small = engine(prev, nxt)
    assert engine.last_stats["levels"] == 3  # 30 -> 24 -> 19 -> (15 < 16, dropped)
    ref = create_engine("tvl1-opencv", "cpu")(prev, nxt)
    assert np.abs(small - ref).mean() < 1e-3
    prev, nxt, _ = moved_pair(64, 64, 0.8, 0.4, seed=5)
    engine(prev, nxt)
    assert engine.last_stats["levels"] == 5  # unlike cv2, the truncation does not persist


def test_opencv24_pyramid_recovers_motion() -> None:
    prev, nxt, truth = moved_pair(64, 80, 1.6, -0.9, seed=6)
    engine = _eager(pyramid="opencv2.4")
    flow = engine(prev, nxt)
    assert engine.last_stats["levels"] == 3  # 64x80 -> 32x40 -> 16x20 (-> 8x10 dropped)
    assert epe(flow, truth) < 0.05


def test_iteration_statistics_are_consistent(pairs) -> None:
    prev, nxt, _ = pairs
    engine = _eager()
    engine(prev[:2], nxt[:2])
    stats = engine.last_stats
    assert len(stats["iterations"]) == 2
    pairs_stats = zip(stats["fre_iterations"], stats["iterations"], strict=True)
    assert all(0 < f < i <= 7500 for f, i in pairs_stats)
    assert stats["batch_iterations"] >= max(stats["iterations"])


@pytest.mark.slow
@pytest.mark.skipif(not _compile_available("cpu"), reason="torch.compile needs a C++ compiler")
def test_compiled_path_agrees_with_eager(monkeypatch) -> None:
    """The torch.compile path (CPU without the C kernel; what CUDA compiles too). Its warm-up takes
    ~15-40 s on a 2-core CPU, hence the slow marker."""
    monkeypatch.setenv("FLOWKIT_TVL1_NATIVE", "0")
    tvl1_native.forget()
    prev, nxt, truth = pair_batch(3, 48, 48, seed=8, noise=1.0)
    compiled = TVL1Engine("cpu", compile=True)
    flow = compiled(prev, nxt)
    tvl1_native.forget()
    assert compiled.kernel == "compiled"  # the compiled path really ran (no silent fallback)
    eager = _eager()(prev, nxt)
    assert np.abs(flow - eager).mean() < 5e-3
    assert epe(flow, truth) <= 1.05 * epe(eager, truth)


@pytest.mark.gpu
@gpu
def test_cuda_matches_cpu(pairs) -> None:
    prev, nxt, truth = pairs
    cpu = _eager()(prev, nxt)
    cuda = TVL1Engine("cuda:0", compile=False)(prev, nxt)
    assert np.abs(cuda - cpu).mean() < 5e-3
    assert epe(cuda, truth) <= 1.05 * epe(cpu, truth)
    one = TVL1Engine("cuda:0", compile=False, **ONE_LEVEL)(prev, nxt)
    np.testing.assert_allclose(one, _eager(**ONE_LEVEL)(prev, nxt), atol=1e-4)


@pytest.mark.gpu
@gpu
def test_cuda_batch_equals_single_runs(pairs) -> None:
    prev, nxt, _ = pairs
    engine = TVL1Engine("cuda:0", compile=False)
    batch = engine(prev, nxt)
    for i in range(prev.shape[0]):
        np.testing.assert_allclose(batch[i], engine(prev[i], nxt[i]), atol=1e-5, rtol=0)
