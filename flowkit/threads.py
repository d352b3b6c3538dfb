"""The thread budget: how many cores this process may use, and how they are split between workers.

The usable cores come from what the process is allowed to run on, never from the node's core count:
an explicit request (``--threads``), else the smallest of the affinity mask (``taskset``, Slurm's
cpuset), the cgroup CPU quota (Docker ``--cpus``, Kubernetes limits) and ``SLURM_CPUS_PER_TASK``.
With ``--jobs J`` each worker gets ``cores // J`` threads for torch, OpenCV and OpenMP, so the workers
together never run more compute threads than the budget.

OpenMP (torch's CPU kernels, including the compiled TV-L1) spins while it waits at a barrier; on a
busy or oversubscribed machine the spinning threads steal the cores the working threads need and a run
becomes 10-25x slower. `OPENMP_ENV` makes waiting threads sleep. libgomp reads it when it is loaded,
i.e. at ``import torch``: :func:`set_openmp_env` runs at ``import flowkit`` and CLI start, and worker
processes inherit it (measured in bench/contention.py; see BENCHMARKS.md "Contention").

Where it is applied: the runner derives the budget before any pool starts and writes the per-worker
thread counts into the environment (OMP_NUM_THREADS & co., which loky and Dask LocalCluster workers
inherit when they start); loky workers also apply it in their initializer before any unit runs. Workers
of a remote Dask scheduler keep their own environment.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("flowkit")

# Waiting OpenMP threads sleep instead of spinning (libgomp: torch's CPU wheels; KMP_*: Intel OpenMP
# builds). Measured in bench/contention.py --omp-study: PASSIVE removes the collapse under load at no
# cost when idle.
OPENMP_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}
# Thread-count variables read by the native libraries of child processes when they start.
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                   "VECLIB_MAXIMUM_THREADS", "OPENCV_FOR_THREADS_NUM")
CGROUP_ROOT = Path("/sys/fs/cgroup")


def set_openmp_env(environ: os._Environ[str] | dict[str, str] = os.environ) -> None:
    """Default the OpenMP wait settings (a user's own values win); effective only before torch loads."""
    for name, value in OPENMP_ENV.items():
        environ.setdefault(name, value)


# -- where the usable cores come from ---------------------------------------------------------------
def affinity_cores() -> int | None:
    """CPUs in this process's affinity mask (taskset, cpusets), or None where the OS has no such call."""
    getter = getattr(os, "sched_getaffinity", None)
    return len(getter(0)) if getter is not None else None


def cgroup_cores(root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """CPUs allowed by the cgroup quota (v2 cpu.max, v1 cfs_quota/cfs_period), the tightest on the path.

    None when there is no quota ('max' / -1) or no cgroup filesystem.
    """
    limits = [q for d in _cgroup_dirs(root, proc_cgroup) if (q := _quota(d)) is not None]
    return min(limits) if limits else None


def _cgroup_dirs(root: Path, proc_cgroup: Path) -> list[Path]:
    """The cgroup folders of this process and their parents (v2 unified and v1 cpu controller)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    found: list[Path] = []
    for line in lines:
        _, controllers, rel = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":
            bases = [root]
        elif "cpu" in controllers.split(","):
            bases = [root / controllers, root / "cpu", root / "cpu,cpuacct"]
        else:
            continue
        for base in bases:
            if not base.is_dir():
                continue
            path = base / rel.lstrip("/")
            if not path.is_dir():  # a container sees its own cgroup at the mount's root
                path = base
            while path not in found:
                found.append(path)
                if path == base:
                    break
                path = path.parent
    return found


def _quota(folder: Path) -> float | None:
    """The CPU quota of one cgroup folder in CPUs, or None (no limit, no file)."""
    try:
        quota, period = (folder / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota = (folder / "cpu.cfs_quota_us").read_text().strip()
            period = (folder / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    if quota in ("max", "-1") or not quota.lstrip("-").isdigit() or int(period) <= 0:
        return None
    return int(quota) / int(period) if int(quota) > 0 else None


def slurm_cores(environ: Mapping[str, str] = os.environ) -> int | None:
    """SLURM_CPUS_PER_TASK, when the job set it."""
    value = environ.get("SLURM_CPUS_PER_TASK", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def usable_cores(threads: int | None = None, *, affinity: int | None = None, cgroup: float | None = None,
                 slurm: int | None = None) -> tuple[int, str]:
    """(cores, why): an explicit request wins, else the tightest of affinity, cgroup quota and Slurm."""
    if threads is not None:
        if threads < 1:
            from flowkit.errors import ConfigError

            raise ConfigError(f"--threads must be >= 1, got {threads}")
        return threads, "--threads"
    limits = [(affinity, "affinity mask"), (cgroup, "cgroup CPU quota"), (slurm, "SLURM_CPUS_PER_TASK")]
    known = [(max(1, math.ceil(n - 1e-9)), why, n) for n, why in limits if n is not None]
    if not known:
        return 1, "no affinity, cgroup or Slurm information: 1 core assumed (use --threads)"
    cores, why, raw = min(known, key=lambda k: k[0])
    detail = f"{raw:g} CPUs" if isinstance(raw, float) and raw != int(raw) else f"{cores} cores"
    return cores, f"{why} ({detail})"


# -- the budget ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ThreadBudget:
    """Usable cores, why, and their split: `workers` x (`compute` threads + `io` encode threads)."""

    cores: int
    reason: str
    workers: int = 1

    @property
    def share(self) -> int:
        """Cores per worker (at least 1: more workers than cores oversubscribe, with a warning)."""
        return max(1, self.cores // self.workers)

    @property
    def io(self) -> int:
        """Encode/write threads per worker: they mostly wait, so they share compute cores below 4."""
        return 1 if self.share < 4 else min(4, self.share // 4)

    @property
    def compute(self) -> int:
        """torch / OpenCV / OpenMP threads per worker; from 4 cores on, the I/O stages get their own."""
        return self.share if self.share < 4 else self.share - self.io

    def describe(self) -> str:
        """One line for doctor and the run summary."""
        split = f"{self.workers} worker(s) x {self.compute} compute thread(s)"
        return f"{self.cores} core(s) from {self.reason}; {split} + {self.io} encode thread(s) each"


def derive_budget(threads: int | None = None, workers: int = 1, *, environ: Mapping[str, str] = os.environ,
                  cgroup_root: Path = CGROUP_ROOT,
                  proc_cgroup: Path = Path("/proc/self/cgroup")) -> ThreadBudget:
    """The budget of this process for `workers` parallel workers (`threads`: an explicit --threads)."""
    cores, reason = usable_cores(threads, affinity=affinity_cores(),
                                 cgroup=cgroup_cores(cgroup_root, proc_cgroup), slurm=slurm_cores(environ))
    return ThreadBudget(cores, reason, max(1, workers))


_applied: ThreadBudget | None = None
_interop_set = False


def apply_budget(budget: ThreadBudget, environ: os._Environ[str] | dict[str, str] = os.environ,
                 libraries: bool = True, warn: bool = True) -> None:
    """Give torch, OpenCV and OpenMP the per-worker share, here and in child processes (via the env).

    Call it before any pool starts: in the parent, and in every worker process (runner initializer).
    `libraries=False` sets only the env (a parent whose workers are processes computes nothing);
    `warn=False` in workers (the parent already said that the machine is oversubscribed).
    """
    global _applied
    set_openmp_env(environ)
    for name in THREAD_ENV_VARS:
        environ[name] = str(budget.compute)
    if warn and budget.workers > budget.cores:
        log.warning("%d workers on %d usable core(s): the machine is oversubscribed (use --jobs %d)",
                    budget.workers, budget.cores, budget.cores)
    if libraries:
        _set_library_threads(budget.compute)
    _applied = budget


def _set_library_threads(n: int) -> None:
    """torch intra-op (and inter-op once: torch allows it only before its first parallel work), OpenCV."""
    global _interop_set
    import cv2

    cv2.setNumThreads(n)
    torch = sys.modules.get("torch")  # not imported yet: OMP_NUM_THREADS gives it the budget at import
    if torch is None:
        return
    torch.set_num_threads(n)
    if not _interop_set:
        _interop_set = True
        # flowkit runs no inter-op parallel work; torch refuses once any has started (the user's own).
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(1)


def current_budget() -> ThreadBudget | None:
    """The budget last applied in this process (None: flowkit applied none)."""
    return _applied


def set_thread_budget(threads: int | None = None, workers: int = 1) -> ThreadBudget:
    """Python API: derive and apply the budget exactly as the CLI does for `--threads`/`--jobs`."""
    budget = derive_budget(threads, workers)
    apply_budget(budget)
    return budget
