"""Flow -> colour image with the Middlebury colour wheel (hue = direction, saturation = magnitude)."""

from __future__ import annotations

from pathlib import Path

import cv2
import h5py
import numpy as np

from flowkit.errors import FlowkitError
from flowkit.flow.quantize import dequantize

# Segment lengths of the Middlebury wheel: red-yellow, yellow-green, green-cyan, cyan-blue, blue-magenta,
# magenta-red; more steps where the eye separates hues better.
_SEGMENTS = (
    (15, (255, 0, 0), (255, 255, 0)),
    (6, (255, 255, 0), (0, 255, 0)),
    (4, (0, 255, 0), (0, 255, 255)),
    (11, (0, 255, 255), (0, 0, 255)),
    (13, (0, 0, 255), (255, 0, 255)),
    (6, (255, 0, 255), (255, 0, 0)),
)


def color_wheel() -> np.ndarray:
    """The (55, 3) RGB colour wheel, float in [0, 1]."""
    rows = []
    for steps, start, end in _SEGMENTS:
        t = np.arange(steps, dtype=np.float64)[:, None] / steps
        rows.append((1 - t) * np.asarray(start) + t * np.asarray(end))
    return np.concatenate(rows) / 255.0


def flow_to_color(flow: np.ndarray, max_flow: float | None = None) -> np.ndarray:
    """(2, H, W) flow -> (H, W, 3) uint8 BGR; magnitude max_flow (default: the maximum) is full colour."""
    if flow.ndim != 3 or flow.shape[0] != 2:
        raise ValueError(f"expected flow of shape (2, H, W), got {flow.shape}")
    u, v = flow[0].astype(np.float64), flow[1].astype(np.float64)
    mag = np.hypot(u, v)
    scale = max_flow if max_flow else max(float(mag.max()), 1e-6)
    rad = np.clip(mag / scale, 0, 1)
    wheel = color_wheel()
    angle = np.arctan2(-v, -u) / np.pi  # in [-1, 1]
    pos = (angle + 1) / 2 * (len(wheel) - 1)
    k0 = np.floor(pos).astype(int)
    k1 = (k0 + 1) % len(wheel)
    frac = (pos - k0)[..., None]
    col = (1 - frac) * wheel[k0] + frac * wheel[k1]
    col = 1 - rad[..., None] * (1 - col)  # low magnitude fades to white
    return cv2.cvtColor((col * 255).round().astype(np.uint8), cv2.COLOR_RGB2BGR)


def load_flows(video_dir: Path, bound: float = 20.0) -> np.ndarray:
    """All flows of an extract-flow video folder as float32 (N, 2, H, W), whatever the format."""
    if (video_dir / "flow.h5").is_file():
        with h5py.File(video_dir / "flow.h5", "r") as fh:
            return fh["flow"][()].astype(np.float32)
    if (video_dir / "flow.npy").is_file():
        return np.load(video_dir / "flow.npy").astype(np.float32)
    xs = sorted(video_dir.glob("flow_x_*.*"))
    if not xs:
        raise FlowkitError(f"{video_dir}: no flow here (no flow_x_* images, flow.h5 or flow.npy)")
    flows = []
    for x_path in xs:
        y_path = x_path.with_name(x_path.name.replace("flow_x_", "flow_y_", 1))
        x, y = (cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in (x_path, y_path))
        if x is None or y is None:
            raise FlowkitError(f"{x_path}: unreadable flow image pair")
        flows.append(dequantize(np.stack([x, y]), bound))
    return np.stack(flows)


# Below this magnitude (px) a frame is shown pale rather than stretching noise to full colour.
MIN_SCALE = 1.0
SCALE_PERCENTILE = 99.0


def frame_scale(flow: np.ndarray, max_flow: float | None = None) -> float:
    """The magnitude shown at full colour for one (2, H, W) flow: `max_flow`, else that frame's 99th
    percentile (at least MIN_SCALE px), so a scene cut elsewhere in the video does not wash it out."""
    if max_flow:
        return float(max_flow)
    return max(float(np.percentile(np.hypot(flow[0], flow[1]), SCALE_PERCENTILE)), MIN_SCALE)


def job_bound(video_dir: Path, bound: float | None = None) -> float:
    """The bound the folder's flow images were quantized with, from the extract-flow job record above it.

    A `bound` that disagrees with the record is refused; without a record, `bound` or 20 is used.
    """
    from flowkit.errors import ConfigError
    from flowkit.jobs.manifest import Manifest

    for parent in [video_dir, *video_dir.resolve().parents]:
        job = Manifest(parent).read_job()
        if job is not None and job.get("command") == "extract-flow":
            recorded = float(job["config"].get("bound", 20.0))
            if bound is not None and bound != recorded:
                raise ConfigError(f"{parent}: this flow was quantized with --bound {recorded:g}, "
                                  f"not {bound:g}: drop --bound")
            return recorded
    return 20.0 if bound is None else bound


def render_folder(
    video_dir: Path, dest: Path, bound: float | None = None, max_flow: float | None = None, fps: float = 10.0
) -> Path:
    """Write [RGB | flow colour] images for a video folder as PNGs (dest folder) or a video (.mp4/.avi).

    Each flow is scaled by :func:`frame_scale`; 8-bit flow is dequantized with :func:`job_bound`.
    """
    flows = load_flows(video_dir, job_bound(video_dir, bound))
    rgbs = sorted(video_dir.glob("img_*.*"))
    tiles = []
    for k, flow in enumerate(flows):
        color = flow_to_color(flow, frame_scale(flow, max_flow))
        rgb = cv2.imread(str(rgbs[k])) if k < len(rgbs) else None
        if rgb is not None and rgb.shape[:2] == color.shape[:2]:
            color = np.concatenate([rgb, color], axis=1)
        tiles.append(color)
    return _save(tiles, dest, fps)


def _save(tiles: list[np.ndarray], dest: Path, fps: float) -> Path:
    if dest.suffix.lower() in (".mp4", ".avi"):
        from flowkit.synthetic import write_video

        return write_video(dest, tiles, fps, "mp4v" if dest.suffix.lower() == ".mp4" else "MJPG")
    dest.mkdir(parents=True, exist_ok=True)
    for k, tile in enumerate(tiles):
        cv2.imwrite(str(dest / f"flow_{k + 1:05d}.png"), tile)
    return dest
