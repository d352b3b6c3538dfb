"""`flowkit doctor`: what this installation can do (versions, devices, decoding) in one screen."""

from __future__ import annotations

import os
import platform
import tempfile
from pathlib import Path

import cv2
import numpy as np


def _versions() -> list[tuple[str, str]]:
    import h5py
    import joblib
    import torch

    import flowkit

    return [("flowkit", flowkit.__version__), ("python", platform.python_version()),
            ("torch", torch.__version__), ("opencv", cv2.__version__), ("numpy", np.__version__),
            ("h5py", f"{h5py.__version__} (HDF5 {h5py.version.hdf5_version})"),
            ("joblib", joblib.__version__), *_model_libraries()]


def _model_libraries() -> list[tuple[str, str]]:
    """Optional model libraries (README "Models"): version, or the extra that installs them."""
    from importlib import metadata

    from flowkit.models.extras import EXTRAS

    rows = []
    for module, dist in (("torchvision", "torchvision"), ("open_clip", "open_clip_torch"), ("timm", "timm"),
                         ("transformers", "transformers")):
        try:
            rows.append((module, metadata.version(dist)))
        except metadata.PackageNotFoundError:
            rows.append((module, f"missing (pip install 'flowkit[{EXTRAS[module]}]')"))
    return rows


def _threads(threads: int | None, jobs: int) -> list[tuple[str, str]]:
    """The thread budget a run would use here, why, and the OpenMP wait policy."""
    from flowkit.threads import OPENMP_ENV, apply_budget, derive_budget

    budget = derive_budget(threads, jobs)
    apply_budget(budget)
    import torch

    omp = ", ".join(f"{k}={os.environ.get(k, '(unset)')}" for k in OPENMP_ENV)
    return [("cpu cores (node)", f"{os.cpu_count()} (not used for the budget)"),
            ("thread budget", budget.describe()),
            ("torch / cv2 threads", f"{torch.get_num_threads()} / {cv2.getNumThreads()}"),
            ("openmp", f"{omp} (read when torch loads; override in the environment)")]


def _devices() -> list[tuple[str, str]]:
    import torch

    rows = []
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        rows.append(("cuda devices", "; ".join(f"cuda:{i} {n}" for i, n in enumerate(names))))
    else:
        rows.append(("cuda devices", "none (flow and features run on the CPU)"))
    cv_cuda = cv2.cuda.getCudaEnabledDeviceCount() if hasattr(cv2, "cuda") else 0
    rows.append(("opencv built with CUDA", "yes" if cv_cuda > 0 else "no"))
    rows.append(("cv2.optflow (tvl1-opencv)", "yes" if hasattr(cv2, "optflow") else "missing"))
    return rows


def _cpu_kernel() -> tuple[str, str]:
    """Whether tvl1's fused C kernel runs here (built now if needed), or why the PyTorch path does."""
    from flowkit.flow import tvl1_native

    if tvl1_native.load() is not None:
        return "tvl1 cpu kernel", f"fused C kernel ({tvl1_native.loaded_path()})"
    if tvl1_native.switched_off():
        why = "FLOWKIT_TVL1_NATIVE=0"
    elif tvl1_native.compiler() is None:
        why = "no C compiler (cc, gcc, clang or $CC)"
    else:
        why = "the C kernel failed to build or load (see the warning above)"
    return "tvl1 cpu kernel", f"PyTorch fallback: {why}; about 3x slower"


def _decode_check() -> tuple[str, str]:
    from flowkit.video import read_all

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "check.mp4"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (64, 48))
        for i in range(5):
            writer.write(np.full((48, 64, 3), 40 * i, np.uint8))
        writer.release()
        try:
            frames, _ = read_all(path)
        except Exception as exc:  # noqa: BLE001 - doctor reports, never crashes
            return "decode a generated clip", f"FAILED: {exc}"
    ok = len(frames) == 5
    return "decode a generated clip", "ok (5/5 frames)" if ok else f"FAILED: {len(frames)}/5 frames"


def report(threads: int | None = None, jobs: int = 1) -> list[tuple[str, str]]:
    """(name, value) rows describing this installation (and the thread budget for --threads/--jobs)."""
    return _versions() + _threads(threads, jobs) + _devices() + [_cpu_kernel(), _decode_check()]
