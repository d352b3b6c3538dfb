"""RAFT optical flow (torchvision ``raft_large`` / ``raft_small``) as a batched flow engine.

Weights load from a local file in torchvision's key names (``raft_large_C_T_SKHT_V2-ff5fadd5.pth``;
``C_T_SKHT_V1`` is torchvision's port of the original ``raft-sintel.pth`` that video_features uses),
or, for ``raft_large``, in the original princeton-vl/RAFT names (``raft-sintel.pth``, ``raft-things.pth``:
``module.fnet.*``, ``cnet.*``, ``update_block.{encoder,gru,flow_head,mask}.*``), renamed here.
RAFT reads colour: engines with ``color = True`` receive BGR uint8 (B, H, W, 3) frames (gray input
is replicated to three channels, a fallback that differs from colour RAFT).

video_features' RAFT settings are the defaults: 20 refinement iterations, images scaled to [-1, 1],
replicate padding to a multiple of 8 split evenly between the sides (its ``InputPadder`` "sintel"
mode). video_features never removes that padding before its centre crop; ``keep_padding=True`` does
the same (the flow is then the padded size). Otherwise the padding is cut off and the flow has the
frames' size, as every engine's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from flowkit.errors import ConfigError, EngineUnavailableError
from flowkit.flow import register_engine

RAFT_MODELS = ("large", "small")


def pad_to_multiple(x: torch.Tensor, multiple: int = 8) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Replicate-pad (B, C, H, W) so H and W divide ``multiple``, half on each side (extra at the end)."""
    ph = (-x.shape[-2]) % multiple
    pw = (-x.shape[-1]) % multiple
    pads = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
    return (F.pad(x, pads, mode="replicate") if any(pads) else x), pads


def _unpad(flow: torch.Tensor, pads: tuple[int, int, int, int]) -> torch.Tensor:
    left, right, top, bottom = pads
    return flow[..., top:flow.shape[-2] - bottom, left:flow.shape[-1] - right]


def _as_rgb(frames: np.ndarray) -> torch.Tensor:
    """uint8 BGR (B, H, W, 3) or gray (B, H, W) -> float RGB (B, 3, H, W) in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(frames))
    x = x.permute(0, 3, 1, 2).flip(1) if x.ndim == 4 else x[:, None].expand(-1, 3, -1, -1)
    return x.float() * (2.0 / 255.0) - 1.0


def _check_pairs(prev: np.ndarray, nxt: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    a, b = np.asarray(prev), np.asarray(nxt)
    if a.shape != b.shape or a.dtype != np.uint8 or b.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 and the same shape, got {a.dtype}{a.shape}, "
                         f"{b.dtype}{b.shape}")
    single = a.ndim == 2 or (a.ndim == 3 and a.shape[-1] == 3)
    if single:
        a, b = a[None], b[None]
    if a.ndim not in (3, 4) or a.shape[0] == 0:
        raise ValueError(f"frames must be (B,H,W,3) BGR or (B,H,W) gray, got {a.shape}")
    return a, b, single


_ORIGINAL_UPDATE = {
    "encoder.convc1": "motion_encoder.convcorr1.0", "encoder.convc2": "motion_encoder.convcorr2.0",
    "encoder.convf1": "motion_encoder.convflow1.0", "encoder.convf2": "motion_encoder.convflow2.0",
    "encoder.conv": "motion_encoder.conv.0", "flow_head.conv1": "flow_head.conv1",
    "flow_head.conv2": "flow_head.conv2",
    **{f"gru.conv{g}{n}": f"recurrent_block.convgru{n}.conv{g}" for g in "zrq" for n in (1, 2)},
}
_ORIGINAL_BLOCK = {"conv1": "convnormrelu1.0", "norm1": "convnormrelu1.1", "conv2": "convnormrelu2.0",
                   "norm2": "convnormrelu2.1", "downsample.0": "downsample.0", "downsample.1": "downsample.1"}


def _from_original(key: str) -> str | None:
    """princeton-vl/RAFT (RAFT-large) key -> torchvision key; None for the duplicate ``norm3`` keys."""
    head, _, rest = key.partition(".")
    if head in ("fnet", "cnet"):
        encoder = "feature_encoder" if head == "fnet" else "context_encoder"
        module, _, param = rest.rpartition(".")
        if module in ("conv1", "norm1"):
            return f"{encoder}.convnormrelu.{0 if module == 'conv1' else 1}.{param}"
        if module == "conv2":
            return f"{encoder}.conv.{param}"
        layer, block, name = module.split(".", 2)
        if name == "norm3":  # the same tensors as downsample.1
            return None
        return f"{encoder}.{layer}.{block}.{_ORIGINAL_BLOCK.get(name, name)}.{param}"
    if head == "update_block":
        module, _, param = rest.rpartition(".")
        if module in ("mask.0", "mask.2"):
            return f"mask_predictor.{'convrelu.0' if module == 'mask.0' else 'conv'}.{param}"
        return f"update_block.{_ORIGINAL_UPDATE.get(module, module)}.{param}"
    return key


def torchvision_raft_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A RAFT state dict in torchvision's names: original princeton-vl files are renamed."""
    if "fnet.conv1.weight" not in state or "update_block.gru.convz1.weight" not in state:
        return state
    renamed = {_from_original(k): v for k, v in state.items()}
    return {k: v for k, v in renamed.items() if k is not None}


