"""OpenCV flow engines: the cv2.optflow TV-L1 reference, Farneback, DIS and (if built) CUDA TV-L1.

They loop over the pairs of a batch on the host; the cv2 objects are created per call, so engines
pickle cheaply and cv2's permanent nscales truncation (after a small image) never leaks
across calls.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import cv2
import numpy as np

from flowkit.errors import ConfigError
from flowkit.flow import as_pair_batch, register_engine
from flowkit.flow.tvl1_params import TVL1Params


class _OpenCVEngine:
    """Shared batching for cv2 engines: subclasses implement `_pair(prev, nxt) -> (H,W,2)`."""

    name = "opencv"

    def __init__(self, device: str = "cpu") -> None:
        self.device = device

    def __call__(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        """uint8 (B,H,W) pairs -> float32 (B,2,H,W) flow; (H,W) -> (2,H,W)."""
        a, b, single = as_pair_batch(prev, nxt)
        out = np.empty((a.shape[0], 2, *a.shape[1:]), dtype=np.float32)
        for i in range(a.shape[0]):
            out[i] = np.moveaxis(self._pair(a[i], b[i]), -1, 0)
        return out[0] if single else out

    def _pair(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def _tvl1_args(params: dict[str, Any]) -> TVL1Params:
    tvl1 = TVL1Params(**params)
    if tvl1.pyramid != "opencv":
        raise ConfigError("OpenCV TV-L1 only implements pyramid='opencv'")
    return tvl1


@register_engine("tvl1-opencv", devices=("cpu",))
class OpenCVTVL1Engine(_OpenCVEngine):
    """cv2.optflow.DualTVL1OpticalFlow (CPU): the reference that "tvl1" reproduces."""

    name = "tvl1-opencv"

    def __init__(self, device: str = "cpu", **params: Any) -> None:
        super().__init__(device)
        unknown = set(params) - {f.name for f in dataclasses.fields(TVL1Params)}
        if unknown:
            raise ConfigError(f"unknown tvl1 parameter(s): {', '.join(sorted(unknown))}")
        self.params = _tvl1_args(params)

    def _create(self) -> Any:
        p = self.params
        return cv2.optflow.DualTVL1OpticalFlow_create(
            p.tau, p.lambda_, p.theta, p.nscales, p.warps, p.epsilon, p.inner_iterations,
            p.outer_iterations, p.scale_step, p.gamma, p.median_filtering, False)

    def _pair(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        return self._create().calc(prev, nxt, None)


@register_engine("farneback", devices=("cpu",))
class FarnebackEngine(_OpenCVEngine):
    """cv2.calcOpticalFlowFarneback with OpenCV's sample settings (0.5, 3, 15, 3, 5, 1.2)."""

    name = "farneback"

    def __init__(self, device: str = "cpu", pyr_scale: float = 0.5, levels: int = 3,
                 winsize: int = 15, iterations: int = 3, poly_n: int = 5,
                 poly_sigma: float = 1.2) -> None:
        super().__init__(device)
        self.args = (pyr_scale, levels, winsize, iterations, poly_n, poly_sigma, 0)

    def _pair(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        return cv2.calcOpticalFlowFarneback(prev, nxt, None, *self.args)


DIS_PRESETS = {"ultrafast": 0, "fast": 1, "medium": 2}


@register_engine("dis", devices=("cpu",))
class DISEngine(_OpenCVEngine):
    """cv2.DISOpticalFlow with a preset (ultrafast, fast = OpenCV's default, medium)."""

    name = "dis"

    def __init__(self, device: str = "cpu", preset: str = "fast") -> None:
        super().__init__(device)
        if preset not in DIS_PRESETS:
            raise ConfigError(f"dis preset must be one of {sorted(DIS_PRESETS)}, got {preset!r}")
        self.preset = preset

    def _pair(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        return cv2.DISOpticalFlow_create(DIS_PRESETS[self.preset]).calc(prev, nxt, None)


def _cv2_cuda_devices() -> int:
    try:
        return int(cv2.cuda.getCudaEnabledDeviceCount())
    except (AttributeError, cv2.error):
        return 0


class OpenCVCudaTVL1Engine(_OpenCVEngine):
    """cv2.cuda.OpticalFlowDual_TVL1 (denseflow's flow): no median, 300 iterations per warp."""

    name = "tvl1-cuda-opencv"

    def __init__(self, device: str = "cuda:0", **params: Any) -> None:
        super().__init__(device)
        p = _tvl1_args(params)
        self.args = (p.tau, p.lambda_, p.theta, p.nscales, p.warps, p.epsilon,
                     p.inner_iterations * p.outer_iterations, p.scale_step, p.gamma, False)

    def _pair(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        cv2.cuda.setDevice(int(self.device.split(":")[1]) if ":" in self.device else 0)
        g0, g1 = cv2.cuda_GpuMat(), cv2.cuda_GpuMat()
        g0.upload(prev)
        g1.upload(nxt)
        algo = cv2.cuda.OpticalFlowDual_TVL1_create(*self.args)
        return algo.calc(g0, g1, None).download()


if _cv2_cuda_devices() > 0:
    register_engine("tvl1-cuda-opencv", devices=("cuda",))(OpenCVCudaTVL1Engine)
