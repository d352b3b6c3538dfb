"""`flowkit extract-flow`: one decode pass gives RGB frames and batched flow, written in a trainer layout.

Inside a worker the stages overlap: a decode thread fills a bounded queue, the engine computes batches
of frame pairs, a thread pool encodes and writes. A video's files are written into a temporary folder
that is renamed into place when complete, then the done record is written.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import stat
import threading
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flowkit.choices import FLOW_ALGORITHMS
from flowkit.decoders import DecodeOptions
from flowkit.errors import ConfigError, FlowkitError
from flowkit.inputs import VideoItem
from flowkit.jobs import progress
from flowkit.jobs.manifest import Manifest, config_hash
from flowkit.jobs.runner import Unit, UnitResult, current_device, one_line
from flowkit.outputs.flowfiles import FLOW_FORMATS, H5Sink, ImagePairSink, NpySink
from flowkit.outputs.lists import flow_job_list_kinds, read_class_map, write_job_lists
from flowkit.outputs.rawframes import FolderWriter, get_layout
from flowkit.pipelines.partial import Partial, source_identity
from flowkit.pipelines.stages import prefetch
from flowkit.video import Resize, VideoReader

log = logging.getLogger("flowkit")

ALGORITHMS = FLOW_ALGORITHMS
BENCH_ALGORITHMS = ("null",)  # library/benchmarks only (zero flow): not offered by the CLI
RAFT_PARAMS = ("weights", "model", "iterations", "keep_padding")


@dataclass(frozen=True)
class FlowConfig:
    """Every option of extract-flow; `engine_params` holds only the TV-L1 parameters the user set."""

    algorithm: str = "auto"
    bound: float = 20.0
    step: int = 1
    rgb: bool = True
    short_side: int | None = None
    size: tuple[int, int] | None = None
    layout: str = "mmaction2"
    format: str = "jpg"
    jpeg_quality: int = 95
    engine_params: dict[str, Any] = field(default_factory=dict)
    classes: str | None = None
    device: str = "auto"
    batch_size: int | None = None
    decode: DecodeOptions = field(default_factory=DecodeOptions)
    jpeg_encoder: str = "auto"

    def __post_init__(self) -> None:
        if self.classes is not None:
            read_class_map(self.classes)  # a bad class map is a config error before any work
        if self.algorithm == "auto":  # the fastest TV-L1 at equal accuracy here (bench/flow_engines.py)
            from flowkit.flow import default_engine

            object.__setattr__(self, "algorithm", default_engine(self.device))
        if self.algorithm not in ALGORITHMS + BENCH_ALGORITHMS:
            raise ConfigError(f"unknown algorithm {self.algorithm!r}; choose from {', '.join(ALGORITHMS)}")
        from flowkit.flow import list_engines

        if self.algorithm not in list_engines(include_hidden=True):
            raise ConfigError(f"--algorithm {self.algorithm} is not available here (available: "
                              f"{', '.join(list_engines())}; tvl1-cuda-opencv needs cv2 built with CUDA)")
        if self.algorithm == "raft":
            unknown = set(self.engine_params) - set(RAFT_PARAMS)
            if unknown or "weights" not in self.engine_params:
                raise ConfigError("--algorithm raft needs --raft-weights PATH (local torchvision weights)"
                                  + (f"; not RAFT options: {', '.join(sorted(unknown))}" if unknown else ""))
        elif self.engine_params and not self.algorithm.startswith("tvl1"):
            raise ConfigError(f"TV-L1 options ({', '.join(sorted(self.engine_params))}) do not apply to "
                              f"--algorithm {self.algorithm}")
        if self.format not in FLOW_FORMATS:
            raise ConfigError(f"unknown format {self.format!r}; choose from {', '.join(FLOW_FORMATS)}")
        if self.bound <= 0 or self.step < 1 or (self.batch_size is not None and self.batch_size < 1):
            raise ConfigError("--bound must be > 0, --step >= 1 and --batch-size >= 1")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"--jpeg-quality must be in 1..100, got {self.jpeg_quality}")
        get_layout(self.layout)
        Resize(self.short_side, self.size)
        from flowkit.outputs.jpeg import resolve_jpeg_encoder  # recorded: the encoder changes JPEG bytes

        object.__setattr__(self, "jpeg_encoder", resolve_jpeg_encoder(self.jpeg_encoder, self.device))

    def output_config(self) -> dict[str, Any]:
        """What decides the output (device and batch size do not: a batch equals single runs)."""
        config = asdict(self)
        del config["device"], config["batch_size"]
        config["decode"] = self.decode.output_config()
        return config


_engines: dict[tuple[Any, ...], Any] = {}


def engine_input(engine: Any, bgr: np.ndarray) -> np.ndarray:
    """The frame as the engine reads it: BGR for colour engines (RAFT), gray for the others."""
    from flowkit.flow.raft import engine_input as pick

    return pick(engine, bgr)


def engine_for(cfg: FlowConfig, device: str) -> Any:
    """One engine per worker (process or thread) and device, built on first use (CUDA state stays in the
    worker). Threads of the threading backend get their own: an engine's scheduler serves one caller."""
    from flowkit.flow import create_engine

    key = (cfg.algorithm, device, tuple(sorted(cfg.engine_params.items())), threading.get_ident())
    if key not in _engines:
        _match_cv2_threads()
        _engines[key] = create_engine(cfg.algorithm, device=device, **cfg.engine_params)
    return _engines[key]


