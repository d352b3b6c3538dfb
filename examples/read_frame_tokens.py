"""Rebuild the slow-fast visual token sequence of `flowkit features --slowfast K` in time order.

    flowkit features videos/ -o out/clip --model clip-vit-b16 --weights ViT-B-16.pt \\
        --sampler fps --fps 3 --max-frames 129 --slowfast 4
    python examples/read_frame_tokens.py out/clip [VIDEO_ID]

Per video the shard holds the N sampled frames' ``frame_indices``/``timestamps``, ``is_slow``,
``features`` (N, C): every frame's pooled (fast) vector, and ``features_spatial`` (S, C, h, w): the
slow frames' maps, whose rows ``features_spatial_window_indices`` places among the N frames. A slow
frame contributes its h*w map tokens (row-major), a fast frame its one pooled vector.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import h5py
import numpy as np


def token_sequence(group: h5py.Group, name: str = "features") -> tuple[np.ndarray, np.ndarray]:
    """(tokens (L, C), position (L,) of the sampled frame each token comes from), in time order."""
    order = np.argsort(group["timestamps"][()], kind="stable")  # rows are stored in time order already
    fast = group[name][()]
    spatial = group[f"{name}_spatial"][()]
    row_of = {int(p): r for r, p in enumerate(group[f"{name}_spatial_window_indices"][()])}
    tokens, owner = [], []
    for p in order:
        if p in row_of:  # slow: the full map as h*w tokens
            fmap = spatial[row_of[p]]
            tokens.append(fmap.reshape(fmap.shape[0], -1).T)
            owner.extend([p] * (fmap.shape[1] * fmap.shape[2]))
        else:  # fast: the pooled vector
            tokens.append(fast[p][None])
            owner.append(p)
    return np.concatenate(tokens), np.asarray(owner, np.int64)


def main(out_dir: Path, video_id: str | None = None) -> None:
    index = json.loads((out_dir / "index.json").read_text())
    for vid in [video_id] if video_id else sorted(index):
        with h5py.File(out_dir / index[vid], "r") as shard:
            group = shard[vid]
            tokens, owner = token_sequence(group)
            slow = int(group["is_slow"][()].sum())
            print(f"{vid}: {len(group['frame_indices'])} frames ({slow} slow) -> {len(tokens)} tokens "
                  f"of {tokens.shape[1]} dims; last token from t={group['timestamps'][owner[-1]]:.2f}s")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None)
