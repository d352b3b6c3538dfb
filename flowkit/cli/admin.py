"""`flowkit status`, `merge`, `inspect` and `doctor`: look at and combine what runs produced."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from flowkit.cli.common import handle_errors


@click.command("status")
@click.argument("out_dir", metavar="OUT", type=click.Path(path_type=Path, exists=True, file_okay=False))
@handle_errors
def status(out_dir: Path) -> None:
    """Show a job's progress per shard, running vs interrupted units (frames done), failures, throughput.

    A unit is running while its shard's lock holder is alive, interrupted when that process is gone.

    \b
    Exit codes:
      0  every unit done
      1  some unit failed (its last attempt)
      2  no flowkit job in OUT (or an unreadable manifest)
      3  incomplete and no run is writing: rerun the same command to resume
      4  a run is still writing this output
    \b
    Example:
      flowkit status out/flow
    """
    from flowkit.jobs.status import read_status

    report = read_status(out_dir)
    for line in report.lines():
        click.echo(line)
    sys.exit(report.exit_code)


@click.command("merge")
@click.argument("out_dir", metavar="OUT", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option(
    "--virtual", is_flag=True, help="Features: a virtual dataset over the shards instead of a copy."
)
@click.option(
    "--dest",
    type=click.Path(path_type=Path),
    default=None,
    help="Features: merged file (default OUT/merged.h5).",
)
@handle_errors
def merge(out_dir: Path, virtual: bool, dest: Path | None) -> None:
    """Combine the outputs of all shards of a job: one HDF5 (features), or the annotation lists.

    \b
    Examples:
      flowkit merge out/c3d                  # copy every shard into out/c3d/merged.h5
      flowkit merge out/c3d --virtual        # a virtual dataset (checks every shard first)
      flowkit merge out/flow                 # rebuild list_rgb.txt / list_flow.txt from all shards
    """
    from flowkit.pipelines.merge import merge_job

    for path in merge_job(out_dir, virtual=virtual, dest=dest):
        click.echo(f"wrote {path}")


@click.command("inspect")
@click.argument("path", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--max-videos", type=click.IntRange(min=1), default=20, show_default=True)
@handle_errors
def inspect_cmd(path: Path, max_videos: int) -> None:
    """Describe a feature HDF5 file: attributes, videos, dataset shapes and dtypes.

    \b
    Example:
      flowkit inspect out/c3d/c3d-00000-of-00001.h5
    """
    from flowkit.outputs.hdf5 import describe

    click.echo(describe(path, max_videos=max_videos))


@click.command("doctor")
def doctor() -> None:
    """Print versions, CUDA devices, OpenCV capabilities and a decode check of a generated clip.

    \b
    Example:
      flowkit doctor
    """
    from flowkit.doctor import report

    rows = report()
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        click.echo(f"{name.ljust(width)}  {value}")
