"""Benchmark model throughput with random weights; prints a markdown table.

    python bench/models.py                                 # CPU, c3d and i3d (rgb, flow)
    python bench/models.py --models all --iters 2          # every model, RAFT included
    python bench/models.py --models all --device cuda --amp bf16 --batch 8     # GPU

Times the model only (no decoding or preprocessing): each row is one model/stream at its default
clip length and crop (frame encoders: one image per item), ``--iters`` timed batches after
``--warmup`` untimed ones. ``raft_large``/``raft_small`` rows time flow pairs at 256x344.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from contextlib import nullcontext

import torch

from flowkit.models import create_model, get_model_spec, list_models

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _sync(device: torch.device) -> None:
    """Wait for queued GPU work so the timer sees it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(call, device: torch.device, amp: str, warmup: int, iters: int) -> float:
    """Median wall time of `call()` after `warmup` untimed calls (inference mode, optional autocast)."""
    dtype = AMP_DTYPES[amp]
    autocast = torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()
    times = []
    with torch.inference_mode(), autocast:
        for i in range(warmup + iters):
            _sync(device)
            start = time.perf_counter()
            call()
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_model(name: str, stream: str, device: torch.device, amp: str, batch: int,
               warmup: int, iters: int) -> dict:
    """Median seconds per batch of default-size clips for one model/stream."""
    if name.startswith("raft_"):
        return time_raft(name, device, amp, batch, warmup, iters)
    spec = get_model_spec(name)
    model = create_model(name, stream=stream).to(device)
    chans = 3 if stream == "rgb" else 2
    size = (spec.input_size, spec.input_size)
    shape = (batch, chans, *size) if spec.kind == "frame" else (batch, chans, spec.clip_len, *size)
    x = torch.randn(*shape, device=device)
    seconds = median_seconds(lambda: model.extract(x, spec.default_layer), device, amp, warmup, iters)
    if spec.kind == "frame":
        return {"model": name, "stream": stream, "layer": spec.default_layer,
                "clip": f"1x{spec.input_size}x{spec.input_size}", "batch": batch,
                "ms_per_clip": 1000 * seconds / batch, "clips_per_s": batch / seconds,
                "frames_per_s": batch / seconds}
    return {"model": name, "stream": stream, "layer": spec.default_layer,
            "clip": f"{spec.clip_len}x{spec.input_size}x{spec.input_size}", "batch": batch,
            "ms_per_clip": 1000 * seconds / batch, "clips_per_s": batch / seconds,
            "frames_per_s": batch * spec.clip_len / seconds}


def time_raft(name: str, device: torch.device, amp: str, batch: int, warmup: int, iters: int) -> dict:
    """Median seconds per batch of 256x344 frame pairs through torchvision RAFT (20 iterations)."""
    from torchvision.models import optical_flow

    net = getattr(optical_flow, name)(weights=None).eval().to(device)
    a = torch.rand(batch, 3, 256, 344, device=device) * 2 - 1
    b = torch.roll(a, 2, dims=-1)
    seconds = median_seconds(lambda: net(a, b, num_flow_updates=20), device, amp, warmup, iters)
    return {"model": name, "stream": "flow pairs", "layer": "20 iterations", "clip": "2x256x344",
            "batch": batch, "ms_per_clip": 1000 * seconds / batch, "clips_per_s": batch / seconds,
            "frames_per_s": batch / seconds}


def all_models() -> list[str]:
    """Every user-facing registry name (list_models hides the *_test variants) and the RAFT engines."""
    return [*list_models(), "raft_large", "raft_small"]


def markdown(rows: list[dict], device: str, amp: str) -> str:
    """Rows as a markdown table."""
    lines = ["| model | stream | layer | clip (TxHxW) | batch | device | amp | ms/clip | clips/s "
             "| frames/s (pairs/s for RAFT) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['stream']} | {r['layer']} | {r['clip']} | {r['batch']} "
                     f"| {device} | {amp} | {r['ms_per_clip']:.1f} | {r['clips_per_s']:.2f} "
                     f"| {r['frames_per_s']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    """Parse options, time each model/stream, print the environment and the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="c3d,i3d",
                        help="comma-separated registry names (and raft_large, raft_small), or 'all'")
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
    names = all_models() if args.models == "all" else args.models.split(",")
    for name in names:
        streams = ("flow",) if name.startswith("raft_") else get_model_spec(name).streams
        for stream in streams:
            rows.append(time_model(name, stream, device, args.amp, args.batch, args.warmup,
                                   args.iters))
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(f"torch {torch.__version__}, {where or platform.machine()}, "
          f"{torch.get_num_threads()} CPU threads, random weights, median of {args.iters}\n")
    print(markdown(rows, args.device, args.amp))


if __name__ == "__main__":
    main()
