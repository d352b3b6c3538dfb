"""The `null` flow engine, for benchmarks only: zero flow, no compute.

It measures everything around the engine (decode, resize, gray, quantize, JPEG encodes, writes) with
`bench/extract_flow.py --pipeline`. It is registered hidden: the CLI does not offer it and list_engines()
leaves it out; its outputs are meaningless as flow.
"""

from __future__ import annotations

import numpy as np

from flowkit.flow import as_pair_batch, register_engine


@register_engine("null", devices=("cpu", "cuda"), hidden=True)
class NullEngine:
    """Returns zero flow for every pair (BENCHMARKS ONLY)."""

    name = "null"

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self._zeros: dict[tuple[int, ...], np.ndarray] = {}

    def __call__(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        """uint8 (B,H,W) pairs -> zeros (B,2,H,W) float32 (read-only, reused: no per-call cost)."""
        a, _, single = as_pair_batch(prev, nxt)
        shape = (a.shape[0], 2, *a.shape[1:])
        if shape not in self._zeros:
            self._zeros[shape] = np.zeros(shape, dtype=np.float32)
            self._zeros[shape][:] = 0  # touch the pages now, not in the first consumer
            self._zeros[shape].flags.writeable = False
        out = self._zeros[shape]
        return out[0] if single else out
