"""An interrupted extract-flow video resumes from its last checkpoint, with a byte-identical result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from clirun import run

from flowkit.pipelines import flow as flow_pipeline
from flowkit.pipelines.partial import RECORD, partial_dir

ARGS = ["-a", "dis", "--batch-size", "2"]


def tree(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and ".flowkit" not in p.parts}


def count_pairs(monkeypatch: pytest.MonkeyPatch, stop_after: int | None = None) -> list[int]:
    """Count the pairs the engine computes; raise KeyboardInterrupt (Ctrl-C) at call `stop_after`."""
    calls: list[int] = []
    real = flow_pipeline._compute

    def counted(engine, prev, nxt, algorithm):
        if stop_after is not None and len(calls) == stop_after:
            raise KeyboardInterrupt
        calls.append(len(prev))
        return real(engine, prev, nxt, algorithm)

    monkeypatch.setattr(flow_pipeline, "_compute", counted)
    return calls


@pytest.fixture
def clip(make_video, tmp_path, monkeypatch):
    make_video("in/cls/v.mp4", n=20, height=32, width=32)
    reference = tmp_path / "reference"
    assert run("extract-flow", tmp_path / "in", "-o", reference, *ARGS).exit_code == 0
    return tmp_path / "in", tree(reference)


def interrupt_after(inputs: Path, out: Path, monkeypatch: pytest.MonkeyPatch, batches: int) -> dict:
    monkeypatch.setenv("FLOWKIT_CHECKPOINT_S", "0")  # a checkpoint after every batch
    count_pairs(monkeypatch, stop_after=batches)
    assert run("extract-flow", inputs, "-o", out, *ARGS).exit_code == 130
    monkeypatch.undo()
    return json.loads((partial_dir(out / "cls" / "v") / RECORD).read_text())


def test_ctrl_c_mid_video_resumes_without_recomputing(clip, tmp_path, monkeypatch):
    inputs, reference = clip
    out = tmp_path / "out"
    record = interrupt_after(inputs, out, monkeypatch, batches=3)
    assert record["pairs"] == 6 and record["rgb"] >= 7
    # A batch written after the checkpoint (a kill before the next one) must be dropped, not trusted.
    (partial_dir(out / "cls" / "v") / "flow_x_00008.jpg").write_bytes(b"\xff\xd8 half")
    computed = count_pairs(monkeypatch)
    assert run("extract-flow", inputs, "-o", out, *ARGS).exit_code == 0
    assert sum(computed) == 19 - 6  # the first 6 pairs were kept
    assert tree(out) == reference
    assert not partial_dir(out / "cls" / "v").exists()


def test_a_partial_of_another_source_or_a_damaged_file_is_redone(clip, tmp_path, monkeypatch):
    inputs, reference = clip
    for damage in ("touch", "truncate"):
        out = tmp_path / damage
        record = interrupt_after(inputs, out, monkeypatch, batches=2)
        assert record["pairs"] == 4
        folder = partial_dir(out / "cls" / "v")
        if damage == "touch":  # the source changed since: the partial is not its output any more
            source = inputs / "cls" / "v.mp4"
            os.utime(source, ns=(time.time_ns(), time.time_ns()))
        else:  # a listed file cut short (power loss): nothing of the partial is trusted
            flow = folder / "flow_y_00002.jpg"
            flow.write_bytes(flow.read_bytes()[:-10])
        computed = count_pairs(monkeypatch)
        assert run("extract-flow", inputs, "-o", out, *ARGS).exit_code == 0
        monkeypatch.undo()
        assert sum(computed) == 19, damage
        assert tree(out) == reference


@pytest.mark.slow
def test_kill_9_mid_video_resumes(make_video, tmp_path, monkeypatch):
    make_video("in/v.mp4", n=16, height=48, width=48)
    args = ["-a", "tvl1-opencv", "--batch-size", "2"]
    reference = tmp_path / "reference"
    assert run("extract-flow", tmp_path / "in", "-o", reference, *args).exit_code == 0
    out = tmp_path / "out"
    record = partial_dir(out / "v") / RECORD
    proc = subprocess.Popen(
        [sys.executable, "-m", "flowkit", "extract-flow", str(tmp_path / "in"), "-o", str(out), *args, "-q"],
        env={**os.environ, "FLOWKIT_CHECKPOINT_S": "0"}, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while not (record.exists() and json.loads(record.read_text() or "{}").get("pairs", 0) >= 4):
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint before the end"
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    kept = json.loads(record.read_text())["pairs"]
    computed = count_pairs(monkeypatch)
    assert run("extract-flow", tmp_path / "in", "-o", out, *args).exit_code == 0
    assert sum(computed) <= 15 - kept
    assert tree(out) == tree(reference)
    assert run("status", out).exit_code == 0


def test_an_unchanged_folder_verifies_with_one_stat_a_changed_one_is_counted(clip, tmp_path, monkeypatch):
    inputs, reference = clip
    out = tmp_path / "out"
    assert run("extract-flow", inputs, "-o", out, *ARGS).exit_code == 0

    real = os.listdir

    def no_listing(path="."):
        assert "cls" not in str(path), f"listed {path}"
        return real(path)

    with monkeypatch.context() as patch:
        patch.setattr(os, "listdir", no_listing)
        again = run("extract-flow", inputs, "-o", out, *ARGS)
    assert again.exit_code == 0 and "done 0, skipped 1" in again.output, again.output
    (out / "cls" / "v" / "flow_y_00004.jpg").unlink()  # the folder's mtime moves: counted, found short
    fixed = run("extract-flow", inputs, "-o", out, *ARGS)
    assert fixed.exit_code == 0 and "done 1, skipped 0" in fixed.output, fixed.output
    assert tree(out) == reference
