"""`flowkit extract-flow` and `flowkit visualize`."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import click

from flowkit.choices import FLOW_ALGORITHMS, FLOW_FORMATS, LAYOUT_NAMES
from flowkit.cli.common import (
    batch_options,
    decode_options,
    drop_unset,
    finish,
    handle_errors,
    pop_decode_options,
    run_options,
    setup_logging,
    thread_budget,
    threads_option,
)
from flowkit.cli.frames import CLASSES_HELP, geometry_options, make_resize_kwargs


def _tvl1_fields() -> list[dataclasses.Field]:
    from flowkit.flow.tvl1_params import TVL1Params

    return list(dataclasses.fields(TVL1Params))


def _option_type(f: dataclasses.Field, annotation: Any) -> click.ParamType:
    meta = f.metadata
    if "choices" in meta:
        return click.Choice([str(c) for c in meta["choices"]])
    bounds = {k: meta[k] for k in ("min", "max", "min_open", "max_open") if k in meta}
    if annotation is int:
        return click.IntRange(**{k: v for k, v in bounds.items() if k in ("min", "max")})
    return click.FloatRange(**bounds)


def tvl1_options() -> list[click.Option]:
    """One CLI option per TVL1Params field (built from the dataclass: one source of defaults/bounds)."""
    from flowkit.flow.tvl1_params import TVL1Params

    hints = typing.get_type_hints(TVL1Params)
    options = []
    for f in _tvl1_fields():
        flag = "--" + f.name.rstrip("_").replace("_", "-")
        help_text = f"TV-L1: {f.metadata.get('help', '')}  [default: {f.default}]"
        options.append(click.Option([flag, f.name], type=_option_type(f, hints[f.name]), default=None,
                                    help=help_text))
    return options


class TVL1Command(click.Command):
    """A command whose TV-L1 options are added when first parsed or shown: TVL1Params lives beside the
    torch engine, and importing the CLI (flowkit --help, status, merge, inspect) must not load torch."""

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        """The declared options plus the TV-L1 ones (built once)."""
        if not getattr(self, "_tvl1_added", False):
            self._tvl1_added = True
            self.params.extend(tvl1_options())
        return super().get_params(ctx)


def tvl1_params(values: dict[str, Any]) -> dict[str, Any]:
    """The TV-L1 parameters the user set, converted to the dataclass field types."""
    out = {}
    for f in _tvl1_fields():
        value = values.pop(f.name, None)
        if value is not None:
            out[f.name] = type(f.default)(value) if not isinstance(f.default, str) else value
    return out


def raft_params(values: dict[str, Any]) -> dict[str, Any]:
    """RAFT engine parameters from --raft-weights/--raft-model/--raft-iterations (popped from values)."""
    names = {"raft_weights": "weights", "raft_model": "model", "raft_iterations": "iterations"}
    params = {key: values.pop(opt, None) for opt, key in names.items()}
    return {k: (str(v) if k == "weights" else v) for k, v in params.items() if v is not None}


def parse_devices(text: str) -> tuple[str, tuple[str, ...]]:
    """'cuda:0,cuda:1' -> one worker per device; a single device is just the engine's device."""
    from flowkit.flow import resolve_device

    devices = tuple(d.strip() for d in text.split(",") if d.strip())
    for device in devices:
        resolve_device(device)  # a missing GPU is one clear error now, not one failure per video
    return (devices[0], ()) if len(devices) == 1 else ("auto", devices)


@click.command("extract-flow", cls=TVL1Command)
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@batch_options
@click.option("-a", "--algorithm", type=click.Choice(FLOW_ALGORITHMS), default=None,
              help="Flow engine: tvl1 (flowkit's batched PyTorch TV-L1), tvl1-opencv (OpenCV's CPU TV-L1), "
                   "farneback, dis, tvl1-cuda-opencv (OpenCV's CUDA TV-L1, denseflow's; only with an OpenCV "
                   "built with CUDA), raft (torchvision RAFT, needs --raft-weights); auto picks the faster "
                   "TV-L1 for the device.  [default: auto]")
@click.option("--device", default="auto", show_default=True,
              help="auto, cpu, cuda, cuda:1, or a list 'cuda:0,cuda:1' (one worker per device).")
