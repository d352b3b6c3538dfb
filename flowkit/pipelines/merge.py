"""`flowkit merge`: combine what the shards of one job wrote."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from flowkit.errors import ConfigError, ManifestError
from flowkit.jobs.manifest import Manifest
from flowkit.outputs.lists import flow_job_list_kinds, write_job_lists

log = logging.getLogger("flowkit")


def merge_job(
    out_dir: Path,
    virtual: bool = False,
    dest: Path | None = None,
    classes: str | Path | None = None,
    split_files: Sequence[str | Path] = (),
) -> list[Path]:
    """Features: merge HDF5 shards (copy or virtual); frames/flow: rebuild the annotation lists."""
    manifest = Manifest(out_dir)
    job = manifest.read_job()
    if job is None:
        raise ManifestError(f"{out_dir}: no flowkit job here (no .flowkit/job.json)")
    if job["command"] == "features":
        if classes or split_files:
            raise ConfigError("--classes and --split-file apply to frames/flow outputs, not features")
        from flowkit.outputs.hdf5 import merge_shards, write_index
        from flowkit.pipelines.features import shard_index

        mapping = shard_index(out_dir)
        if mapping:
            # Shards of a cluster job finish in any order, each writing index.json from what it saw
            # assembled; rebuild it from every shard record so the merge sees all of them.
            write_index(out_dir, mapping)
        return [merge_shards(out_dir, dest or out_dir / "merged.h5", virtual=virtual)]
    return rebuild_lists(manifest, job, classes, split_files)


def rebuild_lists(
    manifest: Manifest, job: dict, classes: str | Path | None = None, split_files: Sequence[str | Path] = ()
) -> list[Path]:
    """The annotation lists of a frames/flow job from every done record (and per split); `classes`
    overrides the job's class map."""
    config = job.get("config", {})
    if job["command"] == "extract-flow":
        kinds = flow_job_list_kinds(config)
    else:
        kinds = ["rgb"] if config.get("format", "jpg") == "jpg" else []
    written, failures = write_job_lists(manifest, kinds, classes or config.get("classes"), split_files)
    for vid, cause in failures:
        log.warning("%s: %s", vid, cause)
    return written
