"""Run units on joblib (loky processes, threads), a Dask cluster, or one shard of N; resume; summarise.

Workers never raise: each unit returns a UnitResult (done / failed + one-line cause), so one bad video
never stops the run. Units are sorted by id and unit k belongs to shard k mod N, so shard membership never
depends on what is already done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import os
import queue
import socket
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from joblib import Parallel, delayed

from flowkit.atomic import remove_dead_temporaries
from flowkit.errors import ConfigError, FlowkitError, VideoError, os_error_text
from flowkit.inputs import VideoItem, printable
from flowkit.jobs import progress
from flowkit.jobs.manifest import STATE_DIR, EventLog, Manifest, RunLock
from flowkit.jobs.status import EXIT_FAILED, EXIT_INCOMPLETE
from flowkit.threads import ThreadBudget, apply_budget, derive_budget

log = logging.getLogger("flowkit")

BACKENDS = ("loky", "threading", "sequential", "dask")


@dataclass(frozen=True)
class Unit:
    """A unit of work: one video (flow, frames) or a group of consecutive videos (a feature shard)."""

    uid: str
    index: int
    items: tuple[VideoItem, ...]


@dataclass
class UnitResult:
    """What a worker returns: status, timing, frames processed, failures (one per failed video)."""

    uid: str
    status: str  # "done" | "failed"
    seconds: float = 0.0
    frames: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, one-line cause)
    record: dict[str, Any] = field(default_factory=dict)
    notes: list[tuple[str, str]] = field(default_factory=list)  # (path, remark) for odd but valid inputs


class Pipeline(Protocol):
    """What a command provides to the runner; must be picklable (heavy state is built lazily)."""

    command: str

    def output_config(self) -> dict[str, Any]:
        """The config that decides the outputs (hashed into the job record)."""
        ...

    def make_units(self, items: Sequence[VideoItem]) -> list[Unit]:
        """Group the sorted inputs into units; unit ids depend only on input positions."""
        ...

    def is_done(self, unit: Unit, manifest: Manifest) -> bool:
        """Whether a unit's output is in place and verifies (done record + cheap check)."""
        ...

    def process(self, unit: Unit, manifest: Manifest) -> UnitResult:
        """Do one unit: write its output atomically, then its done record."""
        ...

    def finalize(self, manifest: Manifest) -> list[tuple[str, str]] | None:
        """After a run: write what spans units (lists, feature shards); returns (path, cause) failures."""
        ...


@dataclass
class RunOptions:
    """How to run: parallelism, backend, cluster shard, resume policy, devices."""

    jobs: int = 1
    backend: str = "loky"
    scheduler: str | None = None
    shard: tuple[int, int] = (0, 1)
    overwrite: bool = False
    retry_failed: bool = False
    quiet: bool = False
    devices: tuple[str, ...] = ()
    threads: int | None = None  # --threads; None: the cores this process may use (flowkit.threads)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(
                f"unknown backend {self.backend!r}; choose from {', '.join(BACKENDS)}"
            )
        if self.jobs < 1:
            raise ConfigError(f"--jobs must be >= 1, got {self.jobs}")
        i, n = self.shard
        if n < 1 or not 0 <= i < n:
            raise ConfigError(f"--shard must be i/N with 0 <= i < N, got {i}/{n}")

    @property
    def shard_tag(self) -> str:
        """The shard's name in lock and event-log file names."""
        return f"shard-{self.shard[0]}-of-{self.shard[1]}"


