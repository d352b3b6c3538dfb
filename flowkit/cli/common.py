"""Pieces every CLI command shares: error handling at the edge, batch options, shard parsing, summary."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from flowkit.errors import ConfigError, FlowkitError, ManifestError, Terminated, os_error_text

log = logging.getLogger("flowkit")


# -- error handling at the edge -------------------------------------------------------------------
def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn typed library errors and OS errors into one clear line; FLOWKIT_DEBUG=1 shows the traceback.

    SIGTERM (a scheduler's preemption, `kill`) stops the command like Ctrl-C: the run's `finally`
    blocks give its lock back, and the exit code is 143 (130 for Ctrl-C).
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with sigterm_as_interrupt():
                return func(*args, **kwargs)
        except Terminated:
            click.echo("flowkit: terminated (SIGTERM); rerun the same command to resume", err=True)
            sys.exit(143)
        except KeyboardInterrupt:
            click.echo("flowkit: interrupted; rerun the same command to resume", err=True)
            sys.exit(130)
        except FlowkitError as exc:
            if os.environ.get("FLOWKIT_DEBUG"):
                raise
            click.echo(f"flowkit: error: {exc}", err=True)
            sys.exit(2 if isinstance(exc, ConfigError | ManifestError) else 1)
        except OSError as exc:  # a read-only or full output folder: one line naming the path
            if os.environ.get("FLOWKIT_DEBUG"):
                raise
            click.echo(f"flowkit: error: {os_error_text(exc)}", err=True)
            sys.exit(1)

    return wrapper


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While the block runs, SIGTERM raises Terminated (a KeyboardInterrupt) in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        received.append(signum)
        raise Terminated(f"terminated by signal {signum}")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    except Exception as exc:
        if received:  # e.g. the workers died of the same signal first: still a termination
            raise Terminated(f"terminated by signal {received[0]}") from exc
        raise
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def setup_logging(quiet: bool) -> None:
    """Log flowkit's INFO lines (WARNING with --quiet) to stderr."""
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="flowkit: %(message)s")
    # Dask logs every connection at INFO, burying flowkit's own lines; distributed reads its levels
    # from this config when imported (in the workers too), so it is set before that.
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")


# -- options shared by every batch command --------------------------------------------------------
def parse_shard(text: str | None) -> tuple[int, int]:
    """'i/N' -> (i, N); 'auto' reads the Slurm array variables; None -> (0, 1)."""
    if text is None:
        return 0, 1
    if text == "auto":
        return _slurm_shard()
    try:
        i, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard must look like i/N (e.g. 3/16) or 'auto', got {text!r}") from None
    return i, n


def _slurm_shard() -> tuple[int, int]:
    env = os.environ
    if "SLURM_ARRAY_TASK_ID" not in env or "SLURM_ARRAY_TASK_COUNT" not in env:
        raise ConfigError("--shard auto needs SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT (a job array)")
    task = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
    step = int(env.get("SLURM_ARRAY_TASK_STEP", "1") or 1)
    return task // step, int(env["SLURM_ARRAY_TASK_COUNT"])


THREADS_HELP = ("CPU threads for the whole run, split across the --jobs workers.  [default: the cores this "
                "process may use: affinity mask, cgroup CPU quota, SLURM_CPUS_PER_TASK; see flowkit doctor]")


def threads_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """--threads N: kept in the click context (run_options and thread_budget read it), not a parameter."""

    @functools.wraps(func)
    def wrapper(*args: Any, threads: int | None = None, **kwargs: Any) -> Any:
        click.get_current_context().meta["flowkit.threads"] = threads
        return func(*args, **kwargs)

    return click.option("--threads", type=click.IntRange(min=1), default=None, help=THREADS_HELP)(wrapper)


def given_threads() -> int | None:
    """The --threads of the running command (None: derive the budget)."""
    ctx = click.get_current_context(silent=True)
    return ctx.meta.get("flowkit.threads") if ctx is not None else None


