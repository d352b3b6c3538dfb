"""Fused Triton kernels for the GPU TV-L1 scheduler: iterations, cubic warp, median.

The functions take and return torch tensors in the layouts the continuous-batching scheduler keeps
(slot pools, see tvl1_iterations) and reproduce the eager oracle in tvl1_ops. On CUDA the kernels are
compiled; on CPU tensors they run through Triton's interpreter (an interpreted copy of
tvl1_triton_kernels is loaded, because Triton reads TRITON_INTERPRET when a kernel is decorated),
which is how the tests prove them without a GPU. FMA contraction is disabled at every launch so
that a*b + c rounds like the eager float32 code.

Also here: a launch counter (:func:`launch_count`, :func:`count_launches`) and the bytes model
(:data:`BYTES_PER_PIXEL`, :func:`bytes_model`) that bench/gpu_model.py reports.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
import threading
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import torch

# (rows, cols) per program on CUDA: one pixel per thread keeps the fused iteration at 56 registers
# (72 with the median branch), no spills on sm_90 (ptxas -v); 16x64 tiles needed 255 and spilled.
TILE = (4, 32)
NUM_WARPS = 4
FINALISE_CHUNK = 128  # residual partials summed per step by a slot's finalising program
# The interpreter's cost is per operation, not per element: large tiles on CPU.
INTERPRETER_TILE = (32, 64)

# ------------------------------------------------------------------------------------------------
# Launch counting
# ------------------------------------------------------------------------------------------------


class LaunchCounter:
    """Counts host-side launches, in total and per kernel name (a CUDA-graph replay of k
    iterations counts once, as "iteration_graph")."""

    def __init__(self) -> None:
        self.launches = 0
        self.by_kernel: dict[str, int] = {}

    def add(self, name: str) -> None:
        self.launches += 1
        self.by_kernel[name] = self.by_kernel.get(name, 0) + 1


_TOTAL = LaunchCounter()
_ACTIVE_COUNTERS: list[LaunchCounter] = []


def _count(name: str) -> None:
    for counter in (_TOTAL, *_ACTIVE_COUNTERS):
        counter.add(name)


def launch_count() -> int:
    """Triton launches made by this module since the process started."""
    return _TOTAL.launches


@contextlib.contextmanager
def count_launches() -> Iterator[LaunchCounter]:
    """Context manager yielding a :class:`LaunchCounter` of the launches made inside it."""
    counter = LaunchCounter()
    _ACTIVE_COUNTERS.append(counter)
    try:
        yield counter
    finally:
        _ACTIVE_COUNTERS.remove(counter)


def _launch(kernel: Any, grid: tuple[int, ...], *args: Any, count: bool = True,
            **meta: Any) -> None:
    """Launch a kernel (FMA fusion off) on its tensors' device; count one host-side launch."""
    if count:
        _count(getattr(kernel, "__name__", "kernel"))
    device = args[0].device
    scope = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    with scope:  # Triton launches on the current CUDA device
        kernel[grid](*args, **meta, num_warps=NUM_WARPS, enable_fp_fusion=False)


# ------------------------------------------------------------------------------------------------
# Compiled kernels for CUDA tensors, an interpreted copy for CPU tensors
# ------------------------------------------------------------------------------------------------

_KERNEL_MODULE = "flowkit.flow.tvl1_triton_kernels"
_INTERPRETED_MODULE = "flowkit.flow._tvl1_triton_kernels_interpreted"
_LOCK = threading.Lock()


def _interpreted_kernels() -> ModuleType:
    """tvl1_triton_kernels executed a second time with TRITON_INTERPRET=1 (cached)."""
    with _LOCK:
        if _INTERPRETED_MODULE in sys.modules:
            return sys.modules[_INTERPRETED_MODULE]
        # Triton imports gluon lazily while it converts the first interpreted launch's arguments,
        # i.e. while triton.language is patched by the interpreter, which gluon's import rejects.
        with contextlib.suppress(ImportError):
            importlib.import_module("triton.experimental.gluon")
        path = importlib.util.find_spec(_KERNEL_MODULE).origin
        spec = importlib.util.spec_from_file_location(_INTERPRETED_MODULE, path)
        module = importlib.util.module_from_spec(spec)
        old = os.environ.get("TRITON_INTERPRET")
        os.environ["TRITON_INTERPRET"] = "1"
        try:
            spec.loader.exec_module(module)
        finally:
            if old is None:
                del os.environ["TRITON_INTERPRET"]
            else:
                os.environ["TRITON_INTERPRET"] = old
        sys.modules[_INTERPRETED_MODULE] = module
        return module


def kernels_for(device: torch.device) -> ModuleType:
    """The kernels module to launch on `device`: compiled for CUDA, interpreted otherwise."""
    if device.type == "cuda":
        return importlib.import_module(_KERNEL_MODULE)
    return _interpreted_kernels()


def _tile(device: torch.device) -> tuple[int, int]:
    return TILE if device.type == "cuda" else INTERPRETER_TILE


