"""Annotation lists for mmaction2/TSN: one line per video, `<video_id> <count> <label>`, RGB and flow."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from flowkit.atomic import atomic_write_text

log = logging.getLogger("flowkit")


def class_of(video_id: str) -> str | None:
    """The class folder of a video id ('class/video' -> 'class'); None for a video at the root."""
    parts = video_id.split("/")
    return parts[-2] if len(parts) > 1 else None


def class_labels(video_ids: Iterable[str]) -> dict[str, int]:
    """Label index per class folder name, in sorted order (the usual UCF101/Kinetics convention)."""
    classes = sorted({c for c in map(class_of, video_ids) if c is not None})
    return {name: k for k, name in enumerate(classes)}


def write_lists(
    out_dir: Path, records: Iterable[Mapping[str, Any]], kinds: Iterable[str]
) -> list[Path]:
    """Write ``list_<kind>.txt`` for each kind (e.g. rgb, flow) from done records, plus classes.txt."""
    rows = sorted((r for r in records if "video_id" in r), key=lambda r: r["video_id"])
    spaced = [r["video_id"] for r in rows if any(c.isspace() for c in r["video_id"])]
    if spaced:
        log.warning("%d video id(s) contain white space, which list readers split on (e.g. %r); "
                    "rename those files for mmaction2/TSN lists", len(spaced), spaced[0])
    labels = class_labels(r["video_id"] for r in rows)
    written = []
    for kind in kinds:
        lines = [
            f"{r['video_id']} {r[kind]} {labels.get(class_of(r['video_id']) or '', 0)}"
            for r in rows
            if kind in r
        ]
        path = Path(out_dir) / f"list_{kind}.txt"
        atomic_write_text(path, "".join(line + "\n" for line in lines))
        written.append(path)
    if labels:
        classes = Path(out_dir) / "classes.txt"
        atomic_write_text(classes, "".join(f"{k} {name}\n" for name, k in labels.items()))
        written.append(classes)
    return written
