"""What `flowkit status OUT` reports: progress per shard, failures with causes, throughput."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowkit.errors import ManifestError
from flowkit.jobs.manifest import Manifest


@dataclass
class StatusReport:
    """A snapshot of a job folder built from its manifest (all shards together)."""

    command: str
    config_hash: str
    total: int
    done: set[str] = field(default_factory=set)
    failed: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    in_flight: set[str] = field(default_factory=set)
    shard_counts: dict[str, int] = field(default_factory=dict)
    frames: int = 0
    busy_seconds: float = 0.0
    span_seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        """0 when nothing failed, else 1."""
        return 1 if self.failed else 0

    def lines(self) -> list[str]:
        """Human-readable report, one fact per line."""
        left = self.total - len(self.done) - len(self.failed)
        out = [f"job: {self.command} (config {self.config_hash})",
               f"units: {self.total} total, {len(self.done)} done, {len(self.failed)} failed, "
               f"{max(left, 0)} not done" + (f" ({len(self.in_flight)} started, unfinished)"
                                             if self.in_flight else "")]
        if self.span_seconds > 0 and self.frames:
            out.append(f"throughput: {self.frames / self.span_seconds:.1f} frames/s, "
                       f"{len(self.done) / self.span_seconds * 3600:.0f} units/h (wall clock of the logs)")
        out += [f"{tag}: {n} units finished" for tag, n in sorted(self.shard_counts.items())]
        for failures in self.failed.values():
            out += [f"FAILED {path}: {cause}" for path, cause in failures]
        return out


def read_status(out_dir: str | Path) -> StatusReport:
    """Build the status of a job folder; raises ManifestError if it holds no flowkit job."""
    manifest = Manifest(Path(out_dir))
    job = manifest.read_job()
    if job is None:
        raise ManifestError(f"{out_dir}: no flowkit job here (no .flowkit/job.json)")
    report = StatusReport(job["command"], job["config_hash"], len(manifest.read_units()))
    report.done = {r["unit"] for r in manifest.all_done() if "unit" in r}
    _replay(report, list(manifest.events()))
    return report


def _replay(report: StatusReport, events: list[dict[str, Any]]) -> None:
    last: dict[str, dict[str, Any]] = {}
    times = [ev["time"] for ev in events if "time" in ev]
    for ev in events:
        if "unit" not in ev:
            continue
        last[ev["unit"]] = ev
        if ev["event"] in ("done", "failed"):
            report.frames += int(ev.get("frames", 0))
            report.busy_seconds += float(ev.get("seconds", 0.0))
            tag = str(ev.get("shard", "shard-0-of-1"))
            report.shard_counts[tag] = report.shard_counts.get(tag, 0) + 1
    for uid, ev in last.items():
        if ev["event"] == "failed":
            report.failed[uid] = [tuple(f) for f in ev.get("failures", [])] or [(uid, "failed")]
        elif ev["event"] == "start" and uid not in report.done:
            report.in_flight.add(uid)
        if ev["event"] == "done" and ev.get("failures"):
            report.failed[uid] = [tuple(f) for f in ev["failures"]]
    if len(times) > 1:
        report.span_seconds = max(times) - min(times)
