"""Benchmark C3D/I3D clip throughput with random weights; prints a markdown table.

    python bench/models.py                                 # CPU, c3d and i3d (rgb, flow)
    python bench/models.py --device cuda --amp bf16 --batch 8

Times the model only (no decoding or preprocessing): each row is one model/stream at its default
clip length and crop, ``--iters`` timed batches after ``--warmup`` untimed ones.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from contextlib import nullcontext

import torch

from flowkit.models import create_model, get_model_spec

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _sync(device: torch.device) -> None:
    """Wait for queued GPU work so the timer sees it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_model(name: str, stream: str, device: torch.device, amp: str, batch: int,
               warmup: int, iters: int) -> dict:
    """Median seconds per batch of default-size clips for one model/stream."""
    spec = get_model_spec(name)
    model = create_model(name, stream=stream).to(device)
    chans = 3 if stream == "rgb" else 2
    x = torch.randn(batch, chans, spec.clip_len, spec.input_size, spec.input_size, device=device)
    dtype = AMP_DTYPES[amp]
    autocast = torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()
    times = []
    with torch.inference_mode(), autocast:
        for i in range(warmup + iters):
            _sync(device)
            start = time.perf_counter()
            model.extract(x, spec.default_layer)
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {"model": name, "stream": stream, "layer": spec.default_layer,
            "clip": f"{spec.clip_len}x{spec.input_size}x{spec.input_size}", "batch": batch,
            "ms_per_clip": 1000 * seconds / batch, "clips_per_s": batch / seconds,
            "frames_per_s": batch * spec.clip_len / seconds}


def markdown(rows: list[dict], device: str, amp: str) -> str:
    """Rows as a markdown table."""
    lines = ["| model | stream | layer | clip (TxHxW) | batch | device | amp | ms/clip | clips/s "
             "| frames/s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['stream']} | {r['layer']} | {r['clip']} | {r['batch']} "
                     f"| {device} | {amp} | {r['ms_per_clip']:.1f} | {r['clips_per_s']:.2f} "
                     f"| {r['frames_per_s']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    """Parse options, time each model/stream, print the environment and the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="c3d,i3d", help="comma-separated registry names")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", choices=sorted(AMP_DTYPES), default="none")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    rows = []
    for name in args.models.split(","):
        for stream in get_model_spec(name).streams:
            rows.append(time_model(name, stream, device, args.amp, args.batch, args.warmup,
                                   args.iters))
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(f"torch {torch.__version__}, {where or platform.machine()}, "
          f"{torch.get_num_threads()} CPU threads, random weights, median of {args.iters}\n")
    print(markdown(rows, args.device, args.amp))


if __name__ == "__main__":
    main()