def _grid_tiles(h: int, w: int, tile: tuple[int, int] = TILE) -> tuple[int, int]:
    """(tiles per row of tiles, number of tiles) covering an h x w plane."""
    tiles_w = -(-w // tile[1])
    return tiles_w, tiles_w * -(-h // tile[0])


def _check(t: torch.Tensor, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    if tuple(t.shape) != shape or t.dtype != dtype or not t.is_contiguous():
        raise ValueError(f"{name} must be a contiguous {dtype} tensor of shape {shape}, "
                         f"got {t.dtype} {tuple(t.shape)}")


# ------------------------------------------------------------------------------------------------
# Public kernels
# ------------------------------------------------------------------------------------------------

_SCRATCH: dict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor]] = {}


def _scratch(device: torch.device, batch: int, n_tiles: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tile residual partials (B, tiles) float64 and the per-slot arrival counter (B,) int32.

    The counter is zero between launches (the finalising program resets it), so it is reused.
    """
    key = (device, batch, n_tiles)
    if key not in _SCRATCH:
        _SCRATCH[key] = (torch.empty(batch, n_tiles, dtype=torch.float64, device=device),
                         torch.zeros(batch, dtype=torch.int32, device=device))
    return _SCRATCH[key]


def tvl1_iterations(state: torch.Tensor, data: torch.Tensor, n: torch.Tensor,
                    active: torch.Tensor, err: torch.Tensor, *, k: int, inner: int,
                    max_iters: int, median: int, eps: float, l_t: float, theta: float,
                    taut: float) -> None:
    """Run k TV-L1 iterations on every active slot of a pool, in place (no host sync inside).

    state (2, B, 6, H, W): ping-pong (u1, u2, p11, p12, p21, p22), slot b's current state in
    buffer n[b] % 2; data (B, 4, H, W) = (i1wx, i1wy, grad, rho_c); n, active (B,) int32;
    err (B,) float32. Per executed iteration, cv2's order (tvl1-algorithm.md 3.6): median of u
    when `median > 1` and n % inner == 0, threshold + primal with the old p, dual with the new u,
    err = sum of squared u updates, n += 1, active = err > eps and n < max_iters.
    One kernel launch per iteration: a launch cannot run the next iteration, which needs the
    slot's grid-wide err and the neighbours' new u.
    """
    launch = _iteration_launch(state, data, n, active, err, inner=inner, max_iters=max_iters,
                               median=median, eps=eps, l_t=l_t, theta=theta, taut=taut)
    for _ in range(k if launch else 0):
        launch()


def _iteration_launch(state, data, n, active, err, *, inner, max_iters, median, eps, l_t, theta,
                      taut, dry_run: bool = False):
    """Check the arguments; return a function launching one iteration (None for an empty pool)."""
    _, bsz, _, h, w = state.shape
    _check(state, "state", (2, bsz, 6, h, w), torch.float32)
    _check(data, "data", (bsz, 4, h, w), torch.float32)
    for name, t, dtype in (("n", n, torch.int32), ("active", active, torch.int32),
                           ("err", err, torch.float32)):
        _check(t, name, (bsz,), dtype)
    if median not in (0, 1, 3, 5) or inner < 1:
        raise ValueError(f"median must be 0, 1, 3 or 5 and inner >= 1, got {median}, {inner}")
    if bsz == 0:
        return None
    kernel = kernels_for(state.device).iteration_kernel
    tile = _tile(state.device)
    tiles_w, n_tiles = _grid_tiles(h, w, tile)
    part, arrive = _scratch(state.device, bsz, n_tiles)
    args = (state, data, n, active, err, part, arrive, bsz, h, w, tiles_w, n_tiles, inner,
            max_iters, float(eps), float(l_t), float(theta), float(taut))
    meta = dict(K=max(1, median), BH=tile[0], BW=tile[1], FIN=FINALISE_CHUNK)
    if dry_run:  # compile and load the kernel outside a graph capture, changing nothing:
        # with every slot inactive each program returns after reading its flag
        idle = (*args[:3], torch.zeros_like(active), *args[4:])
        _launch(kernel, (n_tiles, bsz), *idle, count=False, **meta)
    return lambda count=True: _launch(kernel, (n_tiles, bsz), *args, count=count, **meta)


class IterationGraph:
    """k fused iterations of one pool recorded once as a CUDA graph; each call replays them.

    Removes the per-launch host cost (the Triton launcher takes microseconds per kernel, more
    than a small level's iteration takes on the GPU). The tensors are bound at construction: the
    scheduler refills them in place. On other devices a call just runs tvl1_iterations.
    """

    def __init__(self, state: torch.Tensor, data: torch.Tensor, n: torch.Tensor,
                 active: torch.Tensor, err: torch.Tensor, *, k: int, **params: Any) -> None:
        self.k = k
        self._tensors = (state, data, n, active, err)
        self._params = params
        self._graph = None
        if state.device.type != "cuda" or k <= 0:
            return
        launch = _iteration_launch(*self._tensors, **params, dry_run=True)
        if launch is None:
            return
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            for _ in range(k):
                launch(count=False)  # recorded, not run: the replays are counted

    def __call__(self) -> None:
        """Run the k iterations (one graph launch on CUDA, k kernel launches elsewhere)."""
        if self._graph is None:
            tvl1_iterations(*self._tensors, k=self.k, **self._params)
            return
        self._graph.replay()
        _count("iteration_graph")  # one host launch running k iteration kernels


def tvl1_warp_data(src: torch.Tensor, u: torch.Tensor, i0: torch.Tensor) -> torch.Tensor:
    """src (B,3,H,W) = I1, I1x, I1y at the level; u (B,2,H,W); i0 (B,H,W) -> data (B,4,H,W).

    data = (i1wx, i1wy, grad, rho_c) of the warped image and gradients (cubic, Keys A=-0.75,
    zero border, exact coordinates), computed as tvl1.py does after tvl1_ops.warp_cubic.
    """
    bsz, _, h, w = src.shape
    src, u, i0 = (t.float().contiguous() for t in (src, u, i0))
    _check(src, "src", (bsz, 3, h, w), torch.float32)
    _check(u, "u", (bsz, 2, h, w), torch.float32)
    _check(i0, "i0", (bsz, h, w), torch.float32)
    data = torch.empty(bsz, 4, h, w, dtype=torch.float32, device=src.device)
    if bsz == 0:
        return data
    tile = _tile(src.device)
    tiles_w, n_tiles = _grid_tiles(h, w, tile)
    _launch(kernels_for(src.device).warp_data_kernel, (n_tiles, bsz), src, u, i0, data, h, w,
            tiles_w, BH=tile[0], BW=tile[1])
    return data


def warp_cubic(src: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """tvl1_ops.warp_cubic in one kernel: src (B,C,H,W) sampled at (x + flow_x, y + flow_y)."""
    bsz, chans, h, w = src.shape
    if tuple(flow.shape) != (bsz, 2, h, w):
        raise ValueError(f"flow must be {(bsz, 2, h, w)}, got {tuple(flow.shape)}")
    src, flow = src.float().contiguous(), flow.float().contiguous()
    out = torch.empty_like(src)
    if out.numel() == 0:
        return out
    tile = _tile(src.device)
    tiles_w, n_tiles = _grid_tiles(h, w, tile)
    _launch(kernels_for(src.device).warp_kernel, (n_tiles, bsz * chans), src, flow, out, chans,
            h, w, tiles_w, BH=tile[0], BW=tile[1])
    return out


def median_filter(x: torch.Tensor, k: int) -> torch.Tensor:
    """Exact k x k median (k = 3 or 5) with replicate border, like cv2.medianBlur: (B,C,H,W)."""
    if k not in (3, 5) or x.ndim != 4:
        raise ValueError(f"median_filter needs (B, C, H, W) and k in (3, 5), got {k}, "
                         f"{tuple(x.shape)}")
    bsz, chans, h, w = x.shape
    x = x.float().contiguous()
    out = torch.empty_like(x)
    if out.numel() == 0:
        return out
    tile = _tile(x.device)
    tiles_w, n_tiles = _grid_tiles(h, w, tile)
    _launch(kernels_for(x.device).median_kernel, (n_tiles, bsz * chans), x, out, h, w, tiles_w,
            K=k, BH=tile[0], BW=tile[1])
    return out


# ------------------------------------------------------------------------------------------------
# Bytes model (float32 DRAM traffic per pixel; neighbour / tap re-reads assumed to hit L1/L2)
# ------------------------------------------------------------------------------------------------

BYTES_PER_PIXEL: dict[str, dict[str, int]] = {
    # per active slot pixel and iteration (the median iterations move the same DRAM bytes: the
    # 5x5 window comes from cache); inactive slots: 0 B (their programs exit after 4 B of flags)
    "iteration": {"read u1,u2": 8, "read p11,p12,p21,p22": 16, "read i1wx,i1wy,rho_c": 12,
                  "write u1,u2": 8, "write p11,p12,p21,p22": 16},
    # per pixel and warp: 16-tap gathers of the 3 source planes hit cache after one DRAM read
    "warp_data": {"read u1,u2": 8, "read i0": 4, "read I1,I1x,I1y": 12,
                  "write i1wx,i1wy,grad,rho_c": 16},
    # per pixel and channel (warp_cubic also reads the 2 flow planes once per pixel)
    "warp_cubic_per_channel": {"read src": 4, "write out": 4},
    "median_per_channel": {"read x": 4, "write out": 4},
}


def bytes_model(h: int, w: int) -> dict[str, float]:
    """Bytes per pixel of each kernel at an h x w level, including the per-tile residual traffic
    of the iteration (one float64 partial written per tile, all partials read once per slot)."""
    _, n_tiles = _grid_tiles(h, w)
    per_tile = 8.0 / (TILE[0] * TILE[1])
    finalise = 8.0 * n_tiles / (h * w)
    return {
        "iteration": sum(BYTES_PER_PIXEL["iteration"].values()) + per_tile + finalise,
        "warp_data": float(sum(BYTES_PER_PIXEL["warp_data"].values())),
        "warp_cubic_per_channel": float(sum(BYTES_PER_PIXEL["warp_cubic_per_channel"].values())),
        "median_per_channel": float(sum(BYTES_PER_PIXEL["median_per_channel"].values())),
    }
