"""JPEG encoders: OpenCV (libjpeg-turbo, the default on CPU) or torchvision's encode_jpeg (nvJPEG on CUDA).

The encoder changes output bytes, so the choice is resolved from 'auto' when the config is built and
recorded in the job config: `torchvision` when the run's device is CUDA, else `opencv`. The torchvision
path runs the same code on CPU tensors (tested) and on CUDA tensors (a batch per call).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np

from flowkit.errors import ConfigError

JPEG_ENCODERS = ("auto", "opencv", "torchvision")
Encoder = Callable[[Sequence[np.ndarray], int], list[bytes]]


def resolve_jpeg_encoder(name: str, device: str) -> str:
    """'auto' -> 'torchvision' for a CUDA device (when CUDA is present), else 'opencv'; checks the name."""
    if name not in JPEG_ENCODERS:
        raise ConfigError(f"unknown JPEG encoder {name!r}; choose from {', '.join(JPEG_ENCODERS)}")
    if name != "auto":
        return name
    if device.startswith("cuda") or device == "auto":
        import torch

        if torch.cuda.is_available():
            return "torchvision"
    return "opencv"


def opencv_jpeg(images: Sequence[np.ndarray], quality: int) -> list[bytes]:
    """cv2.imencode each gray or BGR uint8 image."""
    from flowkit.outputs.rawframes import encode_image

    return [encode_image(image, "jpg", quality) for image in images]


class TorchvisionJpeg:
    """torchvision.io.encode_jpeg on `device`: one call per batch (nvJPEG batches on CUDA)."""

    def __init__(self, device: str = "cpu") -> None:
        import torch

        self.device = torch.device(device)

    def __call__(self, images: Sequence[np.ndarray], quality: int) -> list[bytes]:
        """Gray (H,W) or BGR (H,W,3) uint8 images -> JPEG bytes."""
        import torch
        from torchvision.io import encode_jpeg

        tensors = [self._tensor(image).to(self.device, non_blocking=True) for image in images]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision 0.29 marks its image I/O deprecated
            encoded = encode_jpeg(tensors, quality=int(quality))
        return [bytes(t.cpu().numpy()) if isinstance(t, torch.Tensor) else bytes(t) for t in encoded]

    @staticmethod
    def _tensor(image: np.ndarray) -> object:
        import torch

        if image.ndim == 2:
            return torch.from_numpy(np.ascontiguousarray(image))[None]
        return torch.from_numpy(np.ascontiguousarray(image[:, :, ::-1])).permute(2, 0, 1)  # BGR -> RGB CHW


def make_jpeg_encoder(name: str, device: str) -> Encoder:
    """The encoder function for a resolved name ('opencv' or 'torchvision')."""
    if name == "torchvision":
        return TorchvisionJpeg(device if device.startswith("cuda") else "cpu")
    return opencv_jpeg
