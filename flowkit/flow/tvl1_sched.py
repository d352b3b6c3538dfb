"""Continuous batching for TV-L1: every (pair, level, warp) is a task; pools of slots per level size.

When a pair's warp ends, its slot is refilled at once with other work of that level size (the next
warp of any pair, from this call or from any call submitted before), so the cost per pair tracks
its own iterations instead of the slowest pair of a lockstep batch. Per pair, the arithmetic and
the stopping rule are exactly the lockstep solver's (cv2's), so results do not depend on batching.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from flowkit.flow import tvl1_ops as ops
from flowkit.flow.tvl1_pools import (
    CompactPool,
    Counters,
    FusedPool,
    MaskedPool,
    PoolSpec,
    reference_iterations,
)


@dataclass
class _Pair:
    """One frame pair's progress through the pyramid (finest level is index 0)."""

    ticket: int
    index: int
    i0: list[torch.Tensor]  # per level (1, 1, h, w)
    src: list[torch.Tensor]  # per level (1, 3, h, w): I1, I1x, I1y
    level: int
    u: torch.Tensor
    p: torch.Tensor | None = None
    warp: int = 0
    iterations: int = 0
    fre: float = 0.0
    tasks: list[int] = field(default_factory=list)  # iterations of each (level, warp), in order


@dataclass
class _Call:
    """The pairs of one submit(): results gathered in order."""

    size: int
    levels: int
    flows: list[torch.Tensor | None] = field(default_factory=list)
    iterations: list[int] = field(default_factory=list)
    fre: list[float] = field(default_factory=list)
    tasks: list[list[int]] = field(default_factory=list)
    left: int = 0


