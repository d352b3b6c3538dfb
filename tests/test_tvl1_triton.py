"""The fused Triton TV-L1 kernels against the eager oracle (tvl1_ops), run by Triton's interpreter.

CPU tensors go through an interpreted copy of the kernels (tvl1_triton.kernels_for), so these
tests need no GPU and no TRITON_INTERPRET in the environment. Sizes are odd and small (the
interpreter runs each program in NumPy); small tiles put tile seams inside the images.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from flowdata import moved_pair

from flowkit.flow import tvl1_ops as ops
from flowkit.flow import tvl1_triton as tt

CONSTS = dict(l_t=0.15 * 0.3, theta=0.3, taut=0.25 / 0.3)


@pytest.fixture
def tile(monkeypatch: pytest.MonkeyPatch):
    """Set the interpreted kernels' tile size for one test (small tiles: seams inside images)."""
    return lambda rows, cols: monkeypatch.setattr(tt, "INTERPRETER_TILE", (rows, cols))


def reference_iterations(state, data, n, active, err, *, k, inner, max_iters, median, eps, l_t,
                         theta, taut) -> None:
    """tvl1_triton.tvl1_iterations written with the eager oracle, slot by slot (cv2's loop)."""
    h, w = state.shape[-2:]
    for _ in range(k):
        for b in range(state.shape[1]):
            if not active[b]:
                continue
            nb = int(n[b])
            cur = state[nb % 2, b]
            u, p = cur[None, :2], cur[2:].reshape(1, 2, 2, h, w)
            if median > 1 and nb % inner == 0:
                u = ops.median_filter(u, median)
            d = data[b : b + 1]
            un, pn, e = ops.tvl1_iteration(u, p, d[:, 0], d[:, 1], d[:, 2], d[:, 3],
                                           (l_t, theta, taut, 0.0))
            state[(nb + 1) % 2, b] = torch.cat([un[0], pn[0].reshape(4, h, w)])
            err[b], n[b] = e[0], nb + 1
            active[b] = int(bool(e[0] > eps) and nb + 1 < max_iters)


