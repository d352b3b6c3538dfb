"""The names the CLI offers as choices, with the samplers' defaults, in a module that imports nothing.

The command modules build their options from here, so `flowkit --help`, `status`, `merge` and `inspect`
start without loading torch or OpenCV; the pipelines validate against the same tuples.
"""

from __future__ import annotations

FLOW_ALGORITHMS = ("auto", "tvl1", "tvl1-opencv", "farneback", "dis", "tvl1-cuda-opencv")
FLOW_FORMATS = ("jpg", "png", "h5", "npy")
LAYOUT_NAMES = ("mmaction2", "denseflow", "tsn")  # flowkit.outputs.rawframes.LAYOUTS (tested equal)
FEATURE_STREAMS = ("rgb", "flow", "both")
FEATURE_COMBINES = ("concat", "sum")
FRAME_FORMATS = ("jpg", "npz")

# sample-frames: each sampler's own options and their defaults. An option of another sampler is a
# config error (never silently ignored).
SAMPLER_DEFAULTS: dict[str, dict[str, object]] = {
    "all": {"step": 1},
    "fps": {"fps": 3.0, "max_frames": None},
    "uniform": {"num_frames": 8},
    "tsn": {"segments": 3, "tsn_mode": "test", "seed": 0},
    "dense": {"clip_len": 16, "stride": 16, "frame_step": 1, "last": "drop"},
    "slowfast": {"alpha": 4, "tau": 16, "num_slow": 4},
}
SAMPLERS = tuple(SAMPLER_DEFAULTS)


def sampler_of(option: str) -> str:
    """The sampler an option belongs to ('num_frames' -> 'uniform')."""
    return next(name for name, options in SAMPLER_DEFAULTS.items() if option in options)