class Scheduler:
    """Runs submitted pair batches through per-level-size slot pools; see the module docstring.

    mode: "compact" (CPU: host check per iteration, working set = running tasks), "masked"
    (fixed slots, k iterations per host read, torch kernels) or "fused" (fixed slots, the packed
    fused-kernel layout; `iterate` is tvl1_triton.tvl1_iterations or its torch reference).
    """

    def __init__(self, spec: PoolSpec, *, warps: int, epsilon: float, warp: Callable,
                 upsample: Callable, mode: str = "compact", slots: int = 32, k: int = 10,
                 iterate: Callable | None = None, warp_data: Callable | None = None) -> None:
        self.spec = spec
        self.warps = warps
        self.epsilon = epsilon
        self.warp = warp
        self.warp_data = warp_data
        self.upsample = upsample
        self.mode = mode
        self.slots = slots
        self.k = k
        self.iterate = iterate
        self.counters = Counters()
        self.pools: dict[tuple[int, int], Any] = {}
        self.calls: dict[int, _Call] = {}
        self.needs_warp: list[_Pair] = []
        self._next_ticket = 0

    # ---- public API ----
    def submit(self, levels0: list[torch.Tensor], levels1: list[torch.Tensor],
               u0: torch.Tensor) -> int:
        """Queue B pairs given their pyramids (finest first, each (B,1,h,w)) and the coarsest
        starting flow u0 (B,C,h,w); returns a ticket for `pop`."""
        ticket = self._next_ticket
        self._next_ticket += 1
        bsz, nlev = u0.shape[0], len(levels0)
        grads = [torch.cat([lv, *ops.centered_gradient(lv)], dim=1) for lv in levels1]
        self.calls[ticket] = _Call(bsz, nlev, [None] * bsz, [0] * bsz, [0.0] * bsz,
                                   [[] for _ in range(bsz)], bsz)
        for i in range(bsz):
            pair = _Pair(ticket, i, [lv[i : i + 1] for lv in levels0],
                         [g[i : i + 1] for g in grads], nlev - 1, u0[i : i + 1])
            self.needs_warp.append(pair)
        return ticket

    def done(self, ticket: int) -> bool:
        return self.calls[ticket].left == 0

    def pending(self) -> bool:
        return any(c.left for c in self.calls.values())

    def pop(self, ticket: int) -> tuple[torch.Tensor, dict[str, Any]]:
        """The flow (B, 2, H, W) of a finished call, and its per-pair statistics."""
        call = self.calls.pop(ticket)
        stats = {"levels": call.levels, "iterations": [float(n) for n in call.iterations],
                 "fre_iterations": call.fre, "task_iterations": call.tasks}
        return torch.cat(call.flows), stats

    def run_until(self, ticket: int | None = None) -> None:
        """Work until `ticket` is done (None: until every submitted call is done)."""
        while not (self.done(ticket) if ticket is not None else not self.pending()):
            self.round()
        self.release_if_idle()

    def release_if_idle(self) -> None:
        """With nothing pending, free the pools (videos of other sizes get their own)."""
        if not self.pending():
            self.pools.clear()

    def round(self) -> None:
        """Warp the pairs that need it, then run the busiest pool for one call (k iterations)."""
        self._warp_pending()
        pools = [p for p in self.pools.values() if p.load()]
        if not pools:
            return
        pool = max(pools, key=lambda p: (p.load(), -p.spec_area))
        for pair, u, p, n in pool.run(self.k):
            self._advance(pair, u, p, n)

    # ---- internals ----
    def _pool(self, shape: tuple[int, int, int], device: torch.device) -> Any:
        key = shape[1:]
        if key not in self.pools:
            h, w = key
            eps = ops_f32(self.epsilon ** 2 * w * h)
            if self.mode == "compact":
                pool = CompactPool(self.spec, eps, self.slots, self.counters)
            elif self.mode == "masked":
                pool = MaskedPool(self.spec, eps, self.slots, self.counters, shape, device)
            else:
                pool = FusedPool(self.spec, eps, self.slots, self.counters, shape, device,
                                 self.iterate)
            pool.spec_area = h * w
            self.pools[key] = pool
        return self.pools[key]

    def _warp_pending(self) -> None:
        """Warp every pair that starts a warp, batched per level size; queue them in their pool."""
        groups: dict[tuple[int, int], list[_Pair]] = {}
        for pair in self.needs_warp:
            groups.setdefault(tuple(pair.u.shape[-2:]), []).append(pair)
        self.needs_warp = []
        for group in groups.values():
            data = self._task_data(group)
            u = torch.cat([pr.u for pr in group])
            self.counters.warp_calls += 1
            self.counters.warped_pairs += len(group)
            pool = self._pool(tuple(u.shape[1:]), u.device)
            for i, pr in enumerate(group):
                p = pr.p if pr.p is not None else u.new_zeros(1, u.shape[1], 2, *u.shape[-2:])
                pool.enqueue(pr, pr.u, p, data[i : i + 1])

    def _task_data(self, group: list[_Pair]) -> torch.Tensor:
        """The warp data (B,4,h,w) of pairs starting a warp at one level size (batched warp)."""
        u = torch.cat([pr.u for pr in group])
        src = torch.cat([pr.src[pr.level] for pr in group])
        i0 = torch.cat([pr.i0[pr.level] for pr in group])
        return (self.warp_data or warp_data)(self.warp, src, u, i0)

    def _advance(self, pair: _Pair, u: torch.Tensor, p: torch.Tensor, n: int) -> None:
        """A warp ended after n iterations: next warp, next level, or the pair is done."""
        call = self.calls[pair.ticket]
        h, w = u.shape[-2:]
        h0, w0 = pair.i0[0].shape[-2:]
        pair.iterations += n
        pair.tasks.append(n)
        pair.fre += n * (h * w) / (h0 * w0)
        pair.warp += 1
        pair.u, pair.p = u, p
        if pair.warp < self.warps:
            self.needs_warp.append(pair)
            return
        if pair.level > 0:
            pair.level -= 1
            pair.u = self.upsample(u, tuple(pair.i0[pair.level].shape[-2:]))
            pair.p, pair.warp = None, 0
            self.needs_warp.append(pair)
            return
        call.flows[pair.index] = u[:, :2].contiguous()
        call.iterations[pair.index] = pair.iterations
        call.fre[pair.index] = pair.fre
        call.tasks[pair.index] = pair.tasks
        call.left -= 1


def ops_f32(x: float) -> float:
    """Round to float32 like OpenCV's scaledEpsilon."""
    return float(torch.tensor(x, dtype=torch.float32))


def warp_data(warp: Callable, src: torch.Tensor, u: torch.Tensor,
              i0: torch.Tensor) -> torch.Tensor:
    """Linearisation data of one warp (spec 3.5): (B,4,h,w) = i1wx, i1wy, grad, rho_c."""
    warped = warp(src, u[:, :2].contiguous())
    i1w, i1wx, i1wy = warped[:, 0], warped[:, 1], warped[:, 2]
    grad = i1wx * i1wx + i1wy * i1wy
    rho_c = i1w - i1wx * u[:, 0] - i1wy * u[:, 1] - i0[:, 0]
    return torch.stack([i1wx, i1wy, grad, rho_c], dim=1)


def fused_iterate(device: torch.device | str) -> Callable | None:
    """tvl1_triton.tvl1_iterations when it can run here (CUDA, or CPU under TRITON_INTERPRET=1)."""
    dev = torch.device(device)
    if dev.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return None
    try:
        from flowkit.flow import tvl1_triton
    except Exception:  # triton missing, or the module not there yet
        return None
    return getattr(tvl1_triton, "tvl1_iterations", None)