@dataclass
class RunSummary:
    """Counts and failures of one run; exit code 0 only when every unit of the shard is done."""

    done: int = 0
    skipped: int = 0
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # (unit, path, cause)
    notes: list[tuple[str, str]] = field(default_factory=list)
    pending: int = 0
    frames: int = 0
    seconds: float = 0.0
    threads: str = ""  # the thread budget used (ThreadBudget.describe)
    errors: list[str] = field(default_factory=list)  # failures of the run itself (e.g. writing lists)

    @property
    def exit_code(self) -> int:
        """1 when a unit (or the run's finishing step) failed, 3 when units were left unfinished, else 0."""
        if self.failed or self.errors:
            return EXIT_FAILED
        return EXIT_INCOMPLETE if self.pending else 0

    def lines(self) -> list[str]:
        """Human-readable summary: one line of counts, then one line per failure."""
        rate = (
            f", {self.frames / self.seconds:.1f} frames/s"
            if self.seconds > 0 and self.frames
            else ""
        )
        head = f"done {self.done}, skipped {self.skipped} (already done), failed {len(self.failed)}"
        if self.pending:
            head += f", not attempted {self.pending}"
        out = [head + f" in {self.seconds:.1f}s{rate}"]
        if self.pending:
            out.append(f"{self.pending} unit(s) never finished: rerun without --retry-failed to do them")
        out += [f"threads: {self.threads}"] if self.threads else []
        out += [f"NOTE {path}: {remark}" for path, remark in self.notes]
        out += [f"FAILED {path}: {cause}" for _, path, cause in self.failed]
        out += [f"ERROR {error}" for error in self.errors]
        return out


# -- device assignment: one device per worker process/thread ------------------------------------
_worker_device: str | None = None
_thread_device = threading.local()


def _init_worker(budget: ThreadBudget, devices: Any) -> None:
    """loky worker initializer: the thread budget first (before any torch work), then a device."""
    apply_budget(budget, warn=False)
    if devices is not None:
        _claim_device(devices)


def _claim_device(devices: Any) -> None:
    global _worker_device
    with contextlib.suppress(queue.Empty):
        _worker_device = devices.get(timeout=5)


def current_device(default: str = "auto") -> str:
    """The device this worker was given (several GPUs: one per worker), else `default`."""
    return getattr(_thread_device, "device", None) or _worker_device or default


def _device_queue(devices: Sequence[str], jobs: int, manager: Any) -> Any:
    q = manager.Queue() if manager is not None else queue.Queue()
    # Extra copies so that a worker respawned by loky still finds a device.
    for k in range(jobs * 8):
        q.put(devices[k % len(devices)])
    return q


# -- one unit, inside a worker --------------------------------------------------------------------
@dataclass(frozen=True)
class RunContext:
    """What every unit of one run shares: the (absolute) output folder, shard tag, run number, origin."""

    out_dir: Path
    tag: str
    run: int = 0
    check_paths: bool = False  # a Dask worker may not see the client's folders: check before working


_event_logs: dict[tuple[str, str, int, int, int], EventLog] = {}


def _event_log(ctx: RunContext) -> EventLog:
    key = (str(ctx.out_dir), ctx.tag, ctx.run, os.getpid(), threading.get_ident())
    if key not in _event_logs:
        for old in [k for k in _event_logs if k[0] == key[0] and k[2] != ctx.run]:
            _event_logs.pop(old).close()  # a long-lived worker of an earlier run
        tag = f"{ctx.tag}-r{ctx.run}-t{threading.get_ident() % 10000}"
        _event_logs[key] = EventLog(Manifest(ctx.out_dir), tag, ctx.run)
    return _event_logs[key]


def close_event_logs(out_dir: Path) -> None:
    """Close this process's event logs of an output folder (end of a run)."""
    for key in [k for k in _event_logs if k[0] == str(out_dir)]:
        _event_logs.pop(key).close()


def execute_unit(
    pipeline: Pipeline, unit: Unit, ctx: RunContext, devices: Any = None
) -> UnitResult:
    """Run one unit and never raise: every exception becomes a failed result with a one-line cause."""
    if devices is not None and getattr(_thread_device, "device", None) is None:
        with contextlib.suppress(queue.Empty):
            _thread_device.device = devices.get(timeout=5)
    unseen = unseen_path(pipeline, unit, ctx) if ctx.check_paths else None
    if unseen is not None:  # cannot even log: the output folder may be what is missing
        return UnitResult(unit.uid, "failed", failures=[unseen])
    events = _event_log(ctx)
    events.write("start", unit=unit.uid, shard=ctx.tag, device=current_device(""))
    start = time.perf_counter()
    try:
        with progress.tracking(Manifest(ctx.out_dir), ctx.tag, unit.uid, ctx.run):
            result = pipeline.process(unit, Manifest(ctx.out_dir))
    except Exception as exc:  # noqa: BLE001 - workers return failures as values
        if os.environ.get("FLOWKIT_DEBUG"):
            traceback.print_exc()
        path = str(unit.items[0].path) if len(unit.items) == 1 else unit.uid
        result = UnitResult(unit.uid, "failed", failures=[(path, one_line(exc, path))])
    result.seconds = time.perf_counter() - start
    # Names may hold newlines or escapes: each failure and note stays one line, here and in the log.
    result.failures = [(printable(p), printable(c)) for p, c in result.failures]
    result.notes = [(printable(p), printable(r)) for p, r in result.notes]
    write_end_event(events, result, ctx.tag)
    return result


