"""extract-flow keeps engine calls in flight with a streaming engine (GPU): same bytes, same order."""

from __future__ import annotations

from pathlib import Path

from clirun import run

from flowkit.flow.tvl1 import TVL1Engine
from flowkit.pipelines import flow as flow_pipeline

ARGS = ["-a", "tvl1", "--batch-size", "2", "--device", "cpu", "--backend", "sequential"]


def tree(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and ".flowkit" not in p.parts}


def test_batches_in_flight_give_the_bytes_of_one_batch_at_a_time(make_video, tmp_path, monkeypatch):
    make_video("in/a.mp4", n=9, height=32, width=40, dx=1.0)
    make_video("in/b.mp4", n=7, height=32, width=40, dx=-0.5, dy=0.5)
    assert run("extract-flow", tmp_path / "in", "-o", tmp_path / "one", *ARGS).exit_code == 0
    assert flow_pipeline.inflight_depth(TVL1Engine("cpu")) == 0  # the CPU computes each batch when full

    submitted: list[int] = []
    real_submit = TVL1Engine.submit

    def spy(self, prev, nxt):
        submitted.append(len(prev))
        return real_submit(self, prev, nxt)

    monkeypatch.setattr(TVL1Engine, "submit", spy)
    monkeypatch.setattr(flow_pipeline, "inflight_depth", lambda engine: 2)  # what a CUDA device gets
    assert run("extract-flow", tmp_path / "in", "-o", tmp_path / "streamed", *ARGS).exit_code == 0
    assert sum(submitted) == 8 + 6 and max(submitted) == 2
    assert tree(tmp_path / "streamed") == tree(tmp_path / "one")