@click.option("--bound", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Clip flow to +-bound px before 8-bit quantization.  [default: 20]")
@click.option("--step", type=click.IntRange(min=1), default=None,
              help="Flow between frame i and i+K.  [default: 1]")
@click.option("--rgb/--no-rgb", default=None,
              help="Also write the RGB frames (same decode pass).  [default: rgb]")
@geometry_options
@click.option("--layout", type=click.Choice(LAYOUT_NAMES), default=None,
              help="Naming preset: mmaction2 (1-based, N RGB), denseflow (0-based), tsn (RGB = 2nd frame "
                   "of each pair).  [default: mmaction2]")
@click.option("--format", "fmt", type=click.Choice(FLOW_FORMATS), default=None,
              help="jpg/png: 8-bit flow_x/flow_y images; h5/npy: lossless float16 per video.  [default: jpg]")
@click.option("--jpeg-quality", type=click.IntRange(1, 100), default=None, help="[default: 95]")
@click.option("--classes", type=click.Path(exists=True, dir_okay=False, resolve_path=True),
              default=None, help=CLASSES_HELP)
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Frame pairs per engine call.  [default: 32 on GPU; on CPU 8, or 2 per compute "
                   "thread if more]")
@click.option("--jpeg-encoder", type=click.Choice(["auto", "opencv", "torchvision"]), default=None,
              help="JPEG encoder: opencv (libjpeg-turbo), torchvision (nvJPEG on CUDA); auto = torchvision "
                   "on a CUDA device, else opencv. Recorded in the job.  [default: auto]")
@decode_options
@click.option("--raft-weights", type=click.Path(exists=True, dir_okay=False), default=None,
              help="RAFT: local torchvision raft_large/raft_small weights "
                   "(e.g. raft_large_C_T_SKHT_V2-ff5fadd5.pth).")
@click.option("--raft-model", type=click.Choice(["large", "small"]), default=None,
              help="RAFT: [default: large]")
@click.option("--raft-iterations", type=click.IntRange(min=1), default=None,
              help="RAFT: refinement iterations.  [default: 20, as video_features]")
@handle_errors
def extract_flow(input_path: Path, out_dir: Path, jobs: int, backend: str, scheduler: str | None,
                 shard: str | None, overwrite: bool, retry_failed: bool, quiet: bool, device: str,
                 root: Path | None, short_side: int | None, size: str | None, fmt: str | None,
                 **options: Any) -> None:
    """Compute dense optical flow (TV-L1 by default) and RGB frames for every video.

    INPUT is a folder (searched recursively for videos), one video, or a text file listing paths.
    Output: OUT/<video_id>/ with img_*, flow_x_*, flow_y_* files, plus list_rgb.txt / list_flow.txt.

    \b
    Examples:
      flowkit extract-flow examples/videos -o out/flow
      flowkit extract-flow videos/ -o out/ --short-side 256 --device cuda:0,cuda:1 --batch-size 32
      flowkit extract-flow videos/ -o out/ --layout tsn --size 340x256 --shard auto   # Slurm array
    """
    from flowkit.inputs import discover
    from flowkit.jobs.runner import run_pipeline
    from flowkit.pipelines.flow import FlowConfig, FlowPipeline

    setup_logging(quiet)
    engine_device, devices = parse_devices(device)
    engine_params = {**tvl1_params(options), **raft_params(options)}
    decode = pop_decode_options(options, devices[0] if devices else engine_device)
    cfg = FlowConfig(**drop_unset(format=fmt, **options), **make_resize_kwargs(short_side, size),
                     engine_params=engine_params, device=engine_device, decode=decode)
    opts = run_options(max(jobs, len(devices)), backend, scheduler, shard, overwrite, retry_failed, quiet,
                       devices)
    items = discover(input_path, root, input_frames=decode.input_frames)
    finish(run_pipeline(FlowPipeline(cfg, out_dir), items, out_dir, opts))


@click.command("visualize")
@click.argument("video_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("-o", "--output", "dest", type=click.Path(path_type=Path), required=True,
              help="A folder (PNG per flow) or a file ending in .mp4/.avi (a video).")
@click.option("--bound", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Bound the flow images were quantized with.  [default: read from the extract-flow job "
                   "record above the folder; 20 without one]")
@click.option("--max-flow", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Flow magnitude (px) shown at full colour in every frame.  [default: per frame, its 99th "
                   "percentile, at least 1 px]")
@click.option("--fps", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True)
@threads_option
@handle_errors
def visualize(video_dir: Path, dest: Path, bound: float | None, max_flow: float | None, fps: float) -> None:
    """Render a video's flow (from flow_x/flow_y images or flow.h5/flow.npy) as colour-wheel images
    next to its RGB frames.

    \b
    Examples:
      flowkit visualize out/flow/pan_right/clip_a -o viz/clip_a          # PNGs
      flowkit visualize out/flow/pan_right/clip_a -o viz/clip_a.mp4      # a video
    """
    from flowkit.flow.visualize import render_folder

    thread_budget()
    written = render_folder(video_dir, dest, bound=bound, max_flow=max_flow, fps=fps)
    click.echo(f"wrote {written}")
