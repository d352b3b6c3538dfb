"""The continuous-batching TV-L1 scheduler: refilled slots give exactly the single-pair results,
executed work equals the required work, and launches/read-backs are as counted (CPU, no GPU)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from flowdata import pair_batch

from flowkit.flow import tvl1_cpu
from flowkit.flow.tvl1 import TVL1Engine
from flowkit.flow.tvl1_sched import reference_iterations

# Small loop so that every pool kind refills slots, crosses median boundaries (every 6
# iterations) and changes level within a few seconds on a 2-core CPU.
LOOP = dict(nscales=3, warps=2, inner_iterations=6, outer_iterations=4)
KINDS = {
    "compact": dict(compact=True, slots=2),
    "masked": dict(compact=False, slots=3, sync_every=4, backend="torch"),
    "fused-reference": dict(compact=False, slots=3, sync_every=5, backend="fused"),
}


def _engine(**kw) -> TVL1Engine:
    return TVL1Engine("cpu", compile=False, **LOOP, **kw)


@pytest.fixture(scope="module")
def pairs() -> tuple[np.ndarray, np.ndarray]:
    prev, nxt, _ = pair_batch(5, 40, 48, seed=21, noise=2.0)
    return prev, nxt


@pytest.fixture(scope="module")
def singles(pairs) -> list[tuple[np.ndarray, list[float]]]:
    prev, nxt = pairs
    out = []
    for i in range(prev.shape[0]):
        engine = _engine(slots=1)
        out.append((engine(prev[i], nxt[i]), engine.last_stats["iterations"]))
    return out


@pytest.fixture(scope="module")
def runs(pairs) -> dict[str, tuple[np.ndarray, dict, str]]:
    """Each pool kind on all pairs at once: (flow, last_stats, pool mode)."""
    out = {}
    for kind, kw in KINDS.items():
        engine = _engine(**kw)
        out[kind] = (engine(*pairs), engine.last_stats, engine._sched.mode)
    return out


@pytest.mark.parametrize("kind", list(KINDS))
def test_refilled_slots_equal_single_runs_bit_for_bit(pairs, singles, runs, kind: str) -> None:
    prev, _ = pairs
    flow, stats, mode = runs[kind]
    assert mode == kind.split("-")[0]
    for i, (single, iters) in enumerate(singles):
        np.testing.assert_array_equal(flow[i], single)
        assert [stats["iterations"][i]] == iters
    c = stats["counters"]
    required = sum(stats["iterations"])
    assert c["active_iterations"] == required  # every counted iteration belongs to a running task
    assert c["warped_pairs"] == prev.shape[0] * LOOP["nscales"] * LOOP["warps"]
    if kind == "compact":  # CPU pool: nothing computed for finished tasks
        assert c["slot_iterations"] == required
    else:  # fixed slots: one host call and one read-back per k iterations
        k = KINDS[kind]["sync_every"]
        assert c["pool_iterations"] == k * c["host_calls"]
        assert c["syncs"] == c["host_calls"]
        assert c["slot_iterations"] == 3 * c["pool_iterations"]


def test_streamed_calls_share_the_pools_and_keep_results(pairs, singles) -> None:
    prev, nxt = pairs
    engine = _engine(compact=False, slots=4, sync_every=3, backend="torch")
    first = engine.submit(prev[:2], nxt[:2])
    second = engine.submit(prev[2:], nxt[2:])
    single = engine.submit(prev[0], nxt[0])
    got = {}
    while len(got) < 3:
        got.update(engine.poll())
    assert engine.poll() == []
    np.testing.assert_array_equal(got[first], np.stack([s[0] for s in singles[:2]]))
    np.testing.assert_array_equal(got[second], np.stack([s[0] for s in singles[2:]]))
    np.testing.assert_array_equal(got[single], singles[0][0])


def test_reference_kernel_freezes_each_slot_at_its_own_stop() -> None:
    """The fused-kernel contract: slot b's state is in buffer n[b] % 2, stopped slots untouched."""
    gen = torch.Generator().manual_seed(3)
    bsz, h, w = 3, 12, 14
    state = torch.zeros(2, bsz, 6, h, w)
    state[0, :, :2] = torch.randn(bsz, 2, h, w, generator=gen)
    data = torch.randn(bsz, 4, h, w, generator=gen)
    data[:, 2] = data[:, 0] ** 2 + data[:, 1] ** 2
    n = torch.zeros(bsz, dtype=torch.int32)
    active = torch.tensor([1, 1, 0], dtype=torch.int32)  # slot 2 is empty
    err = torch.zeros(bsz)
    eps = [1e9, 0.0]  # slot 0 stops after its first iteration; slot 1 runs to max_iters
    kw = dict(inner=3, max_iters=7, median=3, l_t=0.045, theta=0.3, taut=0.25 / 0.3,
              median_fn=tvl1_cpu.median_cv2)
    reference_iterations(state, data, n, active, err, k=1, eps=eps[0], **kw)
    assert n.tolist() == [1, 1, 0] and active.tolist() == [0, 0, 0]
    frozen = state.clone()
    active[1] = 1
    reference_iterations(state, data, n, active, err, k=10, eps=eps[1], **kw)
    assert n.tolist() == [1, 7, 0] and active.tolist() == [0, 0, 0]
    assert torch.equal(state[:, 0], frozen[:, 0]) and torch.equal(state[:, 2], frozen[:, 2])
    # slot 1 ran 7 iterations with medians at n = 0, 3, 6, exactly like the step-by-step loop
    u, p = frozen[1, 1:2, :2], frozen[1, 1:2, 2:].reshape(1, 2, 2, h, w)
    from flowkit.flow import tvl1_ops as ops

    d = data[1:2]
    for i in range(1, 7):
        if i % 3 == 0:
            u = tvl1_cpu.median_cv2(u, 3)
        u, p, _ = ops.tvl1_iteration(u, p, d[:, 0], d[:, 1], d[:, 2], d[:, 3],
                                     (0.045, 0.3, 0.25 / 0.3, 0.0))
    assert torch.equal(state[1, 1, :2], u[0]) and torch.equal(state[1, 1, 2:], p[0].reshape(4, h, w))


