"""Test-time crops: centre, three along the long side, and ten (corners + centre, then flipped).

Boxes are (top, left) squares of ``size`` in a frame of ``height`` x ``width``. The centre offset is
``round((H - size) / 2)`` half to even, as torchvision's ``center_crop``. Orders:

* 1: centre.
* 3: start, centre, end along the long side (left/centre/right for a landscape frame; top/centre/
  bottom for a portrait one), PySlowFast's ``spatial_idx`` 0, 1, 2.
* 10: top-left, top-right, centre, bottom-left, bottom-right, then the same five boxes cut from the
  horizontally flipped frame: the order of ``oversample_data`` in Finspire13/pytorch-i3d-feature-
  extraction, which the UCF-Crime / XD-Violence "I3D 10-crop" features follow.

Flipping a flow frame mirrors it and negates its x channel (a rightward motion becomes leftward);
the I3D feature scripts above mirror flow without negating x, so flipped flow crops differ there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CROP_COUNTS = (1, 3, 10)


@dataclass(frozen=True)
class CropBox:
    """A square crop: top-left corner, side, and whether it is cut from the mirrored frame."""

    top: int
    left: int
    size: int
    flip: bool = False


def _centre(length: int, size: int) -> int:
    return int(round((length - size) / 2.0))


def crop_boxes(height: int, width: int, size: int, count: int) -> list[CropBox]:
    """The ``count`` (1, 3 or 10) crop boxes of side ``size`` in a ``height`` x ``width`` frame."""
    if count not in CROP_COUNTS:
        raise ValueError(f"crops must be one of {CROP_COUNTS}, got {count}")
    if height < size or width < size:
        raise ValueError(f"cannot crop {size}x{size} from {height}x{width}")
    top, left = _centre(height, size), _centre(width, size)
    if count == 1:
        return [CropBox(top, left, size)]
    if count == 3:
        if width >= height:
            return [CropBox(top, x, size) for x in (0, left, width - size)]
        return [CropBox(y, left, size) for y in (0, top, height - size)]
    bottom, right = height - size, width - size
    five = [(0, 0), (0, right), (top, left), (bottom, 0), (bottom, right)]
    return [CropBox(y, x, size, flip) for flip in (False, True) for y, x in five]


def apply_crops(x: torch.Tensor, boxes: list[CropBox], channel_axis: int,
                flow: bool = False) -> torch.Tensor:
    """Cut ``boxes`` from ``x`` (..., H, W) -> stacked crops on a new leading axis.

    A flipped crop is cut from the mirrored tensor; for ``flow`` (channel 0 = x) its x is negated.
    """
    mirrored = x.flip(-1) if any(b.flip for b in boxes) else x
    out = []
    for box in boxes:
        source = mirrored if box.flip else x
        crop = source[..., box.top:box.top + box.size, box.left:box.left + box.size].clone()
        if flow and box.flip:
            index = [slice(None)] * crop.ndim
            index[channel_axis] = 0
            crop[tuple(index)] = -crop[tuple(index)]
        out.append(crop)
    return torch.stack(out)