def _random_slots(bsz: int, h: int, w: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    state = torch.randn(2, bsz, 6, h, w, generator=gen)
    state[:, :, 2:] *= 0.2
    data = torch.randn(bsz, 4, h, w, generator=gen) * 4
    data[:, :2, :3, :5] = 0.0  # the flat-gradient case (grad <= FLT_EPSILON)
    data[:, 2] = data[:, 0] * data[:, 0] + data[:, 1] * data[:, 1]
    return state, data


def _run_both(state, data, n, active, **kw):
    """(kernel result, reference result), each as (state, n, active, err), from equal inputs."""
    ref = [state.clone(), data, n.clone(), active.clone(), torch.zeros(len(n))]
    reference_iterations(*ref, **kw)
    got = [state.clone(), data, n.clone(), active.clone(), torch.zeros(len(n))]
    tt.tvl1_iterations(*got, **kw)
    return (got[0], got[2], got[3], got[4]), (ref[0], ref[2], ref[3], ref[4])


def test_iterations_mixed_slots_match_oracle_and_keep_stopped_state(tile) -> None:
    """Slots at different phases: a median at the start and inside the call, a stopped slot, a
    budget stop and a converged slot; one launch per iteration, stopped state untouched."""
    tile(64, 64)  # one program per slot: the interpreter is slow
    state, data = _random_slots(4, 37, 53, seed=1)
    state[:, 3] = 0.0  # slot 3: zero data and state -> err == 0 -> stops after one iteration
    data[3] = 0.0
    n = torch.tensor([0, 3, 1, 0], dtype=torch.int32)
    active = torch.tensor([1, 1, 0, 1], dtype=torch.int32)
    kw = dict(k=3, inner=2, max_iters=4, median=5, eps=1e-3, **CONSTS)
    with tt.count_launches() as counter:
        got, ref = _run_both(state, data, n, active, **kw)
    assert counter.launches == 3 and counter.by_kernel == {"iteration_kernel": 3}
    assert got[1].tolist() == ref[1].tolist() == [3, 4, 1, 1]
    assert got[2].tolist() == ref[2].tolist() == [1, 0, 0, 0]
    np.testing.assert_allclose(got[0].numpy(), ref[0].numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(got[3][[0, 1, 3]].numpy(), ref[3][[0, 1, 3]].numpy(), rtol=1e-5)
    assert torch.equal(got[0][:, 2], state[:, 2])  # the stopped slot: both buffers untouched
    assert got[3][3] == 0.0


def test_iterations_across_tile_seams_match_oracle(tile, monkeypatch) -> None:
    """Several tiles per slot: halo recomputation, 3x3 medians, the residual partials summed in
    chunks (3 chunks of 2 tiles)."""
    tile(16, 32)
    monkeypatch.setattr(tt, "FINALISE_CHUNK", 2)
    state, data = _random_slots(2, 37, 53, seed=2)
    n = torch.tensor([2, 5], dtype=torch.int32)
    active = torch.ones(2, dtype=torch.int32)
    kw = dict(k=2, inner=3, max_iters=300, median=3, eps=1e-3, **CONSTS)
    got, ref = _run_both(state, data, n, active, **kw)
    assert got[1].tolist() == ref[1].tolist() == [4, 7]
    np.testing.assert_allclose(got[0].numpy(), ref[0].numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(got[3].numpy(), ref[3].numpy(), rtol=1e-5)


def test_iterations_without_median_match_oracle_and_batch_equals_single(tile) -> None:
    tile(32, 64)
    state, data = _random_slots(2, 19, 23, seed=7)
    n, active = torch.tensor([0, 30], dtype=torch.int32), torch.ones(2, dtype=torch.int32)
    got, ref = _run_both(state, data, n, active, k=2, inner=30, max_iters=300, median=1,
                         eps=1e-3, **CONSTS)
    assert got[1].tolist() == ref[1].tolist() == [2, 32]
    np.testing.assert_allclose(got[0].numpy(), ref[0].numpy(), rtol=0, atol=1e-5)
    # batch == single, bit for bit: a slot's result does not depend on the other slots
    alone = [state[:, 1:].clone(), data[1:].contiguous(), n[1:].clone(), active[1:].clone(),
             torch.zeros(1)]
    tt.tvl1_iterations(*alone, k=2, inner=30, max_iters=300, median=1, eps=1e-3, **CONSTS)
    assert torch.equal(alone[0][:, 0], got[0][:, 1]) and alone[4][0] == got[3][1]


def _real_data(h: int, w: int, motions: list[tuple[float, float]]):
    """(i0, src, data at u = 0) for flowdata pairs, the data made by the eager oracle."""
    frames = [moved_pair(h, w, dx, dy, angle=1.0, seed=s)[:2] for s, (dx, dy) in
              enumerate(motions)]
    i0 = torch.from_numpy(np.stack([f[0] for f in frames])).float()
    i1 = torch.from_numpy(np.stack([f[1] for f in frames])).float()[:, None]
    src = torch.cat([i1, *ops.centered_gradient(i1)], dim=1)
    warped = ops.warp_cubic(src, torch.zeros(len(motions), 2, h, w))
    wx, wy = warped[:, 1], warped[:, 2]
    return i0, src, torch.stack([wx, wy, wx * wx + wy * wy, warped[:, 0] - i0], dim=1)


def test_a_slot_converging_mid_call_keeps_the_state_of_its_last_iteration(tile) -> None:
    """eps between slot 0's 2nd and 3rd errors: slot 0 stops after iteration 3 of 4 (cv2: the
    error of iteration i decides iteration i + 1) while slot 1, moving more, runs on."""
    tile(32, 64)
    _, _, data = _real_data(19, 23, [(0.3, -0.2), (1.5, 1.0)])
    start = (torch.zeros(2, 2, 6, 19, 23), data, torch.zeros(2, dtype=torch.int32),
             torch.ones(2, dtype=torch.int32))
    kw = dict(inner=30, max_iters=300, median=1, **CONSTS)
    trace = [start[0].clone(), data, start[2].clone(), start[3].clone(), torch.zeros(2)]
    errs, states = [], []
    for _ in range(4):
        reference_iterations(*trace, k=1, eps=0.0, **kw)
        errs.append(trace[4].clone())
        states.append(trace[0][int(trace[2][0]) % 2, 0].clone())
    eps = float((errs[1][0] + errs[2][0]) / 2)
    assert errs[2][0] < eps < errs[1][0] < errs[0][0]  # the premise
    assert min(e[1] for e in errs) > eps
    got, ref = _run_both(*start, k=4, eps=eps, **kw)
    assert got[1].tolist() == ref[1].tolist() == [3, 4]
    assert got[2].tolist() == ref[2].tolist() == [0, 1]
    np.testing.assert_allclose(got[0].numpy(), ref[0].numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(got[0][1, 0].numpy(), states[2].numpy(), rtol=0, atol=1e-5)


def test_warp_data_and_iterations_on_a_real_pair_match_the_oracle(tile) -> None:
    """flowdata pair: the fused warp gives tvl1.py's (i1wx, i1wy, grad, rho_c), then iterations."""
    tile(64, 64)
    i0, src, _ = _real_data(37, 53, [(1.3, -0.6), (-0.4, 2.2)])
    u = torch.randn(2, 2, 37, 53, generator=torch.Generator().manual_seed(3)) * 1.5
    data = tt.tvl1_warp_data(src, u, i0)
    warped = ops.warp_cubic(src, u)
    wx, wy = warped[:, 1], warped[:, 2]
    rho_c = warped[:, 0] - wx * u[:, 0] - wy * u[:, 1] - i0
    expect = torch.stack([wx, wy, wx * wx + wy * wy, rho_c], dim=1)
    np.testing.assert_allclose(data.numpy(), expect.numpy(), rtol=0, atol=1e-3)
    state = torch.zeros(2, 2, 6, 37, 53)
    state[0, :, :2] = u
    n, active = torch.zeros(2, dtype=torch.int32), torch.ones(2, dtype=torch.int32)
    eps = float(np.float32(0.01**2 * 37 * 53))
    got, ref = _run_both(state, data, n, active, k=4, inner=30, max_iters=300, median=5,
                         eps=eps, **CONSTS)
    assert got[1].tolist() == ref[1].tolist() == [4, 4] and got[2].tolist() == ref[2].tolist()
    np.testing.assert_allclose(got[0].numpy(), ref[0].numpy(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("k", [3, 5])
def test_median_filter_is_exact(tile, k: int) -> None:
    tile(16, 32)
    field = torch.randn(2, 2, 37, 53, generator=torch.Generator().manual_seed(k))
    field[0, 1, 10:16, 30:36] = 0.25  # ties across a tile seam
    assert torch.equal(tt.median_filter(field, k), ops.median_filter(field, k))


@pytest.mark.parametrize("scale", [0.7, 40.0])
def test_warp_cubic_matches_oracle(tile, scale: float) -> None:
    tile(16, 32)
    gen = torch.Generator().manual_seed(4)
    src = torch.rand(2, 3, 37, 53, generator=gen) * 255
    flow = torch.randn(2, 2, 37, 53, generator=gen) * scale
    ours = tt.warp_cubic(src, flow)
    np.testing.assert_allclose(ours.numpy(), ops.warp_cubic(src, flow).numpy(), rtol=0, atol=1e-3)
    if scale == 40.0:
        assert (ours == 0).any()  # far outside: every tap reads the zero border


def test_iteration_graph_runs_the_same_iterations_off_cuda(tile) -> None:
    """Off CUDA an IterationGraph call is tvl1_iterations (same result, k launches)."""
    tile(32, 64)
    state, data = _random_slots(1, 19, 23, seed=8)
    kw = dict(inner=30, max_iters=300, median=1, eps=1e-3, **CONSTS)
    one = [state.clone(), data, torch.zeros(1, dtype=torch.int32),
           torch.ones(1, dtype=torch.int32), torch.zeros(1)]
    two = [t.clone() for t in one]
    tt._iteration_launch(*one, **kw, dry_run=True)  # the pre-capture launch changes nothing
    assert all(torch.equal(a, b) for a, b in zip(one, two, strict=True))
    run = tt.IterationGraph(*one, k=2, **kw)
    with tt.count_launches() as counter:
        run()
    tt.tvl1_iterations(*two, k=2, **kw)
    assert counter.by_kernel == {"iteration_kernel": 2}
    assert all(torch.equal(a, b) for a, b in zip(one, two, strict=True))


def test_argument_checks() -> None:
    state, data = _random_slots(2, 8, 9, seed=5)
    n = active = torch.ones(2, dtype=torch.int32)
    kw = dict(k=1, inner=30, max_iters=300, median=5, eps=1.0, **CONSTS)
    with pytest.raises(ValueError, match="data must be"):
        tt.tvl1_iterations(state, data[:, :3], n, active, torch.zeros(2), **kw)
    with pytest.raises(ValueError, match="n must be"):
        tt.tvl1_iterations(state, data, n.long(), active, torch.zeros(2), **kw)
    with pytest.raises(ValueError, match="median"):
        tt.median_filter(state[0], 7)
    with pytest.raises(ValueError, match="flow must be"):
        tt.warp_cubic(data, data[:, :2, :-1])


def test_bytes_model_meets_the_64_byte_goal() -> None:
    """Fused iteration <= 64 B/px/it at every level of a 340x256 pyramid (issue 9's goal)."""
    assert sum(tt.BYTES_PER_PIXEL["iteration"].values()) == 60
    for h, w in [(256, 340), (205, 272), (164, 218), (131, 174), (105, 139)]:
        model = tt.bytes_model(h, w)
        assert 60 < model["iteration"] <= 64
    assert tt.bytes_model(256, 340)["warp_data"] == 40


def _ptxas_spills(ptx: str, tmp_path) -> int:
    """Spill bytes that Triton's bundled ptxas reports for the kernel (sm_90a)."""
    import triton.backends.nvidia as nv

    src = tmp_path / "kernel.ptx"
    src.write_text(ptx)
    info = subprocess.run([str(Path(nv.__file__).parent / "bin" / "ptxas"), "-arch=sm_90a", "-v",
                           str(src), "-o", str(tmp_path / "kernel.cubin")],
                          capture_output=True, text=True, check=True).stderr
    return sum(int(x) for x in re.findall(r"(\d+) bytes spill (?:stores|loads)", info))


@pytest.mark.slow
def test_kernels_compile_for_sm90_without_fma(tmp_path: Path) -> None:
    """Compile every kernel to an sm_90 cubin (no GPU needed): FMA off, IEEE division, the
    acquire-release counter of the last-tile finalisation present."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from flowkit.flow import tvl1_triton_kernels as kern

    p, i, f = "*fp32", "i32", "fp32"
    signatures = {
        kern.iteration_kernel: (
            dict(state=p, data=p, n_ptr="*i32", active_ptr="*i32", err_ptr=p, part_ptr="*fp64",
                 arrive_ptr="*i32", B=i, H=i, W=i, tiles_w=i, n_tiles=i, inner=i, max_iters=i,
                 eps=f, l_t=f, theta=f, taut=f),
            dict(K=5, BH=tt.TILE[0], BW=tt.TILE[1], FIN=tt.FINALISE_CHUNK)),
        kern.warp_data_kernel: (dict(src=p, u=p, i0=p, data=p, H=i, W=i, tiles_w=i),
                                dict(BH=tt.TILE[0], BW=tt.TILE[1])),
        kern.median_kernel: (dict(src=p, dst=p, H=i, W=i, tiles_w=i),
                             dict(K=5, BH=tt.TILE[0], BW=tt.TILE[1])),
    }
    for fn, (sig, consts) in signatures.items():
        sig.update({name: "constexpr" for name in consts})
        compiled = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts),
                                  target=GPUTarget("cuda", 90, 32),
                                  options=dict(num_warps=tt.NUM_WARPS, enable_fp_fusion=False))
        ptx = compiled.asm["ptx"]
        assert compiled.asm["cubin"] and "fma.rn.f32" not in ptx
        if fn is kern.iteration_kernel:
            assert "div.rn.f32" in ptx and "div.full" not in ptx
            assert "atom.global.gpu.acq_rel.add" in ptx and "ld.volatile" in ptx
            assert ptx.count("min.f32") >= 6 * 101  # the 5x5 median network, at 3 positions
            assert _ptxas_spills(ptx, tmp_path) == 0  # one pixel per thread: no spilling


@pytest.mark.gpu
def test_cuda_kernels_match_the_oracle_on_the_gpu() -> None:
    """The compiled kernels on a CUDA device against the eager oracle on the same device."""
    state, data = _random_slots(6, 61, 83, seed=6)
    state, data = state.cuda(), data.cuda()
    n = torch.tensor([0, 1, 29, 7, 0, 299], dtype=torch.int32, device="cuda")
    active = torch.tensor([1, 1, 1, 0, 1, 1], dtype=torch.int32, device="cuda")
    kw = dict(k=12, inner=30, max_iters=300, median=5, eps=1e-3, **CONSTS)
    ref = [state.clone(), data, n.clone(), active.clone(), torch.zeros(6, device="cuda")]
    reference_iterations(*ref, **kw)
    got = [state.clone(), data, n.clone(), active.clone(), torch.zeros(6, device="cuda")]
    tt.tvl1_iterations(*got, **kw)
    assert torch.equal(got[2], ref[2]) and torch.equal(got[3], ref[3])
    torch.testing.assert_close(got[0], ref[0], rtol=0, atol=1e-4)
    graphed = [state.clone(), data, n.clone(), active.clone(), torch.zeros(6, device="cuda")]
    run = tt.IterationGraph(*graphed, **kw)
    assert torch.equal(graphed[0], state)  # recording runs nothing
    with tt.count_launches() as counter:
        run()
    assert counter.by_kernel == {"iteration_graph": 1}
    assert all(torch.equal(a, b) for a, b in zip(graphed, got, strict=True))
    src = torch.rand(2, 3, 61, 83, device="cuda") * 255
    flow = torch.randn(2, 2, 61, 83, device="cuda") * 3
    torch.testing.assert_close(tt.warp_cubic(src, flow), ops.warp_cubic(src, flow), rtol=0,
                               atol=1e-3)
    assert torch.equal(tt.median_filter(flow, 5), ops.median_filter(flow, 5))
