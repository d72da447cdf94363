"""Running and timing a checked network: the runtime's API, used by the CLI and ``cnnc.run``."""

from __future__ import annotations

import statistics
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from ..compiler import CnncWarning, DataError, Network, UsageError, error
from . import memory
from . import weights as weights_io
from .backends import backend_for
from .plan import Plan, build_plan


@dataclass
class Session:
    """A network compiled to a plan with its weights, ready to run on one device."""

    network: Network
    source: dict | str | int = field(repr=False)  # the caller's weights, an .npz path or a seed
    plan: Plan = field(repr=False)
    device: str = "cpu"
    algorithm: str = "auto"  # CPU convolution policy: backends.ALGORITHMS
    tune: bool = False  # measure convolutions that have no cached choice (autotune.py)
    executors: dict = field(default_factory=dict, repr=False)  # by batch size; one kept

    @classmethod
    def create(
        cls,
        network: Network,
        weights: dict | str | None = None,
        seed: int = 0,
        device: str = "cpu",
        optimize: bool = True,
        batch: int = 1,
        algorithm: str | None = None,
        tune: bool | None = None,
    ) -> Session:
        """``tune``: measure each convolution shape that the cache has no choice for (default
        ``$CNNC_TUNE``, else off: autotune.default_choice runs and nothing is timed)."""
        from .backends import preload, resolve_algorithm, resolve_tune

        check_batch(batch)
        algorithm = resolve_algorithm(algorithm)
        memory.check_fits(network, batch)
        if weights is None:  # drawn while the backend's code loads (preload)
            source = seed
            weights = weights_io.initialise_while(network, seed, lambda: preload(device))
        elif not isinstance(weights, dict):
            source, weights = str(weights), weights_io.load(network, weights)
        else:
            source = weights = _checked(network, weights)
        bad = weights_io.non_finite(weights)
        if bad:
            warnings.warn(
                f"{len(bad)} weight array(s) hold NaN or infinite values ({', '.join(bad[:3])}"
                f"{', ...' if len(bad) > 3 else ''}); the outputs will too",
                CnncWarning,
                stacklevel=2,
            )
        plan = build_plan(network, weights, optimize, consume=not isinstance(source, dict))
        return cls(network, source, plan, device, algorithm, resolve_tune(tune))

    @staticmethod
    def checked_weights(network: Network, weights: dict) -> dict:
        """A caller's weights dict, checked against the network and as float32 copies."""
        return _checked(network, weights)

    @property
    def weights(self) -> dict:
        """The weights in PyTorch's layouts, keyed ``LAYER.weight``. Seeded or loaded ones are
        drawn or read again on each access rather than held: the plan holds them packed, and
        a second copy was the largest part of a run's memory (VGG-19: 548 MiB)."""
        if isinstance(self.source, dict):
            return self.source
        if isinstance(self.source, str):
            return weights_io.load(self.network, self.source)
        return weights_io.initialise(self.network, self.source)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = _batch_of(self.network, inputs)
        return self._executor(batch).run(inputs)

    def _executor(self, batch: int):
        """The executor for this batch size; its buffers are checked against memory first."""
        from .executor import Executor

        if batch not in self.executors:
            self.executors.clear()
            memory.check_fits(self.network, batch, self.plan)
            self.executors[batch] = Executor(
                self.plan, backend_for(self.device, self.algorithm, self.tune), batch
            )
        return self.executors[batch]

    def describe(self) -> dict:
        """The backend's threads, threading layer and algorithm policy (after a run)."""
        executor = next(iter(self.executors.values()), None)
        backend = executor.backend if executor else None
        return backend.describe() if hasattr(backend, "describe") else {"device": self.device}

    def bench(
        self,
        batch: int = 1,
        repeat: int = 10,
        seed: int = 0,
        budget_s: float | None = None,
        on_estimate=None,
    ) -> dict:
        """Warm up (compiles kernels), then time whole passes and each step.

        ``budget_s`` bounds the timed passes: timing stops once they have taken that long,
        and ``repeat`` in the result says how many ran (``stopped_early`` whether fewer than
        asked). ``on_estimate(seconds)``, if given, is called after the first timed pass with
        the time all ``repeat`` passes would take, so that a caller can say how long to wait.
        """
        from .data import random_inputs

        memory.check_fits(self.network, batch, self.plan)  # before drawing the inputs
        inputs = random_inputs(self.network, batch, seed)
        t0 = time.perf_counter()
        executor = self._executor(batch)
        executor.run(inputs)
        warmup = time.perf_counter() - t0
        totals, per_step = [], [[] for _ in self.plan.steps]
        repeat = max(1, repeat)
        start = time.perf_counter()
        while len(totals) < repeat:
            t0 = time.perf_counter()
            executor.run(inputs)
            executor.backend.synchronize()
            totals.append(time.perf_counter() - t0)
            if len(totals) == 1 and on_estimate is not None:
                on_estimate(totals[0] * repeat)
            if budget_s is not None and time.perf_counter() - start >= budget_s:
                break
        for _ in range(max(1, min(len(totals), 5))):
            timings: list[float] = []
            executor.run(inputs, timings)
            for i, t in enumerate(timings):
                per_step[i].append(t)
        layers = []
        choice_of = getattr(executor.backend, "choice_of", lambda step: "")
        step_total = sum(statistics.median(t) for t in per_step) or 1.0
        for step, times in zip(self.plan.steps, per_step):
            ms = statistics.median(times) * 1e3
            out = self.plan.values[step.output].shape
            layers.append(
                {
                    "layer": step.label,
                    "op": step.kernel,
                    "shape": list(out[-1:] + out[:-1]) if len(out) == 3 else list(out),
                    "ms": ms,
                    "share": ms / 1e3 / step_total,
                    "gflops": 2 * step.macs * batch / (ms / 1e3) / 1e9 if ms > 0 else 0.0,
                    "algorithm": choice_of(step),
                }
            )
        info = {
            "peak_activation_bytes": self.plan.peak_floats * batch * 4,
            "naive_activation_bytes": self.plan.naive_floats * batch * 4,
            "median_ms": statistics.median(totals) * 1e3,
            "min_ms": min(totals) * 1e3,
            "batch": batch,
            "device": self.device,
            "repeat": len(totals),
            "stopped_early": len(totals) < repeat,
            "warmup_s": warmup,
            "layers": layers,
            "gflops": 2 * self.network.total_macs * batch / (statistics.median(totals)) / 1e9,
        }
        info.update(executor.backend.describe() if hasattr(executor.backend, "describe") else {})
        if hasattr(executor.backend, "peak_measurement"):
            measured = executor.backend.peak_measurement()
            peak = info["peak_gflops"] = float(measured["value"])
            info["peak_measured"] = {k: v for k, v in measured.items() if k != "value"}
            info["peak_share"] = info["gflops"] / peak
            for layer in layers:
                layer["peak_share"] = layer["gflops"] / peak
        return info


