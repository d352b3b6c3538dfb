"""TV-L1 on a busy machine: `tvl1` vs cv2's DualTVL1 side by side, idle and under contention.

    python bench/contention.py                   # the BENCHMARKS.md "Contention" table
    python bench/contention.py --omp-study       # also tvl1 under other OpenMP wait settings

Frames: an H.264 clip (libx264 via PyAV) of a textured scene under camera motion (pan + zoom) with a
scene cut, decoded and resized to 340x256 gray like extract-flow does. Conditions: idle; 1 and 2 busy
background processes (pure Python spin loops) on the same cores; the process confined to one core
(`taskset -c 0`). Each engine configuration runs in a fresh process (OpenMP reads its settings at
load), which derives flowkit's thread budget from its affinity and applies it to torch and cv2 alike,
then measures cv2 and tvl1 alternately in every condition. The table goes to stdout as markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZE = (340, 256)
# OpenMP settings compared by --omp-study (env of a fresh process; flowkit's own default is in threads.py).
VARIANTS = {
    "flowkit": None,  # what `import flowkit` sets (flowkit.threads.OPENMP_ENV)
    "libgomp default": {},
    "OMP_WAIT_POLICY=ACTIVE": {"OMP_WAIT_POLICY": "ACTIVE"},
    "GOMP_SPINCOUNT=10000": {"GOMP_SPINCOUNT": "10000"},
    # OpenCV's own pthreads pool (cv2's TV-L1, and tvl1's cv2.remap/medianBlur) also spins before it sleeps.
    "PASSIVE + OpenCV pool sleeps": {"OMP_WAIT_POLICY": "PASSIVE",
                                     "OPENCV_THREAD_POOL_ACTIVE_WAIT_WORKER": "0",
                                     "OPENCV_THREAD_POOL_ACTIVE_WAIT_MAIN": "0"},
}
CONDITIONS = ("idle", "1 busy process", "2 busy processes")


# -- frames ----------------------------------------------------------------------------------------
def make_clip(path: Path, frames: int = 14, seed: int = 0) -> Path:
    """A 640x360 H.264 clip: a texture panned and zoomed by a moving camera, a scene cut half way."""
    import av
    import cv2
    import numpy as np

    from flowkit.synthetic import texture

    scenes = [texture(720, 1280, seed), texture(720, 1280, seed + 1)]
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=25)
    stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
    stream.options = {"crf": "20", "preset": "veryfast"}
    for k in range(frames):
        scene = scenes[0] if k < frames // 2 else scenes[1]
        zoom = 1.0 + 0.01 * k
        matrix = cv2.getRotationMatrix2D((640, 360), 0.3 * k, zoom)
        matrix[:, 2] += (-320 + 2.5 * k, -180 + 1.5 * k)  # camera pan, in output pixels
        frame = cv2.warpAffine(scene, matrix, (640, 360), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT_101)
        noisy = np.clip(frame + np.random.default_rng(k).normal(0, 2, frame.shape), 0, 255)
        container.mux(stream.encode(av.VideoFrame.from_ndarray(noisy.astype(np.uint8), format="bgr24")))
    container.mux(stream.encode())
    container.close()
    return path


def load_pairs(path: Path) -> tuple:
    """Decode, resize to 340x256 (INTER_LINEAR) and gray, as extract-flow does; consecutive pairs."""
    import numpy as np

    from flowkit.video import Resize, VideoReader, to_gray

    gray = [to_gray(f.image) for f in VideoReader(path, Resize(size=SIZE))]
    return np.stack(gray[:-1]), np.stack(gray[1:])


# -- one worker process: one engine configuration, every condition ----------------------------------
def spinners(n: int) -> list[subprocess.Popen]:
    """n busy background processes on this process's cores (they inherit the affinity)."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def measure(engine, prev, nxt, batch: int, min_seconds: float) -> float:
    """Pairs/s over whole passes over every pair (at least one, at least `min_seconds`): both engines are
    timed on the same pairs, the scene-cut pair (cv2's 7500-iteration cap) included, whatever their speed."""
    done, start = 0, time.perf_counter()
    while True:
        for i in range(0, len(prev), batch):
            engine(prev[i : i + batch], nxt[i : i + batch])
        done += len(prev)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return done / elapsed


