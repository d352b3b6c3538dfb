"""The CPU fast path of TV-L1: the fused C kernel of tvl1_native.c, built once per machine, and the
whole-warp task that runs on it (cubic warp, data terms, medians and iterations until the stop).

The kernel is compiled with the system C compiler the first time it is needed (about a second) into
flowkit's cache, keyed by its source, flags and CPU, and loaded with ctypes. ctypes, cv2.remap and
cv2.medianBlur all release the GIL, so tasks run in parallel on plain threads that block instead of
spinning when the machine is busy. Without a compiler the engine keeps its PyTorch path.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shlex
import shutil
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

import cv2
import numpy as np

from flowkit.flow.tvl1_cpu import remap_cubic

log = logging.getLogger("flowkit")

SOURCE = Path(__file__).with_name("tvl1_native.c")
# No FMA contraction: products and sums round as in the eager float32 oracle. -fno-math-errno lets
# sqrt vectorise; it changes no result.
FLAGS = ("-O3", "-ffp-contract=off", "-fno-math-errno", "-fPIC", "-shared")
ARCH_FLAGS = ("-march=native",)

_lock = threading.Lock()
_state: dict[str, object] = {}


def cache_root() -> Path:
    """flowkit's cache folder: $FLOWKIT_CACHE_DIR, else $XDG_CACHE_HOME/flowkit or ~/.cache/flowkit."""
    root = os.environ.get("FLOWKIT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "flowkit")
    return Path(root)


def compiler() -> list[str] | None:
    """The C compiler command: $CC, else cc, gcc or clang on PATH; None when there is none."""
    if os.environ.get("CC"):
        cmd = shlex.split(os.environ["CC"])
        return cmd if cmd and shutil.which(cmd[0]) else None
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return [path]
    return None


def _cpu_signature() -> str:
    """What -march=native depends on: the machine type and the CPU's feature flags."""
    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        pass
    return f"{platform.machine()}|{platform.system()}|{flags.strip()}"


def library_path(folder: Path | None = None) -> Path:
    """Where the kernel for this source, these flags and this CPU lives (default folder: flowkit's cache).

    The compiler is not part of the key: a build from any compiler will do, so nodes without one can
    load what a node with the same CPU built into a shared cache."""
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(FLAGS + ARCH_FLAGS).encode(), _cpu_signature().encode()):
        key.update(part)
        key.update(b"\0")
    return (folder or cache_root() / "native") / f"tvl1-{key.hexdigest()[:20]}.so"


def _fallback_folder() -> Path:
    """A per-user temporary folder, for when flowkit's cache cannot be written (read-only home)."""
    user = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"flowkit-{user}" / "native"


