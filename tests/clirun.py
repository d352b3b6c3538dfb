"""Run flowkit's CLI in process (Click's runner), as every end-to-end test does."""

from __future__ import annotations

from click.testing import CliRunner, Result

from flowkit.cli import main


def run(*args: object, env: dict[str, str | None] | None = None) -> Result:
    """Invoke `flowkit ARGS`; batch commands get --quiet (status/merge have no such option)."""
    quiet = ["--quiet"] if str(args[0]) not in ("status", "merge") else []
    return CliRunner(env=env).invoke(main, [*map(str, args), *quiet])
