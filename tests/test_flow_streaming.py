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


def test_threading_backend_gives_the_bytes_of_sequential(make_video, tmp_path):
    """Units running in threads of one process get one engine each (an engine's scheduler serves one
    caller); before, two videos in flight at once mixed their pairs and failed."""
    for k in range(3):
        make_video(f"in/v{k}.mp4", n=17, height=64, width=80, dx=1.0 - k, dy=0.5 * k)
    base = ["-a", "tvl1", "--device", "cpu", "--batch-size", "2"]
    assert run("extract-flow", tmp_path / "in", "-o", tmp_path / "seq", *base,
               "--backend", "sequential").exit_code == 0
    result = run("extract-flow", tmp_path / "in", "-o", tmp_path / "thr", *base,
                 "--backend", "threading", "-j", "3")
    assert result.exit_code == 0, result.output
    assert tree(tmp_path / "thr") == tree(tmp_path / "seq")


def test_one_engine_called_from_several_threads(tmp_path):
    import threading

    import numpy as np
    from flowdata import pair_batch

    prev, nxt, _ = pair_batch(8, 64, 80, seed=5)
    engine = TVL1Engine("cpu")
    expected = {k: engine(prev[k : k + 2], nxt[k : k + 2]) for k in range(0, 8, 2)}
    got: dict[int, object] = {}

    def call(k: int) -> None:
        try:
            got[k] = engine(prev[k : k + 2], nxt[k : k + 2])
        except Exception as exc:  # noqa: BLE001 - compared below
            got[k] = exc

    threads = [threading.Thread(target=call, args=(k,)) for k in expected]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(got[k], expected[k]) for k in expected), got
    assert engine.compile is not False  # no failure made it fall back to the eager oracle
