"""Optical-flow engines behind one interface, found by name in a registry.

An engine maps B equal-size pairs of uint8 gray frames (B, H, W) to float32 flow (B, 2, H, W):
channel 0 = x (right), channel 1 = y (down), the motion from `prev` to `nxt`.
Built-in engines: "tvl1" (batched PyTorch, CPU/CUDA), "tvl1-opencv", "farneback", "dis", when
OpenCV has CUDA "tvl1-cuda-opencv", and with torchvision installed "raft" (flowkit.flow.raft), which
reads colour: engines with ``color = True`` take BGR uint8 (B, H, W, 3) frames instead of gray.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import numpy as np

from flowkit.errors import EngineUnavailableError


@runtime_checkable
class FlowEngine(Protocol):
    """What every engine provides: a name, its device, and a batched call."""

    name: str
    device: str

    def __call__(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        """uint8 (B,H,W) pairs -> float32 (B,2,H,W) flow; (H,W) -> (2,H,W)."""
        ...


_REGISTRY: dict[str, tuple[Callable[..., FlowEngine], tuple[str, ...]]] = {}
_HIDDEN: set[str] = set()
_BUILTIN_MODULES = ("flowkit.flow.tvl1", "flowkit.flow.opencv", "flowkit.flow.null")
# Engines whose library is an optional extra: module -> the library it needs.
_OPTIONAL_MODULES = {"flowkit.flow.raft": "torchvision"}


def register_engine(
    name: str, *, devices: tuple[str, ...] = ("cpu", "cuda"), hidden: bool = False
) -> Callable:
    """Decorator registering an engine factory `factory(device, **params)` under `name`.

    `devices` lists the device kinds the engine can run on ("cpu", "cuda"); `hidden` engines (benchmark
    tools such as "null") are left out of list_engines() but can be created by name.
    """

    def decorator(factory: Callable[..., FlowEngine]) -> Callable[..., FlowEngine]:
        _REGISTRY[name] = (factory, devices)
        if hidden:
            _HIDDEN.add(name)
        return factory

    return decorator


def _load_builtin() -> None:
    # Imported lazily: the engine modules import this package for register_engine.
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)
    for module, library in _OPTIONAL_MODULES.items():
        if importlib.util.find_spec(library) is not None:
            importlib.import_module(module)


def list_engines(include_hidden: bool = False) -> list[str]:
    """Names of the engines available in this installation, sorted (benchmark-only ones if asked)."""
    _load_builtin()
    return sorted(n for n in _REGISTRY if include_hidden or n not in _HIDDEN)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda:0' when CUDA is available else 'cpu'; 'cuda' -> 'cuda:0'; checks the rest."""
    if device == "auto":
        return "cuda:0" if _cuda_available() else "cpu"
    if device == "cpu":
        return device
    if device == "cuda" or device.startswith("cuda:"):
        if not _cuda_available():
            raise EngineUnavailableError(f"device {device!r} requested but CUDA is not available")
        import torch

        dev = "cuda:0" if device == "cuda" else device
        index = int(dev.split(":", 1)[1])
        if index >= torch.cuda.device_count():
            raise EngineUnavailableError(f"device {dev!r} does not exist "
                                         f"({torch.cuda.device_count()} CUDA device(s))")
        return dev
    raise EngineUnavailableError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)")


def default_engine(device: str) -> str:
    """Engine used when none is named: the fastest at equal accuracy (BENCHMARKS.md).

    That is the batched tvl1 everywhere: on a 2-core CPU its fused C kernel runs at 4-10x cv2's speed
    with the same accuracy (about cv2's speed on the PyTorch fallback); on CUDA it is the only GPU TV-L1
    without an OpenCV-with-CUDA build.
    """
    resolve_device(device)  # validates the name
    return "tvl1"


def create_engine(name: str = "tvl1", device: str = "auto", **params: Any) -> FlowEngine:
    """Build the engine `name` on `device`; raises EngineUnavailableError, never falls back."""
    _load_builtin()
    if name not in _REGISTRY:
        raise EngineUnavailableError(f"unknown flow engine {name!r}; available: "
                                     f"{', '.join(list_engines())}")
    factory, devices = _REGISTRY[name]
    if device == "auto":
        device = "cuda:0" if "cuda" in devices and _cuda_available() else "cpu"
    device = resolve_device(device)
    if device.split(":")[0] not in devices:
        raise EngineUnavailableError(f"flow engine {name!r} cannot run on {device!r} "
                                     f"(supported: {', '.join(devices)})")
    return factory(device, **params)


def compute_flow(prev: np.ndarray, nxt: np.ndarray, engine: str = "tvl1", device: str = "auto",
                 **params: Any) -> np.ndarray:
    """One-shot helper: build the engine and compute the flow of (B,H,W) or (H,W) pairs."""
    return create_engine(engine, device, **params)(prev, nxt)


def as_pair_batch(prev: np.ndarray, nxt: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """Validate uint8 gray pairs; returns contiguous (B,H,W) arrays and whether input was (H,W)."""
    a, b = np.asarray(prev), np.asarray(nxt)
    if a.shape != b.shape:
        raise ValueError(f"prev and nxt shapes differ: {a.shape} vs {b.shape}")
    if a.dtype != np.uint8 or b.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 gray, got {a.dtype} and {b.dtype}")
    if a.ndim not in (2, 3) or a.shape[0] == 0:
        raise ValueError(f"frames must be (H,W) or (B,H,W) with B >= 1, got {a.shape}")
    single = a.ndim == 2
    if single:
        a, b = a[None], b[None]
    return np.ascontiguousarray(a), np.ascontiguousarray(b), single


__all__ = [
    "FlowEngine",
    "as_pair_batch",
    "compute_flow",
    "create_engine",
    "default_engine",
    "list_engines",
    "register_engine",
    "resolve_device",
]
