"""Optional GPU I/O paths, tested on the CPU: torchcodec decoder choice, torchvision JPEG encoder."""

from __future__ import annotations

import importlib.util
import json

import cv2
import numpy as np
import pytest
from clirun import run

from flowkit.decoders import DecodeOptions, load_torchcodec
from flowkit.errors import ConfigError
from flowkit.inputs import VideoItem
from flowkit.outputs.jpeg import TorchvisionJpeg, resolve_jpeg_encoder
from flowkit.pipelines.flow import FlowConfig, extract_video
from flowkit.synthetic import texture
from flowkit.video import read_all


def test_torchvision_jpeg_on_cpu_tensors_matches_the_images():
    bgr = texture(48, 64)
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    color_jpg, gray_jpg = TorchvisionJpeg("cpu")([bgr, gray], 95)
    back = cv2.imdecode(np.frombuffer(color_jpg, np.uint8), cv2.IMREAD_COLOR)
    cv2_back = cv2.imdecode(cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])[1], cv2.IMREAD_COLOR)
    error, cv2_error = np.abs(back.astype(int) - bgr).mean(), np.abs(cv2_back.astype(int) - bgr).mean()
    assert back.shape == bgr.shape and error < cv2_error + 1  # BGR order kept (swapped: ~40)
    back_gray = cv2.imdecode(np.frombuffer(gray_jpg, np.uint8), cv2.IMREAD_UNCHANGED)
    assert back_gray.shape == gray.shape and np.abs(back_gray.astype(int) - gray).mean() < 3


def test_jpeg_encoder_is_resolved_and_recorded(make_video, tmp_path):
    assert resolve_jpeg_encoder("auto", "cpu") == "opencv"
    with pytest.raises(ConfigError):
        resolve_jpeg_encoder("nvjpeg", "cpu")
    video = make_video(n=4)
    cfg = FlowConfig(algorithm="dis", jpeg_encoder="torchvision")
    record = extract_video(VideoItem("v", video), tmp_path / "v", cfg, "cpu")
    assert record["flow"] == 3 and cfg.output_config()["jpeg_encoder"] == "torchvision"
    for name in ("img_00004.jpg", "flow_x_00003.jpg", "flow_y_00001.jpg"):
        assert cv2.imread(str(tmp_path / "v" / name)) is not None
    out = tmp_path / "cli"
    assert run("extract-flow", video, "-o", out, "-a", "dis").exit_code == 0
    config = json.loads((out / ".flowkit" / "job.json").read_text())["config"]
    assert config["jpeg_encoder"] == "opencv" and config["decode"]["decoder"] == "pyav"


def test_torchcodec_decoder_or_one_clear_error(make_video):
    """Where torchcodec loads, it decodes like pyav; where FFmpeg's libraries are missing, one clear line."""
    video = make_video(n=6)
    try:
        load_torchcodec()
    except ConfigError as exc:
        installed = importlib.util.find_spec("torchcodec") is not None
        cause = "cannot load FFmpeg's shared libraries" if installed else "pip install 'flowkit[gpu-io]'"
        assert cause in str(exc) and "\n" not in str(exc)
        assert not installed or "not found" in str(exc)
        result = run("sample-frames", video, "-o", video.parent / "out", "--decoder", "torchcodec")
        assert result.exit_code == 2 and cause in result.output
        return
    frames, reader = read_all(video, options=DecodeOptions(decoder="torchcodec"))
    reference, _ = read_all(video, options=DecodeOptions(decoder="pyav"))
    assert reader.num_frames == 6
    diff = max(np.abs(a.image.astype(int) - b.image).max() for a, b in zip(frames, reference, strict=True))
    assert diff <= 3


def test_gpu_frames_are_interleaved_on_the_device_with_the_same_pixels():
    """torchcodec's NVDEC frames flip and interleave on the GPU; that branch, run on CPU data, equals the
    CPU branch (and cv2's RGB->BGR)."""
    import torch

    from flowkit.decoders import chw_rgb_to_bgr

    class OnDevice:  # a CPU tensor that reports a GPU: runs the device branch here
        def __init__(self, t: torch.Tensor) -> None:
            self.t, self.device = t, torch.device("cuda")

        def flip(self, dim: int) -> torch.Tensor:
            return self.t.flip(dim)

    chw = torch.randint(0, 256, (3, 37, 53), dtype=torch.uint8)
    expected = cv2.cvtColor(np.ascontiguousarray(chw.permute(1, 2, 0).numpy()), cv2.COLOR_RGB2BGR)
    for out in (chw_rgb_to_bgr(chw), chw_rgb_to_bgr(OnDevice(chw))):
        assert out.flags.c_contiguous and np.array_equal(out, expected)
