"""`flowkit features`: C3D / I3D features per temporal window into HDF5 shards (or one npy per video).

A unit of work is one video; videos are grouped into shards of consecutive videos named from their
position only. A finished video waits as a part until every video of its shard was attempted, then the
worker that settled the last one assembles the shard (tmp + rename). A rerun redoes only the failed or
unfinished videos.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

import flowkit
from flowkit.atomic import atomic_write_text
from flowkit.choices import FEATURE_COMBINES, FEATURE_STREAMS
from flowkit.decoders import DecodeOptions
from flowkit.errors import ConfigError, VideoError
from flowkit.inputs import VideoItem
from flowkit.jobs import progress
from flowkit.jobs.manifest import Manifest
from flowkit.jobs.runner import Unit, UnitResult, current_device, one_line
from flowkit.outputs import hdf5
from flowkit.outputs.flowfiles import FLOW_FORMATS, FlowFolderReader, resize_flow
from flowkit.outputs.rawframes import get_layout
from flowkit.pipelines.extractor import Extractor, check_amp, extractor_for
from flowkit.pipelines.featureshards import ShardParts, plan_shards, shard_members
from flowkit.pipelines.stages import prefetch
from flowkit.pipelines.windows import Window, WindowAssembler, WindowPlan, plan_windows
from flowkit.video import Resize, VideoReader, scan_timestamps

log = logging.getLogger("flowkit")

STREAMS = FEATURE_STREAMS
COMBINES = FEATURE_COMBINES


@dataclass(frozen=True)
class FeaturesConfig:
    """Every option of `flowkit features`; model-dependent defaults are filled from the model registry."""

    # Files and folders that workers read: made absolute on the client before a run (Dask workers).
    path_fields: ClassVar[tuple[str, ...]] = ("weights", "flow_weights", "mean_file", "flow_dir")

    model: str = "c3d"
    weights: str | None = None
    flow_weights: str | None = None
    random_weights: bool = False
    layer: str | None = None
    stream: str = "rgb"
    combine: str | None = None
    clip_len: int | None = None
    stride: int | None = None
    fps: float | None = None
    pad_last: bool = False
    c3d_mode: str = "caffe"
    i3d_compat: str = "tf"
    mean_file: str | None = None
    flow_algorithm: str = "auto"
    flow_dir: str | None = None
    flow_rescale: bool = False
    bound: float = 20.0
    dtype: str = "float32"
    dataset_name: str = "features"
    format: str = "hdf5"
    videos_per_shard: int = 100
    shard_name: str | None = None
    slowfast_layout: int | None = None
    sampler: str | None = None
    max_frames: int | None = None
    crops: int = 1
    raft_weights: str | None = None
    raft_model: str = "large"
    raft_iterations: int = 20
    batch_size: int = 8
    device: str = "auto"
    amp: str = "none"
    decode: DecodeOptions = field(default_factory=DecodeOptions)

    def __post_init__(self) -> None:
        from flowkit.models import get_model_spec

        spec = get_model_spec(self.model)
        _check_choice("stream", self.stream, STREAMS)
        _check_choice("combine", self.combine, (None, *COMBINES))
        _check_choice("dtype", self.dtype, ("float32", "float16"))
        _check_choice("format", self.format, ("hdf5", "npy"))
        check_amp(self.amp)
        for stream in self.streams:
            if stream not in spec.streams:
                raise ConfigError(
                    f"model {self.model} has no {stream} stream (it has {', '.join(spec.streams)})"
                )
        if self.layer is not None and self.layer not in spec.layers:
            raise ConfigError(
                f"unknown layer {self.layer!r} for {self.model}; choose from {', '.join(spec.layers)}"
            )
        if self.combine and self.stream != "both":
            raise ConfigError("--combine needs --stream both")
        if self.c3d_mode == "davidea" and self.mean_file:
            raise ConfigError("--c3d-mode davidea feeds RGB without a mean (as DavideA's predict.py): "
                              "drop --mean-file")
        if self.flow_dir is not None:
            if "flow" not in self.streams:
                raise ConfigError("--flow-dir feeds the flow stream: use it with --stream flow or both")
            if self.fps:
                raise ConfigError("--flow-dir holds flow between consecutive native frames: drop --fps")
            check_flow_source(flow_source_settings(self.flow_dir), self, spec)
        elif self.flow_rescale:
            raise ConfigError("--flow-rescale applies only with --flow-dir")
        self._check_windows(spec)
        self._check_weights()
        self._check_applicable(spec)
        from flowkit.pipelines.frame_features import check_frame_options
        from flowkit.pipelines.model_options import check_crops, flow_engine_params

        check_frame_options(self, spec)
        check_crops(self, spec)
        if "flow" in self.streams and not self.flow_dir:
            flow_engine_params(self)  # --flow-algorithm raft without --raft-weights fails now

    def _check_windows(self, spec: Any) -> None:
        clip = self.clip_len or spec.clip_len
        if clip < spec.min_clip_len:
            raise ConfigError(f"{self.model} needs at least {spec.min_clip_len} frames per clip, got {clip}")
        if spec.model_cls.__name__ == "C3D" and clip != spec.clip_len:
            raise ConfigError(
                f"C3D takes {spec.clip_len}-frame clips (its fc6 is sized for them), got {clip}"
            )
        if (self.stride or clip) < 1 or self.batch_size < 1 or self.videos_per_shard < 1:
            raise ConfigError("--stride, --batch-size and --videos-per-shard must be >= 1")
        if self.slowfast_layout is not None and self.slowfast_layout < 1:
            raise ConfigError("--slowfast-layout must be >= 1")

    def _check_weights(self) -> None:
        missing = [s for s in self.streams if self.weights_for(s) is None]
        if self.random_weights and (self.weights or self.flow_weights):
            raise ConfigError("--random-weights and --weights exclude each other")
        if missing and not self.random_weights:
            flags = {"rgb": "--weights", "flow": "--flow-weights" if self.stream == "both" else "--weights"}
            need = " and ".join(flags[s] for s in missing)
            raise ConfigError(
                f"pass {need} PATH (a local checkpoint; nothing is downloaded), "
                "or --random-weights for a smoke test"
            )

    def _check_applicable(self, spec: Any) -> None:
        """Options that would be ignored are errors; the flow engine is checked before any work."""
        family = spec.model_cls.__name__
        wrong = [flag for flag, ignored in (
            ("--c3d-mode", self.c3d_mode != "caffe" and family != "C3D"),
            ("--mean-file", self.mean_file is not None and family != "C3D"),
            ("--i3d-compat", self.i3d_compat != "tf" and family != "I3D"),
        ) if ignored]
        if wrong:
            raise ConfigError(f"{', '.join(wrong)} do(es) not apply to --model {self.model}")
        if self.flow_weights is not None and self.stream != "both":
            raise ConfigError("--flow-weights is the flow checkpoint of --stream both; with one stream "
                              "pass its checkpoint as --weights")
        computes_flow = "flow" in self.streams and self.flow_dir is None
        if self.flow_algorithm != "auto" and not computes_flow:
            raise ConfigError("--flow-algorithm applies only when the flow stream is computed "
                              "(--stream flow or both, without --flow-dir)")
        if computes_flow:
            from flowkit.pipelines.flow import FlowConfig
            from flowkit.pipelines.model_options import flow_engine_params

            # An unknown or unavailable engine, or RAFT without weights: an error now, not per video.
            FlowConfig(algorithm=self.flow_algorithm, engine_params=flow_engine_params(self))

    @property
    def streams(self) -> tuple[str, ...]:
        """The input streams this run uses."""
        return ("rgb", "flow") if self.stream == "both" else (self.stream,)

    def weights_for(self, stream: str) -> str | None:
        """The checkpoint of a stream: --weights for a single stream, --flow-weights for flow of both."""
        if self.stream == "both" and stream == "flow":
            return self.flow_weights
        return self.weights

    def output_config(self) -> dict[str, Any]:
        """What decides the output (device and batch size do not)."""
        config = asdict(self)
        del config["device"], config["batch_size"]
        config["decode"] = self.decode.output_config()
        return config


def flow_source_settings(flow_dir: str) -> dict[str, Any]:
    """The config of the extract-flow job in `flow_dir` (layout, format, bound); refuses other folders."""
    job = Manifest(Path(flow_dir)).read_job()
    if job is None or job.get("command") != "extract-flow":
        raise ConfigError(f"{flow_dir}: not an extract-flow output folder (no extract-flow job record)")
    config = job["config"]
    if config.get("step", 1) != 1:
        raise ConfigError(f"{flow_dir}: flow was extracted with --step {config['step']}; I3D needs step 1")
    return config


def check_flow_source(settings: dict[str, Any], cfg: FeaturesConfig, spec: Any) -> None:
    """Refuse stored flow that cannot give the model's input: other geometry, tighter bound, resampled."""
    where = cfg.flow_dir
    if cfg.fps:
        raise ConfigError("--flow-dir holds flow between consecutive native frames: drop --fps")
    if settings.get("format") not in FLOW_FORMATS:
        raise ConfigError(f"{where}: unknown flow format {settings.get('format')!r} in the job record")
    if settings.get("format") in ("jpg", "png") and float(settings.get("bound", 20.0)) < cfg.bound:
        raise ConfigError(
            f"{where}: flow was quantized with --bound {settings['bound']:g}, so it is clipped tighter than "
            f"the ±{cfg.bound:g} px the model takes: re-extract with --bound {cfg.bound:g}"
        )
    need = _frame_geometry(spec).short_side
    size = settings.get("size")
    if (settings.get("short_side"), size) != (need, None) and not cfg.flow_rescale:
        made = f"--size {size[0]}x{size[1]}" if size else (
            f"--short-side {settings['short_side']}" if settings.get("short_side") else "native size")
        raise ConfigError(
            f"{where}: flow was extracted at {made}, but {cfg.model} reads flow at short side {need}: "
            f"re-extract with --short-side {need}, or pass --flow-rescale to resize it "
            "(vectors scaled with the frame)"
        )


