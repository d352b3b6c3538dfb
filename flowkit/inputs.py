"""Turn an INPUT argument (folder, video file or text list) into sorted, uniquely and safely named videos.

A video id is the path relative to the id root without its extension (``class/video``), so two ``a.mp4``
in different folders never collide. The id root is ``--root`` if given, else the folder INPUT names, the
folder of a single video, or for a list file its own folder when it holds every listed video, else the
folder the listed videos share. A video whose id is also another video's id or the folder of other videos
(``a/x.mp4`` beside ``a/x.avi`` or ``a/x/y.mp4``) keeps its extension in the id (``a/x.mp4``). An id is
never outside OUT, ``.``/``..`` or hidden: such a video fails alone, with its cause, as does anything odd
found while listing (a symlink loop, a folder named like a video). Paths are stored absolute.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import unicodedata
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from flowkit.errors import ConfigError
from flowkit.video import VIDEO_EXTENSIONS

log = logging.getLogger("flowkit")


@dataclass(frozen=True)
class VideoItem:
    """One input video: its id, its path, and an error found while listing it (None if fine)."""

    video_id: str
    path: Path
    error: str | None = None


def printable(text: str) -> str:
    """`text` on one line: control characters (newline, tab, escape...) written as escapes."""
    if text.isprintable():
        return text
    return "".join(_escape(c) if _is_control(c) else c for c in text)


def _is_control(char: str) -> bool:
    return unicodedata.category(char) in ("Cc", "Zl", "Zp")


def _escape(char: str) -> str:
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
    code = ord(char)
    return named.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def _is_video_name(name: str) -> bool:
    return Path(name).suffix.lower() in VIDEO_EXTENSIONS


def _absolute(path: Path | str) -> Path:
    """Absolute, `..` collapsed, the folder's symlinks resolved; the name itself kept (may be a link)."""
    head, name = os.path.split(os.path.abspath(path))
    return Path(os.path.join(_real_folder(head), name)) if name else Path(head)


def _relative(path: Path, root: Path) -> str | None:
    """`path` relative to `root` as a posix string, None if outside (both absolute and normalized)."""
    text, base = str(path), str(root).rstrip("/") + "/"
    return text[len(base) :] if text.startswith(base) and len(text) > len(base) else None


_real_folder = functools.lru_cache(maxsize=1 << 16)(os.path.realpath)  # list lines share folders


# -- listing: (path, error) entries ---------------------------------------------------------------
Entry = tuple[Path, "str | None"]


def _walk(root: Path) -> list[Entry]:
    """Videos below `root`, following folder links once; hidden files and folders are skipped (as glob)."""
    entries: list[Entry] = []
    seen_dirs: set[str] = set()
    hidden = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        here = Path(dirpath)
        hidden += sum(n.startswith(".") for n in dirnames) + sum(
            n.startswith(".") and _is_video_name(n) for n in filenames
        )
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        entries += [(here / d, "is a directory, not a video file") for d in dirnames if _is_video_name(d)]
        dirnames[:] = [d for d in dirnames if not _is_video_name(d) and not _loops(here / d, seen_dirs)]
        entries += [_link_entry(here / n) for n in filenames if _is_video_name(n) and not n.startswith(".")]
    if hidden:
        log.info("%s: skipped %d hidden folder(s) or video(s) (names starting with '.')", root, hidden)
    return entries


def _loops(path: Path, seen: set[str]) -> bool:
    return path.is_symlink() and os.path.realpath(path) in seen


def _link_entry(path: Path) -> Entry:
    """A listed file with the problem of its symlink, if any (one lstat for an ordinary file)."""
    if path.is_symlink() and not path.exists():
        try:
            os.stat(path)
        except OSError as exc:
            cause = "symlink loop" if exc.errno == errno.ELOOP else "broken symlink (target missing)"
            return path, cause
    return path, None


def _file_entry(path: Path) -> Entry:
    """A path named by the user (list line, INPUT): also 'file not found' when nothing is there."""
    if not os.path.lexists(path):
        return path, "file not found"
    return _link_entry(path)


def _read_list(list_file: Path) -> tuple[list[Entry], Path]:
    """The listed paths (relative lines are relative to the list's folder) and their default id root."""
    folder = list_file.parent
    paths = []
    for raw in list_file.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            paths.append(_absolute(os.path.join(folder, line)))  # an absolute line stays itself
    entries = [_file_entry(p) for p in paths]
    found = [p for p, error in entries if error != "file not found"] or paths
    if all(_relative(p, folder) is not None for p in found):
        return entries, folder
    # A mistyped line must not move every id: missing paths do not count.
    return entries, Path(os.path.commonpath([str(p.parent) for p in found]))


