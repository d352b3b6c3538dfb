"""Slot pools of the TV-L1 scheduler: the inner iterations of many (pair, level, warp) tasks at once.

A pool holds the tasks of one pyramid-level size. Each task iterates cv2's loop (median at the start
of every outer loop, stop when the squared update falls to eps or after inner*outer iterations)
with its own counter, so a pool can mix tasks that started at different times and refill a slot
as soon as its task ends. Three implementations of one contract:

- CompactPool (CPU): rows = running tasks only; the host checks after every iteration (a CPU
  "sync" is free) and returns as soon as a task ends, so no iteration is wasted.
- MaskedPool (any device, torch kernels): fixed B slots, k iterations per call with per-slot
  active flags on the device; one host read per call.
- FusedPool (CUDA with flowkit.flow.tvl1_triton, or its torch reference): fixed B slots, packed
  ping-pong state (2, B, 6, H, W) where slot b's state is in buffer n[b] % 2, so stopped slots
  are never copied (see /work/notes/tvl1-interface.md, mirrored in reference_iterations).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from flowkit.flow import tvl1_ops as ops


@dataclass
class PoolSpec:
    """What every pool of one solver needs: the loop shape, the constants and the kernels."""

    inner: int
    outer: int
    median_k: int
    consts: tuple[float, float, float, float]  # lambda*theta, theta, tau/theta, gamma
    step: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    median: Callable[[torch.Tensor, int], torch.Tensor]

    @property
    def max_iters(self) -> int:
        return self.inner * self.outer


@dataclass
class Counters:
    """Work done by the pools: the figures bench/gpu_model.py reports."""

    slot_iterations: int = 0  # rows the iteration math ran on, summed over iterations
    active_iterations: int = 0  # of those, the rows of running tasks (= the required work)
    pool_iterations: int = 0  # iterations of pool calls (a k-iteration call counts k)
    host_calls: int = 0  # calls from the host into the iteration backend
    syncs: int = 0  # device -> host reads of the stopping state
    warp_calls: int = 0
    warped_pairs: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class Slot:
    """A task's place in a pool: the owner (opaque to the pool) and its in-warp iteration count."""

    __slots__ = ("owner", "n")

    def __init__(self, owner: Any) -> None:
        self.owner = owner
        self.n = 0


