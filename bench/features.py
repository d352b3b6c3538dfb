"""Feature extraction end to end: clips/s per model and the real-time factor of two-stream I3D.

Real-time factor = seconds of 25 fps video processed per second of work, decode + flow + model included
(random weights: the cost does not depend on the values).

  python bench/features.py --seconds 4 --device cpu
  python bench/features.py --seconds 20 --device cuda --amp bf16 --batch-size 16     # on a GPU
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import cv2
import torch

from flowkit.inputs import VideoItem
from flowkit.pipelines.extractor import Extractor
from flowkit.pipelines.features import FeaturesConfig, VideoFeatures
from flowkit.synthetic import moving_video

CASES = {  # name: FeaturesConfig overrides
    "c3d fc6 (16f, stride 16)": {"model": "c3d"},
    "i3d rgb (16f, stride 16)": {"model": "i3d", "clip_len": 16},
    "i3d rgb+flow tvl1 (16f, stride 16)": {"model": "i3d", "clip_len": 16, "stream": "both"},
}


def measure(
    video: Path, overrides: dict, device: str, batch: int, amp: str, seconds: float
) -> tuple[int, float]:
    cfg = FeaturesConfig(random_weights=True, device=device, batch_size=batch, amp=amp, **overrides)
    kwargs = {"mode": "caffe"} if cfg.model == "c3d" else {"compat": "tf"}
    extractor = Extractor(cfg.model, cfg.streams, {}, kwargs, device, amp)
    features = VideoFeatures(cfg, extractor)
    start = time.perf_counter()
    datasets, _ = features.compute(VideoItem("bench", video))
    return len(datasets["frame_indices"]), time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=4.0, help="length of the generated 25 fps video")
    ap.add_argument("--size", default="320x240")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--amp", default="none", choices=["none", "fp16", "bf16"])
    ap.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    frames = int(args.seconds * 25)
    with tempfile.TemporaryDirectory() as tmp:
        video = moving_video(
            Path(tmp) / "bench.avi", n=frames, height=h, width=w, dx=1.2, dy=0.4, fourcc="MJPG"
        )
        print(
            f"# features, {w}x{h} video, {frames} frames at 25 fps, device {args.device}, "
            f"batch {args.batch_size}, amp {args.amp}"
        )
        print(
            f"# {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
            f"opencv {cv2.__version__}\n"
        )
        print("| model | windows | seconds | clips/s | real-time factor |\n|---|---|---|---|---|")
        for name in args.cases:
            windows, secs = measure(video, CASES[name], args.device, args.batch_size, args.amp, args.seconds)
            print(f"| {name} | {windows} | {secs:.1f} | {windows / secs:.2f} | {args.seconds / secs:.2f}x |")


if __name__ == "__main__":
    main()
