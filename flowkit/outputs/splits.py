"""Train/val/test split files in the common formats -> which video ids belong to which split.

Formats (detected from the file):

* UCF101 / HMDB51 as distributed by mmaction2: ``trainlist01.txt`` (``Class/video.avi 1``) and
  ``testlist01.txt`` (``Class/video.avi``); the split is named from the file: ``train01``, ``test01``.
* HMDB51 originals: ``<class>_test_split1.txt`` with ``video.avi <tag>``, tag 1 = train, 2 = test,
  0 = unused; splits ``train1`` / ``test1`` (files of all classes combine).
* Kinetics CSV with a header ``label,youtube_id,time_start,time_end,split``; the video is
  ``<label>/<youtube_id>_<start:06d>_<end:06d>`` as mmaction2 names it; splits from the ``split`` column.

An entry is matched to a video id by its ``class/name`` path, else by its unique file name.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath

from flowkit.errors import ConfigError

Entry = tuple[str | None, str]  # (class folder or None, video name without extension)
HMDB_TAGS = {"1": "train", "2": "test"}


def read_split_file(path: str | Path) -> dict[str, list[Entry]]:
    """Split name -> its entries, from one split file in any of the formats above."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the split file ({exc.strerror or exc})") from exc
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if lines and lines[0].lower().replace(" ", "").startswith("label,youtube_id"):
        return _kinetics(path, text)
    hmdb = re.fullmatch(r"(.+)_test_split(\d+)", path.stem)
    if hmdb:
        return _hmdb(path, lines, hmdb[1], hmdb[2])
    ucf = re.fullmatch(r"(train|test|val)list(\d+)", path.stem)
    if ucf:
        return {f"{ucf[1]}{ucf[2]}": [_entry(ln.split()[0]) for ln in lines]}
    raise ConfigError(
        f"{path}: unknown split file (expected trainlistNN.txt / testlistNN.txt, <class>_test_splitN.txt "
        "or a Kinetics CSV with a label,youtube_id,time_start,time_end,split header)"
    )


def _entry(rel: str) -> Entry:
    path = PurePosixPath(rel.replace("\\", "/"))
    parent = path.parent.name or None
    return parent, path.stem if path.suffix else path.name


def _hmdb(path: Path, lines: Sequence[str], cls: str, number: str) -> dict[str, list[Entry]]:
    splits: dict[str, list[Entry]] = {}
    for line in lines:
        parts = line.split()
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise ConfigError(f"{path}: expected '<video> <0|1|2>' lines, got {line!r}")
        if parts[1] in HMDB_TAGS:
            splits.setdefault(f"{HMDB_TAGS[parts[1]]}{number}", []).append((cls, _entry(parts[0])[1]))
    return splits


def _kinetics(path: Path, text: str) -> dict[str, list[Entry]]:
    splits: dict[str, list[Entry]] = {}
    for row in csv.DictReader(text.splitlines()):
        try:
            start, end = int(float(row["time_start"])), int(float(row["time_end"]))
            name = f"{row['youtube_id']}_{start:06d}_{end:06d}"
            splits.setdefault(row["split"], []).append((row["label"], name))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: bad Kinetics row {row} ({exc})") from exc
    return splits


def read_splits(paths: Iterable[str | Path]) -> dict[str, list[Entry]]:
    """All splits of several files; the same split name in two files (HMDB51 classes) combines."""
    merged: dict[str, list[Entry]] = {}
    for path in paths:
        for split, entries in read_split_file(path).items():
            merged.setdefault(split, []).extend(entries)
    return merged


def match_entries(entries: Sequence[Entry], video_ids: Iterable[str]) -> tuple[list[str], list[Entry]]:
    """(matched video ids, entries without a video): by ``class/name``, else by a unique file name.

    Class names compare with spaces and underscores alike (Kinetics labels are stored either way).
    """
    by_name: dict[str, list[str]] = {}
    for vid in video_ids:
        by_name.setdefault(vid.rsplit("/", 1)[-1], []).append(vid)
    matched, missing = [], []
    for cls, name in entries:
        found = by_name.get(name, [])
        if len(found) > 1 and cls is not None:
            found = [v for v in found if _same_class(v, cls)]
        if len(found) == 1:
            matched.append(found[0])
        else:
            missing.append((cls, name))
    return matched, missing


def _same_class(video_id: str, cls: str) -> bool:
    parts = video_id.split("/")
    return len(parts) > 1 and parts[-2].replace(" ", "_") == cls.replace(" ", "_")


def split_records(
    splits: Mapping[str, Sequence[Entry]], records: Sequence[Mapping]
) -> tuple[dict[str, list[Mapping]], dict[str, list[Entry]]]:
    """Done records per split, and per split the entries that have no finished video."""
    by_id = {r["video_id"]: r for r in records if "video_id" in r}
    out, missing = {}, {}
    for split, entries in splits.items():
        ids, lost = match_entries(entries, by_id)
        out[split] = [by_id[v] for v in ids]
        if lost:
            missing[split] = lost
    return out, missing
