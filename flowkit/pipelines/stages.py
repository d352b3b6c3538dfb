"""Overlapping stages inside one worker: a decode thread fills a bounded queue while the caller computes."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
_END = object()


def prefetch(source: Iterable[T], depth: int = 16) -> Iterator[T]:
    """Iterate `source` on a background thread, at most `depth` items ahead; re-raises its errors here.

    Decoding releases the GIL, so it overlaps with the flow engine and the JPEG writers; the bound keeps
    memory flat whatever the video length.
    """
    items: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def fill() -> None:
        try:
            for item in source:
                while not stop.is_set():
                    try:
                        items.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            items.put(exc)

    thread = threading.Thread(target=fill, name="flowkit-decode", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        thread.join(timeout=5)
