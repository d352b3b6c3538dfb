"""`flowkit sample-frames`: choose frames with a sampler and write them per video (JPEG folder or npz)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from flowkit import sampling
from flowkit.atomic import atomic_write
from flowkit.errors import ConfigError
from flowkit.inputs import VideoItem
from flowkit.jobs import progress
from flowkit.jobs.manifest import Manifest
from flowkit.jobs.runner import Unit, UnitResult
from flowkit.outputs.lists import write_lists
from flowkit.outputs.rawframes import FolderWriter, count_files, get_layout, remove_stale
from flowkit.video import Frame, Resize, VideoReader, scan_timestamps

SAMPLERS = ("all", "fps", "uniform", "tsn", "dense", "slowfast")
FORMATS = ("jpg", "npz")


@dataclass(frozen=True)
class FramesConfig:
    """Every option of sample-frames; the single source of defaults (the CLI leaves unset options None)."""

    sampler: str = "all"
    step: int = 1
    fps: float = 3.0
    max_frames: int | None = None
    num_frames: int = 8
    segments: int = 3
    tsn_mode: str = "test"
    seed: int = 0
    clip_len: int = 16
    stride: int = 16
    frame_step: int = 1
    last: str = "drop"
    alpha: int = 4
    tau: int = 16
    num_slow: int = 4
    short_side: int | None = None
    size: tuple[int, int] | None = None
    layout: str = "mmaction2"
    format: str = "jpg"
    jpeg_quality: int = 95

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"unknown sampler {self.sampler!r}; choose from {', '.join(SAMPLERS)}")
        if self.format not in FORMATS:
            raise ConfigError(f"unknown format {self.format!r}; choose from {', '.join(FORMATS)}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"--jpeg-quality must be in 1..100, got {self.jpeg_quality}")
        if self.sampler == "slowfast" and self.tau % self.alpha:
            raise ConfigError(f"slowfast needs --tau divisible by --alpha ({self.tau}, {self.alpha})")
        get_layout(self.layout)
        Resize(self.short_side, self.size)


@dataclass
class Selection:
    """The chosen frame indices (sorted, unique) and how they are grouped (clips, pathways)."""

    indices: np.ndarray
    groups: dict[str, Any] = field(default_factory=dict)


def select_frames(cfg: FramesConfig, timestamps: np.ndarray) -> Selection:
    """Apply the configured sampler to a video with these per-frame timestamps."""
    n = len(timestamps)
    if cfg.sampler == "all":
        return Selection(sampling.every_frame(n, cfg.step))
    if cfg.sampler == "fps":
        return Selection(sampling.fps_resample(timestamps, cfg.fps, cfg.max_frames))
    if cfg.sampler == "uniform":
        return _unique(sampling.uniform(n, cfg.num_frames), "samples")
    if cfg.sampler == "tsn":
        return _unique(sampling.tsn_segments(n, cfg.segments, cfg.tsn_mode, cfg.seed), "segments")
    if cfg.sampler == "dense":
        clips = sampling.dense_clips(n, cfg.clip_len, cfg.stride, cfg.frame_step, cfg.last)
        return _unique(clips, "clips")
    slow, fast = sampling.slowfast(n, cfg.alpha, cfg.tau, cfg.num_slow)
    sel = _unique(np.concatenate([slow, fast]), "all")
    sel.groups = {"slow": slow.tolist(), "fast": fast.tolist()}
    return sel


def _unique(indices: np.ndarray, name: str) -> Selection:
    """Sampled indices may repeat (short videos, padding); frames are written once, the structure kept."""
    return Selection(np.unique(indices), {name: np.asarray(indices).tolist()})


@dataclass
class FramesPipeline:
    """The runner's view of sample-frames."""

    cfg: FramesConfig
    out_dir: Path
    command: str = "sample-frames"

    def output_config(self) -> dict[str, Any]:
        """See Pipeline.output_config."""
        return asdict(self.cfg)

    def make_units(self, items: Sequence[VideoItem]) -> list[Unit]:
        """One unit per video."""
        return [Unit(item.video_id, k, (item,)) for k, item in enumerate(items)]

    def _target(self, video_id: str) -> Path:
        suffix = ".npz" if self.cfg.format == "npz" else ""
        return self.out_dir / f"{video_id}{suffix}"

    def is_done(self, unit: Unit, manifest: Manifest) -> bool:
        """Done record present and the output (folder or npz) is in place."""
        record = manifest.read_done(unit.uid)
        if record is None:
            return False
        target = self._target(unit.uid)
        if self.cfg.format == "npz":
            return target.is_file()
        layout = get_layout(self.cfg.layout)
        return count_files(target, layout.rgb_prefix + "_") == record.get("rgb")

    def process(self, unit: Unit, manifest: Manifest) -> UnitResult:
        """Decode, compute and write one video; failures are returned, not raised."""
        item = unit.items[0]
        if item.error:
            return UnitResult(unit.uid, "failed", failures=[(str(item.path), item.error)])
        manifest.clear_done(unit.uid)
        if self.cfg.sampler == "all":
            timestamps = None
        else:
            timestamps, _ = scan_timestamps(item.path)
        count, decoded, _ = self._write(item, timestamps)
        manifest.write_done(
            unit.uid,
            {"video_id": unit.uid, "rgb": count, "num_frames": decoded, "source": str(item.path)},
        )
        return UnitResult(unit.uid, "done", frames=decoded, record={"rgb": count})

    def _write(self, item: VideoItem, timestamps: np.ndarray | None) -> tuple[int, int, Selection | None]:
        reader = VideoReader(item.path, Resize(self.cfg.short_side, self.cfg.size))
        selection = None if timestamps is None else select_frames(self.cfg, timestamps)
        total = len(timestamps) if timestamps is not None else (lambda: reader.info.header_frames)
        decoded = progress.track(reader, total)
        if selection is None:  # every --step-th frame: known without a first pass
            frames = (f for f in decoded if f.index % self.cfg.step == 0)
        else:
            wanted = set(selection.indices.tolist())
            frames = (f for f in decoded if f.index in wanted)
        if self.cfg.format == "npz":
            kept = list(frames)
            self._save_npz(item.video_id, kept, selection)
            return len(kept), reader.num_frames, selection
        layout = get_layout(self.cfg.layout)
        chosen: list[tuple[int, float]] = []  # (decoded index, timestamp) of each written frame
        with FolderWriter(self._target(item.video_id)) as writer:
            for frame in frames:
                writer.write_image(layout.rgb_name(len(chosen)), frame.image, self.cfg.jpeg_quality)
                chosen.append((frame.index, frame.timestamp))
            meta = _sidecar(selection, chosen, reader.num_frames, layout.first_index)
            writer.write_file("sampling.json", json.dumps(meta).encode())
        return len(chosen), reader.num_frames, selection

    def _save_npz(self, video_id: str, kept: list[Frame], selection: Selection | None) -> None:
        target = self._target(video_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(target)
        atomic_write(
            target,
            lambda fh: np.savez(
                fh,
                frames=np.stack([cv2.cvtColor(f.image, cv2.COLOR_BGR2RGB) for f in kept]),
                indices=np.asarray([f.index for f in kept], dtype=np.int64),
                timestamps=np.asarray([f.timestamp for f in kept], dtype=np.float64),
                groups=json.dumps(selection.groups if selection else {}),
            ),
        )

    def finalize(self, manifest: Manifest) -> None:
        """Rebuild the annotation lists from every done record (all shards)."""
        if self.cfg.format == "jpg":
            write_lists(self.out_dir, manifest.all_done(), ["rgb"])


def _sidecar(
    selection: Selection | None, chosen: list[tuple[int, float]], decoded: int, first_index: int
) -> dict[str, Any]:
    """sampling.json beside the frames: decoded count, chosen indices/timestamps, clip structure."""
    return {
        "num_frames": decoded,
        "indices": [index for index, _ in chosen],
        "timestamps": [ts for _, ts in chosen],
        "first_file_index": first_index,
        "groups": selection.groups if selection else {},
    }