def load_raft(model: str, weights: str | Path) -> tuple[torch.nn.Module, str, str | None]:
    """torchvision RAFT with a local state dict loaded strictly -> (net, git-blob sha1, known name)."""
    from flowkit.models.extras import require
    from flowkit.models.weights import git_blob_sha1, known_name, read_state_dict

    if model not in RAFT_MODELS:
        raise ConfigError(f"raft model must be one of {RAFT_MODELS}, got {model!r}")
    try:
        flow_models = require("torchvision.models.optical_flow")
    except ConfigError as exc:
        raise EngineUnavailableError(str(exc)) from None
    net = getattr(flow_models, f"raft_{model}")(weights=None, progress=False)
    state, _ = read_state_dict(weights)
    state = torchvision_raft_state(state)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(f"{weights}: not torchvision raft_{model} weights ({first})") from None
    sha1 = git_blob_sha1(weights)
    return net.eval(), sha1, known_name(weights, sha1)


class RaftEngine:
    """Batched RAFT on the device: (B, H, W, 3) BGR pairs -> float32 (B, 2, H, W) flow in pixels."""

    name = "raft"
    color = True

    def __init__(self, device: str = "cpu", weights: str | None = None, model: str = "large",
                 iterations: int = 20, keep_padding: bool = False) -> None:
        if weights is None:
            raise ConfigError("the raft engine needs local weights: --raft-weights PATH (torchvision "
                              "raft_large_C_T_SKHT_V2-ff5fadd5.pth or another raft_large/raft_small file)")
        if iterations < 1:
            raise ConfigError(f"raft iterations must be >= 1, got {iterations}")
        self.device, self.iterations, self.keep_padding = device, int(iterations), bool(keep_padding)
        net, self.sha1, self.known_name = load_raft(model, weights)
        self.net = net.to(device)

    @torch.inference_mode()
    def __call__(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        """uint8 (B,H,W,3) BGR pairs -> (B,2,H,W) flow (x then y); single pairs without B."""
        a, b, single = _check_pairs(prev, nxt)
        x1, pads = pad_to_multiple(_as_rgb(a).to(self.device))
        x2, _ = pad_to_multiple(_as_rgb(b).to(self.device))
        flow = self.net(x1, x2, num_flow_updates=self.iterations)[-1]
        if not self.keep_padding:
            flow = _unpad(flow, pads)
        out = flow.float().cpu().numpy()
        return out[0] if single else out


def raft_engine(device: str, **params: Any) -> RaftEngine:
    """Registry factory."""
    return RaftEngine(device, **params)


def engine_input(engine: Any, bgr: np.ndarray) -> np.ndarray:
    """What an engine reads from a decoded BGR frame: the frame itself for colour engines, else gray."""
    if getattr(engine, "color", False):
        return bgr
    from flowkit.video import to_gray

    return to_gray(bgr)


register_engine("raft", devices=("cpu", "cuda"))(raft_engine)
