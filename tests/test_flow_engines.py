"""Contract of every registered flow engine, and the registry's API and errors."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from flowdata import moved_pair

import flowkit.flow as flow_api
from flowkit.errors import ConfigError, EngineUnavailableError
from flowkit.flow import (
    compute_flow,
    create_engine,
    default_engine,
    list_engines,
    register_engine,
    resolve_device,
)

# raft needs local weights and 128 px frames: tests/test_raft.py covers it.
CPU_ENGINES = [n for n in list_engines() if n not in ("tvl1-cuda-opencv", "raft")]


def _make(name: str):
    # the eager tvl1 path keeps the contract test free of torch.compile warm-up
    params = {"compile": False} if name == "tvl1" else {}
    return create_engine(name, "cpu", **params)


@pytest.fixture(scope="module")
def shifted() -> tuple[np.ndarray, np.ndarray]:
    """Three 64x64 pairs whose texture moves +2 px to the right."""
    pairs = [moved_pair(64, 64, 2.0, 0.0, seed=s)[:2] for s in range(3)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


@pytest.mark.parametrize("name", CPU_ENGINES)
def test_engine_contract(name: str, shifted) -> None:
    prev, nxt = shifted
    engine = _make(name)
    assert engine.name == name and engine.device == "cpu"
    batch = engine(prev, nxt)
    assert batch.shape == (3, 2, 64, 64) and batch.dtype == np.float32
    inner = batch[:, :, 12:-12, 12:-12]
    assert abs(inner[:, 0].mean() - 2.0) < 0.2  # channel 0 is x, positive to the right
    assert abs(inner[:, 1].mean()) < 0.2
    single = engine(prev[1], nxt[1])
    assert single.shape == (2, 64, 64) and single.dtype == np.float32
    np.testing.assert_allclose(single, batch[1], atol=1e-5)
    reverse = engine(nxt[:1], prev[:1])[0, 0, 12:-12, 12:-12].mean()
    assert abs(reverse + 2.0) < 0.2  # flow is from prev to nxt


@pytest.mark.parametrize("name", CPU_ENGINES)
def test_engines_pickle_and_reject_bad_input(name: str, shifted) -> None:
    prev, nxt = shifted
    engine = pickle.loads(pickle.dumps(_make(name)))
    assert engine(prev[:1], nxt[:1]).shape == (1, 2, 64, 64)
    with pytest.raises(ValueError, match="uint8"):
        engine(prev.astype(np.float32), nxt.astype(np.float32))
    with pytest.raises(ValueError, match="differ"):
        engine(prev, nxt[:2])


def test_registry_lists_builtin_engines() -> None:
    names = list_engines()
    assert {"tvl1", "tvl1-opencv", "farneback", "dis"} <= set(names)
    assert names == sorted(names)
    import cv2

    has_cuda = hasattr(cv2, "cuda") and cv2.cuda.getCudaEnabledDeviceCount() > 0
    assert ("tvl1-cuda-opencv" in names) == has_cuda


def test_unknown_engine_and_device_are_errors() -> None:
    with pytest.raises(EngineUnavailableError, match="unknown flow engine 'nope'"):
        create_engine("nope")
    with pytest.raises(EngineUnavailableError):
        resolve_device("tpu")
    with pytest.raises(ConfigError, match="unknown tvl1 parameter"):
        create_engine("tvl1", "cpu", iterations=3)
    with pytest.raises(ConfigError):
        create_engine("tvl1-opencv", "cpu", pyramid="opencv2.4")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error path")
def test_cuda_request_without_cuda_is_an_error() -> None:
    with pytest.raises(EngineUnavailableError, match="CUDA"):
        create_engine("tvl1", "cuda")
    with pytest.raises(EngineUnavailableError, match="CUDA"):
        resolve_device("cuda:0")
    assert resolve_device("auto") == "cpu"
    assert create_engine("tvl1", "auto").device == "cpu"
    assert create_engine("farneback", "auto").device == "cpu"


def test_default_engine_and_compute_flow(shifted, monkeypatch) -> None:
    prev, nxt = shifted
    assert default_engine("cpu") in list_engines()
    monkeypatch.setenv("FLOWKIT_TVL1_COMPILE", "0")
    assert default_engine("cpu") == "tvl1"  # eager tvl1 runs at about cv2's speed, compiled at 2x
    flow = compute_flow(prev[0], nxt[0], engine="dis", device="cpu")
    assert flow.shape == (2, 64, 64)


def test_register_engine_decorator(monkeypatch, shifted) -> None:
    monkeypatch.setattr(flow_api, "_REGISTRY", dict(flow_api._REGISTRY))

    @register_engine("zero-test", devices=("cpu",))
    class ZeroEngine:
        name = "zero-test"

        def __init__(self, device: str, scale: float = 1.0) -> None:
            self.device, self.scale = device, scale

        def __call__(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
            a, _, single = flow_api.as_pair_batch(prev, nxt)
            out = np.zeros((a.shape[0], 2, *a.shape[1:]), np.float32)
            return out[0] if single else out

    register_engine("cuda-only-test", devices=("cuda",))(ZeroEngine)
    with pytest.raises(EngineUnavailableError, match="cannot run on 'cpu'"):
        create_engine("cuda-only-test", "cpu")
    assert "zero-test" in list_engines()
    engine = create_engine("zero-test", "cpu", scale=2.0)
    assert isinstance(engine, flow_api.FlowEngine) and engine.scale == 2.0
    assert not compute_flow(*shifted, engine="zero-test", device="cpu").any()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tvl1_cuda_contract(shifted) -> None:
    prev, nxt = shifted
    engine = create_engine("tvl1", "cuda", compile=False)
    assert engine.device == "cuda:0"
    flow = engine(prev, nxt)
    assert flow.shape == (3, 2, 64, 64) and flow.dtype == np.float32
    assert abs(flow[:, 0, 12:-12, 12:-12].mean() - 2.0) < 0.2
