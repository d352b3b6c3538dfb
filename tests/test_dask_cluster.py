"""A real Dask cluster: scheduler and workers as separate processes started in another folder.

The client gives relative paths; the workers must still read the client's inputs and write the client's
output (paths are resolved on the client), and a worker killed mid-unit must not lose or corrupt work.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from clirun import run

import flowkit
from flowkit.inputs import VideoItem
from flowkit.jobs.manifest import Manifest
from flowkit.jobs.runner import RunContext, Unit, execute_unit
from flowkit.outputs.hdf5 import load_index, read_video

distributed = pytest.importorskip("dask.distributed")
REPO = Path(flowkit.__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    # Heartbeats at every frame: the kill test waits for one to be sure a unit is half done.
    quiet = {"DASK_LOGGING__DISTRIBUTED": "error", "FLOWKIT_HEARTBEAT_S": "0"}
    return {**os.environ, "PYTHONPATH": path, **quiet}


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dask", *args], cwd=cwd, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class Cluster(str):
    """The scheduler address (a str), with the folder the cluster's processes run in."""

    def __new__(cls, address: str, folder: Path) -> Cluster:
        obj = super().__new__(cls, address)
        obj.folder = folder
        return obj


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """`dask scheduler` + 2 `dask worker` processes on 127.0.0.1, their cwd a folder of their own."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    info = elsewhere / "scheduler.json"
    procs = [_start(["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                     "--scheduler-file", str(info)], elsewhere)]
    try:
        deadline = time.monotonic() + 60
        while not info.exists() or not info.read_text().strip():
            assert procs[0].poll() is None and time.monotonic() < deadline, "the scheduler did not start"
            time.sleep(0.1)
        address = json.loads(info.read_text())["address"]
        for k in range(2):
            (elsewhere / f"w{k}").mkdir()
            procs.append(_start(["worker", address, "--nthreads", "1", "--no-dashboard", "--host",
                                 "127.0.0.1", "--name", f"w{k}", "--local-directory",
                                 str(elsewhere / f"w{k}")], elsewhere / f"w{k}"))
        with distributed.Client(address, timeout=30) as client:
            client.wait_for_workers(2, timeout=90)
        yield Cluster(address, elsewhere)
    finally:
        for proc in reversed(procs):
            _stop(proc)


def tree(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and ".flowkit" not in p.parts}


@pytest.mark.slow
def test_real_cluster_with_relative_paths_equals_sequential(make_video, weights, tmp_path, monkeypatch,
                                                           scheduler):
    for k, vid in enumerate(["a/v0", "a/v1", "b/v2"]):
        make_video(f"in/{vid}.mp4", n=8 + k, height=32, width=32, seed=k)
    monkeypatch.chdir(tmp_path)  # the client's folder; the workers run in tmp_path/elsewhere/w*
    flow = ["extract-flow", "in", "-a", "dis"]
    assert run(*flow, "-o", "seq", "--backend", "sequential").exit_code == 0
    result = run(*flow, "-o", "dsk", "--backend", "dask", "--scheduler", scheduler)
    assert result.exit_code == 0 and "done 3," in result.output, result.output
    assert tree(tmp_path / "dsk") == tree(tmp_path / "seq")  # file for file, byte for byte
    assert not list(scheduler.folder.rglob("dsk"))  # nothing written under the workers' folder
    feats = ["features", "in", "--model", "c3d_test", "--weights", "c3d_test.pt", "--clip-len", "16",
             "--pad-last", "--videos-per-shard", "1"]
    assert run(*feats, "-o", "fseq", "--backend", "sequential").exit_code == 0
    result = run(*feats, "-o", "fdsk", "--backend", "dask", "--scheduler", scheduler)
    assert result.exit_code == 0, result.output
    index = load_index(tmp_path / "fdsk")
    assert index == load_index(tmp_path / "fseq") and len(index) == 3
    for vid, shard in index.items():
        got, want = read_video(tmp_path / "fdsk" / shard, vid), read_video(tmp_path / "fseq" / shard, vid)
        for name, array in want["datasets"].items():
            assert (got["datasets"][name] == array).all(), (vid, name)


@pytest.mark.slow
def test_a_worker_killed_mid_unit_loses_nothing(make_video, tmp_path, monkeypatch, scheduler):
    for k in range(3):
        make_video(f"in/v{k}.mp4", n=16, height=48, width=48, seed=k)
    args = ["extract-flow", str(tmp_path / "in"), "-a", "tvl1-opencv", "--batch-size", "2"]
    assert run(*args, "-o", str(tmp_path / "seq"), "--backend", "sequential").exit_code == 0
    out = tmp_path / "dsk"
    client = subprocess.Popen([sys.executable, "-m", "flowkit", *args, "-o", "dsk", "--backend", "dask",
                               "--scheduler", scheduler, "--quiet"], cwd=tmp_path, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    victim = None
    deadline = time.monotonic() + 120
    while victim is None and client.poll() is None and time.monotonic() < deadline:
        for beat in (out / ".flowkit" / "progress").glob("*/*.json"):  # a unit half done
            with contextlib.suppress(OSError, ValueError):
                victim = json.loads(beat.read_text())["pid"]  # the worker process running it
        time.sleep(0.02)
    assert victim is not None, "no unit started on the cluster"
    os.kill(victim, signal.SIGKILL)  # the nanny starts a new worker; the scheduler reassigns the unit
    output = client.communicate(timeout=180)[0]
    if client.returncode == 1:  # the unit was given up: recorded as failed, --retry-failed redoes it
        assert "its worker died" in output, output
        monkeypatch.chdir(tmp_path)
        again = run(*args, "-o", "dsk", "--backend", "dask", "--scheduler", scheduler, "--retry-failed")
        assert again.exit_code == 0, again.output
    else:
        assert client.returncode == 0, output
    assert tree(out) == tree(tmp_path / "seq")
    assert run("status", out).exit_code == 0
    leftovers = [p.name for p in out.rglob("*") if ".tmp" in p.name or ".old-" in p.name]
    assert leftovers == []


def test_a_worker_that_cannot_see_a_path_fails_the_unit_naming_path_and_host(tmp_path):
    from test_jobs import FakePipeline

    out = tmp_path / "out"  # the client made it, but this "worker" has no such folder
    unit = Unit("v0", 0, (VideoItem("v0", tmp_path / "v0.mp4"),))
    result = execute_unit(FakePipeline(out), unit, RunContext(out, "shard-0-of-1", 1, check_paths=True))
    assert result.status == "failed" and not out.exists()
    path, cause = result.failures[0]
    assert path == str(out) and f"not visible on worker host {socket.gethostname()}" in cause
    (out / ".flowkit").mkdir(parents=True)
    (out / ".flowkit" / "job.json").write_text("{}")
    result = execute_unit(FakePipeline(out), unit, RunContext(out, "shard-0-of-1", 1, check_paths=True))
    assert result.failures == [(str(tmp_path / "v0.mp4"), result.failures[0][1])]
    assert result.failures[0][1].startswith("input not visible on worker host")
    assert Manifest(out).read_done("v0") is None