def build(engine: Any, kernels: Any, native: Any = None, threads: int = 1) -> Scheduler:
    """The scheduler for a TVL1Engine: pool kind, slots and kernels from its settings; with the
    native CPU kernel library `native`, whole tasks on `threads` threads."""
    from flowkit.flow.tvl1 import _f32, _Solver

    p = engine.params.effective()
    step, median, warp = kernels
    consts = (_f32(p.lambda_ * p.theta), _f32(p.theta), _f32(p.tau / p.theta), _f32(p.gamma))
    spec = PoolSpec(p.inner_iterations, p.outer_iterations, p.median_filtering, consts, step, median)
    if native is not None:
        from flowkit.flow.tvl1_native import WarpTask

        task = WarpTask(native, inner=p.inner_iterations, outer=p.outer_iterations,
                        median_k=p.median_filtering, consts=consts)
        upsample = _Solver(p, kernels, torch.device("cpu"), True, 1, {})._upsample
        return ThreadedScheduler(spec, warps=p.warps, epsilon=p.epsilon, upsample=upsample,
                                 task=task, threads=threads)
    mode, iterate, fused_warp = ("compact" if engine.compact else "masked"), None, None
    fusable = p.gamma == 0 and not engine.compact
    if fusable and engine.backend != "torch":
        iterate = fused_iterate(engine.device)
        if iterate is None and engine.backend == "fused":
            iterate = functools.partial(reference_iterations, median_fn=median)
        mode = "fused" if iterate is not None else mode
        fused_warp = fused_warp_data(engine.device) if p.pyramid == "opencv" else None
    upsample = _Solver(p, kernels, torch.device(engine.device), engine.compact, engine.sync_every,
                       {})._upsample
    return Scheduler(spec, warps=p.warps, epsilon=p.epsilon, warp=warp, upsample=upsample,
                     mode=mode, slots=engine.slots, k=engine.sync_every, iterate=iterate,
                     warp_data=fused_warp)


def fused_warp_data(device: torch.device | str) -> Callable | None:
    """tvl1_triton.tvl1_warp_data as a scheduler warp_data hook, on CUDA only."""
    if torch.device(device).type != "cuda":
        return None
    try:
        from flowkit.flow import tvl1_triton
    except Exception:
        return None
    fn = getattr(tvl1_triton, "tvl1_warp_data", None)
    if fn is None:
        return None
    return lambda _warp, src, u, i0: fn(src.contiguous(), u[:, :2].contiguous(),
                                        i0[:, 0].contiguous())


class ThreadedScheduler(Scheduler):
    """CPU: each (pair, level, warp) task runs whole (warp, data terms, medians, iterations to its
    stop) on one of `threads` threads with the native kernel; when a task ends, the pair's next task
    is queued at once, so every core stays busy while any pair has work and no task waits for another.
    """

    def __init__(self, spec: PoolSpec, *, warps: int, epsilon: float, upsample: Callable,
                 task: Callable, threads: int) -> None:
        super().__init__(spec, warps=warps, epsilon=epsilon, warp=None, upsample=upsample,
                         mode="threads", slots=threads)
        self.task = task
        self.threads = max(1, threads)
        self.running: dict[Future, _Pair] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._pid = os.getpid()

    def pending(self) -> bool:
        return bool(self.running) or super().pending()

    def round(self) -> None:
        """Start the tasks of pairs that need a warp, then wait for any task to end and advance it."""
        if self.needs_warp and (self._executor is None or self._pid != os.getpid()):
            # A forked child inherits the executor but not its threads: it needs its own.
            self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="flowkit-tvl1")
            self._pid, self.running = os.getpid(), {}
        for pair in self.needs_warp:
            self.running[self._executor.submit(self._run_task, pair)] = pair
            self.counters.warp_calls += 1
            self.counters.warped_pairs += 1
        self.needs_warp = []
        if not self.running:
            return
        done, _ = wait(self.running, return_when=FIRST_COMPLETED)
        for fut in sorted(done, key=lambda f: (self.running[f].ticket, self.running[f].index)):
            pair = self.running.pop(fut)
            u, p, n = fut.result()
            c = self.counters
            c.slot_iterations += n
            c.active_iterations += n
            c.pool_iterations += n
            c.host_calls += 1
            self._advance(pair, u, p, n)

    def _run_task(self, pair: _Pair) -> tuple[torch.Tensor, torch.Tensor, int]:
        """One task on a worker thread: numpy views in, torch tensors (1,C,h,w), (1,C,2,h,w) out."""
        nf, h, w = pair.u.shape[1:]
        eps = ops_f32(self.epsilon ** 2 * w * h)
        p = None if pair.p is None else pair.p.reshape(2 * nf, h, w).numpy()
        src = np.ascontiguousarray(pair.src[pair.level][0].numpy())
        i0 = np.ascontiguousarray(pair.i0[pair.level][0, 0].numpy())
        u, p, n = self.task(src, i0, pair.u[0].numpy().copy(), p, eps)
        return torch.from_numpy(u)[None], torch.from_numpy(p).view(1, nf, 2, h, w), n

    def close(self) -> None:
        """Stop the worker threads (they also end with the process)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
