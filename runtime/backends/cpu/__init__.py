"""The CPU backend: Numba kernels, one thread pool, per-thread scratch kept across calls.

Kernels compile on first use and are cached on disk in cnnc's own cache folder
(kernel_cache.py). Importing the backend changes nothing else in the host process: the
OpenMP spin count and BLAS's thread count are set only around cnnc's own work (see
``start_threads`` and ``blas.single_threaded``).
"""

from __future__ import annotations

import os

import numpy as np

from .kernel_cache import (
    cache_root,
    install_locator,
    kernels_compiled,  # noqa: F401 (the command line asks before a first run)
    sources_digest,
)

#: How long an idle OpenMP thread spins before it sleeps (libgomp's count, about 0.1-0.3 ms
#: here): long enough to span the gap between one layer and the next, short enough that a
#: process sharing the cores loses little.
SPIN_COUNT = 10_000

#: Inputs with at most this many channels go into NHWC one channel at a time
#: (``CpuBackend.nchw_to_runtime``).
SMALL_INPUT_CHANNELS = 32

#: Inputs of at least this many floats go into NHWC through a parallel kernel.
LARGE_INPUT_FLOATS = 1 << 20

#: A quick recheck of the FMA peak this much above the kept value means the kept one was
#: measured low (on a busy machine): it is measured again.
RECHECK_MARGIN = 1.15

_threads_started = False


def start_threads() -> int:
    """Numba's thread pool, started with idle OpenMP threads that spin briefly, then sleep;
    returns its thread count.

    Waking a sleeping thread costs 40-90 us in these VMs: MobileNetV2 has about 55 parallel
    regions, and took 13-14 ms with threads that sleep at once (OMP_WAIT_POLICY=PASSIVE, the
    setting before) against 8.5-9.8 ms spinning (2 threads, quiet machine). Spinning threads
    take a core from a process beside them, so the spin is short: with one core busy
    elsewhere, ResNet-18 took 46 ms passive, 59 spinning 10 000 times and 139 spinning
    100 000 times (libgomp's own default is 300 000). The user's OMP_WAIT_POLICY or
    GOMP_SPINCOUNT wins; on a machine shared with other work, OMP_WAIT_POLICY=PASSIVE is the
    better setting.

    libgomp reads GOMP_SPINCOUNT once, when it is loaded, which starting the pool does: the
    variable is in ``os.environ`` only for that moment, so the host process and its children
    never see it. If the process had loaded libgomp before, the setting has no effect."""
    global _threads_started
    import numba

    if _threads_started or os.environ.get("OMP_WAIT_POLICY") or os.environ.get("GOMP_SPINCOUNT"):
        _threads_started = True
        return numba.get_num_threads()
    os.environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
    try:
        return numba.get_num_threads()  # loads the threading layer (and libgomp with it)
    finally:
        del os.environ["GOMP_SPINCOUNT"]
        _threads_started = True


install_locator()  # before any kernel is defined

from . import (  # noqa: E402,F401
    bands,
    blas,
    bounds,
    conv,
    depthwise,
    elementwise,
    layout,
    norm,
    pool,
    registries,
    replay,
)
from .aligned import LINE, aligned_empty  # noqa: E402
from .autotune import ALGORITHMS, TuneCache, machine_key  # noqa: E402
from .table import GRADS, KERNELS  # noqa: E402


