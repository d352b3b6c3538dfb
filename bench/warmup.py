"""First-call time of the tvl1 engine in a fresh process: cold vs warm flowkit cache.

    python bench/warmup.py                   # 3 runs: empty cache, then twice with it filled
    python bench/warmup.py --torch-compile   # the same for the torch.compile path (no C kernel)

Each run is a new Python process (like a worker) that builds the engine and times its first call on
one 64x64 pair (building or loading the kernels dominates) and a second call; FLOWKIT_CACHE_DIR points
at a temporary folder, so the user's own cache is neither used nor touched. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, time, logging
t0 = time.perf_counter()
import numpy as np, torch
from flowkit.flow import create_engine
logging.basicConfig(level=logging.WARNING, format="%(message)s")
torch.set_num_threads({threads})
rng = np.random.default_rng(0)
a = rng.integers(0, 255, (1, 64, 64), dtype=np.uint8)
b = np.roll(a, 1, axis=2)
t1 = time.perf_counter()
engine = create_engine("tvl1", "cpu", compile=True)
engine(a, b)
t2 = time.perf_counter()
engine(a, b)
t3 = time.perf_counter()
print(json.dumps({{"import": t1 - t0, "first": t2 - t1, "second": t3 - t2,
                  "kernel": engine.kernel}}))
"""


def run_child(cache: Path, threads: int, torch_compile: bool = False) -> dict:
    env = dict(os.environ, FLOWKIT_CACHE_DIR=str(cache), PYTHONPATH=str(ROOT))
    env.pop("FLOWKIT_TVL1_NATIVE", None)
    if torch_compile:
        env["FLOWKIT_TVL1_NATIVE"] = "0"
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    env.pop("FLOWKIT_TVL1_COMPILE", None)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD.format(threads=threads)], env=env,
                          capture_output=True, text=True, check=True)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process"] = time.perf_counter() - start
    out["progress_line"] = ("for the first time" in proc.stderr
                            or "building the CPU kernel" in proc.stderr)
    return out


def main() -> None:
    """Run the cold and warm children and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warm-runs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--torch-compile", action="store_true",
                        help="the torch.compile path (FLOWKIT_TVL1_NATIVE=0) instead of the C kernel")
    args = parser.parse_args()
    lines = [f"- command: `python {' '.join(sys.argv)}`; load average at start "
             f"{os.getloadavg()[0]:.2f}", "",
             "| kernel | cache | first call (s) | second call (s) | process total (s) | progress line |",
             "|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(1 + args.warm_runs):
            r = run_child(Path(tmp), args.threads, args.torch_compile)
            if r["kernel"] == "eager":
                raise SystemExit("the engine fell back to the eager oracle (no C compiler?)")
            lines.append(f"| {r['kernel']} | {'cold (empty)' if i == 0 else 'warm'} | {r['first']:.2f} "
                         f"| {r['second']:.3f} | {r['process']:.2f} "
                         f"| {'yes' if r['progress_line'] else 'no'} |")
    lines.append(f"\nload average at end: {os.getloadavg()[0]:.2f}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
