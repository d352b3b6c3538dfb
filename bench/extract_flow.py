"""End-to-end extract-flow throughput vs the engine alone and vs the naive loop users write; peak RSS.

Side by side in one run, on the same generated video:
  engine     the flow engine alone on pre-decoded gray frames (batches of --batch-size)
  flowkit    extract_video(): decode thread + batched engine + JPEG writer pool + atomic folder
  naive      cv2 decode -> cv2.optflow DualTVL1 per pair -> quantize -> cv2.imwrite (today's scripts)
Then peak RSS of `flowkit extract-flow` on a short and a long video (memory must not grow with length).

  python bench/extract_flow.py --size 340x256 --frames 33 --engine tvl1 --device cpu

--pipeline: the non-engine pipeline (decode, resize, gray, quantize, 3 JPEG encodes, writes) with the
benchmark-only `null` engine, on ONE core (affinity + 1 thread everywhere), for 340x256 output from
H.264 sources of several sizes. Pairs per CPU-second = pairs/s per core (robust on a busy machine);
"decode only" is the decoder's own bound; "cores for 1000 pairs/s" is what one GPU at 1000 pairs/s needs.
Outputs go to /dev/shm when present (a VM disk's file creation can cost more than the encodes).

  python bench/extract_flow.py --pipeline --frames 150 --decoders pyav opencv

--stages: CPU ms per frame of PyAV decoding alone and with the conversion/resize stages after it, one core.

  python bench/extract_flow.py --stages --frames 150
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from flowkit.decoders import DecodeOptions
from flowkit.errors import FlowkitError
from flowkit.flow import create_engine
from flowkit.flow.quantize import quantize
from flowkit.inputs import VideoItem
from flowkit.pipelines.flow import FlowConfig, extract_video
from flowkit.synthetic import iter_moving_frames, moving_video, write_video_av
from flowkit.video import VideoReader, read_all, to_gray

PIPELINE_SOURCES = ((340, 256), (640, 360), (1280, 720), (1920, 1080))


def engine_only(engine, gray: np.ndarray, batch: int) -> float:
    """Seconds for all consecutive pairs through the engine, in batches."""
    start = time.perf_counter()
    for k in range(0, len(gray) - 1, batch):
        end = min(k + batch, len(gray) - 1)
        engine(gray[k:end], gray[k + 1 : end + 1])
    return time.perf_counter() - start


def flowkit_e2e(video: Path, out: Path, cfg: FlowConfig, device: str) -> float:
    start = time.perf_counter()
    extract_video(VideoItem("v", video), out / "v", cfg, device)
    return time.perf_counter() - start


def naive_loop(video: Path, out: Path) -> float:
    """What users write today: decode, cv2 TV-L1 one pair at a time, quantize, imwrite."""
    out.mkdir(parents=True, exist_ok=True)
    tvl1 = cv2.optflow.DualTVL1OpticalFlow_create()
    start = time.perf_counter()
    cap = cv2.VideoCapture(str(video))
    ok, frame = cap.read()
    prev, k = to_gray(frame), 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        gray = to_gray(frame)
        flow = tvl1.calc(prev, gray, None)
        q = quantize(flow.transpose(2, 0, 1), 20.0)
        cv2.imwrite(str(out / f"flow_x_{k:05d}.jpg"), q[0])
        cv2.imwrite(str(out / f"flow_y_{k:05d}.jpg"), q[1])
        cv2.imwrite(str(out / f"img_{k:05d}.jpg"), frame)
        prev, k = gray, k + 1
    return time.perf_counter() - start


def peak_rss_mb(video: Path, out: Path, engine: str) -> float:
    """Peak RSS (MB) of a fresh process running `flowkit extract-flow` on one video (jobs=1: in-process).

    VmHWM, not ru_maxrss: the latter carries the parent's peak across fork+exec.
    """
    args = ["extract-flow", str(video), "-o", str(out), "-a", engine, "-q"]
    code = (
        "import sys\n"
        "from flowkit.cli import main\n"
        f"try:\n    main({args!r})\nexcept SystemExit:\n    pass\n"
        "print(next(line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return int(done.stdout.split()[-1]) / 1024


def cpu_seconds() -> float:
    """User + system CPU time of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def pipeline_row(video: Path, out: Path, decoder: str) -> tuple[int, float, float, float]:
    """(pairs, CPU seconds, wall seconds, decode-only CPU seconds) for 340x256 output with the null engine."""
    cfg = FlowConfig(algorithm="null", size=(340, 256), decode=DecodeOptions(decoder=decoder))
    extract_video(VideoItem("warm", video), out / "warm", cfg, "cpu")
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    record = extract_video(VideoItem("v", video), out / "v", cfg, "cpu")
    cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - wall0
    cpu0 = cpu_seconds()
    for _ in VideoReader(video, options=cfg.decode):
        pass
    return record["flow"], cpu, wall, cpu_seconds() - cpu0