def _match_cv2_threads() -> None:
    """Give OpenCV the thread budget torch has in this worker (loky caps it at cores // jobs), so that
    --jobs N does not run N x cores OpenCV threads."""
    import cv2
    import torch

    cv2.setNumThreads(torch.get_num_threads())


def default_batch_size(device: str) -> int:
    """Pairs per engine call: large on a GPU (throughput); on a CPU at least 8 and two per compute thread,
    so that every thread of the engine has a pair to work on (and another one when it finishes early)."""
    if device.startswith("cuda"):
        return 32
    from flowkit.threads import current_budget, derive_budget

    return max(8, 2 * (current_budget() or derive_budget()).compute)


@dataclass
class FlowPipeline:
    """The runner's view of extract-flow."""

    cfg: FlowConfig
    out_dir: Path
    command: str = "extract-flow"

    def output_config(self) -> dict[str, Any]:
        """See Pipeline.output_config."""
        return self.cfg.output_config()

    def make_units(self, items: Sequence[VideoItem]) -> list[Unit]:
        """One unit per video."""
        return [Unit(item.video_id, k, (item,)) for k, item in enumerate(items)]

    def is_done(self, unit: Unit, manifest: Manifest) -> bool:
        """Done record present and the folder holds the recorded file counts."""
        record = manifest.read_done(unit.uid)
        folder = os.path.join(self.out_dir, unit.uid)  # a str: pathlib costs more than the stat here
        return record is not None and verify_video_folder(folder, record, self.cfg)

    def process(self, unit: Unit, manifest: Manifest) -> UnitResult:
        """Decode, compute and write one video; failures are returned, not raised."""
        item = unit.items[0]
        if item.error:
            return UnitResult(unit.uid, "failed", failures=[(str(item.path), item.error)])
        manifest.clear_done(unit.uid)
        device = current_device(self.cfg.device)
        record = extract_video(item, self.out_dir / unit.uid, self.cfg, device)
        # Any file added to or removed from the folder later changes its mtime: one stat verifies it.
        record["folder_mtime_ns"] = (self.out_dir / unit.uid).stat().st_mtime_ns
        manifest.write_done(unit.uid, record)
        notes = [(str(item.path), record[k]) for k in ("note", "truncated") if k in record]
        return UnitResult(unit.uid, "done", frames=record["num_frames"], record=record, notes=notes)

    def finalize(self, manifest: Manifest) -> list[tuple[str, str]]:
        """Rebuild the annotation lists from every done record (all shards)."""
        return write_job_lists(manifest, flow_job_list_kinds(self.output_config()), self.cfg.classes)[1]


def verify_video_folder(folder: str | Path, record: dict[str, Any], cfg: FlowConfig) -> bool:
    """Cheap check that a finished folder still holds what its done record says.

    Unchanged since its commit (same mtime: no file added or removed) costs one stat; otherwise the
    files are counted, in one listing.
    """
    try:
        st = os.stat(folder)
        names = None if st.st_mtime_ns == record.get("folder_mtime_ns") else os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return False
    if not stat.S_ISDIR(st.st_mode):
        return False
    if names is None:
        return True
    layout = get_layout(cfg.layout)
    counts = Counter(name.rsplit("_", 1)[0] for name in names)
    if cfg.rgb and counts[layout.rgb_prefix] != record.get("rgb", 0):
        return False
    if cfg.format in ("jpg", "png"):
        return all(counts[f"{layout.flow_prefix}_{a}"] == record["flow"] for a in "xy")
    return f"flow.{cfg.format}" in names


