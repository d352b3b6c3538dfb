"""Regenerate the bundled sample videos: textured content moving by known amounts (ground-truth flow).

Run from the repository root:  python examples/make_samples.py
Each clip's true flow (dx, dy px/frame at the written size) is listed in examples/videos/motion.txt.
"""

from __future__ import annotations

from pathlib import Path

from flowkit.synthetic import moving_video

HERE = Path(__file__).resolve().parent / "videos"
CLIPS = [  # (class folder, name, dx, dy, seed)
    ("pan_right", "clip_a", 1.5, 0.0, 1),
    ("pan_right", "clip_b", 3.0, 0.0, 2),
    ("tilt_down", "clip_a", 0.0, 2.0, 3),
    ("diagonal", "clip_a", -1.0, 1.25, 4),
]


def main() -> None:
    lines = ["# video_id dx dy (pixels per frame, 160x120, 25 fps, 24 frames)"]
    for folder, name, dx, dy, seed in CLIPS:
        moving_video(HERE / folder / f"{name}.mp4", n=24, height=120, width=160, dx=dx, dy=dy, seed=seed)
        lines.append(f"{folder}/{name} {dx} {dy}")
    (HERE / "motion.txt").write_text("\n".join(lines) + "\n")
    print(f"wrote {len(CLIPS)} clips under {HERE}")


if __name__ == "__main__":
    main()
