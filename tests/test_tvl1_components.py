"""Each TV-L1 building block against the OpenCV function it reproduces (cv2 5.0 numerics)."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
import torch
from flowdata import texture

from flowkit.errors import ConfigError
from flowkit.flow import tvl1_cpu
from flowkit.flow import tvl1_ops as ops
from flowkit.flow.tvl1 import TVL1Params

SIZES = [(64, 64), (61, 83), (37, 50)]


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None, None]


@pytest.mark.parametrize("h,w", SIZES)
def test_pyramid_downscale_matches_cv2_resize(h: int, w: int) -> None:
    img = texture(h, w, seed=1)[:h, :w]
    ours = ops.resize_by_factor(_t(img), 0.8)[0, 0].numpy()
    ref = cv2.resize(img, None, fx=0.8, fy=0.8, interpolation=cv2.INTER_LINEAR)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("h,w", SIZES)
def test_flow_upsampling_matches_cv2_resize_dsize(h: int, w: int) -> None:
    small = texture(h, w, seed=2)[:h, :w]
    size = (round(h / 0.8), round(w / 0.8))
    ours = ops.resize_to(_t(small), size)[0, 0].numpy()
    ref = cv2.resize(small, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(ours, ref, atol=2e-3, rtol=0)


@pytest.mark.parametrize("h,w", [(64, 64), (61, 83)])
def test_pyr_down_matches_cv2(h: int, w: int) -> None:
    img = texture(h, w, seed=3)[:h, :w]
    np.testing.assert_allclose(ops.pyr_down(_t(img))[0, 0].numpy(), cv2.pyrDown(img), atol=1e-4)


def test_centered_gradient_is_exact() -> None:
    img = texture(20, 23, seed=4)[:20, :23]
    dx, dy = (g[0, 0].numpy() for g in ops.centered_gradient(_t(img)))
    xp = np.pad(img, 1, mode="edge")
    np.testing.assert_array_equal(dx, np.float32(0.5) * (xp[1:-1, 2:] - xp[1:-1, :-2]))
    np.testing.assert_array_equal(dy, np.float32(0.5) * (xp[2:, 1:-1] - xp[:-2, 1:-1]))
    # one-sided at the border, but still halved
    assert dx[3, 0] == np.float32(0.5) * (img[3, 1] - img[3, 0])


@pytest.mark.parametrize("scale", [0.7, 3.0, 40.0])
def test_cubic_warp_matches_cv2_remap(scale: float) -> None:
    h, w = 48, 57
    img = texture(h, w, seed=5)[:h, :w]
    rng = np.random.default_rng(6)
    flow = (rng.standard_normal((2, h, w)) * scale).astype(np.float32)
    ours = ops.warp_cubic(_t(img), torch.from_numpy(flow)[None])[0, 0].numpy()
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    ref = cv2.remap(img, gx + flow[0], gy + flow[1], cv2.INTER_CUBIC,
                    borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    np.testing.assert_allclose(ours, ref, atol=1e-3, rtol=0)
    if scale == 40.0:
        assert (ours == 0).any()  # samples far outside read exact zeros


def test_cpu_warp_is_cv2_remap_of_every_plane() -> None:
    """The CPU warp (B, C planes) is cv2.remap itself, and the PyTorch gather agrees with it."""
    h, w = 40, 45
    rng = np.random.default_rng(12)
    src = np.stack([[texture(h, w, seed=s)[:h, :w] for s in (c, c + 3, c + 6)] for c in (0, 1)])
    flow = (rng.standard_normal((2, 2, h, w)) * 6).astype(np.float32)
    ours = tvl1_cpu.warp_cubic_cv2(torch.from_numpy(src), torch.from_numpy(flow)).numpy()
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    for b in range(2):
        for c in range(3):
            ref = cv2.remap(src[b, c], gx + flow[b, 0], gy + flow[b, 1], cv2.INTER_CUBIC,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            np.testing.assert_array_equal(ours[b, c], ref)
    gather = ops.warp_cubic(torch.from_numpy(src), torch.from_numpy(flow)).numpy()
    np.testing.assert_allclose(gather, ours, atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="float32 CPU"):
        tvl1_cpu.warp_cubic_cv2(torch.from_numpy(src).double(), torch.from_numpy(flow))


@pytest.mark.parametrize("k", [3, 5])
def test_cpu_median_equals_torch_median(k: int) -> None:
    gen = torch.Generator().manual_seed(13)
    field = torch.randn(3, 2, 29, 37, generator=gen)
    field[1, 0, 4:10, 6:9] = 0.5  # ties
    assert torch.equal(tvl1_cpu.median_cv2(field, k), ops.median_filter(field, k))


def test_fast_dual_update_matches_dual_update() -> None:
    gen = torch.Generator().manual_seed(14)
    u = torch.randn(3, 2, 23, 31, generator=gen) * 3
    p = torch.randn(3, 2, 2, 23, 31, generator=gen) * 0.2
    p[:, :, 0, :, -1] = 0
    p[:, :, 1, -1, :] = 0
    fast, ref = ops.dual_update_fast(u, p, 0.25 / 0.3), ops.dual_update(u, p, 0.25 / 0.3)
    np.testing.assert_allclose(fast.numpy(), ref.numpy(), rtol=3e-7, atol=0)
    assert (fast[:, :, 0, :, -1] == 0).all() and (fast[:, :, 1, -1, :] == 0).all()


def test_cubic_warp_checks_shapes() -> None:
    with pytest.raises(ValueError, match="flow must be"):
        ops.warp_cubic(torch.zeros(1, 3, 8, 8), torch.zeros(1, 2, 8, 9))


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("median", [ops.median_filter, ops.median_filter_network])
def test_median_matches_cv2_median_blur_exactly(k: int, median) -> None:
    rng = np.random.default_rng(7)
    field = rng.standard_normal((2, 33, 41)).astype(np.float32)
    field[0, 5:9, 5:9] = 1.0  # ties must not matter
    ours = median(torch.from_numpy(field)[None], k)[0].numpy()
    for c in range(2):
        np.testing.assert_array_equal(ours[c], cv2.medianBlur(field[c], k))


@pytest.mark.parametrize("n", [5, 9, 25])
def test_selection_network_gives_the_median(n: int) -> None:
    program, out = ops._select_ops(n, n // 2)
    rng = np.random.default_rng(n)
    for _ in range(50):
        vals = list(rng.integers(0, 6, n).astype(float))  # many ties
        for kind, a, b in program:
            vals.append(min(vals[a], vals[b]) if kind == "min" else max(vals[a], vals[b]))
        assert vals[out] == np.median(vals[:n])


def test_divergence_is_negative_adjoint_of_forward_gradient() -> None:
    gen = torch.Generator().manual_seed(8)
    u = torch.randn(1, 1, 13, 17, generator=gen, dtype=torch.float64)
    p = torch.randn(1, 1, 2, 13, 17, generator=gen, dtype=torch.float64)
    p[..., 0, :, -1] = 0  # the iteration keeps these zero (ux = 0 on the last column, uy on the
    p[..., 1, -1, :] = 0  # last row); with them zero, div is exactly -grad^T
    ux, uy = ops.forward_gradient(u)
    lhs = (ux * p[:, :, 0] + uy * p[:, :, 1]).sum()
    rhs = -(u * ops.divergence(p)).sum()
    assert torch.allclose(lhs, rhs, rtol=1e-12)
    assert (ux[..., -1] == 0).all() and (uy[..., -1, :] == 0).all()


def test_iteration_matches_numpy_reference_step() -> None:
    """One iteration against a direct NumPy transcription of the spec's three cases."""
    rng = np.random.default_rng(9)
    h, w = 9, 11
    u = rng.standard_normal((2, h, w)).astype(np.float32)
    p = (rng.standard_normal((2, 2, h, w)) * 0.1).astype(np.float32)
    p[:, 0, :, -1] = 0
    p[:, 1, -1, :] = 0
    wx, wy, rho_c = (rng.standard_normal((h, w)).astype(np.float32) for _ in range(3))
    wx[0, :3] = wy[0, :3] = 0.0  # the flat-gradient case
    grad = wx * wx + wy * wy
    l_t, theta, taut = np.float32(0.045), np.float32(0.3), np.float32(0.25 / 0.3)
    rho = rho_c + (wx * u[0] + wy * u[1])
    coef = np.where(rho < -l_t * grad, l_t,
                    np.where(rho > l_t * grad, -l_t,
                             np.where(grad > ops.FLT_EPSILON, -rho / np.maximum(grad, 1e-30), 0)))
    v = u + np.stack([coef * wx, coef * wy])
    div = p[:, 0] - np.pad(p[:, 0], ((0, 0), (0, 0), (1, 0)))[..., :-1]
    div += p[:, 1] - np.pad(p[:, 1], ((0, 0), (1, 0), (0, 0)))[:, :-1]
    u_new = v + theta * div
    t = [torch.from_numpy(x)[None] for x in (u, p, wx, wy, grad, rho_c)]
    got_u, got_p, err = ops.tvl1_iteration(*t, (float(l_t), float(theta), float(taut), 0.0))
    np.testing.assert_allclose(got_u[0].numpy(), u_new, atol=1e-6)
    assert err[0].item() == pytest.approx(float(((u_new - u) ** 2).sum()), rel=1e-5)
    ux = np.pad(np.diff(u_new, axis=2), ((0, 0), (0, 0), (0, 1)))
    uy = np.pad(np.diff(u_new, axis=1), ((0, 0), (0, 1), (0, 0)))
    norm = 1 + taut * np.hypot(ux, uy)
    np.testing.assert_allclose(got_p[0].numpy(), (p + taut * np.stack([ux, uy], 1)) / norm[:, None],
                               atol=1e-6)
    assert (got_p[0, :, 0, :, -1] == 0).all()  # p11, p21 stay zero on the last column


def test_params_defaults_bounds_and_help() -> None:
    p = TVL1Params()
    assert (p.tau, p.lambda_, p.theta, p.nscales, p.warps) == (0.25, 0.15, 0.3, 5, 5)
    assert p.epsilon == 0.01
    assert (p.inner_iterations, p.outer_iterations, p.scale_step, p.gamma) == (30, 10, 0.8, 0.0)
    assert p.median_filtering == 5 and p.pyramid == "opencv"
    assert all(f.metadata.get("help") for f in dataclasses.fields(TVL1Params))
    for bad in ({"tau": 0.0}, {"nscales": 0}, {"scale_step": 1.0}, {"median_filtering": 7},
                {"pyramid": "pyrdown"}, {"epsilon": -1.0}):
        with pytest.raises(ConfigError):
            TVL1Params(**bad)
    legacy = TVL1Params(pyramid="opencv2.4").effective()
    assert (legacy.inner_iterations * legacy.outer_iterations, legacy.median_filtering) == (300, 1)