def write_end_event(events: EventLog, result: UnitResult, tag: str) -> None:
    """Log how a unit ended (done / failed, seconds, frames, failures)."""
    fields = {"unit": result.uid, "shard": tag, "seconds": round(result.seconds, 3), "frames": result.frames}
    if result.failures:
        fields["failures"] = result.failures
    events.write(result.status, **fields)


def path_fields(pipeline: Any) -> dict[str, str]:
    """The file/folder options of a pipeline's config that workers read (its `path_fields`), if set."""
    cfg = getattr(pipeline, "cfg", None)
    names = getattr(cfg, "path_fields", ())
    return {name: getattr(cfg, name) for name in names if getattr(cfg, name, None)}


def unseen_path(pipeline: Pipeline, unit: Unit, ctx: RunContext) -> tuple[str, str] | None:
    """(path, cause) for the first path of this unit this worker cannot see, else None."""
    host = socket.gethostname()
    where = f"not visible on worker host {host} (workers must see the client's paths: a shared filesystem)"
    if not (ctx.out_dir / STATE_DIR / "job.json").is_file():
        return str(ctx.out_dir), f"output folder {where}"
    for item in unit.items:
        if item.error is None and not os.path.exists(item.path):
            return str(item.path), f"input {where}"
    for name, value in path_fields(pipeline).items():
        if not os.path.exists(value):
            return str(value), f"--{name.replace('_', '-')} {where}"
    return None


def with_absolute_paths(
    pipeline: Pipeline, items: Sequence[VideoItem], out: Path
) -> tuple[Pipeline, list[VideoItem], Path]:
    """Resolve every path on the client (inputs, output, config files) before work is shipped anywhere."""
    out = Path(os.path.abspath(out))
    items = [dataclasses.replace(i, path=Path(os.path.abspath(i.path))) for i in items]
    if dataclasses.is_dataclass(pipeline):
        changes: dict[str, Any] = {}
        if hasattr(pipeline, "out_dir"):
            changes["out_dir"] = Path(os.path.abspath(pipeline.out_dir))
        fields = path_fields(pipeline)
        if fields:
            absolute = {k: os.path.abspath(v) for k, v in fields.items()}
            changes["cfg"] = dataclasses.replace(pipeline.cfg, **absolute)
        pipeline = dataclasses.replace(pipeline, **changes)
    return pipeline, items, out


def one_line(exc: BaseException, path: str | None = None) -> str:
    """A one-line description of an exception (typed flowkit errors already name the file).

    Given the path the summary line shows, a VideoError about that file gives only its cause.
    """
    if path is not None and isinstance(exc, VideoError) and exc.path == str(path):
        return exc.cause.strip().splitlines()[0] if exc.cause.strip() else "failed"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, FlowkitError):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# -- the run --------------------------------------------------------------------------------------
def _select(
    pipeline: Pipeline, units: list[Unit], manifest: Manifest, opts: RunOptions, summary: RunSummary
) -> list[Unit]:
    i, n = opts.shard
    mine = [u for u in units if u.index % n == i]
    last_failed = _last_failed(manifest) if opts.retry_failed else set()
    todo = []
    with manifest.done_store.bulk_reads():
        for unit in mine:
            _select_one(pipeline, unit, manifest, opts, summary, last_failed, todo)
    return todo


