"""Models loaded once per worker and device, run on batches of preprocessed clips."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from flowkit.errors import ConfigError

log = logging.getLogger("flowkit")

AMP_DTYPES = {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class LoadedStream:
    """One stream's model with where its weights came from."""

    model: torch.nn.Module
    sha1: str | None
    known_name: str | None


class Extractor:
    """The models of a features run on one device; `vectors`/`maps` run a batch of clips of a stream."""

    def __init__(
        self,
        model_name: str,
        streams: Sequence[str],
        weights: dict[str, str | None],
        model_kwargs: dict[str, Any],
        device: str,
        amp: str = "none",
    ) -> None:
        from flowkit.flow import resolve_device

        self.device = resolve_device(device)
        self.amp = AMP_DTYPES[amp]
        self.streams = {s: self._load(model_name, s, weights.get(s), model_kwargs) for s in streams}

    def _load(self, name: str, stream: str, weights: str | None, kwargs: dict[str, Any]) -> LoadedStream:
        from flowkit.models import create_model
        from flowkit.models.weights import load_checkpoint

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # library models initialise themselves: make --random-weights repeatable
            model = create_model(name, stream=stream, **kwargs)
        sha1 = known = None
        if weights is None:
            random_init(model, seed=0)
        else:
            info = load_checkpoint(model, weights, stream=stream, drop_head=True)
            sha1, known = info.sha1, info.known_name
            log.info("%s weights: %s (git blob %s%s)", stream, weights, sha1, f", {known}" if known else "")
        return LoadedStream(model.to(self.device).eval(), sha1, known)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.split(":")[0], dtype=self.amp)

    @torch.inference_mode()
    def vectors(self, stream: str, clips: Sequence[torch.Tensor], layer: str) -> np.ndarray:
        """(B, D) float32 features of `layer` for a batch of (C, T, H, W) clips."""
        batch = torch.stack(list(clips)).to(self.device, non_blocking=True)
        with self._autocast():
            out = self.streams[stream].model.extract(batch, layer)
        return out.float().cpu().numpy()

    @torch.inference_mode()
    def maps(self, stream: str, clips: Sequence[torch.Tensor]) -> np.ndarray:
        """(B, C, h, w) float32 spatial maps (I3D Mixed_5c, C3D pool5) for a batch of clips."""
        batch = torch.stack(list(clips)).to(self.device, non_blocking=True)
        with self._autocast():
            out = self.streams[stream].model.extract_map(batch)
        return out.float().cpu().numpy()

    @torch.inference_mode()
    def vectors_and_maps(
        self, stream: str, images: torch.Tensor, layer: str, wants_map: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Frame encoders: (B, D) vectors of `layer` and (B, C, h, w) maps from one forward pass."""
        batch = images.to(self.device, non_blocking=True)
        model = self.streams[stream].model
        with self._autocast():
            if wants_map:
                vectors, maps = model.extract_with_map(batch, layer)
            else:
                vectors, maps = model.extract(batch, layer), None
        out_maps = None if maps is None else maps.float().cpu().numpy()
        return vectors.float().cpu().numpy(), out_maps


def random_init(model: torch.nn.Module, seed: int = 0) -> None:
    """Seeded, signal-preserving random weights (He-normal convs, identity BatchNorm) for --random-weights.

    PyTorch's default init shrinks activations layer by layer, so a deep random I3D would output the same
    vector for every clip; these weights keep the features input-dependent and reproducible run to run.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in model.modules():
            if isinstance(module, torch.nn.Conv3d | torch.nn.Linear):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                if module.bias is not None:
                    torch.nn.init.zeros_(module.bias)
            elif isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.reset_parameters()


_cache: dict[tuple[Any, ...], Extractor] = {}
_cache_lock = threading.Lock()


def extractor_for(key: tuple[Any, ...], build: Any) -> Extractor:
    """One Extractor per worker process and configuration (models stay loaded across videos). Threads of
    the threading backend share it: it is built once, under a lock (two builds at once would also
    interleave their draws from torch's seeded generator, so --random-weights would differ)."""
    with _cache_lock:
        if key not in _cache:
            _cache.clear()  # a worker serves one configuration at a time; free the previous models
            _cache[key] = build()
        return _cache[key]


def check_amp(amp: str) -> str:
    """Validate an --amp choice."""
    if amp not in AMP_DTYPES:
        raise ConfigError(f"--amp must be one of {', '.join(AMP_DTYPES)}, got {amp!r}")
    return amp
