"""Clip preprocessing: known values after mean and scaling, exact crop offsets, mean files."""

from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest

from flowkit.errors import CheckpointError
from flowkit.flow.quantize import quantize
from flowkit.models.preprocess import (
    C3D_DAVIDEA_PREDICT,
    C3D_SPORTS1M_MEAN_BGR,
    center_crop_offsets,
    load_mean_file,
    preprocess_c3d,
    preprocess_i3d_flow,
    preprocess_i3d_rgb,
    resize_short_side,
)


def _frames(t: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


# --- C3D (Caffe convention) ---

def test_c3d_constant_frame_gives_bgr_minus_sports1m_mean():
    frames = np.empty((16, 64, 64, 3), np.uint8)
    frames[...] = (100, 110, 120)  # B, G, R
    clip = preprocess_c3d(frames)
    assert clip.shape == (3, 16, 112, 112) and clip.dtype.is_floating_point
    expected = [100 - 90.25, 110 - 97.66, 120 - 101.41]
    for channel, value in enumerate(expected):
        np.testing.assert_allclose(clip[channel].numpy(), value, atol=1e-4)


def test_c3d_crop_offsets_are_8_and_29():
    frames = _frames(16, 128, 171)  # already 171x128: the resize must leave it unchanged
    clip = preprocess_c3d(frames, mean=None).numpy()
    np.testing.assert_array_equal(clip, frames[:, 8:120, 29:141].transpose(3, 0, 1, 2))


def test_c3d_resizes_to_171x128_with_inter_linear():
    frames = _frames(2, 90, 160)
    resized = np.stack([cv2.resize(f, (171, 128), interpolation=cv2.INTER_LINEAR) for f in frames])
    clip = preprocess_c3d(frames, mean=None).numpy()
    np.testing.assert_array_equal(clip, resized[:, 8:120, 29:141].transpose(3, 0, 1, 2))


def test_c3d_full_mean_volume_is_subtracted_at_the_crop_position():
    frames = _frames(16, 128, 171)
    mean = np.random.default_rng(1).uniform(80, 120, (1, 3, 16, 128, 171)).astype(np.float32)
    clip = preprocess_c3d(frames, mean=mean).numpy()
    expected = frames[:, 8:120, 29:141].transpose(3, 0, 1, 2) - mean[0, :, :, 8:120, 29:141]
    np.testing.assert_allclose(clip, expected, atol=1e-4)
    with pytest.raises(ValueError, match="16 frames but the clip has 8"):
        preprocess_c3d(frames[:8], mean=mean)


def test_c3d_davidea_legacy_is_rgb_without_mean():
    frames = _frames(16, 112, 200)
    clip = preprocess_c3d(frames, **C3D_DAVIDEA_PREDICT).numpy()
    # predict.py keeps columns 44:156 of the 112x200 frame, channels in R, G, B order.
    np.testing.assert_array_equal(clip, frames[:, :, 44:156, ::-1].transpose(3, 0, 1, 2))


def test_c3d_rgb_with_mean_reorders_the_bgr_mean_too():
    frames = np.zeros((16, 128, 171, 3), np.uint8)
    clip = preprocess_c3d(frames, rgb=True).numpy()
    np.testing.assert_allclose(clip[:, 0, 0, 0], [-m for m in C3D_SPORTS1M_MEAN_BGR[::-1]])


@pytest.mark.parametrize("bad", [np.zeros((16, 64, 64), np.uint8), np.zeros((16, 8, 8, 3)),
                                 np.zeros((0, 8, 8, 3), np.uint8)])
def test_c3d_rejects_bad_frames(bad):
    with pytest.raises(ValueError, match="frames must be"):
        preprocess_c3d(bad)


# --- I3D ---

def test_center_crop_offsets_floor_and_half_to_even():
    assert center_crop_offsets(256, 340, 224) == (16, 58)
    assert center_crop_offsets(259, 261, 224) == (17, 18)  # floor(17.5), floor(18.5)
    assert center_crop_offsets(259, 261, 224, "round") == (18, 18)  # np.round: half to even
    with pytest.raises(ValueError, match="cannot crop"):
        center_crop_offsets(200, 300, 224)


def test_resize_short_side_keeps_aspect_and_truncates():
    assert resize_short_side(240, 320, 256) == (256, 341)  # 341.33 truncated
    assert resize_short_side(320, 240, 256) == (341, 256)
    assert resize_short_side(256, 256, 128) == (128, 128)


def test_i3d_rgb_scaling_and_channel_order():
    frames = np.empty((9, 256, 300, 3), np.uint8)
    frames[...] = (0, 51, 255)  # B, G, R
    clip = preprocess_i3d_rgb(frames).numpy()
    assert clip.shape == (3, 9, 224, 224)
    np.testing.assert_allclose(clip[:, 0, 0, 0], [1.0, 51 / 127.5 - 1, -1.0], atol=1e-6)


def test_i3d_rgb_crop_offsets_are_exact():
    frames = _frames(4, 256, 340)  # short side already 256: no resize
    clip = preprocess_i3d_rgb(frames).numpy()
    expected = frames[:, 16:240, 58:282, ::-1].transpose(3, 0, 1, 2) / 127.5 - 1
    np.testing.assert_allclose(clip, expected, atol=1e-6)
    rounded = preprocess_i3d_rgb(_frames(2, 259, 300), short_side=None, crop_rounding="round")
    floor = preprocess_i3d_rgb(_frames(2, 259, 300), short_side=None)
    np.testing.assert_array_equal(rounded[:, :, :-1].numpy(), floor[:, :, 1:].numpy())


def test_i3d_rgb_resizes_short_side_with_inter_linear():
    frames = _frames(2, 120, 160)
    clip = preprocess_i3d_rgb(frames).numpy()
    rgb = [cv2.resize(f[..., ::-1].copy(), (341, 256), interpolation=cv2.INTER_LINEAR)
           for f in frames]
    expected = np.stack(rgb)[:, 16:240, 58:282].transpose(3, 0, 1, 2) / 127.5 - 1
    np.testing.assert_allclose(clip, expected, atol=1e-6)


def test_i3d_flow_clips_and_scales_float_flow():
    flow = np.zeros((9, 2, 256, 256), np.float32)
    flow[:, 0] = 30.0  # beyond the bound: clipped to +1
    flow[:, 1] = -10.0
    clip = preprocess_i3d_flow(flow).numpy()
    assert clip.shape == (2, 9, 224, 224)
    np.testing.assert_allclose(clip[0], 1.0)
    np.testing.assert_allclose(clip[1], -0.5)


def test_i3d_flow_accepts_quantized_levels():
    levels = np.array([0, 128, 255], np.uint8).reshape(1, 1, 1, 3).repeat(2, axis=1)
    levels = np.tile(levels, (1, 1, 224, 75))[..., :224]
    clip = preprocess_i3d_flow(levels, short_side=None).numpy()
    np.testing.assert_allclose(clip[:, 0, 0, :3], [[-1, 128 / 127.5 - 1, 1]] * 2, atol=1e-6)


def test_i3d_flow_quantized_path_matches_float_within_half_a_level():
    flow = np.random.default_rng(2).uniform(-25, 25, (3, 2, 240, 320)).astype(np.float32)
    from_float = preprocess_i3d_flow(flow).numpy()
    from_levels = preprocess_i3d_flow(quantize(flow, 20.0)).numpy()
    assert np.abs(from_float - from_levels).max() <= 1 / 255 + 1e-6


def test_i3d_flow_rejects_bad_shapes_and_dtypes():
    with pytest.raises(ValueError, match="flow must be"):
        preprocess_i3d_flow(np.zeros((4, 256, 256, 2), np.float32))
    with pytest.raises(ValueError, match="float .* or uint8"):
        preprocess_i3d_flow(np.zeros((4, 2, 256, 256), np.int16))


# --- mean files ---

def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _blobproto(mean: np.ndarray, packed: bool = True) -> bytes:
    """Encode a C3D BlobProto by hand: num=1, channels=2, length=3, height=4, width=5, data=6."""
    out = b"".join(_varint(field << 3) + _varint(dim) for field, dim in zip(range(1, 6),
                                                                            mean.shape,
                                                                            strict=True))
    values = mean.astype("<f4").ravel()
    if packed:
        payload = values.tobytes()
        return out + _varint(6 << 3 | 2) + _varint(len(payload)) + payload
    return out + b"".join(_varint(6 << 3 | 5) + struct.pack("<f", v) for v in values)


@pytest.mark.parametrize("packed", [True, False])
def test_binaryproto_mean_is_parsed(tmp_path, packed):
    mean = np.random.default_rng(3).uniform(0, 255, (1, 3, 2, 4, 5)).astype(np.float32)
    path = tmp_path / "sport1m_train16_128_mean.binaryproto"
    path.write_bytes(_blobproto(mean, packed))
    loaded = load_mean_file(path)
    assert loaded.shape == (1, 3, 2, 4, 5) and loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, mean)


def test_npy_mean_is_loaded_and_used(tmp_path):
    mean = np.full((1, 3, 16, 128, 171), 50.0, np.float32)
    np.save(tmp_path / "c3d_mean.npy", mean)
    loaded = load_mean_file(tmp_path / "c3d_mean.npy")
    clip = preprocess_c3d(np.full((16, 128, 171, 3), 60, np.uint8), mean=loaded)
    np.testing.assert_allclose(clip.numpy(), 10.0)


def test_bad_mean_files_are_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_mean_file(tmp_path / "missing.binaryproto")
    blob = _blobproto(np.zeros((1, 3, 2, 4, 5), np.float32))
    (tmp_path / "cut.binaryproto").write_bytes(blob[:-7])
    with pytest.raises(CheckpointError, match="truncated"):
        load_mean_file(tmp_path / "cut.binaryproto")
    np.save(tmp_path / "flat.npy", np.zeros(10, np.float32))
    with pytest.raises(CheckpointError, match=r"must be \(1, 3, L, H, W\)"):
        load_mean_file(tmp_path / "flat.npy")
