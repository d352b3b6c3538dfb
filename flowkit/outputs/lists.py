"""Annotation lists for mmaction2/TSN: one line per video, `<video_id> <count> <label>`, RGB and flow.

Labels are 0-based, as mmaction2's ``build_file_list.py`` writes them. They come from a class map: by
default every class folder of the input (all of them, sorted, whether or not their videos succeeded),
so labels are stable across reruns and shards; or a published map given with ``--classes FILE``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from flowkit.atomic import atomic_write_text
from flowkit.errors import ConfigError

log = logging.getLogger("flowkit")


def class_of(video_id: str) -> str | None:
    """The class folder of a video id ('class/video' -> 'class'); None for a video at the root."""
    parts = video_id.split("/")
    return parts[-2] if len(parts) > 1 else None


def class_labels(video_ids: Iterable[str]) -> dict[str, int]:
    """Label index per class folder name, in sorted order (the usual UCF101/Kinetics convention)."""
    classes = sorted({c for c in map(class_of, video_ids) if c is not None})
    return {name: k for k, name in enumerate(classes)}


def read_class_map(path: str | Path) -> dict[str, int]:
    """A published class map -> {class name: 0-based label}.

    Two forms: numbered lines ``<index> <name>`` (UCF101/HMDB51 ``classInd.txt``; numbered from 1,
    which becomes label 0 as mmaction2 does, or from 0, kept), or one class name per line (label =
    0-based line number). Blank lines and ``#`` comments are skipped.
    """
    path = Path(path)
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the class map ({exc.strerror or exc})") from exc
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise ConfigError(f"{path}: the class map is empty")
    numbered = [re.fullmatch(r"(\d+)[\s,]+(\S.*)", ln) for ln in lines]
    if all(numbered):
        pairs = [(int(m[1]), m[2].strip()) for m in numbered if m]
        base = min(k for k, _ in pairs)
        if base not in (0, 1):
            raise ConfigError(f"{path}: class indices must start at 0 or 1, got {base}")
        mapping = {name: k - base for k, name in pairs}
    else:
        mapping = {name: k for k, name in enumerate(lines)}
    if len(mapping) != len(lines) or len(set(mapping.values())) != len(mapping):
        raise ConfigError(f"{path}: a class name or index appears twice")
    return mapping


def label_map(all_video_ids: Iterable[str], classes_file: str | Path | None = None) -> dict[str, int]:
    """The class map of a job: the given file, or every class folder of the input, sorted."""
    return read_class_map(classes_file) if classes_file else class_labels(all_video_ids)


def write_lists(
    out_dir: Path,
    records: Iterable[Mapping[str, Any]],
    kinds: Iterable[str],
    labels: Mapping[str, int] | None = None,
    classes_file: str | Path | None = None,
    split: str | None = None,
) -> tuple[list[Path], list[tuple[str, str]]]:
    """Write ``list_<kind>.txt`` (``list_<kind>_<split>.txt`` for a split) per kind, plus classes.txt.

    ``labels`` maps class names to labels (default: the classes of the records). Returns the files
    written and (video id, cause) for each video left out because its class has no label.
    """
    rows = sorted((r for r in records if "video_id" in r), key=lambda r: r["video_id"])
    _warn_spaces(rows)
    if labels is None:
        labels = class_labels(r["video_id"] for r in rows)
    unlabeled = [r["video_id"] for r in rows if _label(r["video_id"], labels, classes_file) is None]
    written = []
    for kind in kinds:
        lines = [f"{r['video_id']} {r[kind]} {_label(r['video_id'], labels, classes_file)}"
                 for r in rows if kind in r and r["video_id"] not in unlabeled]
        path = Path(out_dir) / (f"list_{kind}_{split}.txt" if split else f"list_{kind}.txt")
        atomic_write_text(path, "".join(line + "\n" for line in lines))
        written.append(path)
    if labels:
        classes = Path(out_dir) / "classes.txt"
        ordered = sorted(labels.items(), key=lambda kv: kv[1])
        atomic_write_text(classes, "".join(f"{k} {name}\n" for name, k in ordered))
        written.append(classes)
    where = f"the class map {classes_file}" if classes_file else "the class map"
    failures = [(vid, f"class {class_of(vid)!r} is not in {where}: left out of the lists")
                for vid in unlabeled]
    return written, failures


def _label(video_id: str, labels: Mapping[str, int], classes_file: str | Path | None) -> int | None:
    """A video's label; a video at the root gets 0 unless a class map was given (then it has none)."""
    cls = class_of(video_id)
    if cls is None:
        return None if classes_file else 0
    return labels.get(cls)


def _warn_spaces(rows: Sequence[Mapping[str, Any]]) -> None:
    spaced = [r["video_id"] for r in rows if any(c.isspace() for c in r["video_id"])]
    if spaced:
        log.warning("%d video id(s) contain white space, which list readers split on (e.g. %r); "
                    "rename those files for mmaction2/TSN lists", len(spaced), spaced[0])


def write_job_lists(
    manifest: Any,
    kinds: Sequence[str],
    classes_file: str | Path | None = None,
    split_files: Sequence[str | Path] = (),
) -> tuple[list[Path], list[tuple[str, str]]]:
    """Rebuild a job's lists from its done records, labels from all its inputs (see write_lists); with
    split files, also one list per split and kind (see :mod:`flowkit.outputs.splits`)."""
    labels = label_map(manifest.read_units(), classes_file)
    records = manifest.all_done()
    written, failures = write_lists(manifest.out_dir, records, kinds, labels, classes_file)
    if split_files:
        from flowkit.outputs.splits import read_splits, split_records

        per_split, missing = split_records(read_splits(split_files), records)
        for split, rows in sorted(per_split.items()):
            written += write_lists(manifest.out_dir, rows, kinds, labels, classes_file, split)[0]
        for split, lost in sorted(missing.items()):
            cls, name = lost[0]
            log.warning("split %s: %d entries have no finished video (e.g. %s)", split, len(lost),
                        f"{cls}/{name}" if cls else name)
    return written, failures


def flow_job_list_kinds(config: dict[str, Any]) -> list[str]:
    """The lists an extract-flow job writes: RGB when RGB frames were written; flow only for the image
    formats, which frame loaders read (h5/npy flow is one file per video, read with flowkit's readers)."""
    kinds = ["rgb"] if config.get("rgb", True) else []
    return kinds + (["flow"] if config.get("format", "jpg") in ("jpg", "png") else [])

