"""Pure tensor kernels of OpenCV's Dual TV-L1 (pyramid, gradient, cubic warp, median, iteration).

Written from the specification in the project's reference notes (tvl1-algorithm.md); every function
works on batches (B, C, H, W) of float32 tensors on any device and has no state.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

FLT_EPSILON = 1.1920929e-07
KEYS_A = -0.75  # cv::remap INTER_CUBIC (and PyTorch) use Keys' cubic with A = -0.75


def _check_4d(x: torch.Tensor, name: str) -> None:
    if x.ndim != 4:
        raise ValueError(f"{name} must be (B, C, H, W), got shape {tuple(x.shape)}")


def scaled_size(n: int, factor: float) -> int:
    """Output length of cv::resize with fx=factor: round-half-even of n*factor, like cvRound."""
    return int(round(n * factor))


def resize_by_factor(x: torch.Tensor, factor: float) -> torch.Tensor:
    """cv2.resize(fx=fy=factor, INTER_LINEAR): half-pixel bilinear, source step exactly 1/factor."""
    _check_4d(x, "x")
    h, w = scaled_size(x.shape[-2], factor), scaled_size(x.shape[-1], factor)
    # Explicit scales make aten step by 1/factor; the size ratio would be wrong at the borders.
    return torch.ops.aten.upsample_bilinear2d(x, [h, w], False, factor, factor)


def resize_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """cv2.resize(dsize=size) with INTER_LINEAR: half-pixel bilinear with the size ratio as step."""
    _check_4d(x, "x")
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def pyr_down(x: torch.Tensor) -> torch.Tensor:
    """cv2.pyrDown: 5-tap binomial blur with reflect-101 border, then every second sample."""
    _check_4d(x, "x")
    b, c, h, w = x.shape
    taps = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=x.dtype, device=x.device) / 16.0
    flat = x.reshape(b * c, 1, h, w)
    # torch "reflect" padding is OpenCV's BORDER_REFLECT_101; both sides need >= 3 pixels.
    rows = F.conv2d(F.pad(flat, (0, 0, 2, 2), mode="reflect"), taps.view(1, 1, 5, 1))
    out = F.conv2d(F.pad(rows[:, :, ::2], (2, 2, 0, 0), mode="reflect"), taps.view(1, 1, 1, 5))
    return out[..., ::2].reshape(b, c, (h + 1) // 2, (w + 1) // 2)


def centered_gradient(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """3-point centred derivatives (x, y); one-sided (still halved) at the borders."""
    _check_4d(x, "x")
    pad = F.pad(x, (1, 1, 1, 1), mode="replicate")
    dx = 0.5 * (pad[..., 1:-1, 2:] - pad[..., 1:-1, :-2])
    dy = 0.5 * (pad[..., 2:, 1:-1] - pad[..., :-2, 1:-1])
    return dx, dy


def _keys_weights(t: torch.Tensor) -> list[torch.Tensor]:
    """The four Keys cubic weights for taps -1, 0, +1, +2 at fractional offset t in [0, 1)."""
    a = KEYS_A
    t1, s = t + 1.0, 1.0 - t
    c0 = ((a * t1 - 5.0 * a) * t1 + 8.0 * a) * t1 - 4.0 * a
    c1 = ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0
    c2 = ((a + 2.0) * s - (a + 3.0)) * s * s + 1.0
    return [c0, c1, c2, 1.0 - c0 - c1 - c2]


def warp_cubic(src: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample src at (x + flow_x, y + flow_y) like cv2.remap(INTER_CUBIC, BORDER_CONSTANT 0).

    src (B, C, H, W), flow (B, 2, H, W); exact coordinates (OpenCV 5.0 behaviour, no 1/32 grid).
    """
    _check_4d(src, "src")
    b, c, h, w = src.shape
    if flow.shape != (b, 2, h, w):
        raise ValueError(f"flow must be {(b, 2, h, w)}, got {tuple(flow.shape)}")
    return warp_cubic_unchecked(src, flow)


