"""What `flowkit status OUT` reports: progress per shard, running vs interrupted units, failures, throughput.

Exit codes (also of a run, see RunSummary): 0 every unit done; 1 some unit failed (last attempt);
2 no job / unreadable manifest; 3 incomplete and no run is writing (rerun to resume); 4 a run is still
writing this output (status will change).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowkit.errors import ManifestError
from flowkit.jobs.manifest import Manifest, RunLock

EXIT_COMPLETE, EXIT_FAILED, EXIT_INCOMPLETE, EXIT_RUNNING = 0, 1, 3, 4
EXIT_MEANINGS = {
    EXIT_COMPLETE: "complete",
    EXIT_FAILED: "failures: fix the inputs, then rerun (or --retry-failed)",
    EXIT_INCOMPLETE: "incomplete, no run is writing it: rerun the same command to resume",
    EXIT_RUNNING: "a run is still writing this output",
}


@dataclass
class StatusReport:
    """A snapshot of a job folder built from its manifest (all shards together)."""

    command: str
    config_hash: str
    total: int
    done: set[str] = field(default_factory=set)
    failed: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    in_flight: dict[str, dict[str, Any]] = field(default_factory=dict)  # unit -> shard, frames, running
    holders: dict[str, dict[str, Any]] = field(default_factory=dict)  # shard tag -> lock holder
    shard_counts: dict[str, int] = field(default_factory=dict)
    frames: int = 0
    busy_seconds: float = 0.0
    span_seconds: float = 0.0

    @property
    def running(self) -> bool:
        """Whether a live run holds a lock on this output."""
        return any(h.get("alive") for h in self.holders.values())

    @property
    def left(self) -> int:
        """Units neither done nor failed."""
        return max(self.total - len(self.done) - len(self.failed), 0)

    @property
    def exit_code(self) -> int:
        """4 while a run is writing, else 1 on failures, 3 when incomplete, 0 when complete."""
        if self.running:
            return EXIT_RUNNING
        if self.failed:
            return EXIT_FAILED
        return EXIT_INCOMPLETE if self.left else EXIT_COMPLETE

    def lines(self) -> list[str]:
        """Human-readable report, one fact per line."""
        out = [f"job: {self.command} (config {self.config_hash})", self._counts()]
        out += self._runs()
        if self.span_seconds > 0 and self.frames:
            out.append(f"throughput: {self.frames / self.span_seconds:.1f} frames/s, "
                       f"{len(self.done) / self.span_seconds * 3600:.0f} units/h (wall clock of the logs)")
        out += [f"{tag}: {n} units finished" for tag, n in sorted(self.shard_counts.items())]
        for failures in self.failed.values():
            out += [f"FAILED {path}: {cause}" for path, cause in failures]
        out.append(f"state: {EXIT_MEANINGS[self.exit_code]} (exit {self.exit_code})")
        return out

    def _counts(self) -> str:
        text = (f"units: {self.total} total, {len(self.done)} done, {len(self.failed)} failed, "
                f"{self.left} not done")
        if self.in_flight:
            running = sum(1 for u in self.in_flight.values() if u["running"])
            text += f" ({running} running, {len(self.in_flight) - running} interrupted)"
        return text

    def _runs(self) -> list[str]:
        out = []
        for tag, h in sorted(self.holders.items()):
            who = f"host {h.get('host', '?')}, pid {h.get('pid', '?')}"
            out.append(f"{tag}: {'running' if h.get('alive') else 'interrupted'} ({who}"
                       + ("" if h.get("alive") else " is gone") + ")")
        for uid, unit in sorted(self.in_flight.items()):
            where = _frames_text(unit)
            state = "running" if unit["running"] else "interrupted"
            out.append(f"{state} {uid}" + (f": {where}" if where else ""))
        return out


def _frames_text(unit: dict[str, Any]) -> str:
    if "frames" not in unit:
        return ""
    total = unit.get("total") or "?"
    return f"{unit['frames']}/{total} frames" + ("" if unit["running"] else " when it stopped")


def lock_holders(manifest: Manifest) -> dict[str, dict[str, Any]]:
    """Every shard lock in the folder: its owner record (host, pid, ...) and `alive`, by shard tag.

    `alive` is the lock's own staleness rule (a holder on another host counts as alive until its lease
    says otherwise), so status and a rerun's takeover agree on who is gone.
    """
    holders = {}
    for path in sorted((manifest.state_dir / "locks").glob("*.lock")):
        lock = RunLock(manifest, path.stem)
        holders[path.stem] = {**lock._owner(), "alive": not lock._stale()}
    return holders


def read_status(out_dir: str | Path) -> StatusReport:
    """Build the status of a job folder; raises ManifestError if it holds no flowkit job."""
    from flowkit.jobs.progress import read_heartbeats

    manifest = Manifest(Path(out_dir))
    job = manifest.read_job()
    if job is None:
        raise ManifestError(f"{out_dir}: no flowkit job here (no .flowkit/job.json)")
    units = manifest.read_units()
    report = StatusReport(job["command"], job["config_hash"], len(units))
    known = set(units)
    records = [r for r in manifest.all_done() if r.get("unit") in known or not known]
    report.done = {r["unit"] for r in records if not r.get("failed")}
    report.holders = lock_holders(manifest)
    shard_of = _replay(report, manifest, known)
    for r in records:
        if r.get("failed") and r["unit"] not in report.failed:
            report.failed[r["unit"]] = [(v, "failed") for v in r["failed"]]
    report.done -= set(report.failed)
    # Units finished per shard: each done or failed unit once, under the shard that last worked on it
    # (a kill between its done record and its `done` event leaves only the `start`, which names it).
    for uid in report.done | set(report.failed):
        if uid in shard_of:
            report.shard_counts[shard_of[uid]] = report.shard_counts.get(shard_of[uid], 0) + 1
    beats = read_heartbeats(manifest)
    for uid, unit in report.in_flight.items():
        if uid in beats:
            unit.update(frames=beats[uid].get("frames", 0), total=beats[uid].get("total", 0))
    return report


def _replay(report: StatusReport, manifest: Manifest, known: set[str]) -> dict[str, str]:
    """The last event of each unit (by run number, then time) says where it is; totals from all events.

    Returns the shard that last worked on each unit.
    """
    times: list[float] = []

    def add(ev: dict[str, Any]) -> None:
        if "time" in ev and (not known or ev.get("unit") in known):
            times.append(ev["time"])
        if ev.get("event") in ("done", "failed") and (not known or ev.get("unit") in known):
            report.frames += int(ev.get("frames", 0))
            report.busy_seconds += float(ev.get("seconds", 0.0))

    last = {uid: ev for uid, ev in manifest.last_events(add).items() if not known or uid in known}
    for uid, ev in last.items():
        kind = ev.get("event")
        failures = [tuple(f) for f in ev.get("failures", [])]
        if kind == "failed" and uid not in report.done:
            report.failed[uid] = failures or [(uid, "failed")]
        elif kind == "done" and failures:
            report.failed[uid] = failures
        elif kind == "start" and uid not in report.done:
            holder = report.holders.get(str(ev.get("shard", "")), {})
            report.in_flight[uid] = {"shard": ev.get("shard"), "running": bool(holder.get("alive"))}
    if times:
        report.span_seconds = max(times) - min(times)
    return {uid: str(ev["shard"]) for uid, ev in last.items() if "shard" in ev}
