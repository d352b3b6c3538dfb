"""`flowkit sample-frames`: choose frames with a sampler and write them per video (JPEG folder or npz)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from flowkit import sampling
from flowkit.choices import FRAME_FORMATS as FORMATS
from flowkit.choices import SAMPLER_DEFAULTS, SAMPLERS, sampler_of
from flowkit.decoders import DecodeOptions
from flowkit.errors import ConfigError
from flowkit.inputs import VideoItem
from flowkit.jobs import progress
from flowkit.jobs.manifest import Manifest
from flowkit.jobs.runner import Unit, UnitResult
from flowkit.outputs.lists import read_class_map, write_job_lists
from flowkit.outputs.npzstream import NpzStreamWriter
from flowkit.outputs.rawframes import FolderWriter, count_files, get_layout
from flowkit.video import Frame, Resize, VideoReader, scan_timestamps

_JPG_DEFAULTS = {"layout": "mmaction2", "jpeg_quality": 95}
_SAMPLER_FIELDS = tuple(name for options in SAMPLER_DEFAULTS.values() for name in options)


@dataclass(frozen=True)
class FramesConfig:
    """Every option of sample-frames (the CLI leaves unset options None).

    A sampler's own options default from `flowkit.choices.SAMPLER_DEFAULTS`; setting an option of another
    sampler is a ConfigError (it would be ignored), and those options stay None.
    """

    sampler: str = "all"
    step: int | None = None
    fps: float | None = None
    max_frames: int | None = None
    num_frames: int | None = None
    segments: int | None = None
    tsn_mode: str | None = None
    seed: int | None = None
    clip_len: int | None = None
    stride: int | None = None
    frame_step: int | None = None
    last: str | None = None
    alpha: int | None = None
    tau: int | None = None
    num_slow: int | None = None
    short_side: int | None = None
    size: tuple[int, int] | None = None
    layout: str | None = None  # jpg only (npz stores decoded indices): default mmaction2
    format: str = "jpg"
    jpeg_quality: int | None = None  # jpg only: default 95
    classes: str | None = None
    decode: DecodeOptions = field(default_factory=DecodeOptions)

    def __post_init__(self) -> None:
        if self.classes is not None:
            read_class_map(self.classes)
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"unknown sampler {self.sampler!r}; choose from {', '.join(SAMPLERS)}")
        self._fill_sampler_options()
        if self.format not in FORMATS:
            raise ConfigError(f"unknown format {self.format!r}; choose from {', '.join(FORMATS)}")
        self._fill_format_options()
        if self.jpeg_quality is not None and not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"--jpeg-quality must be in 1..100, got {self.jpeg_quality}")
        if self.sampler == "slowfast" and self.tau % self.alpha:
            raise ConfigError(f"slowfast needs --tau divisible by --alpha ({self.tau}, {self.alpha})")
        if self.layout is not None:
            get_layout(self.layout)
        Resize(self.short_side, self.size)

    def _fill_format_options(self) -> None:
        """--layout and --jpeg-quality name JPEG files: an error with npz, defaults with jpg."""
        if self.format != "jpg":
            given = [f"--{f.replace('_', '-')}" for f in _JPG_DEFAULTS if getattr(self, f) is not None]
            if given:
                raise ConfigError(f"{', '.join(given)} only apply to --format jpg (npz stores the frames "
                                  "with their decoded indices)")
            return
        for name, default in _JPG_DEFAULTS.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)

    def _fill_sampler_options(self) -> None:
        """Refuse options of other samplers; give this sampler's unset options their defaults."""
        own = SAMPLER_DEFAULTS[self.sampler]
        foreign = [f for f in _SAMPLER_FIELDS if f not in own and getattr(self, f) is not None]
        if foreign:
            flags = ", ".join(f"--{f.replace('_', '-')} (an option of --sampler {sampler_of(f)})"
                              for f in foreign)
            raise ConfigError(f"--sampler {self.sampler} does not use {flags}: set the matching --sampler "
                              "or drop the option")
        for name, default in own.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)


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
        return {**asdict(self.cfg), "decode": self.cfg.decode.output_config()}

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
            timestamps, _ = scan_timestamps(item.path, self.cfg.decode)
        count, reader = self._write(item, timestamps)
        record = {"video_id": unit.uid, "rgb": count, "num_frames": reader.num_frames,
                  "source": str(item.path)}
        if reader.truncated:
            record["truncated"] = reader.truncated
        manifest.write_done(unit.uid, record)
        notes = [(str(item.path), reader.truncated)] if reader.truncated else []
        return UnitResult(unit.uid, "done", frames=reader.num_frames, record={"rgb": count}, notes=notes)

    def _write(self, item: VideoItem, timestamps: np.ndarray | None) -> tuple[int, VideoReader]:
        """Decode once, keep the selected frames, write them (JPEG folder or streamed npz)."""
        reader = VideoReader(item.path, Resize(self.cfg.short_side, self.cfg.size), self.cfg.decode)
        selection = None if timestamps is None else select_frames(self.cfg, timestamps)
        total = len(timestamps) if timestamps is not None else (lambda: reader.info.header_frames)
        decoded = progress.track(reader, total)
        if selection is None:  # every --step-th frame: known without a first pass
            frames = (f for f in decoded if f.index % self.cfg.step == 0)
        else:
            wanted = set(selection.indices.tolist())
            frames = (f for f in decoded if f.index in wanted)
        groups = selection.groups if selection else {}
        if self.cfg.format == "npz":
            return self._write_npz(item.video_id, frames, groups), reader
        layout = get_layout(self.cfg.layout)
        chosen: list[tuple[int, float]] = []  # (decoded index, timestamp) of each written frame
        with FolderWriter(self._target(item.video_id)) as writer:
            for frame in frames:
                writer.write_image(layout.rgb_name(len(chosen)), frame.image, self.cfg.jpeg_quality)
                chosen.append((frame.index, frame.timestamp))
            meta = _sidecar(groups, chosen, reader.num_frames, layout.first_index)
            writer.write_file("sampling.json", json.dumps(meta).encode())
        return len(chosen), reader

    def _write_npz(self, video_id: str, frames: Iterator[Frame], groups: dict[str, Any]) -> int:
        """Stream the frames into one npz (RGB order), so memory does not grow with the video."""
        writer = NpzStreamWriter(self._target(video_id))
        try:
            for frame in frames:
                writer.add(cv2.cvtColor(frame.image, cv2.COLOR_BGR2RGB), frame.index, frame.timestamp)
        except BaseException:
            writer.abort()
            raise
        writer.commit(groups)
        return writer.count

    def finalize(self, manifest: Manifest) -> list[tuple[str, str]]:
        """Rebuild the annotation lists from every done record (all shards)."""
        if self.cfg.format != "jpg":
            return []
        return write_job_lists(manifest, ["rgb"], self.cfg.classes)[1]


def _sidecar(
    groups: dict[str, Any], chosen: list[tuple[int, float]], decoded: int, first_index: int
) -> dict[str, Any]:
    """sampling.json beside the frames: decoded count, chosen indices/timestamps, clip structure."""
    return {
        "num_frames": decoded,
        "indices": [index for index, _ in chosen],
        "timestamps": [ts for _, ts in chosen],
        "first_file_index": first_index,
        "groups": groups,
    }