def warp_cubic_unchecked(src: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """:func:`warp_cubic` without the shape checks (the form that gets compiled)."""
    b, c, h, w = src.shape
    xs = torch.arange(w, dtype=src.dtype, device=src.device).view(1, 1, w) + flow[:, 0]
    ys = torch.arange(h, dtype=src.dtype, device=src.device).view(1, h, 1) + flow[:, 1]
    fx, fy = torch.floor(xs), torch.floor(ys)
    wx, wy = _keys_weights(xs - fx), _keys_weights(ys - fy)
    # A 4-pixel zero frame plus clamped indices makes far-outside taps read zeros, as in cv2.
    pad = 4
    wp = w + 2 * pad
    padded = F.pad(src, (pad, pad, pad, pad)).reshape(b, c, -1)
    ix = fx.clamp(-3, w + 1).long() + (pad - 1)
    iy = fy.clamp(-3, h + 1).long() + (pad - 1)
    out = torch.zeros_like(src)
    for k1 in range(4):
        row = (iy + k1) * wp
        for k2 in range(4):
            idx = (row + ix + k2).reshape(b, 1, -1).expand(b, c, h * w)
            vals = torch.gather(padded, 2, idx).view(b, c, h, w)
            out = out + (wy[k1] * wx[k2]).unsqueeze(1) * vals
    return out


def median_filter(x: torch.Tensor, k: int) -> torch.Tensor:
    """Exact k x k median with replicate border, like cv2.medianBlur on float32 (k = 3 or 5)."""
    _check_4d(x, "x")
    b, c, h, w = x.shape
    r = k // 2
    pad = F.pad(x.reshape(b * c, 1, h, w), (r, r, r, r), mode="replicate")
    cols = F.unfold(pad, k)  # (B*C, k*k, H*W): an odd count, so the median is an element
    return cols.median(dim=1).values.view(b, c, h, w)


def _select_ops(n: int, rank: int) -> tuple[list[tuple[str, int, int]], int]:
    """Min/max program giving the rank-th smallest of n inputs (Batcher network, pruned).

    Returns ops (kind, a, b) over value ids (0..n-1 are inputs, op i creates id n+i) and the id of
    the result. Wires padded to a power of two hold +inf, which lets many comparators vanish.
    """
    size = 1 << (n - 1).bit_length()
    pairs: list[tuple[int, int]] = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    wires: list[int | None] = [*range(n), *([None] * (size - n))]  # None = +inf
    ops: list[tuple[str, int, int]] = []
    for lo, hi in pairs:
        a, b = wires[lo], wires[hi]
        if b is None:
            continue
        if a is None:
            wires[lo], wires[hi] = b, None
            continue
        ops += [("min", a, b), ("max", a, b)]
        wires[lo], wires[hi] = n + len(ops) - 2, n + len(ops) - 1
    return _prune(ops, n, wires[rank])


def _prune(ops: list[tuple[str, int, int]], n: int, out: int) -> tuple[list, int]:
    """Drop the ops that the value `out` does not depend on; renumber the survivors."""
    needed = {out}
    for i in range(len(ops) - 1, -1, -1):
        if n + i in needed:
            needed.update(ops[i][1:])
    remap = {i: i for i in range(n)}
    kept = []
    for i, (kind, a, b) in enumerate(ops):
        if n + i in needed:
            remap[n + i] = n + len(kept)
            kept.append((kind, remap[a], remap[b]))
    return kept, remap[out]


_MEDIAN_PROGRAMS = {k: _select_ops(k * k, (k * k) // 2) for k in (3, 5)}


def median_filter_network(x: torch.Tensor, k: int) -> torch.Tensor:
    """Same result as :func:`median_filter` via min/max over shifted views (fuses under compile)."""
    _check_4d(x, "x")
    r = k // 2
    return median_network_padded(F.pad(x, (r, r, r, r), mode="replicate"), k)


def median_network_padded(pad: torch.Tensor, k: int) -> torch.Tensor:
    """Median network on an already replicate-padded input (kept separate so it compiles to
    contiguous, vectorised loads instead of clamped gathers)."""
    h, w = pad.shape[-2] - (k - 1), pad.shape[-1] - (k - 1)
    vals = [pad[..., i : i + h, j : j + w] for i in range(k) for j in range(k)]
    ops, out = _MEDIAN_PROGRAMS[k]
    for kind, a, b in ops:
        op = torch.minimum if kind == "min" else torch.maximum
        vals.append(op(vals[a], vals[b]))
    return vals[out]


def divergence(p: torch.Tensor) -> torch.Tensor:
    """Backward-difference divergence of duals p (..., 2, H, W), zero outside on the low side."""
    px, py = p[..., 0, :, :], p[..., 1, :, :]
    dx = px - F.pad(px[..., :, :-1], (1, 0))
    dy = py - F.pad(py[..., :-1, :], (0, 0, 1, 0))
    return dx + dy


def forward_gradient(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward differences (x, y) of u (..., H, W); zero on the last column / row."""
    ux = F.pad(u[..., :, 1:] - u[..., :, :-1], (0, 1))
    uy = F.pad(u[..., 1:, :] - u[..., :-1, :], (0, 0, 0, 1))
    return ux, uy


def primal_update(
    u: torch.Tensor,
    p: torch.Tensor,
    i1wx: torch.Tensor,
    i1wy: torch.Tensor,
    grad: torch.Tensor,
    rho_c: torch.Tensor,
    consts: tuple[float, float, float, float],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Threshold step and primal update of one iteration; returns (u_new, err).

    u (B, C, H, W) with C = 2 (flow) or 3 (flow + illumination), p (B, C, 2, H, W), the warped data
    terms (B, H, W); consts = (lambda*theta, theta, tau/theta, gamma);
    err (B,) = sum of squared updates.
    """
    l_t, theta, _, gamma = consts
    rho = rho_c + (i1wx * u[:, 0] + i1wy * u[:, 1])
    if u.shape[1] == 3:
        rho = rho + gamma * u[:, 2]
    lg = l_t * grad
    flat = torch.where(grad > FLT_EPSILON, -rho / grad, torch.zeros_like(rho))
    coef = torch.where(rho < -lg, l_t, torch.where(rho > lg, -l_t, flat))
    steps = [coef * i1wx, coef * i1wy] + ([coef * gamma] if u.shape[1] == 3 else [])
    v = u + torch.stack(steps, dim=1)
    u_new = v + theta * divergence(p)
    err = (u_new - u).square().sum(dim=(1, 2, 3))
    return u_new, err


def dual_update(u: torch.Tensor, p: torch.Tensor, taut: float) -> torch.Tensor:
    """Chambolle projection step of the duals p (B, C, 2, H, W) from the new primal u."""
    ux, uy = forward_gradient(u)
    norm = (1.0 + taut * torch.hypot(ux, uy)).unsqueeze(2)
    return (p + taut * torch.stack([ux, uy], dim=2)) / norm


def dual_update_fast(u: torch.Tensor, p: torch.Tensor, taut: float) -> torch.Tensor:
    """:func:`dual_update` for the compiled path, equal to it up to float rounding.

    Neighbours are read through clamped index vectors (the last column / row differences become
    exactly 0), which inductor fuses into one loop instead of materialising padded differences;
    on CPU the norm is the float64 sqrt of the squares rounded to float32, i.e. hypot except in rare
    last-ulp cases (OpenCV itself evaluates hypot in double or float), and 1.6x faster there.
    """
    h, w = u.shape[-2:]
    right = torch.clamp(torch.arange(w, device=u.device) + 1, max=w - 1)
    below = torch.clamp(torch.arange(h, device=u.device) + 1, max=h - 1)
    ux, uy = u[..., right] - u, u[..., below, :] - u
    if u.device.type == "cpu":
        x, y = ux.double(), uy.double()
        length = torch.sqrt(x * x + y * y).float()
    else:  # native float hypot on the GPU, where float64 is slow on many models
        length = torch.hypot(ux, uy)
    norm = (1.0 + taut * length).unsqueeze(2)
    return (p + taut * torch.stack([ux, uy], dim=2)) / norm


def tvl1_iteration(
    u: torch.Tensor,
    p: torch.Tensor,
    i1wx: torch.Tensor,
    i1wy: torch.Tensor,
    grad: torch.Tensor,
    rho_c: torch.Tensor,
    consts: tuple[float, float, float, float],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One TV-L1 iteration (cv2's order: u from the old p, then p from the new u): (u, p, err)."""
    u_new, err = primal_update(u, p, i1wx, i1wy, grad, rho_c, consts)
    return u_new, dual_update(u_new, p, consts[2]), err


StepFn = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