class CpuBackend:
    """Runs plan steps with the Numba kernels of this folder."""

    name = "cpu"
    kernels = KERNELS
    grads = GRADS

    def __init__(self, algorithm: str = "auto", tune: bool = False):
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {algorithm!r}")
        self.threads = start_threads()
        registries.load()  # before any kernel, without scipy.linalg (registries.py)
        #: the convolution policy, one of backends.ALGORITHMS (auto, direct, blas, winograd)
        self.algorithm = algorithm
        #: measure layers that have no cached choice (else autotune.default_choice, measuring none:
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

    def forget_bindings(self) -> None:
        """Drop every bound call: the weights they packed have changed (training)."""
        self._bound.clear()
        self._generation += 1  # and every replay made of them (``replay``)

    def replay(self, entries, chains, work, inputs):
        """The executor's passes after this one, as a function of the caller's inputs
        (replay.make_replay), or None where a step has no bound call yet."""
        return replay.make_replay(self, entries, chains, work, inputs)

    @property
    def generation(self) -> int:
        """Counts reallocations of the buffers bound calls hold, and forgotten bindings."""
        return self._generation

    def held(self, key):
        """The call bound under ``key`` while its buffers stay, else None."""
        held = self._bound.get(key)
        return held[1] if held is not None and held[0] == self._generation else None

    def scratch(self, floats: int) -> np.ndarray:
        """Per-thread scratch rows, (threads, at least ``floats``), kept and grown across
        calls: buffers allocated afresh in every call cost page faults each time."""
        if self._scratch.shape[1] < floats:
            row = -(-floats * 4 // LINE) * LINE // 4  # each thread's row starts a cache line
            self._scratch = aligned_empty((self.threads, row))
            self._generation += 1
        return self._scratch

    def buffer(self, name: str, floats: int) -> np.ndarray:
        """A named buffer of at least ``floats`` floats, kept and grown across calls (a
        layer's zero-padded input, for instance)."""
        held = self._buffers.get(name)
        if held is None or held.size < floats:
            held = self._buffers[name] = aligned_empty(floats)
            self._generation += 1
        return held[:floats]

    def tune_cache(self) -> TuneCache:
        if self._tune_cache is None:
            key = machine_key(self.threads, sources_digest())
            self._tune_cache = TuneCache(cache_root() / "tune", key)
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
            if worth_tuning(x, out, geometry) and (force or cache.get(key, measuring=True) is None):
                pending.add(key)
        return pending

    def peak_gflops(self) -> float:
        """The FMA probe's GFLOP/s for this machine and thread count (see peak_measurement)."""
        return float(self.peak_measurement()["value"])

    def peak_measurement(self) -> dict:
        """The FMA probe's GFLOP/s (``value``) with when and at what load it was measured.
        Measured once and kept; measured again where the kept one looks off (no date, old, or
        taken on a busy machine that is quiet now) or where a quick recheck beats it by more
        than RECHECK_MARGIN (it was measured while other work held the cores)."""
        from .autotune import conditions, looks_off
        from .probe import fma_peak_gflops

        cache = self.tune_cache()
        kept = cache.get_measurement("peak_gflops")
        value = kept.get("value") if kept else None
        valid = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
        quick = 0.0
        if valid and not looks_off(kept):
            quick = fma_peak_gflops(self.threads, tries=3, iterations=50_000)
            if quick <= RECHECK_MARGIN * value:
                return kept
        taken = conditions()
        peak = round(max(fma_peak_gflops(self.threads), quick), 1)
        cache.put_measurement("peak_gflops", peak, taken)
        return cache.get_measurement("peak_gflops")

    def choice_of(self, step) -> str:
        """The algorithm a step ran with, for ``cnnc bench`` ('' where there is no choice)."""
        return self.chosen.get(id(step), "")

    def empty(self, n: int):
        return aligned_empty(n)

    def to_device(self, array):
        return array

    def to_host(self, array):
        return array

    def nchw_to_runtime(self, x: np.ndarray, out: np.ndarray):
        """``x`` (N, C, H, W) into the NHWC ``out``. With few channels, one strided copy per
        channel: NumPy's copy of the transposed view took 180 us for one 3x224x224 image, a
        copy per channel 44 us (per-channel copies measured faster up to C=32; wider inputs
        are rare and keep the one copy). Large inputs (LARGE_INPUT_FLOATS) go through a
        parallel kernel: 32 images of 3x224x224 2.69 -> 1.17 ms, 8 0.50 -> 0.31 ms (2
        threads, caches flushed); smaller ones never compile it (a second of a first run)."""
        if x.ndim == 4 and x.size >= LARGE_INPUT_FLOATS and x.dtype == out.dtype:
            layout.nchw_to_nhwc(np.ascontiguousarray(x), out)
        elif x.ndim == 4 and x.shape[1] <= SMALL_INPUT_CHANNELS:
            for c in range(x.shape[1]):
                out[..., c] = x[:, c]
        else:
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

    def running(self):
        """The context of a pass: cnnc's BLAS calls run on one thread (blas.single_threaded)."""
        return blas.single_threaded()

    def run_chain(self, entries, work, timings=None):
        """Run an inverted-residual chain of the plan in bands of rows (bands.py)."""
        bands.run_chain(self, entries, work, timings)

    def run_step(self, step, arrays, ins, res, out, work):
        self.kernels[step.kernel](self, step, arrays, ins, res, out, work)
        if bounds.SLOTS[1]:  # checked mode stopped a kernel of this step (bounds.py)
            bounds.raise_fault(step.label)
