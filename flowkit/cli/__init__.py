"""The `flowkit` command line: each subcommand parses options, builds a config, makes one library call."""

from __future__ import annotations

import click

import flowkit
from flowkit.cli.admin import doctor, inspect_cmd, merge, status
from flowkit.cli.features import features
from flowkit.cli.flow import extract_flow, visualize
from flowkit.cli.frames import sample_frames


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(flowkit.__version__, prog_name="flowkit")
def main() -> None:
    """flowkit: TV-L1 optical flow, frame sampling and C3D/I3D features for video datasets.

    \b
    Example:
      flowkit extract-flow examples/videos -o out/flow --jobs 2
    """


for _command in (extract_flow, sample_frames, features, visualize, status, merge, inspect_cmd, doctor):
    main.add_command(_command)
