"""End-to-end extract-flow throughput vs the engine alone and vs the naive loop users write; peak RSS.

Side by side in one run, on the same generated video:
  engine     the flow engine alone on pre-decoded gray frames (batches of --batch-size)
  flowkit    extract_video(): decode thread + batched engine + JPEG writer pool + atomic folder
  naive      cv2 decode -> cv2.optflow DualTVL1 per pair -> quantize -> cv2.imwrite (today's scripts)
Then peak RSS of `flowkit extract-flow` on a short and a long video (memory must not grow with length).

  python bench/extract_flow.py --size 340x256 --frames 33 --engine tvl1 --device cpu
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from flowkit.flow import create_engine
from flowkit.flow.quantize import quantize
from flowkit.inputs import VideoItem
from flowkit.pipelines.flow import FlowConfig, extract_video
from flowkit.synthetic import moving_video
from flowkit.video import read_all, to_gray


def engine_only(engine, gray: np.ndarray, batch: int) -> float:
    """Seconds for all consecutive pairs through the engine, in batches."""
    start = time.perf_counter()
    for k in range(0, len(gray) - 1, batch):
        end = min(k + batch, len(gray) - 1)
        engine(gray[k:end], gray[k + 1 : end + 1])
    return time.perf_counter() - start


def flowkit_e2e(video: Path, out: Path, cfg: FlowConfig, device: str) -> float:
    start = time.perf_counter()
    extract_video(VideoItem("v", video), out / "v", cfg, device)
    return time.perf_counter() - start


def naive_loop(video: Path, out: Path) -> float:
    """What users write today: decode, cv2 TV-L1 one pair at a time, quantize, imwrite."""
    out.mkdir(parents=True, exist_ok=True)
    tvl1 = cv2.optflow.DualTVL1OpticalFlow_create()
    start = time.perf_counter()
    cap = cv2.VideoCapture(str(video))
    ok, frame = cap.read()
    prev, k = to_gray(frame), 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        gray = to_gray(frame)
        flow = tvl1.calc(prev, gray, None)
        q = quantize(flow.transpose(2, 0, 1), 20.0)
        cv2.imwrite(str(out / f"flow_x_{k:05d}.jpg"), q[0])
        cv2.imwrite(str(out / f"flow_y_{k:05d}.jpg"), q[1])
        cv2.imwrite(str(out / f"img_{k:05d}.jpg"), frame)
        prev, k = gray, k + 1
    return time.perf_counter() - start


def peak_rss_mb(video: Path, out: Path, engine: str) -> float:
    """Peak RSS (MB) of a fresh process running `flowkit extract-flow` on one video (jobs=1: in-process).

    VmHWM, not ru_maxrss: the latter carries the parent's peak across fork+exec.
    """
    args = ["extract-flow", str(video), "-o", str(out), "-a", engine, "-q"]
    code = (
        "import sys\n"
        "from flowkit.cli import main\n"
        f"try:\n    main({args!r})\nexcept SystemExit:\n    pass\n"
        "print(next(line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return int(done.stdout.split()[-1]) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="340x256")
    ap.add_argument("--frames", type=int, default=33)
    ap.add_argument("--engine", default="tvl1")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--naive", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--rss-frames", type=int, nargs=2, default=(100, 2000), metavar=("SHORT", "LONG"))
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        video = moving_video(root / "bench.avi", n=args.frames, height=h, width=w, dx=1.3, dy=-0.7,
                             fourcc="MJPG")
        frames, _ = read_all(video)
        gray = np.stack([to_gray(f.image) for f in frames])
        pairs = len(gray) - 1
        engine = create_engine(args.engine, device=args.device)
        engine(gray[:2], gray[1:3])  # warm-up (compilation, allocations)
        cfg = FlowConfig(algorithm=args.engine, batch_size=args.batch_size)
        flowkit_e2e(video, root / "warm", cfg, args.device)
        t_engine = engine_only(engine, gray, args.batch_size)
        t_e2e = flowkit_e2e(video, root / "e2e", cfg, args.device)
        rows = [("engine only", t_engine), ("flowkit extract (decode+flow+write)", t_e2e)]
        if args.naive:
            rows.append(("naive loop (cv2 decode, cv2.optflow, imwrite)", naive_loop(video, root / "naive")))
        print(f"# extract-flow, {w}x{h}, {pairs} pairs, engine {args.engine} on {args.device}, "
              f"batch {args.batch_size}")
        print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
              f"torch {torch.__version__}, opencv {cv2.__version__}\n")
        print("| pipeline | seconds | pairs/s | vs engine only |\n|---|---|---|---|")
        for name, secs in rows:
            print(f"| {name} | {secs:.2f} | {pairs / secs:.2f} | {t_engine / secs:.2f} |")
        short_n, long_n = args.rss_frames
        print("\n| video | frames | peak RSS (MB), engine dis |\n|---|---|---|")
        for n in (short_n, long_n):
            clip = moving_video(root / f"rss{n}.avi", n=n, height=h, width=w, dx=1.0, fourcc="MJPG")
            print(f"| {w}x{h} | {n} | {peak_rss_mb(clip, root / f'rss{n}', 'dis'):.0f} |")


if __name__ == "__main__":
    main()
