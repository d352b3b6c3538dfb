"""The fused C kernel of the CPU engine: bit-identical to the eager oracle, built once, safe fallbacks."""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest
from flowdata import epe, pair_batch

from flowkit.flow import create_engine, tvl1_native
from flowkit.flow.tvl1 import TVL1Engine

ONE_LEVEL = dict(nscales=1, warps=1, median_filtering=1)
needs_cc = pytest.mark.skipif(tvl1_native.compiler() is None, reason="needs a C compiler")


@pytest.fixture(scope="module")
def pairs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return pair_batch(4, 64, 64, seed=3, noise=2.0)


@pytest.fixture
def fresh_cache(monkeypatch, tmp_path):
    """An empty flowkit cache (and temporary fallback folder), no library loaded yet in this process."""
    monkeypatch.setenv("FLOWKIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tvl1_native, "_fallback_folder", lambda: tmp_path / "fallback")
    monkeypatch.delenv("FLOWKIT_TVL1_NATIVE", raising=False)
    tvl1_native.forget()
    yield tmp_path
    tvl1_native.forget()


def _native(**params) -> TVL1Engine:
    engine = TVL1Engine("cpu", compile="auto", **params)
    return engine


@needs_cc
@pytest.mark.parametrize("params", [{}, {"pyramid": "opencv2.4"}, {"median_filtering": 3},
                                    {"gamma": 0.2, "nscales": 3}, {"epsilon": 0.0, "warps": 2,
                                                                   "nscales": 2}])
def test_native_is_bit_identical_to_the_eager_oracle(pairs, params) -> None:
    prev, nxt, _ = pairs
    native = _native(**params)
    flow = native(prev, nxt)
    assert native.kernel == "native"
    eager = TVL1Engine("cpu", compile=False, **params)
    assert np.array_equal(flow, eager(prev, nxt))
    assert native.last_stats["iterations"] == eager.last_stats["iterations"]
    assert native.last_stats["task_iterations"] == eager.last_stats["task_iterations"]


@needs_cc
@pytest.mark.parametrize("extra", [{}, {"gamma": 0.2}, {"inner_iterations": 7, "epsilon": 0.0}])
def test_native_single_level_matches_cv2(pairs, extra) -> None:
    prev, nxt, _ = pairs
    ours = _native(**ONE_LEVEL, **extra)(prev[:2], nxt[:2])
    ref = create_engine("tvl1-opencv", "cpu", **ONE_LEVEL, **extra)(prev[:2], nxt[:2])
    assert np.abs(ours - ref).max() < 1e-5


@needs_cc
def test_results_do_not_depend_on_batch_or_threads(pairs) -> None:
    prev, nxt, truth = pairs
    batch = _native(threads=3)(prev, nxt)
    singles = np.stack([_native(threads=1)(prev[i], nxt[i]) for i in range(len(prev))])
    assert np.array_equal(batch, singles)
    assert epe(batch, truth) < 0.05


@needs_cc
def test_initial_flow_and_sizes_change_between_calls(pairs) -> None:
    prev, nxt, _ = pairs
    engine, eager = _native(), TVL1Engine("cpu", compile=False)
    init = np.full((2, 2, 64, 64), 0.5, np.float32)
    assert np.array_equal(engine(prev[:2], nxt[:2], initial_flow=init),
                          eager(prev[:2], nxt[:2], initial_flow=init))
    small = (prev[:, :40, :48].copy(), nxt[:, :40, :48].copy())
    assert np.array_equal(engine(*small), eager(*small))


@needs_cc
def test_kernel_built_once_per_machine_and_announced(fresh_cache, pairs, caplog) -> None:
    prev, nxt, _ = pairs
    with caplog.at_level(logging.WARNING, logger="flowkit"):
        _native(**ONE_LEVEL)(prev[:1], nxt[:1])
    assert "building the CPU kernel" in caplog.text
    built = list((fresh_cache / "native").glob("tvl1-*.so"))
    assert len(built) == 1 and not list((fresh_cache / "native").glob(".*.tmp"))
    tvl1_native.forget()  # a new worker process: loads the file, says nothing
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="flowkit"):
        assert _native(**ONE_LEVEL)(prev[:1], nxt[:1]).shape == (1, 2, 64, 64)
    assert caplog.text == ""
    assert list((fresh_cache / "native").glob("tvl1-*.so")) == built


