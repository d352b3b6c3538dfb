"""Bookkeeping at Kinetics scale: discovery, resume check, status and merge on N done records.

Builds (once) a synthetic extract-flow job folder: N empty `.mp4` inputs in 400 class folders, N done
records, start + done events from 8 workers, the unit list. Then runs each phase in a fresh process
and prints its wall time and peak RSS:

  discovery  discover() over the input tree (listing, ids, sorting)
  resume     the runner's selection over every unit: done record read + check (no output folders:
             the per-unit folder check is measured apart, on --verify-sample real folders)
  status     read_status(): done records, every event merged in order, lock holders, heartbeats
  merge      `flowkit merge` of the job: list_rgb.txt / list_flow.txt from every done record

  python bench/bookkeeping.py --units 300000 --workdir /tmp/fk-bookkeeping
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

PHASES = ("discovery", "resume", "status", "merge", "verify")
WORKERS = 8
CLASSES = 400


def unit_ids(n: int) -> list[str]:
    return sorted(f"class{k % CLASSES:03d}/video{k:07d}" for k in range(n))


def build(work: Path, n: int, verify_sample: int) -> None:
    """The synthetic job folder (skipped when already built for this N)."""
    from flowkit.jobs.manifest import Manifest, safe_name
    from flowkit.pipelines.flow import FlowConfig

    stamp = work / f"built-{n}"
    if stamp.exists():
        return
    ids = unit_ids(n)
    videos, out = work / "videos", work / "out"
    for c in range(CLASSES):
        (videos / f"class{c:03d}").mkdir(parents=True, exist_ok=True)
    for uid in ids:
        (videos / f"{uid}.mp4").touch()
    manifest = Manifest(out)
    manifest.open_job("extract-flow", FlowConfig(algorithm="dis").output_config(), overwrite=True)
    manifest.write_units(ids)
    done = manifest.state_dir / "done"
    done.mkdir(parents=True, exist_ok=True)
    events = manifest.state_dir / "events"
    events.mkdir(parents=True, exist_ok=True)
    logs = [open(events / f"shard-0-of-1-r1-t{w}-host-{1000 + w}.jsonl", "w") for w in range(WORKERS)]  # noqa: SIM115
    t0 = time.time() - n
    for k, uid in enumerate(ids):
        record = {"unit": uid, "video_id": uid, "source": str(videos / f"{uid}.mp4"), "num_frames": 250,
                  "rgb": 250, "flow": 249, "format": "jpg"}
        (done / f"{safe_name(uid)}.json").write_text(json.dumps(record))
        log = logs[k % WORKERS]
        base = {"run": 1, "unit": uid, "shard": "shard-0-of-1"}
        log.write(json.dumps({"event": "start", "time": t0 + k, "seq": 2 * k, **base}) + "\n")
        log.write(json.dumps({"event": "done", "time": t0 + k + 0.5, "seq": 2 * k + 1, "seconds": 12.0,
                              "frames": 250, **base}) + "\n")
    for log in logs:
        log.close()
    for uid in ids[:verify_sample]:  # real output folders for the per-unit check
        folder = out / uid
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(1, 251):
            (folder / f"img_{i:05d}.jpg").touch()
            if i < 250:
                (folder / f"flow_x_{i:05d}.jpg").touch()
                (folder / f"flow_y_{i:05d}.jpg").touch()
    stamp.touch()


def prepare(name: str, work: Path, n: int, verify_sample: int) -> Callable[[], str]:
    """Import what a phase needs and build its inputs (not timed); returns the timed part."""
    out = work / "out"
    if name == "discovery":
        from flowkit.inputs import discover

        return lambda: f"{len(discover(work / 'videos'))} videos"
    if name == "status":
        from flowkit.jobs.status import read_status

        return lambda: read_status(out).lines()[1]
    if name == "merge":
        from flowkit.pipelines.merge import merge_job

        return lambda: f"wrote {len(merge_job(out))} lists"
    from flowkit.inputs import VideoItem
    from flowkit.jobs.manifest import Manifest
    from flowkit.jobs.runner import RunOptions, RunSummary, _select
    from flowkit.pipelines.flow import FlowConfig, FlowPipeline

    pipeline = FlowPipeline(FlowConfig(algorithm="dis"), out)
    if name == "resume":  # the manifest side: every done record read; folders are measured by "verify"
        pipeline.is_done = lambda unit, m: m.read_done(unit.uid) is not None  # type: ignore[method-assign]
    ids = unit_ids(n) if name == "resume" else unit_ids(n)[:verify_sample]
    units = pipeline.make_units([VideoItem(uid, work / "videos" / f"{uid}.mp4") for uid in ids])

    def select() -> str:
        summary = RunSummary()
        _select(pipeline, units, Manifest(out), RunOptions(), summary)
        return f"{summary.skipped} of {len(units)} units done"

    return select


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--units", type=int, default=300_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/fk-bookkeeping"))
    parser.add_argument("--verify-sample", type=int, default=1000)
    parser.add_argument("--phase", choices=PHASES, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        timed = prepare(args.phase, args.workdir, args.units, args.verify_sample)
        base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        start = time.perf_counter()
        what = timed()
        seconds = time.perf_counter() - start
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"phase": args.phase, "seconds": seconds, "peak_rss_mb": rss,
                          "import_rss_mb": base_rss, "result": what}))
        return
    start = time.perf_counter()
    build(args.workdir, args.units, args.verify_sample)
    built = time.perf_counter() - start
    print(f"# {args.units} done records in {args.workdir} (built/checked in {built:.0f} s)")
    print(f"{'phase':<10} {'seconds':>8} {'peak RSS MB':>12} {'after imports':>14}  result")
    for name in PHASES:
        cmd = [sys.executable, __file__, "--phase", name, "--units", str(args.units), "--workdir",
               str(args.workdir), "--verify-sample", str(args.verify_sample)]
        row = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True,
                                        env={**os.environ, "TQDM_DISABLE": "1"}).stdout.splitlines()[-1])
        print(f"{name:<10} {row['seconds']:>8.2f} {row['peak_rss_mb']:>12.0f} {row['import_rss_mb']:>14.0f}"
              f"  {row['result']}")


if __name__ == "__main__":
    main()