def thread_budget(workers: int = 1) -> Any:
    """Derive and apply the thread budget of a command that computes outside the runner."""
    from flowkit.threads import set_thread_budget

    return set_thread_budget(given_threads(), workers)


def batch_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Options every batch command shares: parallelism, threads, backend, shard, resume policy, quiet."""
    decorators = [
        click.option("-o", "--output", "out_dir", required=True, type=click.Path(path_type=Path),
                     help="Output folder (created; holds .flowkit/ with the resumable manifest)."),
        click.option("--root", type=click.Path(path_type=Path, exists=True, file_okay=False), default=None,
                     help="Video ids are paths relative to this folder (default: INPUT's folder, or for a "
                          "list file its folder or the folder its videos share)."),
        click.option("-j", "--jobs", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Parallel workers (processes with the loky backend)."),
        click.option("--backend", type=click.Choice(["loky", "threading", "sequential", "dask"]),
                     default="loky", show_default=True, help="Where the workers run."),
        click.option("--scheduler", default=None, help="Dask scheduler address (default: a LocalCluster)."),
        click.option("--shard", default=None,
                     help="Process only shard i of N ('i/N', unit k -> shard k mod N) or 'auto' (Slurm)."),
        click.option("--overwrite", is_flag=True, help="Redo everything, even with a different config."),
        click.option("--retry-failed", is_flag=True, help="Rerun only the units that failed last time."),
        click.option("-q", "--quiet", is_flag=True, help="No progress bar, warnings only."),
        threads_option,
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def run_options(jobs: int, backend: str, scheduler: str | None, shard: str | None, overwrite: bool,
                retry_failed: bool, quiet: bool, devices: tuple[str, ...] = ()) -> Any:
    """Build the runner's RunOptions from the shared CLI options."""
    from flowkit.jobs.runner import RunOptions

    return RunOptions(jobs=jobs, backend=backend, scheduler=scheduler, shard=parse_shard(shard),
                      overwrite=overwrite, retry_failed=retry_failed, quiet=quiet, devices=devices,
                      threads=given_threads())


def finish(summary: Any) -> None:
    """Print the end summary and exit with its code (0 only if nothing failed)."""
    for line in summary.lines():
        click.echo(line)
    sys.exit(summary.exit_code)


def drop_unset(**values: Any) -> dict[str, Any]:
    """Options the user did not give stay None on the CLI; the library's config fills the defaults."""
    return {k: v for k, v in values.items() if v is not None}


# -- how videos are read (every command that decodes: extract-flow, sample-frames, features) ------------
DECODE_KEYS = ("decoder", "allow_truncated", "max_pixels", "input_frames", "frames_fps")


def decode_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--decoder, --allow-truncated, --max-pixels, --input-frames, --frames-fps (flowkit.decoders)."""
    decorators = [
        click.option("--decoder", type=click.Choice(["auto", "pyav", "opencv", "torchcodec"]), default=None,
                     help="Video decoder; auto = pyav (FFmpeg, goes on past corrupt packets), torchcodec "
                          "(NVDEC) when decoding for CUDA. Recorded in the job.  [default: auto]"),
        click.option("--allow-truncated", is_flag=True, default=None,
                     help="Accept videos that decode far short of their header or with decoder errors "
                          "(noted in the done record) instead of failing them."),
        click.option("--max-pixels", type=click.IntRange(min=1), default=None,
                     help="Refuse videos whose frames exceed this many pixels (from the header, before "
                          "decoding).  [default: 35389440 = 8192x4320]"),
        click.option("--input-frames", is_flag=True, default=None,
                     help="INPUT holds folders of extracted frames: each folder of images is one video "
                          "(images in natural name order)."),
        click.option("--frames-fps", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="Frame rate of --input-frames folders (timestamps k/fps).  [default: 30]"),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def pop_decode_options(values: dict[str, Any], device: str = "cpu") -> Any:
    """Take the decode options out of a command's keyword arguments into a DecodeOptions."""
    from flowkit.decoders import DecodeOptions

    given = drop_unset(**{k: values.pop(k, None) for k in DECODE_KEYS})
    return DecodeOptions(**given, device=device)
