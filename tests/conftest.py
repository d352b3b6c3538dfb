"""Shared fixtures: synthetic videos with known motion, written into each test's tmp folder."""

from __future__ import annotations

import os

# torch.compile warm-up of the TV-L1 kernels costs 10-60 s per process, so the tests skip it (the compiled
# path has its own slow-marked test that turns it back on). On CPU the engine's default, the fused C kernel
# (built in about a second, bit-identical to the eager oracle), still runs.
os.environ.setdefault("FLOWKIT_TVL1_COMPILE", "0")

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from flowkit.models import create_model
from flowkit.synthetic import moving_video


@pytest.fixture
def make_video(tmp_path: Path) -> Callable[..., Path]:
    """Factory: make_video('a/b.mp4', n=12, dx=1, dy=0, height=64, width=64) -> path under tmp_path."""

    def factory(rel: str = "clip.mp4", **kwargs: object) -> Path:
        return moving_video(tmp_path / rel, **kwargs)

    return factory


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked gpu when no CUDA device is present."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    """Seeded c3d_test weights in a file, so feature runs in different processes give the same numbers."""
    model = create_model("c3d_test")
    torch.manual_seed(0)
    for p in model.parameters():
        p.data.normal_(0, 0.05)
    path = tmp_path / "c3d_test.pt"
    torch.save(model.state_dict(), path)
    return path