def _build(cc: list[str], target: Path) -> None:
    """Compile into a private temporary, then rename into place (concurrent builders are safe)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    owner = f"{os.getpid()}-{threading.get_ident()}@{socket.gethostname()}"
    tmp = target.with_name(f".{target.name}.{owner}.tmp")
    errors = []
    try:
        for arch in (ARCH_FLAGS, ()):  # a compiler without -march=native still builds portable code
            cmd = [*cc, *FLAGS, *arch, "-o", str(tmp), str(SOURCE), "-lm"]
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            if run.returncode == 0:
                os.replace(tmp, target)
                return
            errors.append(run.stderr.strip().splitlines()[-1:] or [f"exit {run.returncode}"])
        raise RuntimeError(f"{cc[0]} failed: {errors[-1][0]}")
    finally:
        tmp.unlink(missing_ok=True)


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    vp, i, f, d = ctypes.c_void_p, ctypes.c_int, ctypes.c_float, ctypes.c_double
    lib.tvl1_iterate.argtypes = [i, i, i, vp, vp, vp, f, f, f, f, d, i, i, ctypes.POINTER(i), vp]
    lib.tvl1_iterate.restype = i
    lib.tvl1_warp_terms.argtypes = [ctypes.c_long, vp, vp, vp, vp, vp, vp, vp, vp]
    lib.tvl1_warp_terms.restype = None
    return lib


def switched_off() -> bool:
    """Whether FLOWKIT_TVL1_NATIVE=0 (or false/no/off) asks for the PyTorch path."""
    return os.environ.get("FLOWKIT_TVL1_NATIVE", "").strip().lower() in ("0", "false", "no", "off")


def load() -> ctypes.CDLL | None:
    """The kernel library, built on first use (logged once); None where no compiler can build it
    (the reason is logged once) or FLOWKIT_TVL1_NATIVE=0."""
    with _lock:
        if "lib" in _state:
            return _state["lib"]  # type: ignore[return-value]
        lib = None if switched_off() else _load_or_build()
        _state["lib"] = lib
        return lib


def _load_or_build() -> ctypes.CDLL | None:
    paths = (library_path(), library_path(_fallback_folder()))  # flowkit's cache, then the fallback
    for path in paths:
        if path.exists():
            try:
                return _loaded(path)
            except OSError:
                pass  # unloadable (foreign or damaged): build again below
    cc = compiler()
    if cc is None:
        log.warning("tvl1: no C compiler (cc, gcc, clang or $CC) for the fast CPU kernel; "
                    "using the PyTorch path")
        return None
    problem: BaseException | None = None
    log.warning("tvl1: building the CPU kernel for this machine (once, about a second) in %s",
                paths[0].parent)
    for path in paths:
        try:
            _build(cc, path)
            return _loaded(path)
        except OSError as exc:  # the cache cannot be written (read-only home): the temporary folder
            problem = exc
        except (RuntimeError, subprocess.SubprocessError) as exc:  # the compiler failed: no use retrying
            problem = exc
            break
    log.warning("tvl1: the fast CPU kernel is unavailable (%s); using the PyTorch path", problem)
    return None


def _loaded(path: Path) -> ctypes.CDLL:
    lib = _bind(ctypes.CDLL(str(path)))
    _state["path"] = path
    return lib


def loaded_path() -> Path | None:
    """The file of the loaded kernel library (None before load() or without one)."""
    return _state.get("path")  # type: ignore[return-value]


def forget() -> None:
    """Drop the loaded library, so the next load() looks again (tests)."""
    with _lock:
        _state.clear()


def _ptr(a: np.ndarray) -> int:
    return a.ctypes.data


class WarpTask:
    """Runs one (pair, level, warp) task to its stop: everything cv2 does between two warps."""

    def __init__(self, lib: ctypes.CDLL, *, inner: int, outer: int, median_k: int,
                 consts: tuple[float, float, float, float]) -> None:
        self.lib = lib
        self.inner = inner
        self.max_iters = inner * outer
        self.median_k = median_k
        self.consts = consts

    def __call__(self, src: np.ndarray, i0: np.ndarray, u: np.ndarray, p: np.ndarray | None,
                 eps: float) -> tuple[np.ndarray, np.ndarray, int]:
        """src (3,h,w) = I1, I1x, I1y; i0 (h,w); u (C,h,w) and p (2C,h,w) are updated in place
        (p None: zeros, the first warp of a level). Returns (u, p, iterations)."""
        nf, h, w = u.shape
        if p is None:
            p = np.zeros((2 * nf, h, w), np.float32)
        for a in (src, i0, u, p):
            if a.dtype != np.float32 or not a.flags.c_contiguous:
                raise ValueError("tvl1 native task: arrays must be C-contiguous float32")
        warped = remap_cubic(src, u[0], u[1])
        data = np.empty((4, h, w), np.float32)  # i1wx, i1wy, grad, rho_c
        data[:2] = warped[1:]
        self.lib.tvl1_warp_terms(h * w, _ptr(warped[0]), _ptr(warped[1]), _ptr(warped[2]),
                                 _ptr(u[0]), _ptr(u[1]), _ptr(i0), _ptr(data[2]), _ptr(data[3]))
        scratch = np.empty(4 * w, np.float32)
        stopped = ctypes.c_int(0)
        l_t, theta, taut, gamma = self.consts
        n = 0
        while True:
            if self.median_k > 1 and n % self.inner == 0:
                for c in range(2):  # the illumination field is never median-filtered
                    u[c] = cv2.medianBlur(u[c], self.median_k)
            end = min(n - n % self.inner + self.inner, self.max_iters)
            n = self.lib.tvl1_iterate(nf, h, w, _ptr(u), _ptr(p), _ptr(data), l_t, theta, taut,
                                      gamma, eps, n, end, ctypes.byref(stopped), _ptr(scratch))
            if stopped.value or n >= self.max_iters:
                return u, p, n
