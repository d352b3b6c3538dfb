"""`flowkit sample-frames`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from flowkit.choices import FRAME_FORMATS, LAYOUT_NAMES, SAMPLER_DEFAULTS, SAMPLERS
from flowkit.cli.common import (
    batch_options,
    decode_options,
    drop_unset,
    finish,
    handle_errors,
    pop_decode_options,
    run_options,
    setup_logging,
)


def _default(option: str) -> str:
    """'  [default: 8]' for a sampler option, from the one table of sampler defaults."""
    value = next(opts[option] for opts in SAMPLER_DEFAULTS.values() if option in opts)
    return "" if value is None else f"  [default: {value}]"


_D = SAMPLER_DEFAULTS
SAMPLER_HELP = (
    f"all (every --step-th frame), fps (by timestamps, {_D['fps']['fps']:g}/s), uniform "
    f"({_D['uniform']['num_frames']} frames), tsn ({_D['tsn']['segments']} segments), dense "
    f"({_D['dense']['clip_len']}-frame clips every {_D['dense']['stride']}), slowfast (alpha "
    f"{_D['slowfast']['alpha']}, tau {_D['slowfast']['tau']}, {_D['slowfast']['num_slow']} slow frames). "
    "An option of another sampler is an error.  [default: all]"
)

CLASSES_HELP = (
    "Class map for the lists' labels: classInd.txt lines '<index> <name>' (numbered from 1 or 0) or "
    "one name per line; labels are 0-based.  [default: the input's class folders, sorted]"
)


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
@click.option("--sampler", type=click.Choice(SAMPLERS), default=None, help=SAMPLER_HELP)
@click.option("--step", type=click.IntRange(min=1), default=None,
              help="all: keep every K-th frame." + _default("step"))
@click.option("--fps", type=click.FloatRange(min=0, min_open=True), default=None,
              help="fps: target rate by stream timestamps." + _default("fps"))
@click.option("--max-frames", type=click.IntRange(min=1), default=None,
              help="fps: at most this many frames, spread over the whole video (e.g. 129).  [default: none]")
@click.option("--num-frames", type=click.IntRange(min=1), default=None,
              help="uniform: N frames." + _default("num_frames"))
@click.option("--segments", type=click.IntRange(min=1), default=None,
              help="tsn: K segments." + _default("segments"))
@click.option("--tsn-mode", type=click.Choice(["test", "train"]), default=None,
              help="tsn: segment centres (test) or a seeded random frame per segment (train)."
              + _default("tsn_mode"))
@click.option("--seed", type=int, default=None, help="tsn train mode: random seed." + _default("seed"))
@click.option("--clip-len", type=click.IntRange(min=1), default=None,
              help="dense: frames per clip." + _default("clip_len"))
@click.option("--stride", type=click.IntRange(min=1), default=None,
              help="dense: frames between clip starts." + _default("stride"))
@click.option("--frame-step", type=click.IntRange(min=1), default=None,
              help="dense: step inside a clip." + _default("frame_step"))
@click.option("--last", type=click.Choice(["drop", "pad"]), default=None,
              help="dense: drop or pad the partial last clip." + _default("last"))
@click.option("--alpha", type=click.IntRange(min=1), default=None,
              help="slowfast: fast/slow frame ratio." + _default("alpha"))
@click.option("--tau", type=click.IntRange(min=1), default=None,
              help="slowfast: slow pathway stride." + _default("tau"))
@click.option("--num-slow", type=click.IntRange(min=1), default=None,
              help="slowfast: T slow frames." + _default("num_slow"))
@geometry_options
@click.option("--layout", type=click.Choice(LAYOUT_NAMES), default=None,
              help="File naming preset (mmaction2: img_00001.jpg = frame 0).  [default: mmaction2]")
@click.option("--format", "fmt", type=click.Choice(FRAME_FORMATS), default=None,
              help="jpg folder per video, or one npz (RGB frames + indices + timestamps).  [default: jpg]")
@click.option("--jpeg-quality", type=click.IntRange(1, 100), default=None, help="[default: 95]")
@click.option("--classes", type=click.Path(exists=True, dir_okay=False, resolve_path=True), default=None,
              help=CLASSES_HELP)
@decode_options
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
    decode = pop_decode_options(sampler)
    cfg = FramesConfig(**drop_unset(format=fmt, **sampler), **make_resize_kwargs(short_side, size),
                       decode=decode)
    opts = run_options(jobs, backend, scheduler, shard, overwrite, retry_failed, quiet)
    items = discover(input_path, root, input_frames=decode.input_frames)
    finish(run_pipeline(FramesPipeline(cfg, out_dir), items, out_dir, opts))