def check_batch(batch) -> int:
    """A batch size is a positive integer (a usage error otherwise, before any allocation)."""
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise UsageError(error(f"batch must be a positive integer, got {batch!r}"))
    return int(batch)


def _batch_of(net: Network, inputs: dict[str, np.ndarray]) -> int:
    missing = [n for n in net.inputs if n not in inputs]
    extra = [n for n in inputs if n not in net.inputs]
    if missing or extra:
        raise DataError(
            error(f"inputs do not match the network: missing {missing}, unexpected {extra}")
        )
    batches = set()
    for name, layer in net.inputs.items():
        x = inputs[name]
        if tuple(x.shape[1:]) != layer.shape or x.ndim != len(layer.shape) + 1:
            raise DataError(
                error(
                    f"input '{name}' has shape {tuple(x.shape)}, expected "
                    f"(batch, {', '.join(map(str, layer.shape))})"
                )
            )
        batches.add(x.shape[0])
    if len(batches) != 1:
        raise DataError(error(f"inputs disagree on the batch size: {sorted(batches)}"))
    return batches.pop()


def _checked(net: Network, weights: dict) -> dict:
    want = weights_io.expected(net)
    bad = [k for k, s in want.items() if k not in weights or tuple(np.shape(weights[k])) != s]
    extra = [k for k in weights if k not in want]
    if bad or extra:
        raise DataError(
            error(
                f"weights do not match the network: wrong or missing {bad[:5]}, "
                f"unexpected {extra[:5]}"
            )
        )
    complex_keys = [k for k in want if np.iscomplexobj(weights[k])]
    if complex_keys:
        raise DataError(error(f"weights {complex_keys[:5]} hold complex numbers, not real ones"))
    checked = {k: np.ascontiguousarray(weights[k], dtype=np.float32) for k in want}
    weights_io.check_variances(net, checked, "weights: ")
    return checked
