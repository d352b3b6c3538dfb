"""Load local C3D/I3D checkpoints: identify the file, detect its key layout, remap, load strictly.

Accepted layouts ("schemes"): C3D ``davidea`` (``c3d.pickle``) and ``sequential``
(``features.N``/``classifier.N``); I3D ``piergiaj``, ``hassony2`` (also video_features) and ``tf``
(TF variable names saved as tensors); and ``flowkit`` files written by :func:`save_checkpoint`.
Nothing is downloaded: users pass a path, and the file's git-blob SHA-1 names the public release.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from flowkit.errors import CheckpointError, ConfigError
from flowkit.models import c3d, i3d

__all__ = [
    "KNOWN_CHECKPOINTS",
    "KNOWN_SHA256",
    "STREAM_CHANNELS",
    "CheckpointInfo",
    "file_sha256",
    "git_blob_sha1",
    "known_name",
    "load_checkpoint",
    "read_state_dict",
    "save_checkpoint",
]

logger = logging.getLogger("flowkit")

# Git blob ids of the public weight files, as recorded in their repositories (reference §7.6);
# video_features ships the hassony2 files byte-identical as i3d_rgb.pt / i3d_flow.pt.
KNOWN_CHECKPOINTS: dict[str, str] = {
    "73a4fd1d87eb3dbd97f33a9779fa1caa3d28111a": "piergiaj/rgb_imagenet.pt",
    "ef0e7c282a102f76b14b52643574b80acba4e475": "piergiaj/flow_imagenet.pt",
    "ae56da9f0d1cdefd9643d1ca6c1b5b944f9e7467": "piergiaj/rgb_charades.pt",
    "e609545f2ae2d992ca715b819ed6b53b8f5c8b95": "piergiaj/flow_charades.pt",
    "2a7c22e23e6c74f50a0166ce61110bccd2ab48bb": "hassony2/model_rgb.pth",
    "5d552d2206f41089c428b0d9d8de3b1fccc85b5a": "hassony2/model_flow.pth",
}
# SHA-256 of library weight files, as their download URLs state it: torchvision names its files
# <name>-<first 8 hex of sha256>.pth; OpenAI's CLIP URLs hold the whole digest.
KNOWN_SHA256: dict[str, str] = {
    "0676ba61": "torchvision/resnet50-0676ba61.pth (IMAGENET1K_V1)",
    "11ad3fa6": "torchvision/resnet50-11ad3fa6.pth (IMAGENET1K_V2)",
    "91a641e6": "torchvision/r2plus1d_18-91a641e6.pth",
    "b3b3357e": "torchvision/r3d_18-b3b3357e.pth",
    "a90a0ba3": "torchvision/mc3_18-a90a0ba3.pth",
    "d76dad2f": "torchvision/s3d-d76dad2f.pth",
    "ae3be167": "torchvision/mvit_v2_s-ae3be167.pth",
    "7615ae03": "torchvision/swin3d_t-7615ae03.pth",
    "ff5fadd5": "torchvision/raft_large_C_T_SKHT_V2-ff5fadd5.pth",
    "22a6c225": "torchvision/raft_large_C_T_V1-22a6c225.pth",
    "0b8c9e55": "torchvision/raft_large_C_T_SKHT_V1-0b8c9e55.pth (port of raft-sintel.pth)",
    "ad48884c": "torchvision/raft_small_C_T_V1-ad48884c.pth",
    "1bb1363a": "torchvision/raft_large_C_T_V2-1bb1363a.pth",
    "01064c6d": "torchvision/raft_small_C_T_V2-01064c6d.pth",
    "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f": "openai/ViT-B-16.pt",
    "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836": "openai/ViT-L-14.pt",
}
STREAM_CHANNELS = {"rgb": 3, "flow": 2}
_FORMAT_VERSION = 1
_MODULES = ((c3d.C3D, c3d), (i3d.I3D, i3d))


@dataclass(frozen=True)
class CheckpointInfo:
    """What was loaded: file, git-blob hash, public name if known, key scheme, stream and head."""

    path: str
    sha1: str
    known_name: str | None
    scheme: str
    stream: str | None
    num_classes: int | None
    notes: tuple[str, ...] = ()


def git_blob_sha1(path: str | Path) -> str:
    """Git blob SHA-1 of a file (``git hash-object``): sha1(b"blob <size>\\0" + content)."""
    path = Path(path)
    digest = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """SHA-256 hex digest of a file."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def known_name(path: str | Path, sha1: str) -> str | None:
    """Public name of a weight file: by git-blob SHA-1, else by the SHA-256 its URL records."""
    if sha1 in KNOWN_CHECKPOINTS:
        return KNOWN_CHECKPOINTS[sha1]
    sha256 = file_sha256(path)
    return KNOWN_SHA256.get(sha256) or KNOWN_SHA256.get(sha256[:8])


