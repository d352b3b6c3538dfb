"""Typed errors raised by the library; the CLI turns each into one clear line."""

from __future__ import annotations

from pathlib import Path


class FlowkitError(Exception):
    """Base class of every error flowkit raises on purpose."""


class ConfigError(FlowkitError):
    """An option or combination of options that cannot work."""


class VideoError(FlowkitError):
    """A video that cannot be opened or decoded; names the file and the cause."""

    def __init__(self, path: str | Path, cause: str) -> None:
        self.path = str(path)
        self.cause = cause
        super().__init__(f"{self.path}: {cause}")


class CheckpointError(FlowkitError):
    """A weights file that is missing, truncated or of an unknown layout."""

    def __init__(self, path: str | Path, cause: str) -> None:
        self.path = str(path)
        self.cause = cause
        super().__init__(f"{self.path}: {cause}")


class EngineUnavailableError(ConfigError):
    """A flow engine or device that this installation cannot provide (a config error: exit code 2)."""


class ManifestError(FlowkitError):
    """An output folder whose job record conflicts with the requested run."""


class OutputError(FlowkitError):
    """An output folder that cannot be written: read-only, full, or not ours to replace."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's preemption, `kill`): stop cleanly like Ctrl-C, releasing the lock."""


def os_error_text(exc: OSError) -> str:
    """One line for an OSError: the path(s) it names, then the system's cause."""
    cause = exc.strerror or str(exc) or type(exc).__name__
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    return f"{' -> '.join(paths)}: {cause}" if paths else cause