def _select_one(pipeline: Pipeline, unit: Unit, manifest: Manifest, opts: RunOptions, summary: RunSummary,
                last_failed: set[str], todo: list[Unit]) -> None:
    if opts.overwrite:
        manifest.clear_done(unit.uid)
        todo.append(unit)
    elif len(unit.items) == 1 and unit.items[0].error:
        todo.append(unit)  # a listing problem (bad id, missing file) fails now, whatever was done
    elif pipeline.is_done(unit, manifest):
        summary.skipped += 1
    elif opts.retry_failed and unit.uid not in last_failed:
        summary.pending += 1
    else:
        todo.append(unit)


def _last_failed(manifest: Manifest) -> set[str]:
    """Units whose last attempt failed (a feature shard "done" with failed videos counts as failed)."""
    last = manifest.last_events(kinds=("done", "failed"))
    return {uid for uid, ev in last.items() if ev.get("event") == "failed" or ev.get("failures")}


def run_pipeline(
    pipeline: Pipeline, items: Sequence[VideoItem], out_dir: str | Path, options: RunOptions
) -> RunSummary:
    """Run a command over its inputs with resume, locking, progress and a summary."""
    pipeline, items, out = with_absolute_paths(pipeline, items, Path(out_dir))
    manifest = Manifest(out)
    out.mkdir(parents=True, exist_ok=True)
    lock = RunLock(manifest, options.shard_tag)
    lock.acquire()
    try:
        manifest.open_job(pipeline.command, pipeline.output_config(), options.overwrite)
        summary = RunSummary()
        units = pipeline.make_units(items)
        _remove_dead_temporaries(manifest, items)
        manifest.write_units([u.uid for u in units])
        todo = _select(pipeline, units, manifest, options, summary)
        progress.clear_shard(manifest, options.shard_tag)
        ctx = RunContext(out, options.shard_tag, manifest.new_run(), check_paths=options.backend == "dask")
        budget = thread_budget(options, len(todo))
        # Before any pool starts: worker processes inherit the env and apply it in their initializer.
        apply_budget(budget, libraries=not _in_processes(options, len(todo)))
        summary.threads = budget.describe()
        start = time.perf_counter()
        bar = progress.RunBar(manifest, ctx.tag, len(todo), options.quiet)
        for result in bar.follow(_results(pipeline, todo, ctx, options, budget)):
            _account(summary, result)
        summary.seconds = time.perf_counter() - start
        _finalize(pipeline, manifest, summary)
        _compact(manifest, units, options, ctx.run)
        return summary
    finally:
        close_event_logs(out)
        lock.release()


def _compact(manifest: Manifest, units: list[Unit], opts: RunOptions, run: int) -> None:
    """Fold this shard's done records into its index, so the next resume check reads one file."""
    i, n = opts.shard
    try:
        manifest.compact_done([u.uid for u in units if u.index % n == i], opts.shard_tag, run)
    except OSError as exc:  # e.g. a full disk: the per-unit records stay valid, only slower to read
        log.warning("could not compact the done records (%s); they stay valid", exc)


def thread_budget(options: RunOptions, units: int) -> ThreadBudget:
    """The budget split across the workers that will actually run (one process for sequential)."""
    parallel = options.backend == "dask" or (options.backend != "sequential" and options.jobs > 1)
    workers = max(options.jobs, len(options.devices)) if parallel else 1
    return derive_budget(options.threads, max(1, min(workers, units)) if units else workers)


def _in_processes(options: RunOptions, units: int) -> bool:
    """Whether the units run in worker processes (loky with >1 job, dask) rather than here."""
    return options.backend == "dask" or (options.backend == "loky" and min(options.jobs, units) > 1)
def _remove_dead_temporaries(manifest: Manifest, items: Sequence[VideoItem]) -> None:
    """Temporaries of killed writers: in .flowkit, at the top of OUT and beside every video's output."""
    state = manifest.state_dir
    parents = {(manifest.out_dir / item.video_id).parent for item in items if not item.error}
    removed = remove_dead_temporaries([state, state / "done", state / "locks", manifest.out_dir, *parents])
    if removed:
        log.debug("removed %d temporaries of killed runs", len(removed))


def _finalize(pipeline: Pipeline, manifest: Manifest, summary: RunSummary) -> None:
    """Write what spans units; a full or read-only disk is reported in the summary, not as a traceback."""
    try:
        failures = pipeline.finalize(manifest) or ()
        summary.failed.extend(("finalize", path, cause) for path, cause in failures)
    except OSError as exc:
        if os.environ.get("FLOWKIT_DEBUG"):
            raise
        summary.errors.append(f"{os_error_text(exc)} (while finishing the output; what is done is kept, "
                              "rerun the same command once this is fixed)")