def extract_video(item: VideoItem, target: Path, cfg: FlowConfig, device: str) -> dict[str, Any]:
    """Decode once, write RGB and flow for one video into `target` (atomically); returns the done record."""
    reader = VideoReader(item.path, Resize(cfg.short_side, cfg.size), cfg.decode)
    engine = engine_for(cfg, device)
    batch = cfg.batch_size or default_batch_size(getattr(engine, "device", device))
    from flowkit.outputs.jpeg import make_jpeg_encoder

    encoder = None if cfg.jpeg_encoder == "opencv" else make_jpeg_encoder(cfg.jpeg_encoder, device)
    resume = _resumable(item, target, cfg)
    with FolderWriter(target, jpeg_encoder=encoder, resume_dir=resume.folder if resume else None) as writer:
        sink = _make_sink(writer, cfg, item, engine)
        rgb = _stream(reader, engine, batch, sink, writer, cfg, resume)
        sink.close()
        if resume is not None:
            resume.finish()
    record = {"video_id": item.video_id, "source": str(item.path), "num_frames": reader.num_frames,
              "rgb": rgb, "flow": sink.count, "format": cfg.format}
    if reader.warnings:
        record["warnings"] = reader.warnings
    if reader.truncated:
        record["truncated"] = reader.truncated
    if reader.num_frames <= cfg.step:
        record["note"] = f"only {reader.num_frames} frame(s): RGB written, no flow pairs at step {cfg.step}"
        log.warning("%s: %s", item.path, record["note"])
    return record


def _resumable(item: VideoItem, target: Path, cfg: FlowConfig) -> Partial | None:
    """Image formats keep finished pairs across an interruption (see partial.py); h5/npy restart."""
    if cfg.format not in ("jpg", "png"):
        return None
    try:
        identity = source_identity(config_hash(cfg.output_config()), item.path)
    except OSError:
        return None  # the reader reports a missing or unreadable input in its own words
    return Partial.open(target, identity, get_layout(cfg.layout), cfg.format)


def _make_sink(writer: FolderWriter, cfg: FlowConfig, item: VideoItem, engine: Any) -> Any:
    if cfg.format in ("jpg", "png"):
        return ImagePairSink(writer, get_layout(cfg.layout), cfg.format, cfg.bound, cfg.jpeg_quality)
    if cfg.format == "h5":
        return H5Sink(writer.tmp_dir / "flow.h5", flow_metadata(cfg, item, engine))
    return NpySink(writer.tmp_dir, flow_metadata(cfg, item, engine))


def flow_metadata(cfg: FlowConfig, item: VideoItem, engine: Any) -> dict[str, Any]:
    """What a lossless flow file carries: source, engine and every parameter it ran with, the config."""
    import flowkit

    params = getattr(engine, "params", None)
    if dataclasses.is_dataclass(params):
        params = dataclasses.asdict(params)
    return {"source": str(item.path), "video_id": item.video_id, "algorithm": cfg.algorithm,
            "engine_params": json.loads(json.dumps(params or cfg.engine_params, default=str)),
            "step": cfg.step, "config": cfg.output_config(), "flowkit_version": flowkit.__version__}