class _PoolBase:
    """Queue and bookkeeping shared by the pool kinds."""

    def __init__(self, spec: PoolSpec, eps: float, capacity: int, counters: Counters) -> None:
        self.spec = spec
        self.eps = eps
        self.capacity = capacity
        self.counters = counters
        self.queue: list[tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def enqueue(self, owner: Any, u: torch.Tensor, p: torch.Tensor, data: torch.Tensor) -> None:
        """A task ready to iterate: u (1,C,h,w), p (1,C,2,h,w), data (1,4,h,w)."""
        self.queue.append((owner, u, p, data))

    def load(self) -> int:
        """Occupied slots plus queued tasks: how much work this pool has."""
        return self.occupied() + len(self.queue)

    def occupied(self) -> int:
        raise NotImplementedError

    def run(self, k: int) -> list[tuple[Any, torch.Tensor, torch.Tensor, int]]:
        """Refill, iterate, and return the tasks that ended: (owner, u, p, iterations)."""
        raise NotImplementedError


class CompactPool(_PoolBase):
    """CPU pool: the working tensors hold running tasks only; returns as soon as any task ends."""

    def __init__(self, spec: PoolSpec, eps: float, capacity: int, counters: Counters) -> None:
        super().__init__(spec, eps, capacity, counters)
        self.slots: list[Slot] = []
        self.u = self.p = self.data = None
        self._free: list[int] = []

    def occupied(self) -> int:
        return len(self.slots)

    def _refill(self, free: list[int]) -> None:
        """Fill the rows in `free` (tasks that ended) and append rows up to capacity; drop the rest."""
        fill = []
        while self.queue and (free or len(self.slots) + len(fill) < self.capacity):
            fill.append(self.queue.pop(0))
        reuse, fill_rest = fill[: len(free)], fill[len(free):]
        for row, (owner, u, p, data) in zip(free, reuse, strict=False):
            self.slots[row] = Slot(owner)
            self.u[row], self.p[row] = u[0], p[0]
            for field, d in zip(self.data, data[0], strict=True):
                field[row] = d
        keep = [r for r in range(len(self.slots)) if r not in set(free[len(reuse):])]
        if len(keep) < len(self.slots):
            idx = torch.tensor(keep, dtype=torch.long, device=self.u.device)
            self.slots = [self.slots[r] for r in keep]
            self.u, self.p = self.u.index_select(0, idx), self.p.index_select(0, idx)
            self.data = [t.index_select(0, idx) for t in self.data]
        if fill_rest:
            owners, us, ps, ds = zip(*fill_rest, strict=True)
            self.slots += [Slot(o) for o in owners]
            old = self.u is not None and len(self.u) > 0
            self.u = torch.cat(([self.u] if old else []) + list(us))
            self.p = torch.cat(([self.p] if old else []) + list(ps))
            new = torch.cat(ds)  # (n, 4, h, w) -> four dense (rows, h, w) fields
            self.data = [torch.cat(([self.data[i]] if old else []) + [new[:, i].contiguous()])
                         for i in range(4)]

    def run(self, k: int) -> list[tuple[Any, torch.Tensor, torch.Tensor, int]]:
        self._refill(self._free)
        self._free = []
        if not self.slots:
            return []
        spec, c = self.spec, self.counters
        d = self.data
        while True:
            if spec.median_k > 1:
                self._median_rows([r for r, s in enumerate(self.slots) if s.n % spec.inner == 0])
            self.u, self.p, err = spec.step(self.u, self.p, *d, spec.consts)
            rows = len(self.slots)
            c.slot_iterations += rows
            c.active_iterations += rows
            c.pool_iterations += 1
            c.host_calls += 1
            c.syncs += 1
            done = (err <= self.eps).tolist()
            for s in self.slots:
                s.n += 1
            ended = [r for r, s in enumerate(self.slots) if done[r] or s.n >= spec.max_iters]
            if ended:
                break
        out = [(self.slots[r].owner, self.u[r : r + 1].clone(), self.p[r : r + 1].clone(),
                self.slots[r].n) for r in ended]
        self._free = ended
        return out

    def _median_rows(self, rows: list[int]) -> None:
        if not rows:
            return
        k = self.spec.median_k
        if len(rows) == len(self.slots):
            self.u = _median_flow(self.spec.median, self.u, k)
            return
        idx = torch.tensor(rows, dtype=torch.long, device=self.u.device)
        self.u = self.u.index_copy(0, idx, _median_flow(self.spec.median, self.u[idx], k))


def _median_flow(median: Callable, u: torch.Tensor, k: int) -> torch.Tensor:
    """Median of the two flow channels; the illumination field (channel 2) is left alone."""
    flow = median(u[:, :2].contiguous(), k)
    return flow if u.shape[1] == 2 else torch.cat([flow, u[:, 2:]], dim=1)


class MaskedPool(_PoolBase):
    """Fixed B slots, k iterations per call, per-slot active flags kept on the device."""

    def __init__(self, spec: PoolSpec, eps: float, capacity: int, counters: Counters,
                 shape: tuple[int, int, int], device: torch.device) -> None:
        super().__init__(spec, eps, capacity, counters)
        ch, h, w = shape
        self.slots: list[Slot | None] = [None] * capacity
        self.u = torch.zeros(capacity, ch, h, w, device=device)
        self.p = torch.zeros(capacity, ch, 2, h, w, device=device)
        self.data = [torch.zeros(capacity, h, w, device=device) for _ in range(4)]
        self.n = torch.zeros(capacity, dtype=torch.int32, device=device)
        self.active = torch.zeros(capacity, dtype=torch.bool, device=device)

    def occupied(self) -> int:
        return sum(s is not None for s in self.slots)

    def _refill(self) -> None:
        for b, slot in enumerate(self.slots):
            if slot is None and self.queue:
                owner, u, p, data = self.queue.pop(0)
                self.slots[b] = Slot(owner)
                self.u[b], self.p[b] = u[0], p[0]
                for field, d in zip(self.data, data[0], strict=True):
                    field[b] = d
                self.n[b] = 0
                self.active[b] = True

    def run(self, k: int) -> list[tuple[Any, torch.Tensor, torch.Tensor, int]]:
        self._refill()
        start = [(s.n if s is not None else None) for s in self.slots]
        if all(n is None for n in start):
            return []
        spec, c, d = self.spec, self.counters, self.data
        m4, m5 = self.active.view(-1, 1, 1, 1), self.active.view(-1, 1, 1, 1, 1)
        c.host_calls += 1
        for j in range(k):
            if spec.median_k > 1:
                self._median(start, j)
            un, pn, err = spec.step(self.u, self.p, *d, spec.consts)
            m4, m5 = self.active.view(-1, 1, 1, 1), self.active.view(-1, 1, 1, 1, 1)
            self.u, self.p = torch.where(m4, un, self.u), torch.where(m5, pn, self.p)
            self.n += self.active.to(torch.int32)
            self.active = self.active & (err > self.eps) & (self.n < spec.max_iters)
            c.slot_iterations += self.capacity
            c.pool_iterations += 1
        n, active = torch.stack([self.n, self.active.to(torch.int32)]).tolist()  # the one sync
        c.syncs += 1
        c.active_iterations += sum(n[b] - s for b, s in enumerate(start) if s is not None)
        return self._collect(n, active)

    def _median(self, start: list[int | None], j: int) -> None:
        """Median on the slots whose outer loop starts now (predicted from the counts at the call's
        start; a slot that stopped meanwhile is masked out on the device)."""
        rows = [b for b, s in enumerate(start) if s is not None and (s + j) % self.spec.inner == 0]
        if not rows:
            return
        idx = torch.tensor(rows, dtype=torch.long, device=self.u.device)
        med = _median_flow(self.spec.median, self.u[idx], self.spec.median_k)
        keep = self.active[idx].view(-1, 1, 1, 1)
        self.u = self.u.index_copy(0, idx, torch.where(keep, med, self.u[idx]))

    def _collect(self, n: list[int], active: list[int]) -> list:
        out = []
        for b, slot in enumerate(self.slots):
            if slot is not None:
                slot.n = n[b]
                if not active[b]:
                    out.append((slot.owner, self.u[b : b + 1].clone(), self.p[b : b + 1].clone(),
                                n[b]))
                    self.slots[b] = None
        return out


class FusedPool(MaskedPool):
    """Fixed B slots with the packed ping-pong state of the fused kernels (flow channels only)."""

    def __init__(self, spec: PoolSpec, eps: float, capacity: int, counters: Counters,
                 shape: tuple[int, int, int], device: torch.device,
                 iterate: Callable[..., None]) -> None:
        _PoolBase.__init__(self, spec, eps, capacity, counters)
        _, h, w = shape
        self.iterate = iterate
        self.slots = [None] * capacity
        self.state = torch.zeros(2, capacity, 6, h, w, device=device)
        self.data = torch.zeros(capacity, 4, h, w, device=device)
        self.n = torch.zeros(capacity, dtype=torch.int32, device=device)
        self.active = torch.zeros(capacity, dtype=torch.int32, device=device)
        self.err = torch.zeros(capacity, dtype=torch.float32, device=device)

    def _refill(self) -> None:
        for b, slot in enumerate(self.slots):
            if slot is None and self.queue:
                owner, u, p, data = self.queue.pop(0)
                self.slots[b] = Slot(owner)
                self.state[0, b, :2], self.state[0, b, 2:] = u[0], p[0].reshape(4, *u.shape[-2:])
                self.data[b] = data[0]
                self.n[b] = 0
                self.active[b] = 1

    def run(self, k: int) -> list[tuple[Any, torch.Tensor, torch.Tensor, int]]:
        self._refill()
        start = [(s.n if s is not None else None) for s in self.slots]
        if all(n is None for n in start):
            return []
        spec, c = self.spec, self.counters
        l_t, theta, taut, _ = spec.consts
        self.iterate(self.state, self.data, self.n, self.active, self.err, k=k, inner=spec.inner,
                     max_iters=spec.max_iters, median=spec.median_k, eps=self.eps, l_t=l_t,
                     theta=theta, taut=taut)
        c.host_calls += 1
        c.pool_iterations += k
        c.slot_iterations += k * self.capacity
        n, active = torch.stack([self.n, self.active]).tolist()  # the one sync
        c.syncs += 1
        c.active_iterations += sum(n[b] - s for b, s in enumerate(start) if s is not None)
        out = []
        h, w = self.state.shape[-2:]
        for b, slot in enumerate(self.slots):
            if slot is not None:
                slot.n = n[b]
                if not active[b]:
                    cur = self.state[n[b] % 2, b]
                    out.append((slot.owner, cur[None, :2].clone(),
                                cur[None, 2:].reshape(1, 2, 2, h, w).clone(), n[b]))
                    self.slots[b] = None
        return out


def reference_iterations(state: torch.Tensor, data: torch.Tensor, n: torch.Tensor,
                         active: torch.Tensor, err: torch.Tensor, *, k: int, inner: int,
                         max_iters: int, median: int, eps: float, l_t: float, theta: float,
                         taut: float, median_fn: Callable | None = None) -> None:
    """Torch oracle of the fused kernel `tvl1_triton.tvl1_iterations` (same arguments, in place).

    state (2, B, 6, H, W): slot b's state is in buffer n[b] % 2 (u1, u2, p11, p12, p21, p22); an
    iteration reads that buffer and writes the other; inactive slots are left untouched.
    """
    median_fn = median_fn or ops.median_filter
    _, bsz, _, h, w = state.shape
    rows = torch.arange(bsz, device=state.device)
    consts = (l_t, theta, taut, 0.0)
    for _ in range(k):
        act = active.bool()
        par = (n % 2).long()
        cur = state[par, rows]
        u, p = cur[:, :2], cur[:, 2:].reshape(bsz, 2, 2, h, w)
        at = act & (n % inner == 0)
        if median > 1 and bool(at.any()):  # the oracle may sync; the fused kernel does not
            u = torch.where(at.view(-1, 1, 1, 1), median_fn(u.contiguous(), median), u)
        un, pn, e = ops.tvl1_iteration(u, p, data[:, 0], data[:, 1], data[:, 2], data[:, 3], consts)
        new = torch.cat([un, pn.reshape(bsz, 4, h, w)], dim=1)
        dst = 1 - par
        state[dst, rows] = torch.where(act.view(-1, 1, 1, 1), new, state[dst, rows])
        err.copy_(torch.where(act, e.to(err.dtype), err))
        n += act.to(n.dtype)
        active.copy_((act & (e > eps) & (n < max_iters)).to(active.dtype))