def _short(exc: BaseException) -> str:
    """First line of an exception message, prefixed by its type."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], bool]:
    """Read a checkpoint safely (weights_only) -> (flat state dict, written by flowkit?)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "file not found")
    scripted = _torchscript_state(path)
    if scripted is not None:
        return scripted, False
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated/corrupt/foreign files
        raise CheckpointError(path, f"not a readable PyTorch checkpoint (truncated or corrupt?): "
                                    f"{_short(exc)}") from exc
    is_flowkit = isinstance(raw, Mapping) and "flowkit" in raw
    # Unwrap {"state_dict": ...} / {"model": ...} training wrappers.
    for wrapper in ("state_dict", "model", "model_state"):  # model_state: PySlowFast .pyth
        if isinstance(raw, Mapping) and isinstance(raw.get(wrapper), Mapping):
            raw = raw[wrapper]
            break
    if not isinstance(raw, Mapping) or not all(torch.is_tensor(v) for v in raw.values()):
        raise CheckpointError(path, f"not a state dict of tensors (got {type(raw).__name__})")
    prefix = "module."  # nn.DataParallel
    state = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in raw.items()}
    return state, is_flowkit


def _torchscript_state(path: Path) -> dict[str, torch.Tensor] | None:
    """State dict of a TorchScript archive (OpenAI's CLIP ``ViT-B-16.pt``), else None."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            if not any(name.endswith("/constants.pkl") for name in archive.namelist()):
                return None
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated, not gone
            return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    except (zipfile.BadZipFile, OSError):  # not a zip: a pickle, or a damaged file for torch.load
        return None
    except Exception as exc:  # torch.jit raises RuntimeError and others on broken archives
        raise CheckpointError(path, f"unreadable TorchScript archive: {_short(exc)}") from exc


def _model_module(model: nn.Module):
    """The model file (c3d or i3d module) that knows this model's key schemes.

    Models wrapping a library's network (frame encoders, torchvision video models) carry their own
    ``key_scheme`` and ``checkpoint_filter_fn``.
    """
    if hasattr(model, "key_scheme") and hasattr(model, "checkpoint_filter_fn"):
        return model
    for cls, module in _MODULES:
        if isinstance(model, cls):
            return module
    raise ConfigError(f"no checkpoint support for {type(model).__name__}")


def _remap(state: dict, model: nn.Module, is_flowkit: bool, path: Path) -> tuple[dict, str]:
    """Detect the key scheme and map the keys to ours; unknown layouts list a few keys."""
    module = _model_module(model)
    scheme = "flowkit" if is_flowkit else module.key_scheme(state)
    if scheme is None:
        others = [(m.__name__.rsplit(".", 1)[-1], m.key_scheme(state)) for _, m in _MODULES]
        hint = "".join(f"; it looks like a {n.upper()} checkpoint ({s} keys)"
                       for n, s in others if s is not None)
        raise CheckpointError(path, f"unknown key layout for {type(model).__name__}: first keys "
                                    f"{sorted(state)[:4]}{hint}")
    mapped = state if scheme == "flowkit" else module.checkpoint_filter_fn(state, model)
    return mapped, scheme


def _check_stream(mapped: dict, model: nn.Module, stream: str | None, path: Path) -> str | None:
    """Check input channels of checkpoint, model and requested stream agree; return the stream."""
    names = {v: k for k, v in STREAM_CHANNELS.items()}
    if stream is not None:
        if stream not in STREAM_CHANNELS:
            raise ConfigError(f"stream must be one of {sorted(STREAM_CHANNELS)}, got {stream!r}")
        if model.in_chans != STREAM_CHANNELS[stream]:
            raise ConfigError(f"the model has {model.in_chans} input channels, the {stream} "
                              f"stream needs {STREAM_CHANNELS[stream]}")
    weight = mapped.get(f"{model.first_conv}.weight")
    if weight is None or weight.ndim != 5:
        return None
    ckpt_chans = int(weight.shape[1])
    if ckpt_chans != model.in_chans:
        have = names.get(ckpt_chans, f"{ckpt_chans}-channel")
        want = names.get(model.in_chans, f"{model.in_chans}-channel")
        raise CheckpointError(path, f"wrong stream: the checkpoint holds {have} weights "
                                    f"({ckpt_chans} input channels) but the model is {want} "
                                    f"({model.in_chans} input channels)")
    return names.get(ckpt_chans)


def _fit_head(mapped: dict, model: nn.Module, drop_head: bool) -> tuple[int | None, list[str]]:
    """Match the model's classifier to the checkpoint's (or drop both); return its class count."""
    prefix = model.classifier + "."
    weight = mapped.get(prefix + "weight")
    ckpt_classes = None if weight is None else int(weight.shape[0])
    if drop_head or ckpt_classes is None:
        for key in [k for k in mapped if k.startswith(prefix)]:
            del mapped[key]
        if not model.num_classes:
            return ckpt_classes, []
        model.reset_classifier(0)
        return ckpt_classes, ["classifier removed (features only)"]
    if ckpt_classes != model.num_classes:
        model.reset_classifier(ckpt_classes)
        return ckpt_classes, [f"classifier resized to the checkpoint's {ckpt_classes} classes"]
    return ckpt_classes, []


def _fill_bn_counters(mapped: dict, model: nn.Module) -> None:
    """Add BatchNorm ``num_batches_tracked`` counters missing from old (PyTorch 0.3) files."""
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked") and key not in mapped:
            mapped[key] = value


def _check_keys(mapped: dict, model: nn.Module, path: Path) -> None:
    """Raise CheckpointError naming a few missing, unexpected or mis-shaped keys."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(mapped))
    unexpected = sorted(set(mapped) - set(expected))
    shapes = sorted(f"{k} {tuple(mapped[k].shape)} vs {tuple(v.shape)}"
                    for k, v in expected.items() if k in mapped and mapped[k].shape != v.shape)
    problems = [f"{label} {items[:4]}{' ...' if len(items) > 4 else ''} ({len(items)})"
                for label, items in (("missing", missing), ("unexpected", unexpected),
                                     ("shape mismatch", shapes)) if items]
    if problems:
        raise CheckpointError(path, "keys do not match the model: " + "; ".join(problems))