def _check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ConfigError(
            f"--{name.replace('_', '-')} must be one of {', '.join(map(str, choices))}, got {value!r}"
        )


class VideoFeatures:
    """Computes one video's datasets and attributes with a loaded Extractor."""

    def __init__(self, cfg: FeaturesConfig, extractor: Extractor) -> None:
        from flowkit.models import get_model_spec

        self.cfg, self.extractor = cfg, extractor
        self.spec = get_model_spec(cfg.model)
        self.layer = cfg.layer or self.spec.default_layer
        self.clip_len = cfg.clip_len or self.spec.clip_len
        self.stride = cfg.stride or self.clip_len
        self.geometry = _frame_geometry(self.spec, cfg.c3d_mode)
        self.preprocess = {s: self._preprocessor(s) for s in cfg.streams}

    def _preprocessor(self, stream: str) -> Any:
        """The stream's preprocessing in this run: crops, video_features' RAFT flow transform, or the
        model's function with this run's arguments."""
        from flowkit.pipelines.model_options import cropped_preprocessor, flow_input

        if self.cfg.crops > 1 or self.spec.native_decode:
            return cropped_preprocessor(self.spec, stream, self.cfg)
        fn = self._configured(stream)
        if stream != "flow":
            return fn

        def flow_pre(flows: np.ndarray) -> Any:
            values, kwargs = flow_input(flows, self.cfg)
            return fn(values, **kwargs)

        return flow_pre

    def _configured(self, stream: str) -> functools.partial:
        """The model's preprocessing function with this run's arguments (what the outputs record)."""
        return functools.partial(self.spec.preprocess[stream], **self._overrides(stream))

    def _overrides(self, stream: str) -> dict[str, Any]:
        """Arguments this run gives a stream's preprocessing on top of the model's defaults."""
        if stream == "flow":
            return {"bound": self.cfg.bound}
        if self.spec.model_cls.__name__ != "C3D":
            return {}
        if self.cfg.c3d_mode == "davidea":
            from flowkit.models.preprocess import C3D_DAVIDEA_PREDICT

            return dict(C3D_DAVIDEA_PREDICT)
        if self.cfg.mean_file:
            from flowkit.models.preprocess import load_mean_file

            return {"mean": load_mean_file(self.cfg.mean_file)}
        return {}

    def preprocessing(self) -> dict[str, Any]:
        """How frames and flow became model input: decode geometry, each stream's function and arguments."""
        record: dict[str, Any] = {"decode_resize": asdict(self.geometry)}
        for stream in self.preprocess:
            record[stream] = describe_call(self._configured(stream), self.cfg.mean_file)
        if self.cfg.crops > 1:
            record["crops"] = self.cfg.crops
        return record

    def compute(self, item: VideoItem) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Decode, window, run the model(s); returns (datasets, group attributes) for the HDF5 group."""
        timestamps, info = scan_timestamps(item.path, self.cfg.decode)
        plan = plan_windows(timestamps, self.clip_len, self.stride, self.cfg.fps, self.cfg.pad_last)
        progress.set_total(len(timestamps))
        notes: list[str] = []
        reader = VideoReader(item.path, self.geometry, self.cfg.decode)
        outputs = self._run(item, plan, info, notes, reader)
        datasets = self._datasets(plan, outputs)
        attrs = {
            "source": str(item.path),
            "num_frames": len(timestamps),
            "windows": len(plan.windows),
            "fps": self.cfg.fps or info.fps,
            "model": self.cfg.model,
            "layer": self.layer,
            "stream": self.cfg.stream,
            "clip_len": self.clip_len,
            "stride": self.stride,
        }
        if reader.truncated:
            attrs["truncated"] = reader.truncated  # accepted with --allow-truncated
        if len(plan.windows) == 0:
            notes.append(f"shorter than one {self.clip_len}-frame window: no features")
        if notes:
            attrs["note"] = "; ".join(notes)
        return datasets, attrs

    def _run(
        self, item: VideoItem, plan: WindowPlan, info: Any, notes: list[str], video: VideoReader
    ) -> dict[str, list[np.ndarray]]:
        wants_flow = "flow" in self.cfg.streams
        lookup = self._flow_lookup(item, info, notes) if wants_flow and self.cfg.flow_dir else None
        flow_fn = self._flow_fn() if wants_flow and lookup is None else None
        flow_batch = self.cfg.batch_size
        if flow_fn is not None:  # pairs per engine call: enough for every engine thread (extract-flow's rule)
            from flowkit.pipelines.flow import default_batch_size

            flow_batch = max(flow_batch, default_batch_size(str(self.extractor.device)))
        assembler = WindowAssembler(plan, "rgb" in self.cfg.streams, flow_fn, flow_batch, lookup)
        reader = prefetch(video, depth=2 * self.clip_len)
        outputs: dict[str, list[np.ndarray]] = {}
        batch: list[Window] = []
        for window in assembler.feed(progress.track(reader)):
            batch.append(window)
            if len(batch) == self.cfg.batch_size:
                self._forward(batch, outputs)
        self._forward(batch, outputs)
        if assembler.next_window != len(plan.windows):
            raise VideoError(item.path, "decoded fewer frames on the second pass than on the first")
        return outputs

    def _flow_lookup(self, item: VideoItem, info: Any, notes: list[str]) -> Any:
        """Flows of this video from --flow-dir, checked against (or, with --flow-rescale, resized to)
        the geometry the model's frames have."""
        settings = flow_source_settings(str(self.cfg.flow_dir))
        folder = Path(str(self.cfg.flow_dir)) / item.video_id
        if not folder.is_dir():
            raise VideoError(item.path, f"no extracted flow in {folder}")
        layout = get_layout(settings["layout"])
        reader = FlowFolderReader(folder, layout, settings["format"], settings["bound"])
        have, want = reader.frame_size(), self.geometry.target(info.width, info.height)
        if have in (want, (0, 0)):
            return reader
        if not self.cfg.flow_rescale:
            raise VideoError(item.path, f"flow in {folder} is {have[0]}x{have[1]} but the model reads "
                             f"{want[0]}x{want[1]} frames: re-extract it, or pass --flow-rescale")
        sx, sy = want[0] / have[0], want[1] / have[1]
        notes.append(f"flow resized from {have[0]}x{have[1]} to {want[0]}x{want[1]}, "
                     f"vectors scaled by ({sx:.3f}, {sy:.3f})")
        return lambda k: resize_flow(reader(k), *want)

    def _flow_fn(self) -> Any:
        from flowkit.pipelines.flow import FlowConfig, engine_for
        from flowkit.pipelines.model_options import flow_engine_params

        params = flow_engine_params(self.cfg)
        engine = engine_for(FlowConfig(algorithm=self.cfg.flow_algorithm, engine_params=params),
                            self.extractor.device)

        def flow_fn(prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
            return np.asarray(engine(prev, nxt), np.float32)

        flow_fn.color = getattr(engine, "color", False)  # type: ignore[attr-defined]  # RAFT reads BGR
        return flow_fn

    def _forward(self, batch: list[Window], outputs: dict[str, list[np.ndarray]]) -> None:
        if not batch:
            return
        every = self.cfg.slowfast_layout
        picked = [k for k, w in enumerate(batch) if every and w.number % every == 0]
        if picked:
            outputs.setdefault("map_windows", []).append(np.asarray([batch[k].number for k in picked]))
        for stream in self.cfg.streams:
            clips = [self.preprocess[stream](w.frames if stream == "rgb" else w.flows) for w in batch]
            if self.cfg.crops > 1:  # (crops, C, T, H, W) per window: run crops as a batch, keep the axis
                vectors = self.extractor.vectors(stream, [c for cl in clips for c in cl], self.layer)
                outputs.setdefault(stream, []).append(vectors.reshape(len(clips), self.cfg.crops, -1))
                if picked:
                    maps = self.extractor.maps(stream, [c for k in picked for c in clips[k]])
                    outputs.setdefault(f"map_{stream}", []).append(
                        maps.reshape(len(picked), self.cfg.crops, *maps.shape[1:]))
                continue
            outputs.setdefault(stream, []).append(self.extractor.vectors(stream, clips, self.layer))
            if picked:
                maps = self.extractor.maps(stream, [clips[k] for k in picked])
                outputs.setdefault(f"map_{stream}", []).append(maps)
        batch.clear()

    def _datasets(self, plan: WindowPlan, outputs: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
        dtype = np.dtype(self.cfg.dtype)
        name = self.cfg.dataset_name
        dim = self.spec.layers[self.layer]
        vectors = {s: _stack(outputs.get(s), dim, self.cfg.crops) for s in self.cfg.streams}
        out: dict[str, np.ndarray] = {"frame_indices": plan.frame_ranges(), "timestamps": plan.time_ranges()}
        single = len(self.cfg.streams) == 1
        for stream, array in vectors.items():
            out[name if single else f"{name}_{stream}"] = array.astype(dtype)
        if self.cfg.combine == "concat":
            out[name] = np.concatenate([vectors["rgb"], vectors["flow"]], axis=-1).astype(dtype)
        elif self.cfg.combine == "sum":
            out[name] = (vectors["rgb"] + vectors["flow"]).astype(dtype)
        if self.cfg.slowfast_layout:
            self._add_maps(out, outputs, single, dtype)
        return out

    def _add_maps(
        self, out: dict[str, np.ndarray], outputs: dict[str, list[np.ndarray]], single: bool, dtype: np.dtype
    ) -> None:
        shape = self.spec.map_shape
        windows = (
            np.concatenate(outputs["map_windows"]) if outputs.get("map_windows") else np.zeros(0, np.int64)
        )
        for stream in self.cfg.streams:
            key = "spatial" if single else f"spatial_{stream}"
            maps = outputs.get(f"map_{stream}")
            empty = (0, *shape) if self.cfg.crops == 1 else (0, self.cfg.crops, *shape)
            out[key] = (np.concatenate(maps) if maps else np.zeros(empty, np.float32)).astype(dtype)
            out[f"{key}_window_indices"] = windows.astype(np.int64)


def extractor_kind(cfg: FeaturesConfig) -> str:
    """"frame" for image encoders (per-frame features), "clip" for window models."""
    from flowkit.models import get_model_spec

    return get_model_spec(cfg.model).kind


def _stack(parts: list[np.ndarray] | None, dim: int, crops: int = 1) -> np.ndarray:
    if parts:
        return np.concatenate(parts).astype(np.float32)
    return np.zeros((0, dim) if crops == 1 else (0, crops, dim), np.float32)


def describe_call(fn: Any, mean_file: str | None = None) -> dict[str, Any]:
    """A preprocessing function and every argument it runs with (defaults included), as plain JSON."""
    keywords: dict[str, Any] = {}
    while isinstance(fn, functools.partial):
        keywords = {**fn.keywords, **keywords}
        fn = fn.func
    params = inspect.signature(fn).parameters.values()
    merged = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    merged.update(keywords)
    if isinstance(merged.get("mean"), np.ndarray):
        merged["mean"] = f"mean volume {mean_file}"
    plain = json.loads(json.dumps(merged, default=lambda v: list(v) if isinstance(v, tuple) else str(v)))
    return {"function": f"{fn.__module__}.{fn.__qualname__}", **plain}


def _frame_geometry(spec: Any, c3d_mode: str = "caffe") -> Resize:
    """Resize every decoded frame once to the model's working size (its preprocessing then only crops)."""
    if spec.native_decode:  # torchvision-style preprocessing resizes from the decoded frames itself
        return Resize()
    if spec.model_cls.__name__ == "C3D":
        # davidea: DavideA's predict.py resizes straight to 112x200 (see C3D_DAVIDEA_PREDICT).
        height, width = (112, 200) if c3d_mode == "davidea" else (128, 171)
        return Resize(size=(width, height))
    return Resize(short_side=round(spec.input_size * 256 / 224))


@dataclass
class FeaturesPipeline:
    """The runner's view of `flowkit features`: one unit per video, outputs grouped into shards.

    A finished video waits as a part in OUT/.flowkit until every video of its shard was attempted; the
    worker that settles the last one assembles the shard, and finalize catches any shard left behind
    (see :mod:`flowkit.pipelines.featureshards`).
    """

    cfg: FeaturesConfig
    out_dir: Path
    command: str = "features"
    shard_count: int = 1

    def output_config(self) -> dict[str, Any]:
        """See Pipeline.output_config."""
        return self.cfg.output_config()

    @property
    def name(self) -> str:
        """Prefix of the shard files."""
        return self.cfg.shard_name or self.cfg.model

    def make_units(self, items: Sequence[VideoItem]) -> list[Unit]:
        """One unit per video; a video's index is its feature shard's, so --shard i/N keeps shards whole."""
        if self.cfg.format == "npy":
            return [Unit(item.video_id, k, (item,)) for k, item in enumerate(items)]
        per = self.cfg.videos_per_shard
        self.shard_count = max(1, math.ceil(len(items) / per))
        return [Unit(item.video_id, k // per, (item,)) for k, item in enumerate(items)]

    def _shard_of(self, unit: Unit) -> str:
        return hdf5.shard_filename(self.name, unit.index, self.shard_count)

    def is_done(self, unit: Unit, manifest: Manifest) -> bool:
        """Done record, and the video's features in place (its part, or its shard, verifying)."""
        record = manifest.read_done(unit.uid)
        if record is None or record.get("failed"):
            return False
        if self.cfg.format == "npy":
            return all((self.out_dir / f).is_file() for f in record.get("files", []))
        return ShardParts(manifest).holds(unit.uid, self._shard_of(unit))

    def _features(self) -> VideoFeatures:
        cfg = self.cfg
        device = current_device(cfg.device)
        from flowkit.pipelines.model_options import model_kwargs

        kwargs = model_kwargs(cfg)
        weights = {s: cfg.weights_for(s) for s in cfg.streams}
        key = (json.dumps(cfg.output_config(), sort_keys=True, default=str), device)
        extractor = extractor_for(
            key, lambda: Extractor(cfg.model, cfg.streams, weights, kwargs, device, cfg.amp)
        )
        if extractor_kind(cfg) == "frame":
            from flowkit.pipelines.frame_features import FrameFeatures

            return FrameFeatures(cfg, extractor)  # type: ignore[return-value]
        return VideoFeatures(cfg, extractor)

    def _file_attrs(self, features: VideoFeatures) -> dict[str, Any]:
        attrs: dict[str, Any] = {
            "flowkit_version": flowkit.__version__,
            "config": json.loads(json.dumps(self.cfg.output_config(), default=str)),
            "model": self.cfg.model,
            "layer": features.layer,
            "random_weights": int(self.cfg.random_weights),
            "preprocessing": features.preprocessing(),
        }
        if self.cfg.random_weights:
            attrs["WARNING"] = "RANDOM WEIGHTS: these features are meaningless (smoke test / benchmark only)"
        for stream, loaded in features.extractor.streams.items():
            attrs[f"checkpoint_sha1_{stream}"] = loaded.sha1 or "none"
            attrs[f"checkpoint_name_{stream}"] = loaded.known_name or "unknown"
        return attrs

    def process(self, unit: Unit, manifest: Manifest) -> UnitResult:
        """Compute one video: its part (hdf5) or its npy files, then its done record."""
        item = unit.items[0]
        manifest.clear_done(unit.uid)
        if self.cfg.format == "npy":
            if item.error:
                return UnitResult(unit.uid, "failed", failures=[(str(item.path), item.error)])
            return self._process_npy(unit, manifest, self._features())
        return self._process_part(unit, manifest)

    def _process_part(self, unit: Unit, manifest: Manifest) -> UnitResult:
        item, parts = unit.items[0], ShardParts(manifest)
        try:
            if item.error:
                raise VideoError(item.path, item.error)
            features = self._features()
            datasets, attrs = features.compute(item)
            parts.write_part(item.video_id, datasets, attrs, self._file_attrs(features))
        except Exception as exc:  # noqa: BLE001 - the failure is recorded so the shard can close without it
            cause = one_line(exc, str(item.path))
            parts.mark_failed(item.video_id, cause)
            result = UnitResult(unit.uid, "failed", failures=[(str(item.path), cause)])
        else:
            manifest.write_done(unit.uid, {"video_id": item.video_id, "shard": self._shard_of(unit)})
            notes = [(str(item.path), attrs[k]) for k in ("note", "truncated") if k in attrs]
            result = UnitResult(unit.uid, "done", frames=int(attrs["num_frames"]), notes=notes)
        # The worker that settles a shard's last video assembles it (finalize is the safety net).
        members = shard_members(manifest, self.cfg.videos_per_shard, unit.index)
        result.failures += parts.sync(self._shard_of(unit), members)
        return result

    def _process_npy(self, unit: Unit, manifest: Manifest, features: VideoFeatures) -> UnitResult:
        item = unit.items[0]
        datasets, attrs = features.compute(item)
        files = []
        for key, array in datasets.items():
            if key.startswith(self.cfg.dataset_name) and not key.endswith("window_indices"):
                suffix = key[len(self.cfg.dataset_name) :]
                files.append(hdf5.write_npy_features(self.out_dir, item.video_id + suffix, array))
        sidecar = self.out_dir / f"{item.video_id}.json"
        meta = {
            **self._file_attrs(features),
            **attrs,
            "frame_indices": datasets["frame_indices"].tolist(),
            "timestamps": datasets["timestamps"].tolist(),
        }
        atomic_write_text(sidecar, json.dumps(meta))
        rel = [str(p.relative_to(self.out_dir)) for p in [*files, sidecar]]
        manifest.write_done(unit.uid, {"video_id": item.video_id, "files": rel, "failed": []})
        notes = [(str(item.path), attrs[k]) for k in ("note", "truncated") if k in attrs]
        return UnitResult(unit.uid, "done", frames=int(attrs["num_frames"]), notes=notes)

    def finalize(self, manifest: Manifest) -> list[tuple[str, str]]:
        """Assemble every shard whose videos were all attempted, then write index.json."""
        if self.cfg.format != "hdf5":
            return []
        plans = plan_shards(self.name, manifest.read_units(), self.cfg.videos_per_shard)
        parts = ShardParts(manifest)
        failures = [f for shard, members in plans for f in parts.sync(shard, members)]
        hdf5.write_index(self.out_dir, parts.index(plans))
        return failures


def shard_index(out_dir: Path) -> dict[str, str]:
    """video id -> shard file of every assembled video of a features job (for merge and index.json)."""
    manifest = Manifest(out_dir)
    job = manifest.read_job() or {}
    config = job.get("config", {})
    name = config.get("shard_name") or config.get("model", "")
    plans = plan_shards(name, manifest.read_units(), int(config.get("videos_per_shard", 100)))
    return ShardParts(manifest).index(plans)
