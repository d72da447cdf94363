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

#: How long an idle OpenMP thread spins before it sleeps (libgomp's count, about 0.1-0.3 ms
#: here): long enough to span the gap between one layer and the next, short enough that a
#: process sharing the cores loses little.
SPIN_COUNT = 10_000


def _wait_policy() -> None:
    """Idle OpenMP threads spin briefly, then sleep. Waking a sleeping thread costs 40-90 us
    in these VMs: MobileNetV2 has about 55 parallel regions, and took 13-14 ms with threads
    that sleep at once (OMP_WAIT_POLICY=PASSIVE, the setting before) against 8.5-9.8 ms
    spinning (2 threads, quiet machine). Spinning threads take a core from a process beside
    them, so the spin is short: with one core busy elsewhere, ResNet-18 took 46 ms passive,
    59 spinning 10 000 times and 139 spinning 100 000 times (libgomp's own default is
    300 000). The user's OMP_WAIT_POLICY or GOMP_SPINCOUNT wins; on a machine shared with
    other work, OMP_WAIT_POLICY=PASSIVE is the better setting."""
    if os.environ.get("OMP_WAIT_POLICY") or os.environ.get("GOMP_SPINCOUNT"):
        return
    os.environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)


_wait_policy()


def _sources_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted(
        (
            *HERE.glob("*.py"),
            *HERE.parent.glob("*.py"),
            HERE.parents[2] / "compiler" / "ops" / "elementwise.py",
        )
    ):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cnnc"


def _cache_dir() -> Path:
    return _cache_root() / "numba" / _sources_digest()


def kernels_compiled() -> bool:
    """Whether this version's kernels were compiled before (Numba's on-disk index files)."""
    directory = Path(os.environ.get("NUMBA_CACHE_DIR") or _cache_dir())
    try:
        return any(directory.rglob("*.nbi"))
    except OSError:
        return False


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

from . import bounds, conv, depthwise, elementwise, layout, norm, pool  # noqa: E402,F401
from .autotune import ALGORITHMS, TuneCache, machine_key  # noqa: E402
from .table import KERNELS  # noqa: E402


class CpuBackend:
    """Runs plan steps with the Numba kernels of this folder."""

    name = "cpu"
    kernels = KERNELS

    def __init__(self, algorithm: str = "auto", tune: bool = False):
        import numba

        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {algorithm!r}")
        self.threads = numba.get_num_threads()
        #: the convolution policy, one of backends.ALGORITHMS (auto, direct, blas, winograd)
        self.algorithm = algorithm
        #: measure layers that have no cached choice (else tiling.py's default, measuring none:
        #: a first run on a new machine would spend seconds timing candidates)
        self.tune = tune
        self.retune = False  # measure again even where the cache has a choice
        self.on_tune = None  # called with a layer's label before it is measured
        self.choices: dict = {}  # conv choices by layer shape (autotune.shape_key)
        self.chosen: dict = {}  # id(step) -> label of its choice, for bench
        self._tune_cache = None
        self._scratch = np.empty((self.threads, 1), np.float32)
        self._buffers: dict = {}
        self._bound: dict = {}  # step key -> (generation, call): see bound_call
        self._generation = 0  # counts reallocations of the scratch and named buffers

    def bound_call(self, key, bind) -> tuple:
        """The call ``bind()`` makes (kernel, arguments, pass after it: see ``run_call``),
        made once per ``key`` and kept while the buffers it holds stay: choosing the
        algorithm, packing and gathering a step's arguments again on every run cost
        MobileNetV2 about a millisecond a pass in Python."""
        held = self._bound.get(key)
        if held is None or held[0] != self._generation:
            call = bind()
            held = self._bound[key] = (self._generation, call)
        return held[1]

    def scratch(self, floats: int) -> np.ndarray:
        """Per-thread scratch rows, (threads, at least ``floats``), kept and grown across
        calls: buffers allocated afresh in every call cost page faults each time."""
        if self._scratch.shape[1] < floats:
            self._scratch = np.empty((self.threads, floats), np.float32)
            self._generation += 1
        return self._scratch

    def buffer(self, name: str, floats: int) -> np.ndarray:
        """A named buffer of at least ``floats`` floats, kept and grown across calls (a
        layer's zero-padded input, for instance)."""
        held = self._buffers.get(name)
        if held is None or held.size < floats:
            held = self._buffers[name] = np.empty(floats, np.float32)
            self._generation += 1
        return held[:floats]

    def tune_cache(self) -> TuneCache:
        if self._tune_cache is None:
            key = machine_key(self.threads, _sources_digest())
            self._tune_cache = TuneCache(_cache_root() / "tune", key)
        return self._tune_cache

    def pending_tuning(self, plan, batch: int, force: bool = False) -> set:
        """Shapes of the plan's convolutions that a run would measure (not cached yet, or
        all those worth measuring where ``force``)."""
        from .autotune import shape_key, worth_tuning
        from .conv import GEOMETRY

        if self.algorithm == "winograd":
            return set()
        cache, pending = self.tune_cache(), set()
        for step in plan.steps:
            if step.kernel != "conv" or len(step.inputs) != 1:  # gated ones are not tuned
                continue
            x = (batch, *plan.values[step.inputs[0]].shape)
            out = (batch, *plan.values[step.output].shape)
            geometry = {name: step.attrs[name] for name in GEOMETRY}
            key = shape_key(x, out, geometry, step.residual is not None, self.algorithm)
            if worth_tuning(x, out, geometry) and (force or cache.get(key) is None):
                pending.add(key)
        return pending

    def peak_gflops(self) -> float:
        """The FMA probe's GFLOP/s for this machine and thread count, measured once."""
        from .probe import fma_peak_gflops

        cache = self.tune_cache()
        peak = cache.get_value("peak_gflops")
        if not isinstance(peak, (int, float)) or peak <= 0:
            peak = round(fma_peak_gflops(self.threads), 1)
            cache.put_value("peak_gflops", peak)
        return float(peak)

    def choice_of(self, step) -> str:
        """The algorithm a step ran with, for ``cnnc bench`` ('' where there is no choice)."""
        return self.chosen.get(id(step), "")

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
        return {"threads": self.threads, "threading_layer": layer, "algorithm": self.algorithm}

    def run_step(self, step, arrays, ins, res, out, work):
        self.kernels[step.kernel](self, step, arrays, ins, res, out, work)
        if bounds.SLOTS[1]:  # checked mode stopped a kernel of this step (bounds.py)
            bounds.raise_fault(step.label)
