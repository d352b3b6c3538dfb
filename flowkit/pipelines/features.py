"""`flowkit features`: C3D / I3D features per temporal window into HDF5 shards (or one npy per video).

A unit of work is one shard of consecutive videos, named from its position only; the shard is written
to a temporary file and renamed when every video was attempted. A rerun redoes a shard that had failed
videos, copying the finished videos from the old file instead of recomputing them.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

import flowkit
from flowkit.atomic import atomic_write_text
from flowkit.errors import ConfigError, FlowkitError, VideoError
from flowkit.inputs import VideoItem
from flowkit.jobs import progress
from flowkit.jobs.manifest import Manifest
from flowkit.jobs.runner import Unit, UnitResult, current_device, one_line
from flowkit.outputs import hdf5
from flowkit.outputs.flowfiles import FlowFolderReader
from flowkit.outputs.rawframes import get_layout
from flowkit.pipelines.extractor import Extractor, check_amp, extractor_for
from flowkit.pipelines.stages import prefetch
from flowkit.pipelines.windows import Window, WindowAssembler, WindowPlan, plan_windows
from flowkit.video import Resize, VideoReader, scan_timestamps

log = logging.getLogger("flowkit")

STREAMS = ("rgb", "flow", "both")
COMBINES = ("concat", "sum")


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
    bound: float = 20.0
    dtype: str = "float32"
    dataset_name: str = "features"
    format: str = "hdf5"
    videos_per_shard: int = 100
    shard_name: str | None = None
    slowfast_layout: int | None = None
    batch_size: int = 8
    device: str = "auto"
    amp: str = "none"

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
        if self.flow_dir is not None:
            flow_source_settings(self.flow_dir)
            if self.fps:
                raise ConfigError("--flow-dir holds flow between consecutive native frames: drop --fps")
        self._check_windows(spec)
        self._check_weights()

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
        self.geometry = _frame_geometry(self.spec)
        self.preprocess = {s: self._preprocessor(s) for s in cfg.streams}

    def _preprocessor(self, stream: str) -> Any:
        fn = self.spec.preprocess[stream]
        if stream == "flow":
            return lambda flows: fn(flows, bound=self.cfg.bound)
        if self.spec.model_cls.__name__ == "C3D" and self.cfg.mean_file:
            from flowkit.models.preprocess import load_mean_file

            mean = load_mean_file(self.cfg.mean_file)
            return lambda frames: fn(frames, mean=mean)
        return fn

    def compute(self, item: VideoItem) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Decode, window, run the model(s); returns (datasets, group attributes) for the HDF5 group."""
        timestamps, info = scan_timestamps(item.path)
        plan = plan_windows(timestamps, self.clip_len, self.stride, self.cfg.fps, self.cfg.pad_last)
        progress.set_total(len(timestamps))
        outputs = self._run(item, plan)
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
        if len(plan.windows) == 0:
            attrs["note"] = f"shorter than one {self.clip_len}-frame window: no features"
        return datasets, attrs

    def _run(self, item: VideoItem, plan: WindowPlan) -> dict[str, list[np.ndarray]]:
        wants_flow = "flow" in self.cfg.streams
        lookup = self._flow_lookup(item) if wants_flow and self.cfg.flow_dir else None
        flow_fn = self._flow_fn() if wants_flow and lookup is None else None
        assembler = WindowAssembler(plan, "rgb" in self.cfg.streams, flow_fn, self.cfg.batch_size, lookup)
        reader = prefetch(VideoReader(item.path, self.geometry), depth=2 * self.clip_len)
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

    def _flow_lookup(self, item: VideoItem) -> FlowFolderReader:
        """Flows of this video from the extract-flow folder given with --flow-dir."""
        settings = flow_source_settings(str(self.cfg.flow_dir))
        folder = Path(str(self.cfg.flow_dir)) / item.video_id
        if not folder.is_dir():
            raise VideoError(item.path, f"no extracted flow in {folder}")
        return FlowFolderReader(folder, get_layout(settings["layout"]), settings["format"], settings["bound"])

    def _flow_fn(self) -> Any:
        from flowkit.pipelines.flow import FlowConfig, engine_for

        engine = engine_for(FlowConfig(algorithm=self.cfg.flow_algorithm), self.extractor.device)
        return lambda prev, nxt: np.asarray(engine(prev, nxt), np.float32)

    def _forward(self, batch: list[Window], outputs: dict[str, list[np.ndarray]]) -> None:
        if not batch:
            return
        every = self.cfg.slowfast_layout
        picked = [k for k, w in enumerate(batch) if every and w.number % every == 0]
        if picked:
            outputs.setdefault("map_windows", []).append(np.asarray([batch[k].number for k in picked]))
        for stream in self.cfg.streams:
            clips = [self.preprocess[stream](w.frames if stream == "rgb" else w.flows) for w in batch]
            outputs.setdefault(stream, []).append(self.extractor.vectors(stream, clips, self.layer))
            if picked:
                maps = self.extractor.maps(stream, [clips[k] for k in picked])
                outputs.setdefault(f"map_{stream}", []).append(maps)
        batch.clear()

    def _datasets(self, plan: WindowPlan, outputs: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
        dtype = np.dtype(self.cfg.dtype)
        name = self.cfg.dataset_name
        dim = self.spec.layers[self.layer]
        vectors = {s: _stack(outputs.get(s), dim) for s in self.cfg.streams}
        out: dict[str, np.ndarray] = {"frame_indices": plan.frame_ranges(), "timestamps": plan.time_ranges()}
        single = len(self.cfg.streams) == 1
        for stream, array in vectors.items():
            out[name if single else f"{name}_{stream}"] = array.astype(dtype)
        if self.cfg.combine == "concat":
            out[name] = np.concatenate([vectors["rgb"], vectors["flow"]], axis=1).astype(dtype)
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
            out[key] = (np.concatenate(maps) if maps else np.zeros((0, *shape), np.float32)).astype(dtype)
            out[f"{key}_window_indices"] = windows.astype(np.int64)


def _stack(parts: list[np.ndarray] | None, dim: int) -> np.ndarray:
    if parts:
        return np.concatenate(parts).astype(np.float32)
    return np.zeros((0, dim), np.float32)


def _frame_geometry(spec: Any) -> Resize:
    """Resize every decoded frame once to the model's working size (its preprocessing then only crops)."""
    if spec.model_cls.__name__ == "C3D":
        return Resize(size=(171, 128))
    return Resize(short_side=round(spec.input_size * 256 / 224))


@dataclass
class FeaturesPipeline:
    """The runner's view of `flowkit features`."""

    cfg: FeaturesConfig
    out_dir: Path
    command: str = "features"

    def output_config(self) -> dict[str, Any]:
        """See Pipeline.output_config."""
        return self.cfg.output_config()

    @property
    def name(self) -> str:
        """Prefix of the shard files."""
        return self.cfg.shard_name or self.cfg.model

    def make_units(self, items: Sequence[VideoItem]) -> list[Unit]:
        """Consecutive videos grouped into shards named by position (one unit per video for npy)."""
        if self.cfg.format == "npy":
            return [Unit(item.video_id, k, (item,)) for k, item in enumerate(items)]
        per = self.cfg.videos_per_shard
        count = max(1, math.ceil(len(items) / per))
        return [
            Unit(hdf5.shard_filename(self.name, s, count), s, tuple(items[s * per : (s + 1) * per]))
            for s in range(count)
            if items[s * per : (s + 1) * per]
        ]

    def is_done(self, unit: Unit, manifest: Manifest) -> bool:
        """Done record without failures and a shard (or npy files) that verifies."""
        record = manifest.read_done(unit.uid)
        if record is None or record.get("failed"):
            return False
        if self.cfg.format == "npy":
            return all((self.out_dir / f).is_file() for f in record.get("files", []))
        try:
            hdf5.verify_shard(self.out_dir / unit.uid, expected=record["videos"])
        except (FlowkitError, OSError, KeyError):
            return False
        return True

    def _features(self) -> VideoFeatures:
        cfg = self.cfg
        device = current_device(cfg.device)
        model_kwargs = {"mode": cfg.c3d_mode} if cfg.model.startswith("c3d") else {"compat": cfg.i3d_compat}
        weights = {s: cfg.weights_for(s) for s in cfg.streams}
        key = (json.dumps(cfg.output_config(), sort_keys=True, default=str), device)
        extractor = extractor_for(
            key, lambda: Extractor(cfg.model, cfg.streams, weights, model_kwargs, device, cfg.amp)
        )
        return VideoFeatures(cfg, extractor)

    def _file_attrs(self, features: VideoFeatures) -> dict[str, Any]:
        attrs: dict[str, Any] = {
            "flowkit_version": flowkit.__version__,
            "config": json.dumps(self.cfg.output_config(), sort_keys=True, default=str),
            "model": self.cfg.model,
            "layer": features.layer,
            "random_weights": int(self.cfg.random_weights),
        }
        if self.cfg.random_weights:
            attrs["WARNING"] = "RANDOM WEIGHTS: these features are meaningless (smoke test / benchmark only)"
        for stream, loaded in features.extractor.streams.items():
            attrs[f"checkpoint_sha1_{stream}"] = loaded.sha1 or "none"
            attrs[f"checkpoint_name_{stream}"] = loaded.known_name or "unknown"
        return attrs

    def process(self, unit: Unit, manifest: Manifest) -> UnitResult:
        """Compute one shard (or npy video), reusing finished videos of a previous attempt."""
        previous = manifest.read_done(unit.uid)
        manifest.clear_done(unit.uid)
        features = self._features()
        if self.cfg.format == "npy":
            return self._process_npy(unit, manifest, features)
        return self._process_shard(unit, manifest, features, previous)

    def _process_shard(
        self, unit: Unit, manifest: Manifest, features: VideoFeatures, previous: dict[str, Any] | None
    ) -> UnitResult:
        final = self.out_dir / unit.uid
        reusable = set(previous.get("videos", [])) if previous and final.is_file() else set()
        result = UnitResult(unit.uid, "done")
        done: list[str] = []
        old = final.with_name(final.name + ".prev")
        old.unlink(missing_ok=True)
        if reusable:
            final.replace(old)
        try:
            with hdf5.ShardWriter(final, self._file_attrs(features)) as writer:
                for item in unit.items:
                    if item.video_id in reusable:
                        writer.copy_video(old, item.video_id)
                        done.append(item.video_id)
                    elif self._add(writer, item, features, result):
                        done.append(item.video_id)
        except BaseException:
            if reusable and old.is_file() and not final.exists():
                # Put the previous shard back so its finished videos stay reusable next time.
                old.replace(final)
                manifest.write_done(unit.uid, previous or {})
            raise
        old.unlink(missing_ok=True)
        failed = [i.video_id for i in unit.items if i.video_id not in done]
        manifest.write_done(unit.uid, {"shard": unit.uid, "videos": done, "failed": failed})
        return result

    def _add(
        self, writer: hdf5.ShardWriter, item: VideoItem, features: VideoFeatures, result: UnitResult
    ) -> bool:
        if item.error:
            result.failures.append((str(item.path), item.error))
            return False
        try:
            datasets, attrs = features.compute(item)
        except Exception as exc:  # noqa: BLE001 - one video's failure must not lose the shard
            result.failures.append((str(item.path), one_line(exc, str(item.path))))
            return False
        # A write error (disk full) is the shard's, not the video's: after a failed HDF5 write the
        # file cannot be trusted, so it propagates and the shard is dropped instead of committed.
        writer.add_video(item.video_id, datasets, attrs)
        result.frames += int(attrs["num_frames"])
        if "note" in attrs:
            result.notes.append((str(item.path), attrs["note"]))
        return True

    def _process_npy(self, unit: Unit, manifest: Manifest, features: VideoFeatures) -> UnitResult:
        item = unit.items[0]
        if item.error:
            return UnitResult(unit.uid, "failed", failures=[(str(item.path), item.error)])
        datasets, attrs = features.compute(item)
        files = []
        for key, array in datasets.items():
            if key.startswith(self.cfg.dataset_name) and not key.endswith("window_indices"):
                suffix = key[len(self.cfg.dataset_name) :]
                files.append(hdf5.write_npy_features(self.out_dir, item.video_id + suffix, array))
        sidecar = self.out_dir / f"{item.video_id}.json"
        meta = {
            **attrs,
            "frame_indices": datasets["frame_indices"].tolist(),
            "timestamps": datasets["timestamps"].tolist(),
        }
        atomic_write_text(sidecar, json.dumps(meta))
        rel = [str(p.relative_to(self.out_dir)) for p in [*files, sidecar]]
        manifest.write_done(unit.uid, {"video_id": item.video_id, "files": rel, "failed": []})
        notes = [(str(item.path), attrs["note"])] if "note" in attrs else []
        return UnitResult(unit.uid, "done", frames=int(attrs["num_frames"]), notes=notes)

    def finalize(self, manifest: Manifest) -> None:
        """Write index.json (video_id -> shard) from every done record."""
        if self.cfg.format != "hdf5":
            return
        mapping = {vid: r["shard"] for r in manifest.all_done() if "shard" in r for vid in r["videos"]}
        hdf5.write_index(self.out_dir, mapping)
