"""`flowkit features`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from flowkit.choices import FEATURE_COMBINES as COMBINES
from flowkit.choices import FEATURE_STREAMS as STREAMS
from flowkit.choices import FLOW_ALGORITHMS
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


@click.command("features")
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@batch_options
@click.option("-m", "--model", default=None, help="c3d (fc6, 4096-d) or i3d (1024-d).  [default: c3d]")
@click.option(
    "--weights",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Local checkpoint (DavideA c3d.pickle; piergiaj rgb/flow_imagenet.pt; video_features "
    "model_rgb/flow.pth). Nothing is downloaded.",
)
@click.option(
    "--flow-weights",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="I3D flow checkpoint when --stream both.",
)
@click.option(
    "--random-weights",
    is_flag=True,
    default=None,
    help="Random weights: ONLY for smoke tests and benchmarks; marked loudly in the output.",
)
@click.option("--layer", default=None, help="c3d: fc6, fc7, pool5; i3d: avgpool, mixed_5c, logits.")
@click.option(
    "--stream", type=click.Choice(STREAMS), default=None, help="I3D input stream(s).  [default: rgb]"
)
@click.option(
    "--combine",
    type=click.Choice(COMBINES),
    default=None,
    help="With --stream both: also store rgb+flow concatenated (RGB first) or summed.",
)
@click.option(
    "--clip-len",
    type=click.IntRange(min=1),
    default=None,
    help="Frames per window.  [default: 16 for c3d, 64 for i3d]",
)
@click.option(
    "--stride", type=click.IntRange(min=1), default=None, help="Frames between windows.  [default: clip-len]"
)
@click.option(
    "--fps",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Resample to this rate by timestamps first (I3D was trained at 25).  [default: native]",
)
@click.option("--pad-last", is_flag=True, default=None, help="Keep the partial last window (padded).")
@click.option(
    "--c3d-mode",
    type=click.Choice(["caffe", "davidea"]),
    default=None,
    help="caffe: facebook/C3D v1.0 (BGR, 171x128, Sports-1M mean, unpadded pool5); davidea: the preset of "
    "DavideA/c3d-pytorch's predict.py (pool5 padding, RGB, no mean, 112x200 resize, centre crop).",
)
@click.option(
    "--i3d-compat",
    type=click.Choice(["tf", "video_features"]),
    default=None,
    help="tf: TF-exact (BN eps 1e-3, SAME padding); video_features: that tool's network (its flow "
    "stream is RAFT flow; flowkit's is --flow-algorithm, TV-L1 by default).",
)
@click.option(
    "--mean-file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="C3D: full Sports-1M mean volume (.binaryproto or .npy) instead of per-channel means.",
)
@click.option(
    "--flow-algorithm",
    type=click.Choice(FLOW_ALGORITHMS),
    default=None,
    help="Engine computing the I3D flow stream (extract-flow's --algorithm names; auto: the faster TV-L1 "
    "here). Only when flow is computed (--stream flow|both without --flow-dir).  [default: auto]",
)
@click.option(
    "--flow-dir",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Read the I3D flow from this extract-flow output (same video ids) instead of computing it; it "
    "must have been extracted at the model's short side (i3d: --short-side 256).",
)
@click.option(
    "--flow-rescale",
    is_flag=True,
    default=None,
    help="With --flow-dir: resize flow stored at another size to the model's (u, v scaled with the frame) "
    "instead of refusing it.",
)
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default=None, help="[default: float32]")
@click.option(
    "--dataset-name",
    default=None,
    help="Dataset name per video group (e.g. c3d_features for ActivityNet readers).  [default: features]",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["hdf5", "npy"]),
    default=None,
    help="hdf5 shards + index.json, or one <video_id>.npy (+ .json) per video.  [default: hdf5]",
)
@click.option("--videos-per-shard", type=click.IntRange(min=1), default=None, help="[default: 100]")
@click.option("--shard-name", default=None, help="Shard file prefix.  [default: the model name]")
@click.option(
    "--slowfast-layout",
    type=click.IntRange(min=1),
    default=None,
    help="Also store the spatial map (I3D Mixed_5c 7x7, C3D pool5) of every K-th window.",
)
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=None, help="Clips per forward pass.  [default: 8]"
)
@click.option("--device", default=None, help="auto, cpu, cuda, cuda:1, or 'cuda:0,cuda:1' (one worker each).")
@click.option(
    "--amp",
    type=click.Choice(["none", "fp16", "bf16"]),
    default=None,
    help="Autocast precision on GPU.  [default: none]",
)
@decode_options
@handle_errors
def features(
    input_path: Path,
    out_dir: Path,
    root: Path | None,
    jobs: int,
    backend: str,
    scheduler: str | None,
    shard: str | None,
    overwrite: bool,
    retry_failed: bool,
    quiet: bool,
    fmt: str | None,
    device: str | None,
    **options: Any,
) -> None:
    """Extract C3D or I3D features per temporal window into HDF5 shards (or npy files).

    INPUT is a folder (searched recursively for videos), one video, or a text file listing paths.

    \b
    Examples:
      flowkit features videos/ -o out/c3d --model c3d --weights c3d.pickle --dataset-name c3d_features
      flowkit features videos/ -o out/i3d --model i3d --stream both --weights rgb_imagenet.pt \\
          --flow-weights flow_imagenet.pt --fps 25 --clip-len 16 --stride 16 --combine concat
      flowkit features examples/videos -o out/smoke --model c3d --random-weights
    """
    from flowkit.cli.flow import parse_devices
    from flowkit.inputs import discover
    from flowkit.jobs.runner import run_pipeline
    from flowkit.pipelines.features import FeaturesConfig, FeaturesPipeline

    setup_logging(quiet)
    engine_device, devices = parse_devices(device or "auto")
    decode = pop_decode_options(options, devices[0] if devices else engine_device)
    cfg = FeaturesConfig(**drop_unset(format=fmt, **options), device=engine_device, decode=decode)
    if cfg.random_weights:
        click.echo(
            "WARNING: --random-weights: the features are meaningless (smoke test / benchmark only)", err=True
        )
    opts = run_options(
        max(jobs, len(devices)), backend, scheduler, shard, overwrite, retry_failed, quiet, devices
    )
    items = discover(input_path, root, input_frames=decode.input_frames)
    finish(run_pipeline(FeaturesPipeline(cfg, out_dir), items, out_dir, opts))
