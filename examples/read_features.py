"""Read flowkit feature shards: every video's features with their windows, via index.json.

Usage:  python examples/read_features.py OUT_DIR [VIDEO_ID]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import h5py


def main(out_dir: Path, video_id: str | None = None) -> None:
    index = json.loads((out_dir / "index.json").read_text())
    for vid in [video_id] if video_id else sorted(index):
        with h5py.File(out_dir / index[vid], "r") as shard:
            group = shard[vid]
            names = [k for k in group if not k.startswith(("frame_indices", "timestamps"))]
            print(f"{vid}: {group.attrs['num_frames']} frames, model {group.attrs['model']}")
            for name in names:
                print(f"  {name}: {group[name].shape} {group[name].dtype}")
            windows = zip(group["frame_indices"][:3], group["timestamps"][:3], strict=True)
            for (start, end), (t0, t1) in windows:
                print(f"  window frames [{start}, {end}) = {t0:.2f}s .. {t1:.2f}s")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None)