def pipeline_table(frames: int, decoders: list[str]) -> None:
    """Print the non-engine pipeline table (see the module docstring)."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    torch.set_num_threads(1)
    cv2.setNumThreads(1)  # decoder threads follow OpenCV's budget (flowkit.decoders.decode_threads)
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(dir=shm if shm.is_dir() else None) as tmp:
        root = Path(tmp)
        print(f"# non-engine pipeline, null engine, 340x256 output, {frames}-frame H.264 (libx264, PyAV) "
              f"sources, 1 core, 1 thread; outputs in {root.parent}")
        print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
              f"opencv {cv2.__version__}\n")
        print("| source | decoder | pairs/s per core | decode only, frames/s per core | wall pairs/s "
              "| cores for 1000 pairs/s |\n|---|---|---|---|---|---|")
        for w, h in PIPELINE_SOURCES:
            video = write_video_av(root / f"{w}x{h}.mp4", iter_moving_frames(frames, h, w, 1.3, -0.7))
            for decoder in decoders:
                try:
                    pairs, cpu, wall, dec = pipeline_row(video, root / f"{w}x{h}-{decoder}", decoder)
                except FlowkitError as exc:  # e.g. torchcodec without FFmpeg's shared libraries
                    print(f"| {w}x{h} | {decoder} | unavailable: {exc} | | | |")
                    continue
                print(f"| {w}x{h} | {decoder} | {pairs / cpu:.0f} | {(pairs + 1) / dec:.0f} | "
                      f"{pairs / wall:.0f} | {1000 * cpu / pairs:.1f} |", flush=True)


def stage_costs(video: Path, stages: dict[str, object]) -> dict[str, float]:
    """CPU ms per frame of PyAV decoding (one thread) followed by each stage function(frame, reformatter)."""
    import av
    import av.video.reformatter

    out = {}
    for label, stage in stages.items():
        with av.open(str(video)) as container:
            stream = container.streams.video[0]
            stream.thread_type, stream.codec_context.thread_count = "AUTO", 1
            reformatter = av.video.reformatter.VideoReformatter()
            cpu0, n = cpu_seconds(), 0
            for frame in container.decode(stream):
                stage(frame, reformatter)
                n += 1
            out[label] = 1000 * (cpu_seconds() - cpu0) / n
    return out


def stages_table(frames: int) -> None:
    """Per-frame CPU cost of decoding and of what follows it, on one core: is the decoder the cap?"""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    cv2.setNumThreads(1)

    def bgr(f, rf):
        return np.ascontiguousarray(rf.reformat(f, format="bgr24", threads=1).to_ndarray())

    stages = {
        "decode only": lambda f, rf: None,
        "+ BGR at full size": bgr,
        "+ BGR + INTER_LINEAR to 340x256 (flowkit)":
            lambda f, rf: cv2.resize(bgr(f, rf), (340, 256), interpolation=cv2.INTER_LINEAR),
        "+ swscale BILINEAR to 340x256 BGR (other pixels)":
            lambda f, rf: rf.reformat(f, width=340, height=256, format="bgr24", interpolation="BILINEAR",
                                      threads=1).to_ndarray(),
    }
    small = np.random.default_rng(0).integers(0, 255, (256, 340, 3), dtype=np.uint8)
    gray = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
    cpu0 = cpu_seconds()
    for _ in range(200):
        for img in (gray, gray, small):
            cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    jpeg = 1000 * (cpu_seconds() - cpu0) / 200
    print(f"# decode stages, {frames}-frame H.264 sources (libx264, PyAV), 1 core, 1 thread; "
          "CPU ms per frame")
    print(f"# the 3 JPEG encodes of a 340x256 pair (2 gray + 1 BGR, quality 95): {jpeg:.2f} ms\n")
    print("| source | " + " | ".join(stages) + " | decode-only bound, frames/s |")
    print("|---" * (len(stages) + 2) + "|")
    with tempfile.TemporaryDirectory() as tmp:
        for w, h in PIPELINE_SOURCES:
            video = write_video_av(Path(tmp) / f"{w}x{h}.mp4", iter_moving_frames(frames, h, w, 1.3, -0.7))
            costs = stage_costs(video, stages)
            print(f"| {w}x{h} | " + " | ".join(f"{v:.2f}" for v in costs.values())
                  + f" | {1000 / costs['decode only']:.0f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="340x256")
    ap.add_argument("--frames", type=int, default=33)
    ap.add_argument("--engine", default="tvl1")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--naive", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--rss-frames", type=int, nargs=2, default=(100, 2000), metavar=("SHORT", "LONG"))
    ap.add_argument("--source-codec", default="mjpg", choices=["mjpg", "h264"],
                    help="input video of the engine/e2e comparison: MJPG .avi or H.264 .mp4 (real datasets)")
    ap.add_argument("--pipeline", action="store_true", help="the non-engine pipeline table (null engine)")
    ap.add_argument("--decoders", nargs="+", default=["pyav"], choices=["pyav", "opencv", "torchcodec"])
    ap.add_argument("--stages", action="store_true",
                    help="per-frame CPU cost of decoding and the stages after it (is the decoder the cap?)")
    args = ap.parse_args()
    if args.stages:
        stages_table(args.frames if args.frames != 33 else 150)
        return
    if args.pipeline:
        pipeline_table(args.frames if args.frames != 33 else 150, args.decoders)
        return
    w, h = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.source_codec == "h264":
            video = write_video_av(root / "bench.mp4", iter_moving_frames(args.frames, h, w, 1.3, -0.7))
        else:
            video = moving_video(root / "bench.avi", n=args.frames, height=h, width=w, dx=1.3, dy=-0.7,
                                 fourcc="MJPG")
        frames, _ = read_all(video)
        gray = np.stack([to_gray(f.image) for f in frames])
        pairs = len(gray) - 1
        engine = create_engine(args.engine, device=args.device)
        engine(gray[:2], gray[1:3])  # warm-up (compilation, allocations)
        cfg = FlowConfig(algorithm=args.engine, batch_size=args.batch_size, device=args.device)
        flowkit_e2e(video, root / "warm", cfg, args.device)
        t_engine = engine_only(engine, gray, args.batch_size)
        t_e2e = flowkit_e2e(video, root / "e2e", cfg, args.device)
        rows = [("engine only", t_engine), ("flowkit extract (decode+flow+write)", t_e2e)]
        if args.naive:
            rows.append(("naive loop (cv2 decode, cv2.optflow, imwrite)", naive_loop(video, root / "naive")))
        print(f"# extract-flow, {w}x{h} {args.source_codec} source, {pairs} pairs, engine {args.engine} on "
              f"{args.device}, batch {args.batch_size}")
        print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
              f"torch {torch.__version__}, opencv {cv2.__version__}\n")
        print("| pipeline | seconds | pairs/s | vs engine only |\n|---|---|---|---|")
        for name, secs in rows:
            print(f"| {name} | {secs:.2f} | {pairs / secs:.2f} | {t_engine / secs:.2f} |")
        short_n, long_n = args.rss_frames
        print("\n| video | frames | peak RSS (MB), engine dis |\n|---|---|---|")
        for n in (short_n, long_n):
            clip = moving_video(root / f"rss{n}.avi", n=n, height=h, width=w, dx=1.0, fourcc="MJPG")
            print(f"| {w}x{h} | {n} | {peak_rss_mb(clip, root / f'rss{n}', 'dis'):.0f} |")


if __name__ == "__main__":
    main()