def load_checkpoint(
    model: nn.Module, path: str | Path, stream: str | None = None, *, drop_head: bool = False
) -> CheckpointInfo:
    """Load a local C3D/I3D checkpoint into ``model`` strictly, whatever its public key naming.

    A classifier with another class count (e.g. Charades' 157) replaces the model's; with
    ``drop_head=True`` (or a checkpoint without one) the classifier is removed: features only.
    """
    path = Path(path)
    if path.is_dir():
        return _load_folder(model, path, drop_head)
    state, is_flowkit = read_state_dict(path)
    sha1 = git_blob_sha1(path)
    mapped, scheme = _remap(state, model, is_flowkit, path)
    ckpt_stream = _check_stream(mapped, model, stream, path)
    num_classes, notes = _fit_head(mapped, model, drop_head)
    _fill_bn_counters(mapped, model)
    _check_keys(mapped, model, path)
    try:
        model.load_state_dict(mapped, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(path, f"load failed: {_short(exc)}") from exc
    info = CheckpointInfo(str(path), sha1, known_name(path, sha1), scheme, ckpt_stream,
                          num_classes, tuple(notes))
    logger.info("loaded %s (%s keys, sha1 %s%s)%s", path, scheme, sha1[:12],
                f", {info.known_name}" if info.known_name else "",
                "".join(f"; {n}" for n in notes))
    return info


def _load_folder(model: nn.Module, folder: Path, drop_head: bool) -> CheckpointInfo:
    """A checkpoint folder (transformers ``save_pretrained``) for models that load one (VideoMAE)."""
    if not hasattr(model, "load_folder"):
        raise CheckpointError(folder, f"is a folder; {type(model).__name__} loads a checkpoint file")
    weights, notes = model.load_folder(folder, drop_head=drop_head)
    sha1 = git_blob_sha1(weights)
    logger.info("loaded %s (transformers folder, %s sha1 %s)", folder, weights.name, sha1[:12])
    return CheckpointInfo(str(folder), sha1, known_name(weights, sha1), "transformers", "rgb",
                          model.num_classes or None, tuple(notes))


def save_checkpoint(model: nn.Module, path: str | Path, model_name: str) -> None:
    """Write ``model`` in flowkit's own format (our key names plus the model name), atomically."""
    path = Path(path)
    payload = {"flowkit": {"model": model_name, "format": _FORMAT_VERSION},
               "state_dict": model.state_dict()}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
