"""`flowkit status`, `merge`, `inspect` and `doctor`: look at and combine what runs produced."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from flowkit.cli.common import given_threads, handle_errors, threads_option


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
@click.option(
    "--classes",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Frames/flow: label the lists with this class map (see extract-flow --classes).",
)
@click.option(
    "--split-file",
    "split_files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Frames/flow: also write list_<kind>_<split>.txt per split of this file (repeatable): UCF101/HMDB51 "
    "trainlist01.txt / testlist01.txt, HMDB51 <class>_test_split1.txt, or a Kinetics CSV "
    "(label,youtube_id,time_start,time_end,split).",
)
@handle_errors
def merge(
    out_dir: Path, virtual: bool, dest: Path | None, classes: str | None, split_files: tuple[str, ...]
) -> None:
    """Combine the outputs of all shards of a job: one HDF5 (features), or the annotation lists.

    \b
    Examples:
      flowkit merge out/c3d                  # copy every shard into out/c3d/merged.h5
      flowkit merge out/c3d --virtual        # a virtual dataset (checks every shard first)
      flowkit merge out/flow                 # rebuild list_rgb.txt / list_flow.txt from all shards
      flowkit merge out/flow --classes classInd.txt   # relabel them with a published class map
      flowkit merge out/flow --classes classInd.txt --split-file trainlist01.txt --split-file testlist01.txt
    """
    from flowkit.pipelines.merge import merge_job

    for path in merge_job(out_dir, virtual=virtual, dest=dest, classes=classes, split_files=split_files):
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
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Show the thread split for this many workers.")
@threads_option
@handle_errors
def doctor(jobs: int) -> None:
    """Print versions, the thread budget and why, CUDA devices, OpenCV capabilities and a decode check.

    \b
    Examples:
      flowkit doctor
      flowkit doctor --jobs 4        # how the cores would be split across 4 workers
    """
    from flowkit.doctor import report

    rows = report(given_threads(), jobs)
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        click.echo(f"{name.ljust(width)}  {value}")
