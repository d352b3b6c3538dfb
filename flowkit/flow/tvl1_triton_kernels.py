"""Triton kernels of the fused GPU TV-L1 path (launched through flowkit.flow.tvl1_triton).

Only @triton.jit code lives here, so that tvl1_triton can load a second, interpreted copy of this
module for CPU tensors (Triton decides at decoration time whether a kernel is compiled or
interpreted). Every kernel reproduces an eager function of tvl1_ops operation by operation, in the
same order, so that with FMA fusion disabled the float32 results agree to the last bit or so.

Layouts (float32, contiguous): state (2, B, 6, H, W) = two ping-pong buffers of
(u1, u2, p11, p12, p21, p22); data (B, 4, H, W) = (i1wx, i1wy, grad, rho_c).
"""

from __future__ import annotations

import triton
import triton.language as tl

from flowkit.flow import tvl1_ops as _ops

FLT_EPSILON = tl.constexpr(_ops.FLT_EPSILON)


def _network(k: int) -> tuple[tl.constexpr, ...]:
    """The pruned min/max selection program of tvl1_ops (k*k inputs) as constexpr tuples."""
    program, out = _ops._MEDIAN_PROGRAMS[k]
    return (tl.constexpr(tuple(int(kind == "min") for kind, _, _ in program)),
            tl.constexpr(tuple(a for _, a, _ in program)),
            tl.constexpr(tuple(b for _, _, b in program)),
            tl.constexpr(len(program)), tl.constexpr(out))


MED3_IS_MIN, MED3_A, MED3_B, MED3_OPS, MED3_OUT = _network(3)
MED5_IS_MIN, MED5_A, MED5_B, MED5_OPS, MED5_OUT = _network(5)


# Only triton.language builtins are used (tl.sum, tl.zeros are @jit library functions, which an
# interpreted kernel cannot call when the process imported Triton in compiled mode).


@triton.jit
def _sum(x, axis: tl.constexpr):
    """tl.sum via the builtin reduce; the interpreter runs Triton's own _sum_combine natively."""
    return tl.reduce(x, axis, tl.standard._sum_combine)


# ---------------------------------------------------------------------------------------------
# 5x5 / 3x3 median (exact): the selection network of tvl1_ops.median_filter_network, on a tile
# ---------------------------------------------------------------------------------------------

@triton.jit
def _select(vals, is_min: tl.constexpr, a: tl.constexpr, b: tl.constexpr, n_ops: tl.constexpr,
            out: tl.constexpr):
    """Run a min/max program over a tuple of tiles; op i appends value len(inputs) + i."""
    for i in tl.static_range(n_ops):
        if is_min[i] == 1:
            vals = vals + (tl.minimum(vals[a[i]], vals[b[i]]),)
        else:
            vals = vals + (tl.maximum(vals[a[i]], vals[b[i]]),)
    return vals[out]


