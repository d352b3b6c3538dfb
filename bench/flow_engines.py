"""Flow engines side by side: pairs/s, agreement with cv2 TV-L1 and error against known motion.

    python bench/flow_engines.py                              # CPU, 340x256 and 640x480
    python bench/flow_engines.py --device cuda --batch-sizes 8,32
    python bench/flow_engines.py --baseline HEAD     # also run tvl1 as committed at a git revision

Frames are synthetic smooth textures moved by a sub-pixel translation plus a small rotation, with
Gaussian noise (sigma 2 grey levels). The table goes to stdout as markdown.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
import types
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flowkit.flow import create_engine, list_engines  # noqa: E402

BYTES_PER_PX_ITER = 88  # fused two-kernel design (reference section 10.2)


def make_pairs(n: int, w: int, h: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n textured pairs with translation (|d| <= 3 px) + rotation (<= 1 deg) + noise, and truth."""
    rng = np.random.default_rng(seed)
    m = 32
    prevs, nxts, flows = [], [], []
    ys, xs = np.mgrid[0 : h + 2 * m, 0 : w + 2 * m].astype(np.float64)
    for _ in range(n):
        tex = cv2.GaussianBlur(rng.random((h + 2 * m, w + 2 * m)).astype(np.float32), (0, 0), 2.0)
        tex = (tex - tex.min()) * np.float32(255.0 / (tex.max() - tex.min()))
        rot = cv2.getRotationMatrix2D(((w + 2 * m) / 2, (h + 2 * m) / 2), rng.uniform(-1, 1), 1.0)
        rot[:, 2] += rng.uniform(-3, 3, 2)
        moved = cv2.warpAffine(tex, rot, (w + 2 * m, h + 2 * m), flags=cv2.INTER_CUBIC)
        crop = (slice(m, m + h), slice(m, m + w))
        for img, out in ((tex, prevs), (moved, nxts)):
            noisy = img[crop] + rng.normal(0, 2.0, (h, w))
            out.append(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))
        fx = rot[0, 0] * xs + rot[0, 1] * ys + rot[0, 2] - xs
        fy = rot[1, 0] * xs + rot[1, 1] * ys + rot[1, 2] - ys
        flows.append(np.stack([fx[crop], fy[crop]]).astype(np.float32))
    return np.stack(prevs), np.stack(nxts), np.stack(flows)


def epe(flow: np.ndarray, truth: np.ndarray, border: int = 16) -> float:
    """Mean end-point error away from the borders (where zero-padded warping is ill-posed)."""
    d = (flow - truth)[..., border:-border, border:-border]
    return float(np.sqrt((d**2).sum(axis=1)).mean())


def run_engine(engine, prev: np.ndarray, nxt: np.ndarray, batch: int) -> tuple[np.ndarray, float,
                                                                                  list[float]]:
    """Flow of all pairs in chunks of `batch`; returns (flow, seconds, FRE iterations per pair)."""
    out, fre = [], []
    start = time.perf_counter()
    for i in range(0, prev.shape[0], batch):
        out.append(engine(prev[i : i + batch], nxt[i : i + batch]))
        fre += getattr(engine, "last_stats", {}).get("fre_iterations", [])
    if engine.device.startswith("cuda"):
        torch.cuda.synchronize()
    return np.concatenate(out), time.perf_counter() - start, fre


def load_baseline(rev: str) -> str:
    """Register the tvl1 engine of git revision `rev` as "tvl1@rev" (for before/after runs)."""
    root = Path(__file__).resolve().parents[1]

    def source(path: str) -> str:
        return subprocess.run(["git", "show", f"{rev}:{path}"], cwd=root, check=True,
                              capture_output=True, text=True).stdout

    name = f"tvl1@{rev}"
    ops = types.ModuleType("flowkit_baseline_tvl1_ops")
    exec(compile(source("flowkit/flow/tvl1_ops.py"), f"{name}:tvl1_ops.py", "exec"), ops.__dict__)
    sys.modules[ops.__name__] = ops
    engine_src = source("flowkit/flow/tvl1.py")
    engine_src = engine_src.replace("from flowkit.flow import tvl1_ops as ops",
                                    f"import {ops.__name__} as ops")
    engine_src = engine_src.replace('@register_engine("tvl1")', f'@register_engine("{name}")')
    module = types.ModuleType("flowkit_baseline_tvl1")
    sys.modules[module.__name__] = module
    exec(compile(engine_src, f"{name}:tvl1.py", "exec"), module.__dict__)
    return name


