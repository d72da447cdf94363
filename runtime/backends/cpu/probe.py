"""The machine's fp32 peak as cnnc's kernels can reach it: an FMA-throughput probe.

The micro-kernel's accumulators (microkernel.py: MR x NV vectors of LANES floats, 16 lanes
with AVX-512, 8 with AVX2) multiply-add flat out with nothing to load: more independent
chains than the FMA units' latency times their count, so they never wait. One thread is
measured, best of a few tries, and multiplied by the thread count: a probe on all threads at
once measures the other tenants of a shared machine as much as the chip. Measured once per
machine key and kept in the tuning cache; ``cnnc bench`` reports each layer's GFLOP/s as a
share of it.
"""

from __future__ import annotations

import time

from numba import njit

from .activations import JIT
from .microkernel import LANES, MR, NV, fma_chains

#: Floating-point operations per round of the chains: MR x NV vectors, multiply and add.
FLOPS_PER_ROUND = 2 * MR * NV * LANES


@njit(**JIT)
def _fma_chains(iterations):
    return fma_chains(iterations)


def fma_peak_gflops(threads: int, tries: int = 5, iterations: int = 500_000) -> float:
    """GFLOP/s of ``threads`` cores running FMAs flat out (one core measured)."""
    _fma_chains(10)
    best = float("inf")
    for _ in range(tries):
        t0 = time.perf_counter()
        _fma_chains(iterations)
        best = min(best, time.perf_counter() - t0)
    return FLOPS_PER_ROUND * iterations / best / 1e9 * threads