def _gpu_model():
    path = Path(__file__).resolve().parents[1] / "bench" / "gpu_model.py"
    spec = importlib.util.spec_from_file_location("gpu_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_model_replay_reproduces_the_real_schedule(runs) -> None:
    """bench/gpu_model.py replays recorded stops through the same scheduler: its counts must be
    those of the real run (fused pool, torch oracle of the fused kernel)."""
    _, stats, _ = runs["fused-reference"]
    real, tasks = stats["counters"], stats["task_iterations"]
    gm = _gpu_model()
    shapes = gm.level_shapes(40, 48, LOOP["nscales"])
    sched = gm.replay(tasks, shapes, batch=5, slots=3, k=5, streamed=False, inner=6, outer=4,
                      warps=2)
    assert sched.counters.as_dict() == real
    assert sum(a for _, a in sched.launches) == real["active_iterations"]
    assert gm.lockstep_slot_iterations(tasks, 5) >= real["active_iterations"]


def test_fused_triton_kernels_in_the_scheduler_match_single_runs(monkeypatch) -> None:
    """With flowkit.flow.tvl1_triton present, its kernels (Triton interpreter on CPU) run the fused
    pools and give the single-pair results of the CPU engine."""
    triton_mod = pytest.importorskip("flowkit.flow.tvl1_triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    prev, nxt, _ = pair_batch(3, 32, 40, seed=22, noise=2.0)
    loop = dict(LOOP, nscales=2)
    engine = TVL1Engine("cpu", compile=False, compact=False, slots=2, sync_every=5,
                        backend="fused", **loop)
    flow = engine(prev, nxt)
    assert engine._sched.iterate is triton_mod.tvl1_iterations
    for i in range(3):
        single = TVL1Engine("cpu", compile=False, slots=1, **loop)
        np.testing.assert_allclose(flow[i], single(prev[i], nxt[i]), atol=1e-5, rtol=0)
        assert engine.last_stats["iterations"][i] == single.last_stats["iterations"][0]
