"""Overlapping stages inside one worker: a decode thread fills a bounded queue while the caller computes."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
_END = object()


# Decoded frames waiting in a prefetch queue never hold more than this (e.g. 2 frames of 8K BGR).
MAX_PREFETCH_BYTES = 256 << 20


def _nbytes(item: object) -> int:
    image = getattr(item, "image", None)
    return int(getattr(image, "nbytes", 0))


def prefetch(source: Iterable[T], depth: int = 16, max_bytes: int = MAX_PREFETCH_BYTES) -> Iterator[T]:
    """Iterate `source` on a background thread, at most `depth` items ahead; re-raises its errors here.

    Decoding releases the GIL, so it overlaps with the flow engine and the JPEG writers; the bounds (items,
    and bytes of the items' `.image`, at least one item) keep memory flat whatever the video length or size.
    """
    items: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    room = threading.Condition()
    held = [0]  # bytes of images waiting in the queue

    def wait_for_room(size: int) -> bool:
        with room:
            while held[0] and held[0] + size > max_bytes and not stop.is_set():
                room.wait(timeout=0.1)
            held[0] += size
        return not stop.is_set()

    def fill() -> None:
        try:
            for item in source:
                if not wait_for_room(_nbytes(item)):
                    return
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
            with room:
                held[0] -= _nbytes(item)
                room.notify()
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        thread.join(timeout=5)
