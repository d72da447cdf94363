"""The machine's fp32 peak as Numba code reaches it: an FMA-throughput probe.

Many independent multiply-add chains (more than the FMA units' latency times their count)
keep the FMA units busy with nothing else to wait for. One thread is measured, best of a few
tries, and multiplied by the thread count: a probe on all threads at once measures the other
tenants of a shared machine as much as the chip. Measured once per machine key and kept in
the tuning cache; ``cnnc bench`` reports each layer's GFLOP/s as a share of it.
"""

from __future__ import annotations

import time

import numpy as np
from numba import njit

from .activations import JIT

#: Independent lanes: 32 vectors of 8 (AVX2) or 16 of 16 (AVX-512), beyond latency x ports.
LANES = 256


@njit(**JIT)
def _fma_chains(iterations):
    acc = np.empty(LANES, np.float32)
    for i in range(LANES):
        acc[i] = np.float32(i) * np.float32(1e-3)
    a, b = np.float32(0.9999999), np.float32(1e-7)
    for _ in range(iterations):
        for j in range(LANES):
            acc[j] = acc[j] * a + b
    return acc.sum()


def fma_peak_gflops(threads: int, tries: int = 5, iterations: int = 200_000) -> float:
    """GFLOP/s of ``threads`` cores running FMAs flat out (one core measured)."""
    _fma_chains(10)
    best = float("inf")
    for _ in range(tries):
        t0 = time.perf_counter()
        _fma_chains(iterations)
        best = min(best, time.perf_counter() - t0)
    return 2 * LANES * iterations / best / 1e9 * threads
