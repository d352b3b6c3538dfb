"""VideoMAE (Tong et al., NeurIPS 2022) via ``transformers``, loaded from a local checkpoint folder.

The folder is what ``save_pretrained`` writes (``config.json`` + ``model.safetensors`` or
``pytorch_model.bin``), e.g. a local copy of ``MCG-NJU/videomae-base-finetuned-kinetics``; nothing
is fetched from the hub. The network is transformers' ``VideoMAEForVideoClassification``; its config
comes from the folder. Default layer ``pooled``: what the classifier reads, the ``fc_norm`` of the
mean of the last hidden states (``use_mean_pooling``, the fine-tuned checkpoints), 768-d for base.
Map: the last hidden states as (C, T/2, h, w) averaged over time. Input: 16 frames (the model's
``num_frames``), short side 224, centre crop 224, ImageNet mean/std (the checkpoints'
``preprocessor_config.json``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from flowkit.errors import CheckpointError
from flowkit.models.extras import require

__all__ = ["VideoMAE"]

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class VideoMAE(nn.Module):
    """transformers' VideoMAE classifier with ``extract`` / ``extract_map`` on (B, 3, T, H, W)."""

    in_chans = 3
    first_conv = "net.videomae.embeddings.patch_embeddings.projection"
    classifier = "net.classifier"
    default_layer = "pooled"
    map_layer = "tokens"

    def __init__(self, num_classes: int = 400, **config: object) -> None:
        super().__init__()
        transformers = require("transformers")
        cfg = transformers.VideoMAEConfig(num_labels=max(num_classes, 1), use_mean_pooling=True, **config)
        self._build(transformers.VideoMAEForVideoClassification(cfg))

    def _build(self, net: nn.Module) -> None:
        self.net = net.eval()
        cfg = net.config
        self.num_features = cfg.hidden_size
        self.num_classes = cfg.num_labels
        self.min_clip_len = cfg.num_frames
        self.feature_dims = {"pooled": cfg.hidden_size, "logits": cfg.num_labels}

    def reset_classifier(self, num_classes: int) -> None:
        """Replace (0: remove) the classifier."""
        self.net.classifier = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        self.num_classes = num_classes
        self.feature_dims["logits"] = num_classes

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.net.config
        if x.ndim != 5 or x.shape[1] != 3 or x.shape[2] != cfg.num_frames:
            raise ValueError(f"VideoMAE expects (B, 3, {cfg.num_frames}, {cfg.image_size}, "
                             f"{cfg.image_size}), got {tuple(x.shape)}")
        return self.net.videomae(x.transpose(1, 2)).last_hidden_state  # transformers takes (B, T, C, H, W)

    def _pooled(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.net.fc_norm is not None:
            return self.net.fc_norm(tokens.mean(1))
        return tokens[:, 0]

    def extract(self, x: torch.Tensor, layer: str | None = None) -> torch.Tensor:
        """(B, D): ``pooled`` (the classifier's input) or ``logits``."""
        layer = layer or self.default_layer
        if layer not in self.feature_dims:
            raise ValueError(f"unknown VideoMAE layer {layer!r}; choose one of {tuple(self.feature_dims)}")
        pooled = self._pooled(self._tokens(x))
        return self.net.classifier(pooled) if layer == "logits" else pooled

    def extract_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w): the last hidden states on the (T/tubelet, h, w) grid, averaged over time."""
        tokens = self._tokens(x)
        cfg = self.net.config
        side = cfg.image_size // cfg.patch_size
        grid = tokens.reshape(x.shape[0], cfg.num_frames // cfg.tubelet_size, side, side, -1)
        return grid.mean(dim=1).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits."""
        return self.extract(x, "logits")

    def load_folder(self, folder: str | Path, drop_head: bool = False) -> tuple[Path, list[str]]:
        """Load a ``save_pretrained`` folder (its config decides the size); returns (weights file, notes).

        Every encoder weight must be in the folder (a checkpoint without ``fc_norm`` or encoder keys
        is refused); only a missing classifier is tolerated, and only with ``drop_head``.
        """
        folder = Path(folder)
        weights = next((folder / f for f in _WEIGHT_FILES if (folder / f).is_file()), None)
        if weights is None or not (folder / "config.json").is_file():
            raise CheckpointError(folder, "not a transformers checkpoint folder (needs config.json and "
                                          f"one of {', '.join(_WEIGHT_FILES)})")
        transformers = require("transformers")
        try:
            net, info = transformers.VideoMAEForVideoClassification.from_pretrained(
                folder, local_files_only=True, output_loading_info=True)
        except (OSError, ValueError) as exc:
            raise CheckpointError(folder, f"cannot load: {str(exc).splitlines()[0]}") from exc
        missing = [k for k in info["missing_keys"] if not (drop_head and k.startswith("classifier."))]
        if missing or info.get("mismatched_keys"):
            raise CheckpointError(folder, f"keys do not match VideoMAE: missing {missing[:4]} "
                                          f"mismatched {list(info.get('mismatched_keys') or [])[:4]}")
        unexpected = list(info["unexpected_keys"])
        notes = [f"ignored {len(unexpected)} keys (e.g. {unexpected[0]})"] if unexpected else []
        self._build(net)
        if drop_head:
            self.reset_classifier(0)
            notes.append("classifier removed (features only)")
        return weights, notes
