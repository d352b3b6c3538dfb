"""Bookkeeping at Kinetics scale: discovery, resume check, status and merge on N done records.

Builds (once) a synthetic extract-flow job folder: N empty `.mp4` inputs in 400 class folders, N output
folders (empty, except --verify-sample real ones of 250 frames), N done records in the per-unit
journal, start + done events from 8 workers, the unit list. Then runs each phase in a fresh process
and prints its wall time and peak RSS:

  resume-journal  the resume check while every record is still a journal file (a run killed before
                  its end-of-run compaction: the worst case)
  status-journal  `flowkit status` in that state
  compact         the end-of-run compaction of the journal into the shard's index (done once)
  discovery       discover() over the input tree (listing, ids, sorting)
  resume          the runner's selection over every unit: done record + output folder check
  status          read_status(): done records, every event merged in order, locks, heartbeats
  merge           `flowkit merge`: list_rgb.txt / list_flow.txt from every done record
  verify          the folder check when the folder changed since its commit (count by listing), on the
                  --verify-sample folders of 250 RGB + 2 x 249 flow files

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

PHASES = ("resume-journal", "status-journal", "compact", "discovery", "resume", "status", "merge", "verify")
JOURNAL_PHASES = ("resume-journal", "status-journal", "compact")
WORKERS = 8
CLASSES = 400


def unit_ids(n: int) -> list[str]:
    return sorted(f"class{k % CLASSES:03d}/video{k:07d}" for k in range(n))


def build(work: Path, n: int, verify_sample: int, journal: bool) -> None:
    """The synthetic job folder (skipped when already built for this N)."""
    from flowkit.jobs.manifest import Manifest, safe_name
    from flowkit.pipelines.flow import FlowConfig

    stamp = work / f"built-{n}-{'journal' if journal else 'index'}"
    if stamp.exists():
        return
    ids = unit_ids(n)
    videos, out = work / "videos", work / "out"
    for c in range(CLASSES):
        (videos / f"class{c:03d}").mkdir(parents=True, exist_ok=True)
    manifest = Manifest(out)
    manifest.open_job("extract-flow", FlowConfig(algorithm="dis").output_config(), overwrite=True)
    manifest.write_units(ids)
    done = manifest.state_dir / "done"
    done.mkdir(parents=True, exist_ok=True)
    events = manifest.state_dir / "events"
    events.mkdir(parents=True, exist_ok=True)
    logs = [open(events / f"shard-0-of-1-r1-t{w}-host-{1000 + w}.jsonl", "w") for w in range(WORKERS)]  # noqa: SIM115
    t0 = time.time() - n
    index = open(manifest.state_dir / "done-index.tmp", "w") if not journal else None  # noqa: SIM115
    for k, uid in enumerate(ids):
        (videos / f"{uid}.mp4").touch()
        folder = out / uid
        folder.mkdir(parents=True)
        frames = 250 if k < verify_sample else 0
        for i in range(1, frames + 1):
            for name in (f"img_{i:05d}.jpg", f"flow_x_{i:05d}.jpg", f"flow_y_{i:05d}.jpg"):
                if i < frames or name.startswith("img"):
                    (folder / name).touch()
        record = {"unit": uid, "video_id": uid, "source": str(videos / f"{uid}.mp4"), "num_frames": 250,
                  "rgb": frames, "flow": max(frames - 1, 0), "format": "jpg",
                  "folder_mtime_ns": folder.stat().st_mtime_ns}
        if index is None:
            (done / f"{safe_name(uid)}.json").write_text(json.dumps(record))
        else:  # the state a finished run leaves: one compacted index
            index.write(json.dumps({"run": 1, "record": record}) + "\n")
        log = logs[k % WORKERS]
        base = {"run": 1, "unit": uid, "shard": "shard-0-of-1"}
        log.write(json.dumps({"event": "start", "time": t0 + k, "seq": 2 * k, **base}) + "\n")
        log.write(json.dumps({"event": "done", "time": t0 + k + 0.5, "seq": 2 * k + 1, "seconds": 12.0,
                              "frames": 250, **base}) + "\n")
    for log in logs:
        log.close()
    if index is not None:
        index.close()
        (manifest.state_dir / "done-index").mkdir(exist_ok=True)
        final = manifest.state_dir / "done-index" / "shard-0-of-1.jsonl"
        os.replace(manifest.state_dir / "done-index.tmp", final)
    stamp.touch()


def prepare(name: str, work: Path, n: int, verify_sample: int) -> Callable[[], str]:
    """Import what a phase needs and build its inputs (not timed); returns the timed part."""
    out = work / "out"
    if name == "discovery":
        from flowkit.inputs import discover

        return lambda: f"{len(discover(work / 'videos'))} videos"
    if name.startswith("status"):
        from flowkit.jobs.status import read_status

        return lambda: read_status(out).lines()[1]
    if name == "compact":
        from flowkit.jobs.manifest import Manifest

        return lambda: f"{Manifest(out).compact_done(unit_ids(n), 'shard-0-of-1', 2)} records folded"
    if name == "merge":
        from flowkit.pipelines.merge import merge_job

        return lambda: f"wrote {len(merge_job(out))} lists"
    from flowkit.inputs import VideoItem
    from flowkit.jobs.manifest import Manifest
    from flowkit.jobs.runner import RunOptions, RunSummary, _select
    from flowkit.pipelines.flow import FlowConfig, FlowPipeline

    pipeline = FlowPipeline(FlowConfig(algorithm="dis"), out)
    ids = unit_ids(n)[:verify_sample] if name == "verify" else unit_ids(n)
    if name == "verify":  # as if each folder had changed since its commit: count its files
        from flowkit.pipelines import flow

        real = flow.verify_video_folder
        flow.verify_video_folder = lambda f, r, c: real(f, {**r, "folder_mtime_ns": -1}, c)
    units = pipeline.make_units([VideoItem(uid, work / "videos" / f"{uid}.mp4") for uid in ids])

    def select() -> str:
        summary = RunSummary()
        _select(pipeline, units, Manifest(out), RunOptions(), summary)
        return f"{summary.skipped} of {len(units)} units done"

    return select


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM: unlike ru_maxrss it does not inherit the parent's before exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--units", type=int, default=300_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/fk-bookkeeping"))
    parser.add_argument("--verify-sample", type=int, default=1000)
    parser.add_argument("--journal", action="store_true",
                        help="per-unit journal files (a killed run); time the journal phases + compact")
    parser.add_argument("--phase", choices=PHASES, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        timed = prepare(args.phase, args.workdir, args.units, args.verify_sample)
        base_rss = peak_rss_mb()
        start = time.perf_counter()
        what = timed()
        seconds = time.perf_counter() - start
        rss = peak_rss_mb()
        print(json.dumps({"phase": args.phase, "seconds": seconds, "peak_rss_mb": rss,
                          "import_rss_mb": base_rss, "result": what}))
        return
    start = time.perf_counter()
    build(args.workdir, args.units, args.verify_sample, args.journal)
    built = time.perf_counter() - start
    print(f"# {args.units} done records in {args.workdir} (built/checked in {built:.0f} s)")
    print(f"{'phase':<10} {'seconds':>8} {'peak RSS MB':>12} {'after imports':>14}  result")
    for name in [p for p in PHASES if args.journal or p not in JOURNAL_PHASES]:
        cmd = [sys.executable, __file__, "--phase", name, "--units", str(args.units), "--workdir",
               str(args.workdir), "--verify-sample", str(args.verify_sample)]
        row = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True,
                                        env={**os.environ, "TQDM_DISABLE": "1"}).stdout.splitlines()[-1])
        print(f"{name:<10} {row['seconds']:>8.2f} {row['peak_rss_mb']:>12.0f} {row['import_rss_mb']:>14.0f}"
              f"  {row['result']}")


if __name__ == "__main__":
    main()
