"""Compiled kernels live in flowkit's own cache folder; the first-ever compile says so once."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

from flowkit.flow import tvl1, tvl1_native
from flowkit.flow.tvl1 import TVL1Engine


def test_cache_folder_follows_flowkit_cache_dir(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("FLOWKIT_CACHE_DIR", str(tmp_path / "fk"))
    assert tvl1.compile_cache_dir() == tmp_path / "fk" / "inductor"
    monkeypatch.delenv("FLOWKIT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert tvl1.compile_cache_dir() == tmp_path / "xdg" / "flowkit" / "inductor"

@pytest.fixture
def fake_compile(monkeypatch, tmp_path):
    """Compilation replaced by the eager kernels: only the cache bookkeeping is under test."""
    monkeypatch.setenv("FLOWKIT_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setattr(tvl1, "fast_kernels", tvl1.eager_kernels)
    monkeypatch.setenv("FLOWKIT_TVL1_NATIVE", "0")  # the torch.compile path, not the C kernel
    tvl1_native.forget()
    yield tmp_path / "inductor"
    tvl1_native.forget()

def test_first_compile_announced_once_then_cached(fake_compile, caplog) -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (24, 24), dtype=np.uint8)
    params = dict(compile=True, nscales=1, warps=1, inner_iterations=2, outer_iterations=1)
    with caplog.at_level(logging.WARNING, logger="flowkit"):
        TVL1Engine("cpu", **params)(a, a)
    assert "for the first time" in caplog.text and str(fake_compile) in caplog.text

    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(fake_compile)
    assert list(fake_compile.glob("flowkit-tvl1-*.done"))  # written after a successful call
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="flowkit"):
        TVL1Engine("cpu", **params)(a, a)  # another worker: the cache is warm, no message
    assert "for the first time" not in caplog.text

def test_explicit_inductor_cache_dir_wins(fake_compile, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert tvl1.use_compile_cache() is False

    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")
