"""The thread budget: where the cores come from, how they are split, and that workers apply it."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from flowkit import threads
from flowkit.errors import ConfigError
from flowkit.inputs import VideoItem
from flowkit.jobs.manifest import Manifest
from flowkit.jobs.runner import RunOptions, Unit, UnitResult, run_pipeline
from flowkit.threads import ThreadBudget, cgroup_cores, derive_budget, slurm_cores, usable_cores


def _cgroup(tmp_path: Path, proc_line: str, files: dict[str, str]) -> tuple[Path, Path]:
    """A fake /sys/fs/cgroup tree and /proc/self/cgroup file."""
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    proc = tmp_path / "proc_cgroup"
    proc.write_text(proc_line + "\n")
    return root, proc


def test_cgroup_v2_quota_is_the_tightest_on_the_path(tmp_path):
    root, proc = _cgroup(tmp_path, "0::/user.slice/job", {
        "cpu.max": "max 100000\n",
        "user.slice/cpu.max": "100000 100000\n",  # 1 CPU for the parent slice
        "user.slice/job/cpu.max": "250000 100000\n",  # 2.5 CPUs asked by the job itself
    })
    assert cgroup_cores(root, proc) == 1.0


def test_cgroup_v2_fractional_quota_and_no_quota(tmp_path):
    root, proc = _cgroup(tmp_path, "0::/job", {"job/cpu.max": "150000 100000\n"})
    assert cgroup_cores(root, proc) == 1.5
    assert usable_cores(affinity=8, cgroup=1.5) == (2, "cgroup CPU quota (1.5 CPUs)")
    root, proc = _cgroup(tmp_path / "b", "0::/job", {"job/cpu.max": "max 100000\n"})
    assert cgroup_cores(root, proc) is None


def test_cgroup_v1_cfs_quota(tmp_path):
    files = {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "300000\n",
             "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n"}
    root, proc = _cgroup(tmp_path, "4:cpu,cpuacct:/docker/abc", files)
    assert cgroup_cores(root, proc) == 3.0
    # A container sees its own cgroup at the mount's root (the path in /proc does not exist there).
    files = {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}
    root, proc = _cgroup(tmp_path / "b", "3:cpu:/kubepods/pod1", files)
    assert cgroup_cores(root, proc) is None
    assert cgroup_cores(tmp_path / "none", tmp_path / "missing") is None


def test_slurm_and_order_of_sources():
    assert slurm_cores({"SLURM_CPUS_PER_TASK": "4"}) == 4
    assert slurm_cores({"SLURM_CPUS_PER_TASK": ""}) is None
    # --threads wins over every limit (it may even exceed them); otherwise the tightest limit wins.
    assert usable_cores(6, affinity=2, cgroup=1.0, slurm=1) == (6, "--threads")
    assert usable_cores(affinity=64, cgroup=None, slurm=4) == (4, "SLURM_CPUS_PER_TASK (4 cores)")
    assert usable_cores(affinity=2, cgroup=8.0, slurm=16) == (2, "affinity mask (2 cores)")
    cores, why = usable_cores()
    assert cores == 1 and "--threads" in why
    with pytest.raises(ConfigError):
        usable_cores(0)


def test_derive_budget_never_uses_the_node_core_count(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 128)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    budget = derive_budget(None, 1, environ={}, cgroup_root=tmp_path, proc_cgroup=tmp_path / "none")
    assert (budget.cores, budget.reason) == (3, "affinity mask (3 cores)")
    budget = derive_budget(None, 1, environ={"SLURM_CPUS_PER_TASK": "2"}, cgroup_root=tmp_path,
                           proc_cgroup=tmp_path / "none")
    assert budget.cores == 2 and budget.reason.startswith("SLURM")


@pytest.mark.parametrize(("cores", "workers", "compute", "io"), [
    (2, 1, 2, 1), (2, 2, 1, 1), (2, 4, 1, 1), (8, 2, 3, 1), (16, 1, 12, 4), (3, 1, 3, 1),
])
def test_split_across_workers(cores, workers, compute, io):
    budget = ThreadBudget(cores, "test", workers)
    assert (budget.compute, budget.io) == (compute, io)
    if workers <= cores:  # the workers' compute + own I/O cores never exceed the budget
        own_io = budget.io if budget.share >= 4 else 0
        assert workers * (budget.compute + own_io) <= cores


def test_apply_budget_sets_libraries_and_child_env(monkeypatch):
    import cv2
    import torch

    before = torch.get_num_threads(), cv2.getNumThreads()
    env: dict[str, str] = {"OMP_WAIT_POLICY": "ACTIVE"}
    try:
        threads.apply_budget(ThreadBudget(3, "test", 1), environ=env)
        assert torch.get_num_threads() == 3 and cv2.getNumThreads() == 3
        assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "3"
        assert env["OMP_WAIT_POLICY"] == "ACTIVE"  # a user's own OpenMP setting wins
        assert threads.current_budget() == ThreadBudget(3, "test", 1)
    finally:
        torch.set_num_threads(before[0])
        cv2.setNumThreads(before[1])


@dataclass
class ThreadReportPipeline:
    """Each unit writes the thread settings its worker runs with."""

    out_dir: Path
    command: str = "thread-report"

    def output_config(self) -> dict:
        return {}

    def make_units(self, items):
        return [Unit(item.video_id, k, (item,)) for k, item in enumerate(items)]

    def is_done(self, unit, manifest):
        return False

    def process(self, unit: Unit, manifest: Manifest) -> UnitResult:
        import cv2
        import torch

        report = {"pid": os.getpid(), "torch": torch.get_num_threads(), "cv2": cv2.getNumThreads(),
                  "omp": os.environ.get("OMP_NUM_THREADS"), "wait": os.environ.get("OMP_WAIT_POLICY")}
        (self.out_dir / f"{unit.uid}.json").write_text(json.dumps(report))
        return UnitResult(unit.uid, "done", frames=1)

    def finalize(self, manifest):
        pass


def test_loky_workers_apply_the_budget(tmp_path, monkeypatch):
    # 4 threads for 2 workers: 2 each (loky's own default would be cores // jobs = 1 here).
    monkeypatch.setenv("OMP_NUM_THREADS", "7")  # restored afterwards; the run overrides it
    items = [VideoItem(f"v{k}", tmp_path / f"v{k}.mp4") for k in range(4)]
    opts = RunOptions(jobs=2, backend="loky", threads=4)
    summary = run_pipeline(ThreadReportPipeline(tmp_path), items, tmp_path, opts)
    assert summary.done == 4
    assert "4 core(s) from --threads; 2 worker(s) x 2 compute thread(s)" in "\n".join(summary.lines())
    reports = [json.loads((tmp_path / f"v{k}.json").read_text()) for k in range(4)]
    assert {r["pid"] for r in reports} != {os.getpid()}
    assert all((r["torch"], r["cv2"], r["omp"], r["wait"]) == (2, 2, "2", "PASSIVE") for r in reports)


@pytest.mark.parametrize(("given", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_import_flowkit_sets_sleeping_openmp_waits_before_torch_loads(given, expected):
    import subprocess
    import sys

    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    if given:
        env["OMP_WAIT_POLICY"] = given
    code = "import os, sys, flowkit; print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [expected, "False"]  # set, and torch (libgomp) not loaded yet


def test_more_workers_than_cores_warn_once_in_the_parent(caplog):
    with caplog.at_level("WARNING", logger="flowkit"):
        threads.apply_budget(ThreadBudget(2, "test", 4), environ={}, libraries=False, warn=False)
        assert not caplog.records  # a worker's initializer stays quiet
        threads.apply_budget(ThreadBudget(2, "test", 4), environ={}, libraries=False)
    assert "4 workers on 2 usable core(s)" in caplog.text


def test_cpu_batches_give_every_compute_thread_work(monkeypatch):
    from flowkit.pipelines.flow import default_batch_size

    monkeypatch.setattr(threads, "_applied", ThreadBudget(16, "test", workers=1))
    assert default_batch_size("cpu") == 2 * ThreadBudget(16, "test").compute  # 2 per engine thread
    monkeypatch.setattr(threads, "_applied", ThreadBudget(2, "test", workers=1))
    assert default_batch_size("cpu") == 8
    assert default_batch_size("cuda:0") == 32
