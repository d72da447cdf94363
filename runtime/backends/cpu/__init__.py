"""The CPU backend: Numba kernels, one thread pool, per-thread scratch kept across calls.

Kernels compile on first use and are cached on disk in the user's cache directory
(``$XDG_CACHE_HOME/cnnc/numba``, or ``NUMBA_CACHE_DIR`` when set), under a key made of cnnc's
version and a digest of this backend's sources: Numba invalidates a cached kernel only when
its own file changes, not when a function it calls from another file does.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _cache_dir() -> Path:
    digest = hashlib.sha256()
    for path in sorted(
        (
            *HERE.glob("*.py"),
            *HERE.parent.glob("*.py"),
            HERE.parents[2] / "compiler" / "ops" / "elementwise.py",
        )
    ):
        digest.update(path.read_bytes())
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "cnnc" / "numba" / digest.hexdigest()[:16]


def _configure_cache():
    """Point Numba's cache at the user's cache directory, before any kernel is defined."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    import numba

    path = _cache_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return  # Numba's default (beside the sources, or none) still works
    numba.config.CACHE_DIR = str(path)


_configure_cache()

from . import conv, elementwise, layout, norm, pool  # noqa: E402,F401 (register kernels)
from .table import KERNELS  # noqa: E402


class CpuBackend:
    """Runs plan steps with the Numba kernels of this folder."""

    name = "cpu"
    kernels = KERNELS

    def __init__(self):
        import numba

        self.threads = numba.get_num_threads()
        self.tilings: dict = {}  # conv tilings by layer shape
        self._scratch = np.empty((self.threads, 1), np.float32)

    def scratch(self, floats: int) -> np.ndarray:
        """Per-thread scratch rows, (threads, at least ``floats``), kept and grown across
        calls: buffers allocated afresh in every call cost page faults each time."""
        if self._scratch.shape[1] < floats:
            self._scratch = np.empty((self.threads, floats), np.float32)
        return self._scratch

    def empty(self, n: int):
        return np.empty(n, np.float32)

    def to_device(self, array):
        return array

    def to_host(self, array):
        return array

    def nchw_to_runtime(self, x: np.ndarray, out: np.ndarray):
        out[...] = x.transpose(0, 2, 3, 1) if x.ndim == 4 else x

    def runtime_to_nchw(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if x.ndim == 4 else x.copy()

    def synchronize(self):
        pass

    def describe(self) -> dict:
        import numba

        try:
            layer = numba.threading_layer()
        except ValueError:  # no parallel region has run yet
            layer = "not started"
        return {"threads": self.threads, "threading_layer": layer}

    def run_step(self, step, arrays, ins, res, out, work):
        self.kernels[step.kernel](self, step, arrays, ins, res, out, work)