@needs_cc
def test_library_key_follows_cpu_and_source(monkeypatch) -> None:
    here = tvl1_native.library_path()
    monkeypatch.setattr(tvl1_native, "_cpu_signature", lambda: "another|cpu|flags: sse2")
    assert tvl1_native.library_path() != here  # -march=native code is never shared across CPUs


@needs_cc
def test_concurrent_builders_leave_one_good_library(fresh_cache) -> None:
    cc = tvl1_native.compiler()
    target = tvl1_native.library_path()
    errors: list[BaseException] = []

    def build() -> None:
        try:
            tvl1_native._build(cc, target)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [p.name for p in target.parent.iterdir()] == [target.name]
    assert tvl1_native.load() is not None


@pytest.mark.parametrize("cc", ["/nonexistent/cc", "false"])
def test_without_a_working_compiler_the_engine_stays_exact(fresh_cache, monkeypatch, pairs, cc,
                                                           caplog) -> None:
    prev, nxt, _ = pairs
    monkeypatch.setenv("CC", cc)
    monkeypatch.setenv("FLOWKIT_TVL1_COMPILE", "0")
    with caplog.at_level(logging.WARNING, logger="flowkit"):
        engine = _native(**ONE_LEVEL)
        flow = engine(prev[:2], nxt[:2])
    assert engine.kernel == "eager"
    assert "fast CPU kernel" in caplog.text
    assert np.array_equal(flow, TVL1Engine("cpu", compile=False, **ONE_LEVEL)(prev[:2], nxt[:2]))


@needs_cc
def test_a_failing_task_falls_back_to_the_oracle(monkeypatch, pairs, caplog) -> None:
    prev, nxt, _ = pairs

    def broken(*args, **kwargs):
        raise RuntimeError("simulated kernel failure")

    monkeypatch.setattr(tvl1_native.WarpTask, "__call__", broken)
    engine = _native(**ONE_LEVEL)
    with caplog.at_level(logging.WARNING, logger="flowkit"):
        flow = engine(prev[:2], nxt[:2])
    assert "simulated kernel failure" in caplog.text and engine.kernel == "eager"
    assert np.array_equal(flow, TVL1Engine("cpu", compile=False, **ONE_LEVEL)(prev[:2], nxt[:2]))


def test_native_off_by_environment(fresh_cache, monkeypatch) -> None:
    monkeypatch.setenv("FLOWKIT_TVL1_NATIVE", "0")
    assert tvl1_native.load() is None
    assert not (fresh_cache / "native").exists()


@needs_cc
def test_read_only_cache_builds_in_a_temporary_folder(fresh_cache, monkeypatch, caplog) -> None:
    blocker = fresh_cache / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("FLOWKIT_CACHE_DIR", str(blocker / "flowkit"))
    with caplog.at_level(logging.WARNING, logger="flowkit"):
        assert tvl1_native.load() is not None
    assert tvl1_native.loaded_path().parent == fresh_cache / "fallback"
    assert "unavailable" not in caplog.text


@needs_cc
def test_a_node_without_compiler_loads_what_another_node_built(fresh_cache, monkeypatch, caplog) -> None:
    assert tvl1_native.load() is not None  # built by a node with a compiler, into the shared cache
    tvl1_native.forget()
    caplog.clear()
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with caplog.at_level(logging.WARNING, logger="flowkit"):
        assert tvl1_native.load() is not None
    assert caplog.text == ""


@needs_cc
def test_a_forked_child_gets_its_own_task_threads(pairs, monkeypatch) -> None:
    """A fork copies the engine's scheduler but not its threads: the child (another pid) starts new ones
    instead of queueing tasks on threads that do not exist (which would hang)."""
    from flowkit.flow import tvl1_sched

    prev, nxt, _ = pairs
    engine = _native(**ONE_LEVEL)
    expected = engine(prev[:2], nxt[:2])
    parent_pool = engine.scheduler()._executor
    real_pid = tvl1_sched.os.getpid()
    monkeypatch.setattr(tvl1_sched.os, "getpid", lambda: real_pid + 1)  # "in the child"
    assert np.array_equal(engine(prev[:2], nxt[:2]), expected)
    assert engine.scheduler()._executor is not parent_pool
