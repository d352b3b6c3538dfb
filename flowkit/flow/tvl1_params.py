"""TV-L1 parameters (cv2.optflow DualTVL1 names): defaults and bounds in one dataclass.

Kept apart from the torch engine so the CLI can build its options without importing torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from flowkit.errors import ConfigError

PYRAMIDS = ("opencv", "opencv2.4", "opencv-cuda")


def _f(default: Any, help: str, **bounds: Any) -> Any:
    return field(default=default, metadata={"help": help, **bounds})


@dataclass(frozen=True)
class TVL1Params:
    """Dual TV-L1 parameters: the single source of defaults and bounds (cv2.optflow names)."""

    tau: float = _f(0.25, "Time step of the dual update.", min=0.0, min_open=True)
    lambda_: float = _f(0.15, "Weight of the data term; smaller gives smoother flow.", min=0.0,
                        min_open=True)
    theta: float = _f(0.3, "Coupling between the two energies.", min=0.0, min_open=True)
    nscales: int = _f(5, "Pyramid levels (fewer are used when a level gets below 16 px).", min=1)
    warps: int = _f(5, "Warps (re-linearisations) per pyramid level.", min=1)
    epsilon: float = _f(0.01, "Stopping threshold on the RMS flow update per iteration.", min=0.0)
    inner_iterations: int = _f(30, "Iterations between median filters.", min=1)
    outer_iterations: int = _f(10, "Median-filter rounds per warp.", min=1)
    scale_step: float = _f(0.8, "Downscale factor between pyramid levels.", min=0.0, max=1.0,
                           min_open=True, max_open=True)
    gamma: float = _f(0.0, "Weight of the illumination-change term (0 disables it).", min=0.0)
    median_filtering: int = _f(5, "Median filter size applied to the flow (1 disables).",
                               choices=(0, 1, 3, 5))
    pyramid: Literal["opencv", "opencv2.4", "opencv-cuda"] = _f(
        "opencv", "'opencv': 0.8 bilinear pyramid with medians (OpenCV 3+ CPU class); 'opencv2.4': "
        "Gaussian x0.5 pyramid, 300 iterations per warp, no median (TSN-era flow); 'opencv-cuda': "
        "the numerics of OpenCV's CUDA class (denseflow/dense_flow datasets): top-left aligned "
        "resize, A=-0.5 warp, no median, inner*outer iterations per warp.", choices=PYRAMIDS)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_bounds(f, getattr(self, f.name))

    def effective(self) -> TVL1Params:
        """Parameters run: 'opencv2.4' means scale 0.5, one 300-iteration loop, no median;
        'opencv-cuda' one loop of inner*outer iterations (the CUDA `iterations`), no median."""
        if self.pyramid == "opencv-cuda":
            iterations = self.inner_iterations * self.outer_iterations
            return dataclasses.replace(self, inner_iterations=iterations, outer_iterations=1,
                                       median_filtering=1)
        if self.pyramid != "opencv2.4":
            return self
        return dataclasses.replace(self, scale_step=0.5, inner_iterations=300, outer_iterations=1,
                                   median_filtering=1)


def _check_bounds(f: dataclasses.Field, value: Any) -> None:
    meta = f.metadata
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"{f.name} must be one of {meta['choices']}, got {value!r}")
    if "min" in meta and (value < meta["min"] or (meta.get("min_open") and value == meta["min"])):
        raise ConfigError(f"{f.name} must be {'>' if meta.get('min_open') else '>='} "
                          f"{meta['min']}, got {value!r}")
    if "max" in meta and (value > meta["max"] or (meta.get("max_open") and value == meta["max"])):
        raise ConfigError(f"{f.name} must be {'<' if meta.get('max_open') else '<='} "
                          f"{meta['max']}, got {value!r}")