def worker(spec: dict) -> dict:
    """Measure cv2 and tvl1 in every condition of `spec` (runs in a fresh process)."""
    if spec["cores"]:
        os.sched_setaffinity(0, spec["cores"])
    if spec["env"] is None:  # flowkit's defaults, set before torch loads (as the CLI does)
        from flowkit.threads import set_openmp_env

        set_openmp_env()
    import cv2
    import torch

    from flowkit.flow import create_engine
    from flowkit.threads import derive_budget

    budget = derive_budget()
    torch.set_num_threads(budget.compute)
    cv2.setNumThreads(budget.compute)
    prev, nxt = load_pairs(Path(spec["clip"]))
    engines = {"cv2": (create_engine("tvl1-opencv", "cpu"), 1),
               "tvl1": (create_engine("tvl1", "cpu"), spec["batch"])}
    for engine, batch in engines.values():  # warm-up (tvl1: torch.compile / its cache), not timed
        engine(prev[:batch], nxt[:batch])
    out = {"threads": budget.compute, "reason": budget.reason, "results": {}}
    for condition in spec["conditions"]:
        procs = spinners(CONDITIONS.index(condition) if condition in CONDITIONS else 0)
        try:
            time.sleep(0.3)
            rates: dict[str, list[float]] = {"cv2": [], "tvl1": []}
            for _ in range(spec["rounds"]):
                for name, (engine, batch) in engines.items():
                    rates[name].append(measure(engine, prev, nxt, batch, spec["seconds"]))
        finally:
            for p in procs:
                p.kill()
                p.wait()
        out["results"][condition] = {k: max(v) for k, v in rates.items()}
        print(f"  {spec['label']}: {condition}: {out['results'][condition]}", file=sys.stderr, flush=True)
    return out


def run_worker(spec: dict) -> dict:
    """Start a fresh interpreter for one configuration; its env is exactly the variant's."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OMP_", "GOMP_", "KMP_")) and k not in ("MKL_NUM_THREADS",)}
    env.update(spec["env"] or {})
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], env=env,
                          capture_output=True, text=True, check=False)
    sys.stderr.write(proc.stderr)
    if proc.returncode:
        raise SystemExit(f"worker {spec['label']} failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- the table --------------------------------------------------------------------------------------
def header(args: argparse.Namespace) -> list[str]:
    import cv2
    import torch

    return [
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, affinity "
        f"{sorted(os.sched_getaffinity(0))}; shared with other jobs while measured (noisy: compare the "
        "ratios, measured side by side)",
        f"- versions: python {platform.python_version()}, torch {torch.__version__}, "
        f"opencv {cv2.__version__}",
        f"- frames: 340x256 gray from an H.264 640x360 clip (pan + zoom + a scene cut), {args.pairs_note}",
        f"- tvl1 batch {args.batch}; cv2 one pair per call; best of {args.rounds} alternating "
        f"round(s) of >= {args.seconds:g} s per engine and condition",
        f"- load average at start: {args.load_start:.2f}",
        f"- command: `python {' '.join(sys.argv)}`",
    ]


def main() -> None:
    """Run every configuration in its own process and print the markdown section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--omp-study", action="store_true", help="also tvl1 under other OpenMP settings")
    parser.add_argument("--variants", default=None, help="comma-separated VARIANTS labels to run")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--conditions", default="0,1,2,one-core",
                        help="busy background processes (0, 1, 2) and/or one-core, comma-separated")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    sys.path.insert(0, str(ROOT))
    args.load_start = os.getloadavg()[0]
    cores = sorted(os.sched_getaffinity(0))
    variants = VARIANTS if args.omp_study else {"flowkit": None}
    if args.variants:
        variants = {k: VARIANTS[k] for k in args.variants.split(",")}
    rows: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        clip = str(make_clip(Path(tmp) / "clip.mp4"))
        args.pairs_note = "13 pairs, one across the cut"
        wanted = args.conditions.split(",")
        shared = [c for k, c in enumerate(CONDITIONS) if str(k) in wanted]
        for label, env in variants.items():
            for confined in ([False] if shared else []) + ([True] if "one-core" in wanted else []):
                spec = {"label": f"{label}{' one core' if confined else ''}", "env": env, "clip": clip,
                        "cores": [cores[0]] if confined else cores, "batch": args.batch,
                        "seconds": args.seconds, "rounds": args.rounds,
                        "conditions": ["one core (taskset -c 0)"] if confined else shared}
                result = run_worker(spec)
                for condition, rates in result["results"].items():
                    rows.setdefault(condition, {})[label] = {**rates, "threads": result["threads"]}
    print("\n".join(table(args, rows, list(variants))))


def table(args: argparse.Namespace, rows: dict, labels: list[str]) -> list[str]:
    """Markdown: per condition, threads, cv2 pairs/s, tvl1 pairs/s and tvl1/cv2 per OpenMP setting."""
    cols = " | ".join(f"tvl1 pairs/s ({v}) | tvl1/cv2" for v in labels)
    lines = ["## Contention", "", *header(args), "",
             f"| condition | threads | cv2 pairs/s | {cols} |", "|---" * (3 + 2 * len(labels)) + "|"]
    for condition, by_label in rows.items():
        cv2_rate = by_label[labels[0]]["cv2"]
        cells = " | ".join(f"{by_label[v]['tvl1']:.2f} | {by_label[v]['tvl1'] / by_label[v]['cv2']:.2f}x"
                           for v in labels)
        lines.append(f"| {condition} | {by_label[labels[0]]['threads']} | {cv2_rate:.2f} | {cells} |")
    lines.append(f"\nload average at end: {os.getloadavg()[0]:.2f}. Ratios use the cv2 rate measured in "
                 "the same process as that tvl1 column.")
    return lines


if __name__ == "__main__":
    main()
