"""Batched PyTorch port of OpenCV's CPU Dual TV-L1 optical flow (cv2.optflow, OpenCV 5.0 numerics).

Zach, Pock and Bischof, "A Duality Based Approach for Realtime TV-L1 Optical Flow" (DAGM 2007), in
the discretisation of OpenCV's contrib module; see the project's tvl1-algorithm.md for the spec.
Each pair stops exactly where cv2 would; pairs are scheduled by tvl1_sched (a fused C kernel per task on
CPU, slot pools of PyTorch or Triton kernels on CUDA), and the eager PyTorch path here is the oracle.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from flowkit.errors import ConfigError, EngineUnavailableError
from flowkit.flow import as_pair_batch, register_engine, tvl1_cpu
from flowkit.flow import tvl1_cuda_variant as cuda_variant
from flowkit.flow import tvl1_ops as ops
from flowkit.flow.tvl1_params import TVL1Params

log = logging.getLogger("flowkit")

MIN_LEVEL_SIZE = 16  # OpenCV drops pyramid levels narrower or shorter than this


def _f32(x: float) -> float:
    """Round a double to float32, as OpenCV does when it casts its constants."""
    return float(np.float32(x))


class Kernels(NamedTuple):
    """The three hot kernels of the solver: iteration step, median filter and cubic warp."""

    step: ops.StepFn
    median: Callable[[torch.Tensor, int], torch.Tensor]
    warp: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


TORCH_KERNELS = Kernels(ops.tvl1_iteration, ops.median_filter, ops.warp_cubic_unchecked)


def eager_kernels(device: str | torch.device) -> Kernels:
    """The exact oracle: eager PyTorch iteration; on CPU the warp and median are cv2.remap and
    cv2.medianBlur themselves (the functions the reference calls), elsewhere PyTorch's."""
    if torch.device(device).type == "cpu":
        return TORCH_KERNELS._replace(median=tvl1_cpu.median_cv2, warp=tvl1_cpu.warp_cubic_cv2)
    return TORCH_KERNELS


_COMPILED: dict[str, Callable] = {}


def _unbacked_batch(*tensors: torch.Tensor) -> None:
    # A symbolic batch size (even 1) gives one compiled graph for every batch size and level size;
    # otherwise dynamo specialises B == 1 and recompiles when compaction shrinks the batch.
    for t in tensors:
        torch._dynamo.decorators.mark_unbacked(t, 0)


def compile_cache_dir() -> Path:
    """Where flowkit keeps torch-compiled kernels: the 'inductor' folder of flowkit's cache
    ($FLOWKIT_CACHE_DIR, else $XDG_CACHE_HOME/flowkit or ~/.cache/flowkit), shared by workers and runs."""
    from flowkit.flow.tvl1_native import cache_root

    return cache_root() / "inductor"


def use_compile_cache() -> bool:
    """Point inductor's on-disk cache at flowkit's folder before the first compile (an explicit
    TORCHINDUCTOR_CACHE_DIR wins). Returns whether tvl1's kernels were compiled there before.

    Inductor writes every cache entry to a per-process temporary file and renames it into place
    (torch._inductor.codecache.write_atomic), so concurrent workers can share the folder.
    """
    folder = Path(os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(compile_cache_dir())))
    return (folder / _marker_name()).exists()


def _marker_name() -> str:
    return f"flowkit-tvl1-{torch.__version__}.done"


def _mark_compiled() -> None:
    """Record (atomically) that this cache holds tvl1's kernels, so later runs say no more."""
    folder = Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{_marker_name()}.{os.getpid()}"
        tmp.write_text("compiled\n")
        tmp.replace(folder / _marker_name())
    except OSError:  # a read-only cache is not an error
        pass


def _compiled_step() -> ops.StepFn:
    """torch.compile'd iteration (built once per process, lazily).

    The primal and dual updates compile separately: fused into one graph, inductor recomputes the
    primal update for each neighbour the forward gradient reads, which made it slower than eager.
    """
    if "step" not in _COMPILED:
        primal = torch.compile(ops.primal_update, dynamic=True, fullgraph=True)
        dual = torch.compile(ops.dual_update_fast, dynamic=True, fullgraph=True)

        def step(u, p, i1wx, i1wy, grad, rho_c, consts):
            _unbacked_batch(u, p, i1wx, i1wy, grad, rho_c)
            u_new, err = primal(u, p, i1wx, i1wy, grad, rho_c, consts)
            _unbacked_batch(u_new)
            return u_new, dual(u_new, p, consts[2]), err

        _COMPILED["step"] = step
    return _COMPILED["step"]


