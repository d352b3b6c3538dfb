"""Acceptance of issue 13: kill -9 at every file-system operation of small runs, then resume.

For extract-flow and features (and features' rerun of a shard with a failed video), each run is killed
at its k-th file operation (see killpoints.py), rerun to the end, and compared with an uninterrupted
run: the rerun must not refuse, leave no temporary, and give the same outputs (HDF5 by content) and
the same `flowkit status`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from clirun import run

import flowkit

HERE = Path(__file__).resolve().parent


def sweep(tmp_path: Path, scenarios: dict[str, tuple[list[object], Path, int]]) -> dict[str, dict]:
    specs = []
    for name, (args, base, every) in scenarios.items():
        (tmp_path / name).mkdir(parents=True)
        specs.append({"base": str(base), "args": [str(a) for a in args], "every": every,
                      "work": str(tmp_path / name), "report": str(tmp_path / f"{name}.json")})
    (tmp_path / "specs.json").write_text(json.dumps(specs))
    root = str(Path(flowkit.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
           "PYTHONDONTWRITEBYTECODE": "1", "FLOWKIT_TVL1_COMPILE": "0", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(HERE / "killpoints.py"), str(tmp_path / "specs.json")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return {name: json.loads((tmp_path / f"{name}.json").read_text()) for name in scenarios}


@pytest.mark.slow
def test_kill_9_at_every_file_operation_then_resume(make_video, weights, tmp_path):
    for k in range(2):
        make_video(f"in/c{k}/v{k}.mp4", n=3, height=32, width=32, seed=k)
    videos, empty = tmp_path / "in", tmp_path / "empty"
    empty.mkdir()
    flow = ["extract-flow", videos, "-a", "dis"]
    features = ["features", videos, "--model", "c3d_test", "--weights", weights, "--clip-len", "16",
                "--pad-last", "--videos-per-shard", "1"]
    # A shard whose video failed, then fixed: its rerun copies nothing old and rebuilds the shard.
    failed = tmp_path / "failed"
    bad = videos / "c1" / "v1.mp4"
    good = bad.read_bytes()
    bad.write_bytes(b"not a video" * 10)
    assert run(*features, "-o", failed).exit_code == 1
    bad.write_bytes(good)
    reports = sweep(tmp_path / "sweep", {"flow": (flow, empty, 1), "features": (features, empty, 4),
                                         "rerun": (features, failed, 3)})
    for name, report in reports.items():
        assert report["ref_code"] == 0, name
        assert report["total"] >= 20 and len(report["points"]) >= 8, (name, report["total"])
        assert report["problems"] == [], (name, report["problems"][:10])
