"""GPU model of the TV-L1 scheduler, measured on CPU with real frames.

    python bench/gpu_model.py                          # generated H.264 clip, 340x256, one scene cut
    python bench/gpu_model.py --video bikes.mp4 --pairs 64 --batch-sizes 1,8,32,64

1. Runs every pair once through the exact engine (CPU) and records its iterations per (level, warp).
2. Replays the scheduler (the real tvl1_sched.Scheduler and FusedPool: refills, k-iteration calls,
   read-backs) per batch size with those per-task stopping iterations, counting slot-iterations,
   launches and host syncs; the lockstep solver of before is computed from the same counts.
3. Models bytes per pixel-iteration of the fused kernels and projects pairs/s on H100 and H200.
Prints a markdown section for BENCHMARKS.md ("GPU model").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flowkit.flow import tvl1_ops as ops  # noqa: E402
from flowkit.flow.tvl1 import TVL1Engine  # noqa: E402
from flowkit.flow.tvl1_pools import PoolSpec  # noqa: E402
from flowkit.flow.tvl1_sched import Scheduler  # noqa: E402
from flowkit.synthetic import h264_clip  # noqa: E402

# Bytes per pixel moved in DRAM, float32 (neighbour reads hit L1/L2; one pass per kernel).
ITER_BYTES = 60  # fused step: reads i1wx, i1wy, rho_c, u1, u2, p11..p22 (9), writes u, p (6)
WARP_BYTES = 40  # fused warp: reads u (2), I1/I1x/I1y (3, taps cached), I0 (1); writes data (4)
REFILL_BYTES = 48  # slot load: read + write u, p (6 + 6)
EXTRACT_BYTES = 48  # slot read-back of u, p at the end of a task (6 + 6)
TASK_BYTES = WARP_BYTES + REFILL_BYTES + EXTRACT_BYTES
DEVICES = {"H100 SXM": 3.35e12, "H200": 4.8e12}
BW_EFFICIENCY = 0.8  # achievable fraction of peak DRAM bandwidth for streaming kernels
T_KERNEL = 3e-6  # minimum time of one kernel in a back-to-back stream (launch gap, tiny grids)
T_SYNC = 20e-6  # one read-back: the device drains, the host reads n/active and refills slots


def read_pairs(path: Path, n: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """n consecutive gray pairs (k, k+1) resized to size (w, h), uint8."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    while len(frames) < n + 1:
        ok, frame = cap.read()
        if not ok:
            break
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        frames.append(cv2.resize(gray, size, interpolation=cv2.INTER_AREA))
    cap.release()
    if len(frames) < 2:
        raise SystemExit(f"{path}: fewer than 2 frames could be read")
    frames = np.stack(frames)
    return frames[:-1][:n], frames[1:][:n]