def _compiled_median() -> Callable[[torch.Tensor, int], torch.Tensor]:
    """torch.compile'd min/max median network (CUDA; the CPU path uses cv2.medianBlur)."""
    if "median" not in _COMPILED:
        median = torch.compile(ops.median_network_padded, dynamic=True, fullgraph=True)

        def median_filter(x, k):
            r = k // 2
            pad = torch.nn.functional.pad(x, (r, r, r, r), mode="replicate")
            _unbacked_batch(pad)
            return median(pad, k)

        _COMPILED["median"] = median_filter
    return _COMPILED["median"]


def fast_kernels(device: str) -> Kernels:
    """The fast path: the oracle's kernels with a compiled iteration, plus on CUDA the compiled
    median network (on CPU cv2.medianBlur is 9x faster than it)."""
    kernels = eager_kernels(device)._replace(step=_compiled_step())
    if torch.device(device).type == "cpu":
        return kernels
    # The warp stays eager: its compiled gather measured 3x slower than eager.
    return kernels._replace(median=_compiled_median())


def _compile_available(device: str) -> bool:
    """Inductor needs a C++ compiler on CPU (and Triton on CUDA); without them stay eager."""
    if device.startswith("cuda"):
        try:
            import triton  # noqa: F401
        except ImportError:
            return False
        return True
    return shutil.which("g++") is not None or shutil.which("c++") is not None


