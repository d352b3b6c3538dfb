"""The numerics of OpenCV's CUDA Dual TV-L1 (cv2.cuda.OpticalFlowDual_TVL1), as pure tensor kernels.

Flow datasets made with denseflow / dense_flow (TSN, mmaction2) come from that class, which
differs from the CPU class in its resize geometry, warp kernel, median filter and stopping schedule
(section 5 of the project's tvl1-algorithm.md). These functions work on batches on any device.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


def _check_4d(x: torch.Tensor, name: str) -> None:
    if x.ndim != 4:
        raise ValueError(f"{name} must be (B, C, H, W), got shape {tuple(x.shape)}")


def _taps_top_left(n_out: int, n_in: int, step: float, device: torch.device):
    """Source index pairs and weights of cuda::resize INTER_LINEAR along one axis."""
    # Float32 throughout, as the kernel computes s = d * step in float.
    s = torch.arange(n_out, dtype=torch.float32, device=device) * np.float32(step)
    x1 = torch.floor(s).clamp(0, n_in - 1)
    x2 = (x1 + 1).clamp(max=n_in - 1)
    return x1.long(), x2.long(), (x1 + 1) - s, s - x1


def resize_top_left(x: torch.Tensor, size: tuple[int, int],
                    step: tuple[float, float]) -> torch.Tensor:
    """cv::cuda::resize INTER_LINEAR: top-left aligned, source position d*step, no half-pixel shift.

    x (B, C, H, W) float32; size (h, w) of the output; step (step_y, step_x) in source pixels.
    """
    _check_4d(x, "x")
    h_in, w_in = x.shape[-2:]
    y1, y2, wy1, wy2 = _taps_top_left(size[0], h_in, step[0], x.device)
    x1, x2, wx1, wx2 = _taps_top_left(size[1], w_in, step[1], x.device)
    rows1, rows2 = x[..., y1, :], x[..., y2, :]
    wy1, wy2 = wy1.view(-1, 1), wy2.view(-1, 1)
    # The kernel's order: four products of 2-D weights, summed (y1,x1), (y1,x2), (y2,x1), (y2,x2).
    out = rows1[..., x1] * (wx1 * wy1)
    out = out + rows1[..., x2] * (wx2 * wy1)
    out = out + rows2[..., x1] * (wx1 * wy2)
    return out + rows2[..., x2] * (wx2 * wy2)


def downscale_top_left(x: torch.Tensor, factor: float) -> torch.Tensor:
    """cuda::resize(fx=fy=factor): output size round(n*factor) like the CPU class, step 1/factor."""
    _check_4d(x, "x")
    size = (int(round(x.shape[-2] * factor)), int(round(x.shape[-1] * factor)))
    step = float(np.float32(1.0 / factor))
    return resize_top_left(x, size, (step, step))


def upscale_top_left(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """cuda::resize(dsize=size): top-left aligned with the size ratio n_in/n_out as step."""
    _check_4d(x, "x")
    steps = (float(np.float32(x.shape[-2] / size[0])), float(np.float32(x.shape[-1] / size[1])))
    return resize_top_left(x, size, steps)


def keys_half(d: torch.Tensor) -> torch.Tensor:
    """Keys cubic weight with A = -0.5 at signed distance d (zero from |d| >= 2)."""
    a = d.abs()
    inner = a * a * (1.5 * a - 2.5) + 1.0
    outer = a * (a * (-0.5 * a + 2.5) - 4.0) + 2.0
    return torch.where(a <= 1.0, inner, torch.where(a < 2.0, outer, torch.zeros_like(a)))


def warp_bicubic_clamped(src: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample src at (x + flow_x, y + flow_y) like the CUDA TV-L1 warpBackward kernel.

    Keys A=-0.5 at the exact float position, taps ceil(X-2)..floor(X+2) read with clamped (edge
    replicating) coordinates, result divided by the sum of the weights. src (B, C, H, W), flow
    (B, 2, H, W).
    """
    _check_4d(src, "src")
    b, c, h, w = src.shape
    if flow.shape != (b, 2, h, w):
        raise ValueError(f"flow must be {(b, 2, h, w)}, got {tuple(flow.shape)}")
    xs = torch.arange(w, dtype=torch.float32, device=src.device).view(1, 1, w) + flow[:, 0]
    ys = torch.arange(h, dtype=torch.float32, device=src.device).view(1, h, 1) + flow[:, 1]
    # ceil(X-2) starts the support; its 5th tap (ceil(X-2)+4) is always >= 2 away, weight 0.
    x0, y0 = torch.ceil(xs - 2.0), torch.ceil(ys - 2.0)
    wx = [keys_half(xs - (x0 + k)) for k in range(4)]
    wy = [keys_half(ys - (y0 + k)) for k in range(4)]
    ix = [(x0 + k).clamp(0, w - 1).long() for k in range(4)]
    iy = [(y0 + k).clamp(0, h - 1).long() * w for k in range(4)]
    flat = src.reshape(b, c, h * w)
    total = torch.zeros_like(src)
    wsum = torch.zeros_like(xs)
    for ky in range(4):
        for kx in range(4):
            weight = wx[kx] * wy[ky]
            idx = (iy[ky] + ix[kx]).reshape(b, 1, h * w).expand(b, c, h * w)
            total = total + weight.unsqueeze(1) * torch.gather(flat, 2, idx).view(b, c, h, w)
            wsum = wsum + weight
    return total * (1.0 / wsum).unsqueeze(1)


def flow_update_error(u_new: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Per-pair sum of (du1^2 + du2^2) in float64 (cuda::sum of the float32 per-pixel diff).

    The illumination field (channel 2, with gamma) is left out, as in the CUDA class.
    """
    d1, d2 = u_new[:, 0] - u[:, 0], u_new[:, 1] - u[:, 1]
    return (d1 * d1 + d2 * d2).double().sum(dim=(1, 2))


def error_schedule(n: int, prev: torch.Tensor, scaled_eps: float, epsilon: float,
                   measure: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """cv::cuda's per-iteration error rule for every pair: returns (err, new prevError).

    At 0-based iteration n the error is measured only when epsilon > 0, n is odd and
    prevError < scaled_eps; otherwise err = +inf and prevError drops by scaled_eps (the class
    assumes the error falls by at least that much per iteration). prev (B,) float64.
    """
    inf = torch.full_like(prev, float("inf"))
    if epsilon <= 0 or n % 2 == 0:
        return inf, prev - scaled_eps
    calc = prev < scaled_eps
    err = torch.where(calc, measure(), inf)
    return err, torch.where(calc, err, prev - scaled_eps)
