"""Decoders side by side: pixel and timestamp differences against OpenCV's decoder, and frames/s.

Clips are generated here (a moving texture): mp4v in .mp4 and MJPG in .avi (OpenCV's writer), H.264 in
.mp4 and .mkv (PyAV libx264). torchcodec rows appear where its FFmpeg libraries load (cuda rows on a GPU).

  python bench/decoders.py --frames 60 --size 640x360
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from flowkit.decoders import DecodeOptions
from flowkit.errors import FlowkitError
from flowkit.synthetic import iter_moving_frames, moving_video, write_video_av
from flowkit.video import read_all


def clips(root: Path, n: int, w: int, h: int) -> dict[str, Path]:
    """The test clips: name -> path."""
    return {
        "mp4v .mp4": moving_video(root / "a.mp4", n=n, height=h, width=w, dx=1.3, dy=-0.7),
        "MJPG .avi": moving_video(root / "a.avi", n=n, height=h, width=w, dx=1.3, dy=-0.7, fourcc="MJPG"),
        "H.264 .mp4": write_video_av(root / "b.mp4", iter_moving_frames(n, h, w, 1.3, -0.7)),
        "H.264 .mkv": write_video_av(root / "b.mkv", iter_moving_frames(n, h, w, 1.3, -0.7)),
    }


def decoders() -> list[tuple[str, DecodeOptions | str]]:
    """(label, options or the reason it is unavailable here)."""
    rows: list[tuple[str, DecodeOptions | str]] = [("pyav", DecodeOptions(decoder="pyav"))]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        try:
            rows.append((f"torchcodec {device}", DecodeOptions(decoder="torchcodec", device=device)))
        except FlowkitError as exc:
            rows.append((f"torchcodec {device}", str(exc)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--size", default="640x360")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    print(f"# decoders vs OpenCV (cv2 {cv2.__version__}), {args.frames} frames {w}x{h}\n")
    print("| clip | decoder | frames | max abs diff | mean abs diff | pixels differing | max ts diff (s) "
          "| frames/s |\n|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for clip, path in clips(Path(tmp), args.frames, w, h).items():
            ref, _ = read_all(path, options=DecodeOptions(decoder="opencv"))
            for label, options in decoders():
                if isinstance(options, str):
                    print(f"| {clip} | {label} | unavailable: {options} | | | | | |")
                    continue
                start = time.perf_counter()
                got, _ = read_all(path, options=options)
                fps = len(got) / (time.perf_counter() - start)
                pairs = list(zip(ref, got, strict=False))
                diff = np.stack([np.abs(a.image.astype(np.int16) - b.image) for a, b in pairs])
                ts = max(abs(a.timestamp - b.timestamp) for a, b in pairs)
                print(f"| {clip} | {label} | {len(got)} / {len(ref)} | {diff.max()} | {diff.mean():.4f} | "
                      f"{100 * (diff > 0).mean():.2f} % | {ts:.4f} | {fps:.0f} |", flush=True)


if __name__ == "__main__":
    main()