@register_engine("tvl1")
class TVL1Engine:
    """Batched TV-L1 engine matching cv2.optflow.DualTVL1OpticalFlow; CPU or CUDA, same code.

    compile: "auto", True, or False (the eager oracle). On CPU, "auto"/True run each (pair, level,
    warp) task whole in the fused C kernel of tvl1_native (built once per machine in about a second;
    bit-identical to the oracle) on `threads` threads (default: the process's thread budget); without
    a C compiler, or on CUDA, they use torch.compile / Triton where available (FLOWKIT_TVL1_COMPILE=0
    skips torch.compile's 10-60 s first compile).
    Elsewhere pairs run through a continuous-batching scheduler (tvl1_sched): each pool of `slots`
    slots per level size is refilled as soon as a pair's warp ends. compact: the CPU pool kind (host
    check per iteration, finished tasks leave at once); default on CPU only. Otherwise slots are fixed
    and masked on the device, with a host read every `sync_every` iterations; backend "fused" uses the
    packed fused-kernel layout (Triton on CUDA), "torch" the torch kernels, "auto" picks.
    The 'opencv-cuda' numerics (their own stopping schedule) keep the lockstep solver.
    """

    name = "tvl1"

    def __init__(self, device: str = "cpu", *, compile: bool | str = "auto",
                 compact: bool | None = None, sync_every: int = 10, slots: int | None = None,
                 backend: str = "auto", threads: int | None = None, **params: Any) -> None:
        unknown = set(params) - {f.name for f in dataclasses.fields(TVL1Params)}
        if unknown:
            raise ConfigError(f"unknown tvl1 parameter(s): {', '.join(sorted(unknown))}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise EngineUnavailableError(f"tvl1: device {device!r} requested, CUDA unavailable")
        self.device = device
        self.params = TVL1Params(**params)
        self.compile = compile
        self.compact = (device == "cpu") if compact is None else compact
        self.sync_every = max(1, int(sync_every))
        self.slots = slots or (8 if device == "cpu" else 32)
        if backend not in ("auto", "torch", "fused"):
            raise ConfigError(f"tvl1 backend must be auto, torch or fused, got {backend!r}")
        self.backend = backend
        self.threads = threads
        self.last_stats: dict[str, Any] = {}
        self._kernels: Kernels | None = None
        self._native: Any = None
        self._sched: Any = None
        self._streamed: dict[int, bool] = {}
        self._lock = threading.RLock()  # one caller at a time: the scheduler holds per-call state

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_kernels"] = None  # compiled callables do not pickle; rebuilt in the worker
        state["_sched"], state["_streamed"], state["_native"] = None, {}, None
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    def __call__(self, prev: np.ndarray, nxt: np.ndarray,
                 initial_flow: np.ndarray | None = None) -> np.ndarray:
        """Flow from prev to nxt: uint8 (B,H,W) -> float32 (B,2,H,W); (H,W) -> (2,H,W)."""
        return self.compute(prev, nxt, initial_flow=initial_flow)

    def compute(self, prev: np.ndarray, nxt: np.ndarray,
                initial_flow: np.ndarray | None = None) -> np.ndarray:
        """Like __call__; initial_flow (B,2,H,W) or (2,H,W) acts as cv2's useInitialFlow."""
        a, b, single = as_pair_batch(prev, nxt)
        init = None
        if initial_flow is not None:
            init = np.asarray(initial_flow, dtype=np.float32)
            init = init[None] if init.ndim == 3 else init
            if init.shape != (a.shape[0], 2, *a.shape[1:]):
                raise ValueError(f"initial_flow must be (B,2,H,W) matching the frames, "
                                 f"got {init.shape}")
            init = torch.from_numpy(init).to(self.device)
        dev = torch.device(self.device)
        flow = self.compute_tensor(torch.from_numpy(a).to(dev), torch.from_numpy(b).to(dev), init)
        out = flow.cpu().numpy()
        return out[0] if single else out

    def submit(self, prev: np.ndarray, nxt: np.ndarray) -> int:
        """Streaming API: queue uint8 (B,H,W) pairs without waiting; returns a ticket for poll().

        Pairs of all submitted calls share the scheduler's slot pools (continuous batching across
        calls and videos); compute() is submit + wait for that ticket.
        """
        a, b, single = as_pair_batch(prev, nxt)
        dev = torch.device(self.device)
        i0, i1 = (_to_gray255(torch.from_numpy(x).to(dev)) for x in (a, b))
        solver = _Solver(self.params.effective(), None, dev, self.compact, self.sync_every, {})
        if solver.cuda_numerics:
            raise ConfigError("tvl1: submit/poll needs the 'opencv' or 'opencv2.4' pyramid")
        with self._lock, torch.no_grad():
            ticket = self._submit(solver, self.scheduler(self._get_kernels()), i0, i1, None)
            self._streamed[ticket] = single
        return ticket

    @property
    def streams(self) -> bool:
        """Whether submit/poll can run these parameters (the CUDA-class numerics keep their lockstep)."""
        return self.params.pyramid != "opencv-cuda"

    def poll(self, wait: bool = True) -> list[tuple[int, np.ndarray]]:
        """Finished submitted calls as (ticket, flow (B,2,H,W) float32), in ticket order; with
        wait, works until at least one is finished (if any is pending). submit/poll serve one caller
        (tickets are the engine's, not the thread's); compute() may be called from any thread."""
        with self._lock:
            return self._poll(wait)

    def _poll(self, wait: bool) -> list[tuple[int, np.ndarray]]:
        sched = self._sched
        if sched is None or not self._streamed:
            return []
        with torch.no_grad():
            while wait and not any(sched.done(t) for t in self._streamed):
                sched.round()
            sched.release_if_idle()
        out = []
        for ticket in sorted(t for t in self._streamed if sched.done(t)):
            flow = sched.pop(ticket)[0].cpu().numpy()
            out.append((ticket, flow[0] if self._streamed.pop(ticket) else flow))
        return out

    def compute_tensor(self, prev: torch.Tensor, nxt: torch.Tensor,
                       initial_flow: torch.Tensor | None = None) -> torch.Tensor:
        """Tensor API: (B,H,W) frames (uint8 0..255 or float 0..1, like cv2) -> (B,2,H,W) flow."""
        if prev.shape != nxt.shape:
            raise ValueError(f"prev and nxt shapes differ: {tuple(prev.shape)}, {tuple(nxt.shape)}")
        i0, i1 = _to_gray255(prev), _to_gray255(nxt)
        with self._lock:  # calls from several threads take turns (each batch uses every task thread)
            return self._compute_locked(i0, i1, initial_flow)

    def _compute_locked(self, i0: torch.Tensor, i1: torch.Tensor,
                        initial_flow: torch.Tensor | None) -> torch.Tensor:
        kernels = self._get_kernels()
        with torch.no_grad():
            try:
                flow = self._solve(i0, i1, initial_flow, kernels)
                if kernels is not None and self.__dict__.pop("_first_compile", False):
                    _mark_compiled()
                return flow
            except Exception as exc:
                if kernels is None:
                    raise
                # A failing compiled path must not fail the run: the eager path is exact.
                log.warning("tvl1: compiled kernels failed (%s); falling back to eager", exc)
                self.compile, self._kernels, self._sched, self._native = False, None, None, None
                return self._solve(i0, i1, initial_flow, None)

    def _solve(self, i0, i1, init, kernels):
        solver = _Solver(self.params.effective(), kernels, i0.device, self.compact,
                         self.sync_every, self.last_stats)
        if solver.cuda_numerics:
            return solver.run(i0, i1, init)
        sched = self.scheduler(kernels)
        before = sched.counters.as_dict()
        ticket = self._submit(solver, sched, i0, i1, init)
        sched.run_until(ticket)
        flow, stats = sched.pop(ticket)
        after = sched.counters.as_dict()
        self.last_stats.clear()
        self.last_stats.update(stats, counters={k: after[k] - before[k] for k in after})
        self.last_stats["batch_iterations"] = self.last_stats["counters"]["slot_iterations"]
        return flow

    @staticmethod
    def _submit(solver: _Solver, sched: Any, i0: torch.Tensor, i1: torch.Tensor,
                init: torch.Tensor | None) -> int:
        pyr = solver.pyramid(torch.cat([i0, i1]))
        bsz = i0.shape[0]
        u0 = solver._initial(init, pyr, bsz)
        return sched.submit([lv[:bsz] for lv in pyr], [lv[bsz:] for lv in pyr], u0)

    def scheduler(self, kernels: Kernels | None = None) -> Any:
        """The engine's continuous-batching scheduler (built on first use, kept across calls)."""
        if self._sched is None:
            from flowkit.flow import tvl1_sched

            self._sched = tvl1_sched.build(self, kernels or eager_kernels(self.device),
                                           native=self._native, threads=self._task_threads())
        return self._sched

    def _task_threads(self) -> int:
        """Threads for the CPU tasks: `threads`, else this process's share of the thread budget."""
        if self.threads:
            return int(self.threads)
        from flowkit.threads import current_budget, derive_budget

        return (current_budget() or derive_budget()).compute

    @property
    def kernel(self) -> str:
        """Which iteration kernel runs: "native" (fused C, CPU), "compiled" (torch.compile or
        Triton) or "eager" (the oracle); settled by the first call."""
        if self._native is not None:
            return "native"
        return "compiled" if self._kernels is not None else "eager"

    def _get_kernels(self) -> Kernels | None:
        # The native kernel builds in about a second, so "auto" uses it even where
        # FLOWKIT_TVL1_COMPILE=0 skips torch.compile's long warm-up; compile=False is the oracle.
        if self._kernels is None and self.compile is not False and self._native_applies():
            from flowkit.flow import tvl1_native

            self._native = tvl1_native.load()
            if self._native is not None:  # the fused C kernel does the iterations; no dynamo
                self._kernels = eager_kernels(self.device)
                return self._kernels
        if self._kernels is None and self._want_compile():
            if not use_compile_cache():
                log.warning("tvl1: compiling the kernels for %s for the first time (about 20-60 s "
                            "once; cached in %s for every later run and worker; "
                            "FLOWKIT_TVL1_COMPILE=0 runs eager instead, about 2x slower)",
                            self.device, os.environ["TORCHINDUCTOR_CACHE_DIR"])
                self._first_compile = True
            try:
                self._kernels = fast_kernels(self.device)
            except Exception as exc:  # torch.compile missing or broken: the eager path is exact
                log.warning("tvl1: torch.compile unavailable (%s); using eager mode", exc)
                self.compile = False
        return self._kernels

    def _native_applies(self) -> bool:
        """The fused C kernel runs CPU work with OpenCV's CPU numerics; the CUDA class's schedule and
        compact=False (the device pool kinds, tested on the CPU) keep the PyTorch solver."""
        return (torch.device(self.device).type == "cpu" and self.params.pyramid != "opencv-cuda"
                and self.compact)

    def _want_compile(self) -> bool:
        return auto_compile(self.device) if self.compile == "auto" else bool(self.compile)


def auto_compile(device: str) -> bool:
    """Whether compile="auto" compiles on `device`; FLOWKIT_TVL1_COMPILE=0 turns it off, so that
    test suites and short jobs skip the warm-up."""
    env = os.environ.get("FLOWKIT_TVL1_COMPILE", "").strip().lower()
    if env in ("0", "false", "no", "off"):
        return False
    return _compile_available(device)


def _to_gray255(x: torch.Tensor) -> torch.Tensor:
    """OpenCV's input conversion: uint8 as 0..255, float input multiplied by 255."""
    if x.ndim != 3:
        raise ValueError(f"frames must be (B, H, W), got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x.float().unsqueeze(1)
    return (x.float() * 255.0).unsqueeze(1)


class _Solver:
    """Pyramid, initial flow and upsampling for the scheduler; the lockstep solver of the
    opencv-cuda numerics (their odd-iteration stopping schedule). Records counts in `stats`."""

    def __init__(self, params: TVL1Params, kernels: Kernels | None, device: torch.device,
                 compact: bool, sync_every: int, stats: dict[str, Any]) -> None:
        self.p = params
        self.step, self.median, self.warp = kernels or eager_kernels(device)
        self.compact = compact
        self.sync_every = sync_every
        self.stats = stats
        self.consts = (_f32(params.lambda_ * params.theta), _f32(params.theta),
                       _f32(params.tau / params.theta), _f32(params.gamma))
        self.channels = 3 if params.gamma != 0 else 2
        self.cuda_numerics = params.pyramid == "opencv-cuda"
        if self.cuda_numerics:  # the CUDA class's own warp kernel, on every device
            self.warp = cuda_variant.warp_bicubic_clamped

    def pyramid(self, img: torch.Tensor) -> list[torch.Tensor]:
        """Levels finest first; stops before a level under 16 px (cv2's per-call truncation)."""
        levels = [img]
        for _ in range(1, self.p.nscales):
            if self.p.pyramid == "opencv2.4":
                nxt = ops.pyr_down(levels[-1])
            elif self.cuda_numerics:
                nxt = cuda_variant.downscale_top_left(levels[-1], self.p.scale_step)
            else:
                nxt = ops.resize_by_factor(levels[-1], self.p.scale_step)
            if min(nxt.shape[-2:]) < MIN_LEVEL_SIZE:
                break
            levels.append(nxt)
        return levels

    def run(self, i0: torch.Tensor, i1: torch.Tensor,
            init: torch.Tensor | None) -> torch.Tensor:
        """Coarse-to-fine over the pyramid; returns the level-0 flow (B, 2, H, W)."""
        bsz = i0.shape[0]
        pyr = self.pyramid(torch.cat([i0, i1]))
        u = self._initial(init, pyr, bsz)
        self.stats.clear()
        self.stats.update(levels=len(pyr), iterations=torch.zeros(bsz, dtype=torch.float64),
                          fre_iterations=torch.zeros(bsz, dtype=torch.float64), batch_iterations=0)
        area0 = float(pyr[0].shape[-1] * pyr[0].shape[-2])
        for s in range(len(pyr) - 1, -1, -1):
            level = pyr[s]
            before = self.stats["iterations"].clone()
            u = self._level(level[:bsz], level[bsz:], u)
            frac = level.shape[-1] * level.shape[-2] / area0
            self.stats["fre_iterations"] += (self.stats["iterations"] - before) * frac
            if s > 0:
                u = self._upsample(u, pyr[s - 1].shape[-2:])
        for key in ("iterations", "fre_iterations"):
            self.stats[key] = self.stats[key].tolist()
        return u[:, :2].contiguous()

    def _initial(self, init: torch.Tensor | None, pyr: list[torch.Tensor],
                 bsz: int) -> torch.Tensor:
        """Zero flow at the coarsest level, or the initial flow taken down the pyramid (cv2 3.3)."""
        h, w = pyr[-1].shape[-2:]
        u = torch.zeros(bsz, self.channels, h, w, dtype=torch.float32, device=pyr[0].device)
        if init is None:
            return u
        flow = init.to(torch.float32)
        for _ in range(len(pyr) - 1):
            if self.p.pyramid == "opencv2.4":
                flow = ops.resize_to(flow, _half_size(flow)) * 0.5
            elif self.cuda_numerics:
                flow = (cuda_variant.downscale_top_left(flow, self.p.scale_step)
                        * _f32(self.p.scale_step))
            else:
                flow = ops.resize_by_factor(flow, self.p.scale_step) * _f32(self.p.scale_step)
        u[:, :2] = flow
        return u

    def _upsample(self, u: torch.Tensor, size: torch.Size) -> torch.Tensor:
        size = (int(size[0]), int(size[1]))
        resize = cuda_variant.upscale_top_left if self.cuda_numerics else ops.resize_to
        up = resize(u, size)
        factor = 2.0 if self.p.pyramid == "opencv2.4" else _f32(1.0 / self.p.scale_step)
        up[:, :2] *= factor  # the illumination field (channel 2) is not a displacement
        return up

    def _level(self, i0: torch.Tensor, i1: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """All warps of one pyramid level; the dual variables are reset per level."""
        i1x, i1y = ops.centered_gradient(i1)
        src = torch.cat([i1, i1x, i1y], dim=1)
        bsz, _, h, w = i1.shape
        p = torch.zeros(bsz, self.channels, 2, h, w, dtype=torch.float32, device=i1.device)
        for _ in range(self.p.warps):
            warped = self.warp(src, u[:, :2].contiguous())
            i1w, i1wx, i1wy = warped[:, 0], warped[:, 1], warped[:, 2]
            grad = i1wx * i1wx + i1wy * i1wy
            rho_c = i1w - i1wx * u[:, 0] - i1wy * u[:, 1] - i0[:, 0]
            # Fresh dense copies: .contiguous() keeps the odd batch stride when B == 1, which
            # would make dynamo recompile the kernels for single pairs.
            dense = torch.contiguous_format
            data = (i1wx.clone(memory_format=dense), i1wy.clone(memory_format=dense), grad, rho_c)
            # The CPU class's numerics run in the scheduler (tvl1_sched); this lockstep solver
            # serves the CUDA class's stopping schedule only.
            u, p = self._iterate_cuda_schedule(u, p, data, self.p.epsilon ** 2 * w * h)
        return u

    def _median(self, u: torch.Tensor) -> torch.Tensor:
        k = self.p.median_filtering
        flow = self.median(u[:, :2].contiguous(), k)
        return flow if u.shape[1] == 2 else torch.cat([flow, u[:, 2:]], dim=1)

    def _iterate_cuda_schedule(self, u, p, data, eps):
        """One warp of the CUDA class: a single loop, the error measured only on its schedule.

        Lockstep with per-pair active flags and prevError; eps is the class's float64 threshold.
        On CPU the host checks after every measured iteration, elsewhere every `sync_every`.
        """
        bsz = u.shape[0]
        active = torch.ones(bsz, dtype=torch.bool, device=u.device)
        prev = torch.zeros(bsz, dtype=torch.float64, device=u.device)
        count = torch.zeros(bsz, dtype=torch.float64, device=u.device)
        every = 2 if u.device.type == "cpu" else self.sync_every
        n = 0
        while n < self.p.inner_iterations:
            un, pn, _ = self.step(u, p, *data, self.consts)
            measure = functools.partial(cuda_variant.flow_update_error, un, u)
            err, prev = cuda_variant.error_schedule(n, prev, eps, self.p.epsilon, measure)
            u = torch.where(active.view(-1, 1, 1, 1), un, u)
            p = torch.where(active.view(-1, 1, 1, 1, 1), pn, p)
            count += active
            active = active & (err > eps)
            n += 1
            # Pairs can only stop after an odd (0-based) iteration, i.e. when n is even here.
            if n % 2 == 0 and n % every == 0 and not bool(active.any()):
                break
        self.stats["iterations"] += count.cpu()
        self.stats["batch_iterations"] += n
        return u, p


def _half_size(x: torch.Tensor) -> tuple[int, int]:
    return (x.shape[-2] + 1) // 2, (x.shape[-1] + 1) // 2