def _account(summary: RunSummary, result: UnitResult) -> None:
    summary.frames += result.frames
    if result.status == "done":
        summary.done += 1
    summary.failed.extend((result.uid, path, cause) for path, cause in result.failures)
    summary.notes.extend(result.notes)


def _results(
    pipeline: Pipeline, todo: list[Unit], ctx: RunContext, opts: RunOptions, budget: ThreadBudget
) -> Iterator[UnitResult]:
    if not todo:
        return iter(())
    jobs = min(opts.jobs, len(todo))
    if opts.backend == "sequential" or (jobs == 1 and opts.backend != "dask"):
        devices = _device_queue(opts.devices, 1, None) if opts.devices else None
        return (execute_unit(pipeline, u, ctx, devices) for u in todo)
    if opts.backend == "dask":
        return _dask_results(pipeline, todo, ctx, opts)
    return _joblib_results(pipeline, todo, ctx, opts, jobs, budget)


def _joblib_results(
    pipeline: Pipeline, todo: list[Unit], ctx: RunContext, opts: RunOptions, jobs: int, budget: ThreadBudget
) -> Iterator[UnitResult]:
    kwargs: dict[str, Any] = {}
    devices = None
    if opts.backend == "loky":
        queue_ = None
        if opts.devices:
            import multiprocessing

            queue_ = _device_queue(opts.devices, jobs, multiprocessing.Manager())
        kwargs = {"initializer": _init_worker, "initargs": (budget, queue_)}
    elif opts.devices:
        devices = _device_queue(opts.devices, jobs, None)
    parallel = Parallel(
        n_jobs=jobs, backend=opts.backend, return_as="generator_unordered", **kwargs
    )
    yield from parallel(delayed(execute_unit)(pipeline, u, ctx, devices) for u in todo)


def _dask_results(
    pipeline: Pipeline, todo: list[Unit], ctx: RunContext, opts: RunOptions
) -> Iterator[UnitResult]:
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError as exc:
        raise ConfigError("--backend dask needs the extra: pip install 'flowkit[dask]'") from exc
    cluster = None
    if opts.scheduler:
        client = Client(opts.scheduler)
    else:
        cluster = LocalCluster(
            n_workers=opts.jobs, threads_per_worker=1, processes=True, dashboard_address=None
        )
        client = Client(cluster)
    try:
        yield from _dask_stream(client, pipeline, todo, ctx)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _dask_stream(client: Any, pipeline: Pipeline, todo: list[Unit], ctx: RunContext) -> Iterator[UnitResult]:
    """Submit units a few at a time; a unit whose worker died too often (KilledWorker) fails as a value."""
    from dask.distributed import as_completed

    waiting = iter(todo)
    window = max(4, 2 * sum(client.nthreads().values()))
    running: dict[Any, Unit] = {}
    finished = as_completed()

    def submit(unit: Unit) -> None:
        future = client.submit(execute_unit, pipeline, unit, ctx, pure=False,
                               key=f"flowkit-{ctx.tag}-r{ctx.run}-{unit.index}")
        running[future] = unit
        finished.add(future)

    for unit in itertools.islice(waiting, window):
        submit(unit)
    for future in finished:
        unit = running.pop(future)
        try:
            yield future.result()
        except Exception as exc:  # noqa: BLE001 - the worker process died (or the cluster failed it)
            yield _lost(unit, exc, ctx)
        nxt = next(waiting, None)
        if nxt is not None:
            submit(nxt)


def _lost(unit: Unit, exc: BaseException, ctx: RunContext) -> UnitResult:
    """A unit no worker could finish: recorded as failed by the client, so --retry-failed redoes it."""
    path = str(unit.items[0].path) if len(unit.items) == 1 else unit.uid
    cause = f"its worker died ({one_line(exc)}); rerun with --retry-failed"
    result = UnitResult(unit.uid, "failed", failures=[(path, cause)])
    write_end_event(_event_log(ctx), result, ctx.tag)
    return result
