"""`flowkit sample-frames`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from flowkit.cli.common import (
    batch_options,
    drop_unset,
    finish,
    handle_errors,
    run_options,
    setup_logging,
)
from flowkit.outputs.rawframes import LAYOUTS
from flowkit.pipelines.frames import FORMATS, SAMPLERS


def geometry_options(func: Any) -> Any:
    """--short-side / --size, shared by every command that resizes frames."""
    func = click.option("--size", default=None, help="Resize to exactly WxH (e.g. 340x256).")(func)
    return click.option("--short-side", type=click.IntRange(min=1), default=None,
                        help="Resize so the short side is S pixels, keeping the aspect ratio.")(func)


def make_resize_kwargs(short_side: int | None, size: str | None) -> dict[str, Any]:
    """Parse the geometry options into config fields."""
    from flowkit.video import parse_size

    return drop_unset(short_side=short_side, size=parse_size(size) if size else None)


@click.command("sample-frames")
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@batch_options
@click.option("--sampler", type=click.Choice(SAMPLERS), default=None,
              help="all (every --step-th frame), fps, uniform, tsn, dense clips, slowfast.  [default: all]")
@click.option("--step", type=click.IntRange(min=1), default=None, help="all: keep every K-th frame.")
@click.option("--fps", type=click.FloatRange(min=0, min_open=True), default=None,
              help="fps: target rate by stream timestamps.  [default: 3]")
@click.option("--max-frames", type=click.IntRange(min=1), default=None,
              help="fps: at most this many frames, spread over the whole video (e.g. 129).")
@click.option("--num-frames", type=click.IntRange(min=1), default=None, help="uniform: N frames.")
@click.option("--segments", type=click.IntRange(min=1), default=None, help="tsn: K segments.")
@click.option("--tsn-mode", type=click.Choice(["test", "train"]), default=None,
              help="tsn: segment centres (test) or a seeded random frame per segment (train).")
@click.option("--seed", type=int, default=None, help="tsn train mode: random seed.")
@click.option("--clip-len", type=click.IntRange(min=1), default=None, help="dense: frames per clip.")
@click.option("--stride", type=click.IntRange(min=1), default=None, help="dense: frames between clip starts.")
@click.option("--frame-step", type=click.IntRange(min=1), default=None, help="dense: step inside a clip.")
@click.option("--last", type=click.Choice(["drop", "pad"]), default=None,
              help="dense: drop or pad the partial last clip.")
@click.option("--alpha", type=click.IntRange(min=1), default=None, help="slowfast: fast/slow frame ratio.")
@click.option("--tau", type=click.IntRange(min=1), default=None, help="slowfast: slow pathway stride.")
@click.option("--num-slow", type=click.IntRange(min=1), default=None, help="slowfast: T slow frames.")
@geometry_options
@click.option("--layout", type=click.Choice(list(LAYOUTS)), default=None,
              help="File naming preset (mmaction2: img_00001.jpg = frame 0).  [default: mmaction2]")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
              help="jpg folder per video, or one npz (RGB frames + indices + timestamps).  [default: jpg]")
@click.option("--jpeg-quality", type=click.IntRange(1, 100), default=None, help="[default: 95]")
@handle_errors
def sample_frames(input_path: Path, out_dir: Path, jobs: int, backend: str, scheduler: str | None,
                  root: Path | None, shard: str | None, overwrite: bool, retry_failed: bool, quiet: bool,
                  short_side: int | None, size: str | None, fmt: str | None, **sampler: Any) -> None:
    """Sample frames from every video and write them with their indices and timestamps.

    INPUT is a folder (searched recursively for videos), one video, or a text file listing paths.

    \b
    Examples:
      flowkit sample-frames examples/videos -o out/frames --sampler fps --fps 3 --max-frames 129
      flowkit sample-frames videos/ -o out/tsn --sampler tsn --segments 8 --short-side 256 -j 4
    """
    from flowkit.inputs import discover
    from flowkit.jobs.runner import run_pipeline
    from flowkit.pipelines.frames import FramesConfig, FramesPipeline

    setup_logging(quiet)
    cfg = FramesConfig(**drop_unset(format=fmt, **sampler), **make_resize_kwargs(short_side, size))
    opts = run_options(jobs, backend, scheduler, shard, overwrite, retry_failed, quiet)
    finish(run_pipeline(FramesPipeline(cfg, out_dir), discover(input_path, root), out_dir, opts))
