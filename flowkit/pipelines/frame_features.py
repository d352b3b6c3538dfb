"""Per-frame features from image encoders (CLIP, ResNet-50, DINOv2), with the slow-fast token layout.

Frames are sampled by timestamps (``--sampler fps --fps 3 --max-frames 129``: the seed's 3 fps,
at most 129 frames spread over the whole video), or uniformly, or all. Each sampled frame goes
through the encoder once. Datasets per video (``name`` = ``--dataset-name``, N sampled frames):

* ``frame_indices`` (N,) decoded frame index, ``timestamps`` (N,) stream time in seconds;
* without ``--slowfast``: ``name`` (N, D), the chosen layer (ActionFormer/TAL-style frame features);
* with ``--slowfast K``: positions 0, K, 2K, ... are slow (the first sampled frame is slow):
  ``is_slow`` (N,) uint8; ``name`` (N, C) the fast vector of every frame = the spatial mean of its
  map (the seed's global average pool); ``name_spatial`` (S, C, h, w) the slow frames' maps with
  ``name_spatial_window_indices`` (S,) their positions in the N rows; and, when the chosen layer
  is not that mean (CLIP's projected ``embed``, DINOv2's ``cls``), ``name_<layer>`` (N, E).
* ``--crops 3|10`` adds a crop axis after the first: (N, crops, D), (S, crops, C, h, w).

``examples/read_frame_tokens.py`` rebuilds the token sequence in time order.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from flowkit import sampling
from flowkit.errors import ConfigError, VideoError
from flowkit.inputs import VideoItem
from flowkit.pipelines.extractor import Extractor
from flowkit.pipelines.stages import prefetch
from flowkit.video import VideoReader, scan_timestamps

SAMPLERS = ("fps", "uniform", "all")


def check_frame_options(cfg: Any, spec: Any) -> None:
    """Validate the sampling options against the model kind (frame encoder or clip model)."""
    if spec.kind != "frame":
        if cfg.sampler is not None or cfg.max_frames is not None:
            raise ConfigError(f"--sampler/--max-frames apply to frame encoders, not {cfg.model} "
                              "(it takes windows: use --clip-len/--stride/--fps)")
        return
    if cfg.clip_len is not None or cfg.stride is not None or cfg.pad_last:
        raise ConfigError(f"{cfg.model} encodes single frames: --clip-len/--stride/--pad-last do not apply")
    sampler = resolved_sampler(cfg)
    if sampler not in SAMPLERS:
        raise ConfigError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    if sampler == "fps" and not cfg.fps:
        raise ConfigError("--sampler fps needs --fps")
    if sampler == "uniform" and not cfg.max_frames:
        raise ConfigError("--sampler uniform needs --max-frames (the number of frames)")
    if cfg.max_frames is not None and cfg.max_frames < 1:
        raise ConfigError("--max-frames must be >= 1")


def resolved_sampler(cfg: Any) -> str:
    """The sampler in use: the one given, else fps when --fps is set, else all frames."""
    return cfg.sampler or ("fps" if cfg.fps else "all")


def sample_frames(timestamps: np.ndarray, sampler: str, fps: float | None,
                  max_frames: int | None) -> np.ndarray:
    """Decoded indices of the frames to encode (sorted, unique)."""
    n = len(timestamps)
    if sampler == "fps":
        return sampling.fps_resample(timestamps, float(fps), max_frames)
    if sampler == "uniform":
        return np.unique(sampling.uniform(n, int(max_frames)))
    kept = np.arange(n, dtype=np.int64)
    if max_frames is not None and n > max_frames:
        kept = np.unique(np.rint(np.linspace(0, n - 1, max_frames)).astype(np.int64))
    return kept


class FrameFeatures:
    """Computes one video's per-frame datasets and attributes with a loaded frame encoder."""

    def __init__(self, cfg: Any, extractor: Extractor) -> None:
        from flowkit.models import get_model_spec

        self.cfg, self.extractor = cfg, extractor
        self.spec = get_model_spec(cfg.model)
        self.layer = cfg.layer or self.spec.default_layer
        self.every = cfg.slowfast_layout
        self.sampler = resolved_sampler(cfg)
        mean_layers = getattr(self.spec.model_cls, "mean_layers", ("mean",))
        # With the layout, the fast vector is the map's mean; another chosen layer is stored too.
        self.extra_layer = None if self.layer in mean_layers else self.layer

    def compute(self, item: VideoItem) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Decode, sample, encode; returns (datasets, group attributes)."""
        timestamps, info = scan_timestamps(item.path, self.cfg.decode)
        kept = sample_frames(timestamps, self.sampler, self.cfg.fps, self.cfg.max_frames)
        reader = VideoReader(item.path, options=self.cfg.decode)
        parts = self._encode(item, kept, reader)
        datasets = self._datasets(kept, timestamps, parts)
        attrs = {
            "source": str(item.path), "num_frames": len(timestamps), "sampled": len(kept),
            "fps": self.cfg.fps or info.fps, "sampler": self.sampler, "model": self.cfg.model,
            "layer": self.layer, "crops": self.cfg.crops, "map_layer": self.spec.map_layer,
            "slowfast": self.every or 0,
        }
        if reader.truncated:
            attrs["truncated"] = reader.truncated  # accepted with --allow-truncated
        if self.every:
            attrs["fast_vector"] = "spatial mean of the map"
            attrs["slow_positions"] = list(range(0, len(kept), self.every))
        return datasets, attrs

    def preprocessing(self) -> dict[str, Any]:
        """How frames became encoder input (recorded in every output): the function and its arguments."""
        from flowkit.pipelines.features import describe_call

        return {"rgb": describe_call(self.spec.preprocess["rgb"]), "crops": self.cfg.crops,
                "decode_resize": "none (the encoder's preprocessing resizes native frames)"}

    def _encode(self, item: VideoItem, kept: np.ndarray, reader: VideoReader) -> dict[str, list[np.ndarray]]:
        position = {int(d): p for p, d in enumerate(kept)}
        parts: dict[str, list[np.ndarray]] = {}
        images: list[np.ndarray] = []
        positions: list[int] = []
        seen = 0
        for frame in prefetch(reader, depth=self.cfg.batch_size):
            p = position.get(frame.index)
            if p is None:
                continue
            images.append(frame.image)
            positions.append(p)
            seen += 1
            if len(images) == self.cfg.batch_size:
                self._forward(images, positions, parts)
        self._forward(images, positions, parts)
        if seen != len(kept):
            raise VideoError(item.path, "decoded fewer frames on the second pass than on the first")
        return parts

    def _forward(self, images: list[np.ndarray], positions: list[int],
                 parts: dict[str, list[np.ndarray]]) -> None:
        if not images:
            return
        crops = self.cfg.crops
        x = self.spec.preprocess["rgb"](np.stack(images), crops=crops)  # (B, K, 3, S, S)
        batch = x.flatten(0, 1)
        wants_map = bool(self.every)
        layer = self.layer if not self.every else (self.extra_layer or "mean")
        vectors, maps = self.extractor.vectors_and_maps("rgb", batch, layer, wants_map)
        b = len(images)
        vectors = vectors.reshape(b, crops, -1)
        if self.every:
            maps = maps.reshape(b, crops, *maps.shape[1:])
            parts.setdefault("fast", []).append(maps.mean(axis=(-2, -1)))
            if self.extra_layer:
                parts.setdefault("extra", []).append(vectors)
            slow = [k for k, p in enumerate(positions) if p % self.every == 0]
            parts.setdefault("spatial", []).append(maps[slow])
            parts.setdefault("slow_positions", []).append(np.asarray([positions[k] for k in slow], np.int64))
        else:
            parts.setdefault("vectors", []).append(vectors)
        images.clear()
        positions.clear()

    def _datasets(self, kept: np.ndarray, timestamps: np.ndarray,
                  parts: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
        dtype = np.dtype(self.cfg.dtype)
        name = self.cfg.dataset_name
        squeeze = self.cfg.crops == 1

        def stacked(key: str) -> np.ndarray:
            array = np.concatenate(parts[key]).astype(dtype)
            return array[:, 0] if squeeze else array

        out: dict[str, np.ndarray] = {
            "frame_indices": kept.astype(np.int64),
            "timestamps": np.asarray(timestamps, np.float64)[kept],
        }
        if not self.every:
            out[name] = stacked("vectors")
            return out
        slow_positions = np.concatenate(parts["slow_positions"])
        out["is_slow"] = (np.arange(len(kept)) % self.every == 0).astype(np.uint8)
        out[name] = stacked("fast")
        if self.extra_layer:
            out[f"{name}_{self.extra_layer}"] = stacked("extra")
        out[f"{name}_spatial"] = stacked("spatial")
        out[f"{name}_spatial_window_indices"] = slow_positions
        return out