def header(args: argparse.Namespace) -> list[str]:
    return [
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"device {args.device}"
        + (f" ({torch.cuda.get_device_name(0)})" if args.device.startswith("cuda") else ""),
        f"- versions: python {platform.python_version()}, torch {torch.__version__}, "
        f"opencv {cv2.__version__}, numpy {np.__version__}",
        f"- threads: torch {torch.get_num_threads()}, cv2 {cv2.getNumThreads()}",
        f"- load average at start: {os.getloadavg()[0]:.2f}",
        f"- command: `python {' '.join(sys.argv)}`",
    ]


def bench_size(args: argparse.Namespace, w: int, h: int) -> list[str]:
    """Rows of the table for one frame size."""
    prev, nxt, truth = make_pairs(args.pairs, w, h, seed=w * h)
    ref, ref_s, _ = run_engine(create_engine("tvl1-opencv", "cpu"), prev, nxt, 1)
    rows = [_row(f"{w}x{h}", "tvl1-opencv", 1, ref_s, args.pairs, ref, ref, truth, [], w * h)]
    for name in ("farneback", "dis"):
        flow, sec, _ = run_engine(create_engine(name, "cpu"), prev, nxt, 1)
        rows.append(_row(f"{w}x{h}", name, 1, sec, args.pairs, flow, ref, truth, [], w * h))
    for name in [*args.baselines, "tvl1"]:
        engine = create_engine(name, args.device, compile=args.compile)
        # One small warm-up per size: the compiled kernels are shape-generic (symbolic sizes)
        _, warm, _ = run_engine(engine, prev[:2], nxt[:2], 2)
        args.warmups.append(f"{name} {w}x{h} (2 pairs): {warm:.1f} s")
        for batch in args.batch_sizes:
            flow, sec, fre = run_engine(engine, prev, nxt, batch)
            rows.append(_row(f"{w}x{h}", name, batch, sec, args.pairs, flow, ref, truth, fre,
                             w * h))
    if "tvl1-cuda-opencv" in list_engines() and args.device.startswith("cuda"):
        flow, sec, _ = run_engine(create_engine("tvl1-cuda-opencv", args.device), prev, nxt, 1)
        rows.append(_row(f"{w}x{h}", "tvl1-cuda-opencv", 1, sec, args.pairs, flow, ref, truth, [],
                         w * h))
    return rows


def _row(size: str, name: str, batch: int, sec: float, n: int, flow: np.ndarray, ref: np.ndarray,
         truth: np.ndarray, fre: list[float], area: int) -> str:
    delta = float(np.abs(flow - ref).mean())
    fre_mean = f"{np.mean(fre):.0f}" if fre else "-"
    gbs = f"{sum(fre) * area * BYTES_PER_PX_ITER / sec / 1e9:.1f}" if fre else "-"
    return (f"| {size} | {name} | {batch} | {n / sec:.2f} | {delta:.4f} | {epe(flow, truth):.4f} "
            f"| {fre_mean} | {gbs} |")


def main() -> None:
    """Parse flags, run every size, print the markdown section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", default="340x256,640x480")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--batch-sizes", default="1,4,8")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--compile", default="auto", choices=["auto", "on", "off"])
    parser.add_argument("--baseline", action="append", default=[], metavar="REV",
                        help="also run tvl1 as in git revision REV (repeatable), as 'tvl1@REV'")
    args = parser.parse_args()
    args.baselines = [load_baseline(rev) for rev in args.baseline]
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    args.compile = {"auto": "auto", "on": True, "off": False}[args.compile]
    args.warmups = []
    torch.set_num_threads(args.threads)
    lines = ["## Flow engines", "", *header(args), "",
             "| size | engine | batch | pairs/s | mean abs delta vs tvl1-opencv (px) | EPE (px) "
             "| FRE iterations/pair | GB/s at 88 B/px/it |",
             "|---|---|---|---|---|---|---|---|"]
    for size in args.sizes.split(","):
        w, h = (int(v) for v in size.lower().split("x"))
        lines += bench_size(args, w, h)
        print(f"done {size}", file=sys.stderr, flush=True)
    lines.append(f"\nload average at end: {os.getloadavg()[0]:.2f}; tvl1 warm-up call (includes "
                 f"torch.compile on first use): {'; '.join(args.warmups)}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