class ReplayScheduler(Scheduler):
    """The scheduler with each task's stopping iteration known in advance (no TV-L1 arithmetic):
    scheduling, refills, read-backs and counts are those of the real run with the same stops."""

    def __init__(self, tasks: dict[int, list[list[int]]], slots: int, k: int, inner: int = 30,
                 outer: int = 10, warps: int = 5) -> None:
        spec = PoolSpec(inner, outer, 5, (0.0, 0.0, 0.0, 0.0), step=None, median=None)
        self.tasks = tasks
        self.areas: dict[tuple[int, int], int] = {}  # stand-in level shape -> real pixels
        self.launches: list[tuple[int, int]] = []  # (pixels per slot, active slots) per launch
        super().__init__(spec, warps=warps, epsilon=0.01, warp=None, upsample=self._up,
                         mode="fused", slots=slots, k=k, iterate=self._iterate)

    @staticmethod
    def _up(u: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return u.new_zeros(1, u.shape[1], *size)

    def _task_data(self, group: list) -> torch.Tensor:
        h, w = group[0].u.shape[-2:]
        data = torch.zeros(len(group), 4, h, w)
        for i, pr in enumerate(group):
            data[i, 0, 0, 0] = self.tasks[pr.ticket][pr.index][len(pr.tasks)]
        return data

    def _iterate(self, state, data, n, active, err, *, k, max_iters, **_) -> None:
        stop = data[:, 0, 0, 0].to(torch.int32)
        area = self.areas[tuple(data.shape[-2:])]
        for _ in range(k):
            act = active.bool()
            self.launches.append((area, int(act.sum())))
            n += act.to(n.dtype)
            active.copy_((act & (n < stop) & (n < max_iters)).to(active.dtype))


def replay(tasks: list[list[int]], shapes0: list[tuple[int, int]], batch: int, slots: int,
           k: int, streamed: bool, **loop: int) -> ReplayScheduler:
    """Run the replay for pairs submitted in calls of `batch` (all at once when `streamed`);
    loop: inner, outer, warps if not cv2's defaults."""
    calls = [tasks[i : i + batch] for i in range(0, len(tasks), batch)]
    sched = ReplayScheduler({}, slots, k, **loop)
    # Tiny stand-in tensors, one distinct shape per level: the schedule depends only on the stops.
    stand_in = [(2, 1 + len(shapes0) - s) for s in range(len(shapes0))]  # same area order
    sched.areas = {sh: h * w for sh, (h, w) in zip(stand_in, shapes0, strict=True)}
    for t, chunk in enumerate(calls):
        sched.tasks[t] = chunk
        lv = [torch.zeros(len(chunk), 1, h, w) for h, w in stand_in]
        ticket = sched.submit(lv, lv, torch.zeros(len(chunk), 2, *stand_in[-1]))
        if not streamed:
            sched.run_until(ticket)
    sched.run_until(None)
    return sched


def level_shapes(h: int, w: int, nscales: int = 5) -> list[tuple[int, int]]:
    shapes = [(h, w)]
    for _ in range(1, nscales):
        nh, nw = ops.scaled_size(shapes[-1][0], 0.8), ops.scaled_size(shapes[-1][1], 0.8)
        if min(nh, nw) < 16:
            break
        shapes.append((nh, nw))
    return shapes


def lockstep_slot_iterations(tasks: list[list[int]], batch: int) -> int:
    """The previous masked lockstep solver: every slot runs the batch's maximum of each warp."""
    total = 0
    for i in range(0, len(tasks), batch):
        chunk = tasks[i : i + batch]
        total += len(chunk) * sum(max(t[j] for t in chunk) for j in range(len(chunk[0])))
    return total


def model_time(sched: ReplayScheduler, tasks: list[list[int]], shapes: list[tuple[int, int]],
               bandwidth: float) -> float:
    """Seconds for the replayed schedule on a device with `bandwidth` B/s (see the module doc)."""
    bw = bandwidth * BW_EFFICIENCY
    t = sum(max(area * active * ITER_BYTES / bw, T_KERNEL) for area, active in sched.launches)
    areas = [h * w for h, w in reversed(shapes)]  # task order: coarsest level first, 5 warps each
    task_px = sum(areas[j // 5] for t in tasks for j in range(len(t)))
    t += task_px * TASK_BYTES / bw + sched.counters.warp_calls * T_KERNEL
    return t + sched.counters.syncs * T_SYNC


def bytes_per_px_iter(tasks: list[list[int]], shapes: list[tuple[int, int]]) -> float:
    areas = [h * w for h, w in reversed(shapes)]
    px_it = sum(areas[j // 5] * n for t in tasks for j, n in enumerate(t))
    task_px = sum(areas[j // 5] for t in tasks for j in range(len(t)))
    return (px_it * ITER_BYTES + task_px * TASK_BYTES) / px_it


def exact_tasks(prev: np.ndarray, nxt: np.ndarray, compile_: str) -> tuple[list[list[int]], float]:
    engine = TVL1Engine("cpu", compile=compile_)
    start = time.perf_counter()
    engine(prev, nxt)
    sec = time.perf_counter() - start
    return engine.last_stats["task_iterations"], sec


def main() -> None:
    """Parse flags, run the exact pass and the replays, print the markdown section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, help="any video; default: generated H.264 clip")
    parser.add_argument("--size", default="340x256")
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--cut-at", type=int, default=None, help="scene cut frame (generated clip)")
    parser.add_argument("--batch-sizes", default="1,8,32,64")
    parser.add_argument("--k", type=int, default=10, help="iterations per host read-back")
    parser.add_argument("--compile", default="auto", choices=["auto", "on", "off"])
    parser.add_argument("--repeat", type=int, default=4, help="streamed rows: feed the pairs "
                        "this many times in a row (a longer stream of such videos)")
    parser.add_argument("--tasks", type=Path, help="JSON of per-pair task iterations: read it "
                        "if it exists (skips the exact pass), else write it")
    args = parser.parse_args()
    w, h = (int(v) for v in args.size.lower().split("x"))
    if args.tasks and args.tasks.exists():
        tasks, sec = json.loads(args.tasks.read_text()), 0.0
    else:
        with tempfile.TemporaryDirectory() as tmp:
            video = args.video or h264_clip(Path(tmp) / "clip.mp4", n=args.pairs + 1, height=h,
                                            width=w, cut_at=args.cut_at or args.pairs // 2 + 1)
            prev, nxt = read_pairs(video, args.pairs, (w, h))
        comp = {"auto": "auto", "on": True, "off": False}[args.compile]
        tasks, sec = exact_tasks(prev, nxt, comp)
        if args.tasks:
            args.tasks.write_text(json.dumps(tasks))
    shapes = level_shapes(h, w)
    required = sum(map(sum, tasks))
    per_pair = [sum(t) for t in tasks]
    print(f"exact pass: {len(tasks)} pairs in {sec:.1f} s; iterations per pair mean "
          f"{np.mean(per_pair):.0f}, max {max(per_pair)}", file=sys.stderr)
    bpi = bytes_per_px_iter(tasks, shapes)
    areas = [h * w for h, w in reversed(shapes)]
    px_it = sum(areas[j // 5] * n for t in tasks for j, n in enumerate(t))
    bound = [len(tasks) * bw * BW_EFFICIENCY / (px_it * bpi) for bw in DEVICES.values()]
    lines = ["## GPU model (`bench/gpu_model.py`)", "",
             f"- frames: {args.video or 'generated H.264 clip (flowkit.synthetic.h264_clip)'}, "
             f"{len(tasks)} pairs at {w}x{h}; iterations per pair: mean {np.mean(per_pair):.0f}, "
             f"median {np.median(per_pair):.0f}, max {max(per_pair)} (7500 = cap)",
             f"- k = {args.k} iterations per host call; modelled {bpi:.1f} B/px/iteration "
             f"({ITER_BYTES} per fused iteration + {TASK_BYTES} per pixel per warp task); "
             f"bandwidth bound alone: {bound[0]:.0f} pairs/s on H100, {bound[1]:.0f} on H200",
             f"- command: `python {' '.join(sys.argv)}`; host {os.cpu_count()} CPUs", "",
             "| batch | feed | lockstep slot-its / required | scheduler executed / required "
             "| slot occupancy | host calls / it | syncs / it | kernel launches / it "
             "| H100 pairs/s | H200 pairs/s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        lock = lockstep_slot_iterations(tasks, batch) / required
        for feed, run in (("per call", tasks), ("streamed", tasks),
                          (f"streamed x{args.repeat}", tasks * args.repeat)):
            sched = replay(run, shapes, batch, batch, args.k, feed != "per call")
            c = sched.counters
            occ = c.active_iterations / max(1, c.slot_iterations)
            its = c.pool_iterations
            rates = [len(run) / model_time(sched, run, shapes, bw) for bw in DEVICES.values()]
            lines.append(f"| {batch} | {feed} | {lock:.2f} "
                         f"| {c.active_iterations / (required * len(run) // len(tasks)):.2f} "
                         f"| {occ:.2f} "
                         f"| {c.host_calls / its:.3f} | {c.syncs / its:.3f} | 1 (fused step) "
                         f"| {rates[0]:.0f} | {rates[1]:.0f} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