def discover(
    input_path: str | Path, root: str | Path | None = None, input_frames: bool = False
) -> list[VideoItem]:
    """List the videos of INPUT sorted by id (ids relative to `root` if given, see the module doc).

    With `input_frames`, each folder of images under INPUT is one video (flowkit.framefolder).
    Raises ConfigError when INPUT does not exist; odd entries become failed items.
    """
    given = Path(input_path)
    if input_frames:
        entries, default_root = _frame_folder_entries(given)
    elif given.is_dir() and not _is_video_name(given.name):
        base = given.resolve()
        entries, default_root = _walk(base), base
    elif _is_video_name(given.name):
        entries = [_file_entry(_absolute(given))]
        default_root = entries[0][0].parent
    elif given.is_file():
        entries, default_root = _read_list(_absolute(given))
    else:
        raise ConfigError(
            f"{given}: input not found (expected a folder, a video or a text list of paths)"
        )
    id_root = Path(root).resolve() if root is not None else default_root
    return assign_ids(entries, id_root)


def _frame_folder_entries(given: Path) -> tuple[list[Entry], Path]:
    """Folders of images under INPUT as entries; ids are relative to INPUT (to its parent when INPUT
    itself holds the frames, so the id is its name)."""
    from flowkit.framefolder import discover_frame_folders

    base = _absolute(given)
    folders = [base / item.path for item in discover_frame_folders(base)]  # absolute paths stay as they are
    entries: list[Entry] = [(folder, None) for folder in folders]
    return entries, base.parent if base in folders else base


# -- ids ------------------------------------------------------------------------------------------
def assign_ids(entries: list[Entry], root: Path) -> list[VideoItem]:
    """Give each distinct path a safe id relative to `root` (module doc); sorted by id."""
    errors = dict(reversed(entries))  # one entry per path, the first error seen
    relative = {p: _relative(p, root) for p in errors}
    full = {p: printable(rel) for p, rel in relative.items() if rel is not None}
    ids = {p: _strip_extension(rel) for p, rel in full.items()}
    problems = {p: errors[p] or _id_problem(vid) for p, vid in ids.items()}
    # Only videos that will be written can clash; the others keep their plain id.
    ok = _resolve_clashes(full, {p: vid for p, vid in ids.items() if not problems[p]})
    clashes = _clashing(ok, inside=True)
    items = [_outside(p, root, errors[p]) for p in errors if p not in full]
    for path, vid in {**ids, **ok}.items():
        items.append(VideoItem(vid, path, problems[path] or clashes.get(vid)))
    return sorted(_unique(items), key=lambda item: item.video_id)


def _strip_extension(rel: str) -> str:
    # On the string: pathlib would fold 'a/..mp4' into 'a' instead of exposing the '.' part.
    suffix = os.path.splitext("_" + rel.rsplit("/", 1)[-1])[1]  # '_': '..mp4' has the suffix '.mp4'
    return rel[: -len(suffix)] if suffix else rel


def _outside(path: Path, root: Path, error: str | None) -> VideoItem:
    # Never written: its id (the absolute path) only names the failed unit.
    return VideoItem(printable(str(path)), path, error or f"not inside the id root {printable(str(root))}")


def _resolve_clashes(full: dict[Path, str], ids: dict[Path, str]) -> dict[Path, str]:
    """A video whose id is shared or is another's folder keeps its extension, until nothing changes."""
    while True:
        taken = _clashing(ids)
        changed = [p for p, vid in ids.items() if vid in taken and vid != full[p]]
        if not changed:
            return ids
        for path in changed:
            ids[path] = full[path]


def _clashing(ids: dict[Path, str], inside: bool = False) -> dict[str, str]:
    """Ids shared by several videos or that are the folder of another id (with `inside`, also the ids
    below such a folder), each with the reason."""
    count = Counter(ids.values())
    folders = {parent: vid for vid in count for parent in _parents(vid)}
    reasons = {vid: f"two inputs have the video id {vid!r}" for vid, n in count.items() if n > 1}
    for vid in count:
        if vid in folders:
            reasons[vid] = f"its video id {vid!r} is the folder of the video id {folders[vid]!r}"
        clash = next((parent for parent in _parents(vid) if parent in count), None) if inside else None
        if clash is not None:
            reasons.setdefault(vid, f"its video id {vid!r} is inside the video id {clash!r}")
    return reasons


def _parents(video_id: str) -> list[str]:
    """'a/b/c' -> ['a/b', 'a']."""
    return [video_id.rsplit("/", k)[0] for k in range(1, video_id.count("/") + 1)]


def _id_problem(video_id: str) -> str | None:
    """Why an id cannot name an output under OUT, or None."""
    parts = video_id.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return f"its video id {video_id!r} has an empty, '.' or '..' part (it would leave its folder)"
    if any(part.startswith(".") for part in parts):
        return f"its video id {video_id!r} has a hidden part ('.' names are flowkit's own in OUT)"
    return None


def _unique(items: list[VideoItem]) -> list[VideoItem]:
    """Unit ids must differ: a failed item whose id is still shared is named by its absolute path."""
    count = Counter(item.video_id for item in items)
    return [replace(item, video_id=str(item.path)) if count[item.video_id] > 1 and item.error else item
            for item in items]