def _stream(reader: VideoReader, engine: Any, batch: int, sink: Any, writer: FolderWriter,
            cfg: FlowConfig, resume: Partial | None = None) -> int:
    """Feed frame pairs (k, k+step) to the engine in batches; write RGB as frames arrive. Returns #RGB.

    With `resume`, the RGB files and flow pairs it counts as finished are skipped, not recomputed.
    """
    layout = get_layout(cfg.layout)
    window: deque[tuple[np.ndarray, float]] = deque(maxlen=cfg.step + 1)
    pending: list[tuple[np.ndarray, np.ndarray, float, float]] = []
    flows = _FlowCalls(engine, sink, cfg.algorithm, inflight_depth(engine))
    rgb = pairs = 0
    skip_rgb, skip_pairs = (resume.rgb, resume.pairs) if resume else (0, 0)
    if skip_pairs:
        sink.count = skip_pairs
    header = lambda: reader.info.header_frames if reader.info else 0  # noqa: E731 - read at frame 1
    try:
        for frame in progress.track(prefetch(reader, depth=2 * batch), header):
            if cfg.rgb and (frame.index >= cfg.step or not layout.rgb_is_second_frame):
                if rgb >= skip_rgb:
                    writer.write_image(layout.rgb_name(rgb), frame.image, cfg.jpeg_quality)
                rgb += 1
            window.append((engine_input(engine, frame.image), frame.timestamp))
            if len(window) == cfg.step + 1:
                if pairs >= skip_pairs:
                    pending.append((window[0][0], window[-1][0], window[0][1], window[-1][1]))
                pairs += 1
            if len(pending) == batch:
                flows.add(pending)
                if resume is not None:
                    resume.checkpoint(writer, sink.count, rgb)
        flows.add(pending)
        flows.drain()
    except BaseException:
        if flows.order:  # batches of this video still queued in the engine: never mix them into the next
            _engines.pop(next((k for k, v in _engines.items() if v is engine), None), None)
        raise
    return rgb


def inflight_depth(engine: Any) -> int:
    """Engine calls kept in flight beyond the current one: on a GPU a streaming engine (submit/poll) gets
    the next batches queued, so its scheduler refills a finished pair's slot at once instead of waiting
    for the batch's slowest pair (issue 9); on the CPU each batch is computed when it is full."""
    streams = bool(getattr(engine, "streams", False))
    return 2 if streams and str(getattr(engine, "device", "cpu")).startswith("cuda") else 0


class _FlowCalls:
    """Batches of pairs -> engine -> sink, in order; up to `depth` further batches in flight."""

    def __init__(self, engine: Any, sink: Any, algorithm: str, depth: int) -> None:
        self.engine, self.sink, self.algorithm, self.depth = engine, sink, algorithm, depth
        self.order: deque[tuple[int, np.ndarray, tuple[int, int]]] = deque()  # ticket, times, (h, w)
        self.ready: dict[int, np.ndarray] = {}

    def add(self, pending: list[tuple[np.ndarray, np.ndarray, float, float]]) -> None:
        """Compute (or submit) one batch and clear `pending`."""
        if not pending:
            return
        prev = np.stack([p[0] for p in pending])
        nxt = np.stack([p[1] for p in pending])
        times = np.asarray([(p[2], p[3]) for p in pending], dtype=np.float64)
        pending.clear()
        if not self.depth:
            self.sink.add(_compute(self.engine, prev, nxt, self.algorithm), times)
            return
        ticket = _guarded(self.algorithm, prev.shape[-2:], lambda: self.engine.submit(prev, nxt))
        self.order.append((ticket, times, prev.shape[-2:]))
        while len(self.order) > self.depth:
            self._deliver()

    def drain(self) -> None:
        """Wait for every batch in flight and hand it to the sink."""
        while self.order:
            self._deliver()

    def _deliver(self) -> None:
        shape = self.order[0][2]
        for ticket, flow in _guarded(self.algorithm, shape, self.engine.poll):
            self.ready[ticket] = flow
        while self.order and self.order[0][0] in self.ready:
            ticket, times, _ = self.order.popleft()
            self.sink.add(np.asarray(self.ready.pop(ticket), dtype=np.float32), times)


def _compute(engine: Any, prev: np.ndarray, nxt: np.ndarray, algorithm: str) -> np.ndarray:
    """Run the engine on one batch."""
    return _guarded(algorithm, prev.shape[-2:], lambda: np.asarray(engine(prev, nxt), dtype=np.float32))


def _guarded(algorithm: str, shape: tuple[int, ...], call: Any) -> Any:
    """An engine call whose errors (e.g. OpenCV DIS on frames under 12 px) become one clear line."""
    try:
        return call()
    except FlowkitError:
        raise
    except Exception as exc:
        # cv2.error keeps the bare message in .err; its str() spans lines with source paths.
        cause = getattr(exc, "err", None) or one_line(exc)
        height, width = shape
        raise FlowkitError(
            f"the {algorithm} flow engine failed on {width}x{height} frames: {cause}"
        ) from exc