@triton.jit
def _median_at(plane, y, x, H, W, K: tl.constexpr):
    """Exact K x K median of one (H, W) plane around (y, x), replicate border (clamped taps)."""
    vals = ()
    for i in tl.static_range(K):
        yy = tl.minimum(tl.maximum(y + (i - K // 2), 0), H - 1)
        for j in tl.static_range(K):
            xx = tl.minimum(tl.maximum(x + (j - K // 2), 0), W - 1)
            vals = vals + (tl.load(plane + yy * W + xx),)
    if K == 5:
        med = _select(vals, MED5_IS_MIN, MED5_A, MED5_B, MED5_OPS, MED5_OUT)
    else:
        med = _select(vals, MED3_IS_MIN, MED3_A, MED3_B, MED3_OPS, MED3_OUT)
    return med


@triton.jit
def median_kernel(src, dst, H, W, tiles_w, K: tl.constexpr, BH: tl.constexpr,
                  BW: tl.constexpr):
    """dst[n] = K x K median of src[n] for each (H, W) plane n = program_id(1)."""
    tile = tl.program_id(0)
    plane = tl.program_id(1).to(tl.int64) * H * W
    y = (tile // tiles_w) * BH + tl.arange(0, BH)[:, None]
    x = (tile % tiles_w) * BW + tl.arange(0, BW)[None, :]
    med = _median_at(src + plane, y, x, H, W, K)
    tl.store(dst + plane + y * W + x, med, mask=(y < H) & (x < W))


# ---------------------------------------------------------------------------------------------
# Cubic warp: cv2.remap INTER_CUBIC (Keys A = -0.75), zero border, exact coordinates
# ---------------------------------------------------------------------------------------------

@triton.jit
def _keys(t):
    """Keys weights (A = -0.75) of taps -1, 0, +1, +2 at fraction t, as tvl1_ops._keys_weights."""
    t1 = t + 1.0
    s = 1.0 - t
    c0 = ((-0.75 * t1 - -3.75) * t1 + -6.0) * t1 - -3.0
    c1 = ((1.25 * t - 2.25) * t) * t + 1.0
    c2 = ((1.25 * s - 2.25) * s) * s + 1.0
    return c0, c1, c2, ((1.0 - c0) - c1) - c2


@triton.jit
def _taps(pos, n):
    """First tap index (floor - 1, clamped like the oracle) and the four weights along one axis."""
    f = tl.floor(pos)
    first = tl.minimum(tl.maximum(f, -3.0), n + 1.0).to(tl.int32) - 1
    return first, _keys(pos - f)


@triton.jit
def _cubic(plane, iy, wy, ix, wx, H, W, valid):
    """Sum over the 4x4 taps of (wy[k1] * wx[k2]) * value, rows outer; outside taps read 0."""
    acc = tl.full(ix.shape, 0.0, tl.float32)
    for k1 in tl.static_range(4):
        yy = iy + k1
        row_ok = valid & (yy >= 0) & (yy < H)
        for k2 in tl.static_range(4):
            xx = ix + k2
            ok = row_ok & (xx >= 0) & (xx < W)
            acc = acc + (wy[k1] * wx[k2]) * tl.load(plane + yy * W + xx, mask=ok, other=0.0)
    return acc


@triton.jit
def warp_kernel(src, flow, dst, C, H, W, tiles_w, BH: tl.constexpr, BW: tl.constexpr):
    """dst[b, c] = src[b, c] sampled at (x + flow[b, 0], y + flow[b, 1]); plane = b * C + c."""
    tile = tl.program_id(0)
    plane = tl.program_id(1)
    b = plane // C
    hw = H * W
    y = (tile // tiles_w) * BH + tl.arange(0, BH)[:, None]
    x = (tile % tiles_w) * BW + tl.arange(0, BW)[None, :]
    valid = (y < H) & (x < W)
    off = y * W + x
    fl = flow + b.to(tl.int64) * 2 * hw
    ix, wx = _taps(x.to(tl.float32) + tl.load(fl + off, mask=valid, other=0.0), W)
    iy, wy = _taps(y.to(tl.float32) + tl.load(fl + hw + off, mask=valid, other=0.0), H)
    base = plane.to(tl.int64) * hw
    tl.store(dst + base + off, _cubic(src + base, iy, wy, ix, wx, H, W, valid), mask=valid)


@triton.jit
def warp_data_kernel(src, u, i0, data, H, W, tiles_w, BH: tl.constexpr, BW: tl.constexpr):
    """One warp's linearisation for pair b: warp (I1, I1x, I1y) by u, then
    data[b] = (i1wx, i1wy, grad, rho_c) with rho_c = i1w - i1wx*u1 - i1wy*u2 - i0 (tvl1._level)."""
    tile = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    hw = H * W
    y = (tile // tiles_w) * BH + tl.arange(0, BH)[:, None]
    x = (tile % tiles_w) * BW + tl.arange(0, BW)[None, :]
    valid = (y < H) & (x < W)
    off = y * W + x
    u1 = tl.load(u + b * 2 * hw + off, mask=valid, other=0.0)
    u2 = tl.load(u + b * 2 * hw + hw + off, mask=valid, other=0.0)
    ix, wx = _taps(x.to(tl.float32) + u1, W)
    iy, wy = _taps(y.to(tl.float32) + u2, H)
    planes = src + b * 3 * hw
    i1w = _cubic(planes, iy, wy, ix, wx, H, W, valid)
    i1wx = _cubic(planes + hw, iy, wy, ix, wx, H, W, valid)
    i1wy = _cubic(planes + 2 * hw, iy, wy, ix, wx, H, W, valid)
    rho_c = ((i1w - i1wx * u1) - i1wy * u2) - tl.load(i0 + b * hw + off, mask=valid, other=0.0)
    out = data + b * 4 * hw + off
    tl.store(out, i1wx, mask=valid)
    tl.store(out + hw, i1wy, mask=valid)
    tl.store(out + 2 * hw, i1wx * i1wx + i1wy * i1wy, mask=valid)
    tl.store(out + 3 * hw, rho_c, mask=valid)


# ---------------------------------------------------------------------------------------------
# The fused iteration: [median] + threshold + primal + dual + stopping residual, per slot
# ---------------------------------------------------------------------------------------------

@triton.jit
def _u_at(plane, y, x, H, W, valid, do_median, K: tl.constexpr):
    """u at (y, x), or its K x K median when this iteration starts an outer loop."""
    if K > 1:
        if do_median:
            val = _median_at(plane, y, x, H, W, K)
        else:
            val = tl.load(plane + y * W + x, mask=valid, other=0.0)
    else:
        val = tl.load(plane + y * W + x, mask=valid, other=0.0)
    return val


@triton.jit
def _primal_at(st, dat, hw, y, x, H, W, do_median, K: tl.constexpr, l_t, theta):
    """tvl1_ops.primal_update at positions (y, x): returns u (after the optional median), u_new
    and the old duals p11, p12, p21, p22 there. Positions outside the image give unused values."""
    valid = (y < H) & (x < W)
    off = y * W + x
    u1 = _u_at(st, y, x, H, W, valid, do_median, K)
    u2 = _u_at(st + hw, y, x, H, W, valid, do_median, K)
    i1wx = tl.load(dat + off, mask=valid, other=0.0)
    i1wy = tl.load(dat + hw + off, mask=valid, other=0.0)
    rho_c = tl.load(dat + 3 * hw + off, mask=valid, other=0.0)
    grad = i1wx * i1wx + i1wy * i1wy  # = data[:, 2], recomputed: 4 B/px less traffic
    # (a) thresholding of the linearised data term (spec 3.6, three cases + flat guard)
    rho = rho_c + (i1wx * u1 + i1wy * u2)
    lg = l_t * grad
    steep = grad > FLT_EPSILON
    flat = tl.where(steep, tl.div_rn(-rho, tl.where(steep, grad, 1.0)), 0.0)
    coef = tl.where(rho < -lg, l_t, tl.where(rho > lg, -l_t, flat))
    v1 = u1 + coef * i1wx
    v2 = u2 + coef * i1wy
    # (b) u = v + theta * div(p) with the old duals; backward differences, zero outside
    left = valid & (x > 0)
    up = valid & (y > 0)
    p11 = tl.load(st + 2 * hw + off, mask=valid, other=0.0)
    p12 = tl.load(st + 3 * hw + off, mask=valid, other=0.0)
    p21 = tl.load(st + 4 * hw + off, mask=valid, other=0.0)
    p22 = tl.load(st + 5 * hw + off, mask=valid, other=0.0)
    div1 = (p11 - tl.load(st + 2 * hw + off - 1, mask=left, other=0.0)) + (
        p12 - tl.load(st + 3 * hw + off - W, mask=up, other=0.0))
    div2 = (p21 - tl.load(st + 4 * hw + off - 1, mask=left, other=0.0)) + (
        p22 - tl.load(st + 5 * hw + off - W, mask=up, other=0.0))
    return u1, u2, v1 + theta * div1, v2 + theta * div2, p11, p12, p21, p22


@triton.jit
def _norm(taut, gx, gy):
    """1 + taut * hypot(gx, gy); the hypot in float64 rounded once to float32."""
    gx64 = gx.to(tl.float64)
    gy64 = gy.to(tl.float64)
    return 1.0 + taut * tl.sqrt(gx64 * gx64 + gy64 * gy64).to(tl.float32)


@triton.jit
def iteration_kernel(state, data, n_ptr, active_ptr, err_ptr, part_ptr, arrive_ptr,
                     B, H, W, tiles_w, n_tiles, inner, max_iters, eps, l_t, theta, taut,
                     K: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr, FIN: tl.constexpr):
    """One TV-L1 iteration of every active slot b = program_id(1), tile = program_id(0).

    Reads buffer n[b] % 2 of the state, writes buffer (n[b] + 1) % 2 (ping-pong: neighbouring
    tiles still read the old u and p). u_new is recomputed at the right and lower neighbours
    instead of being read back, so primal and dual are one pass. Each tile stores its float64
    partial of sum((u_new - u)^2); the last tile of the slot to arrive sums the partials in a fixed
    order and finalises err[b], n[b] += 1 and active[b] (cv2: continue iff err > eps and
    n < max_iters). An inactive slot's programs exit at once: its state is untouched.
    """
    tile = tl.program_id(0)
    b = tl.program_id(1)
    if tl.load(active_ptr + b) != 0:
        n = tl.load(n_ptr + b)
        hw = H * W
        src = state + ((n % 2) * B + b).to(tl.int64) * 6 * hw
        dst = state + (((n + 1) % 2) * B + b).to(tl.int64) * 6 * hw
        dat = data + b.to(tl.int64) * 4 * hw
        y = (tile // tiles_w) * BH + tl.arange(0, BH)[:, None]
        x = (tile % tiles_w) * BW + tl.arange(0, BW)[None, :]
        do_median = (n % inner) == 0  # first iteration of an outer loop (cv2: median first)
        u1, u2, n1, n2, p11, p12, p21, p22 = _primal_at(src, dat, hw, y, x, H, W, do_median, K,
                                                        l_t, theta)
        _, _, r1, r2, _, _, _, _ = _primal_at(src, dat, hw, y, x + 1, H, W, do_median, K,
                                              l_t, theta)
        _, _, d1, d2, _, _, _, _ = _primal_at(src, dat, hw, y + 1, x, H, W, do_median, K,
                                              l_t, theta)
        # (c) dual update from the new u: forward differences, zero on the last column / row
        has_r = x < W - 1
        has_d = y < H - 1
        u1x = tl.where(has_r, r1 - n1, 0.0)
        u1y = tl.where(has_d, d1 - n1, 0.0)
        u2x = tl.where(has_r, r2 - n2, 0.0)
        u2y = tl.where(has_d, d2 - n2, 0.0)
        ng1 = _norm(taut, u1x, u1y)
        ng2 = _norm(taut, u2x, u2y)
        valid = (y < H) & (x < W)
        off = y * W + x
        tl.store(dst + off, n1, mask=valid)
        tl.store(dst + hw + off, n2, mask=valid)
        tl.store(dst + 2 * hw + off, tl.div_rn(p11 + taut * u1x, ng1), mask=valid)
        tl.store(dst + 3 * hw + off, tl.div_rn(p12 + taut * u1y, ng1), mask=valid)
        tl.store(dst + 4 * hw + off, tl.div_rn(p21 + taut * u2x, ng2), mask=valid)
        tl.store(dst + 5 * hw + off, tl.div_rn(p22 + taut * u2y, ng2), mask=valid)
        # stopping residual: this tile's partial, then the slot's last tile finalises
        e1 = n1 - u1
        e2 = n2 - u2
        sq = tl.where(valid, (e1 * e1).to(tl.float64) + (e2 * e2).to(tl.float64), 0.0)
        tl.store(part_ptr + b * n_tiles + tile, _sum(_sum(sq, 1), 0))
        tl.debug_barrier()
        if tl.atomic_add(arrive_ptr + b, 1, sem="acq_rel") == n_tiles - 1:
            # fixed chunks in a fixed order: deterministic, and few registers at any image size
            parts = part_ptr + b * n_tiles
            t = tl.arange(0, FIN)
            total = _sum(tl.load(parts + t, mask=t < n_tiles, other=0.0, volatile=True), 0)
            for first in range(FIN, n_tiles, FIN):
                chunk = tl.load(parts + first + t, mask=first + t < n_tiles, other=0.0,
                                volatile=True)
                total += _sum(chunk, 0)
            err = total.to(tl.float32)
            tl.store(err_ptr + b, err)
            tl.store(n_ptr + b, n + 1)
            tl.store(active_ptr + b, ((err > eps) & (n + 1 < max_iters)).to(tl.int32))
            tl.store(arrive_ptr + b, 0)
