"""Launch geometry and the kernel tables (forward and backward) of the CUDA backend.

GEMM-like kernels use TILE x TILE thread blocks, each thread a WORK x WORK register tile; other
kernels one thread per output in blocks of THREADS. Tests shrink TILE through CNNC_CUDA_TILE so
that the simulator runs multi-block and boundary paths on tiny shapes.
"""

from __future__ import annotations

import os

import numpy as np

from ..registry import GradTable, KernelTable

TILE = int(os.environ.get("CNNC_CUDA_TILE", 16))  # threads per block side
WORK = 2  # outputs per thread per side
BM = BN = TILE * WORK
BK = TILE
THREADS = TILE * TILE  # threads per block of 1-D kernels

KERNELS = KernelTable("cuda")
#: Backward kernels, under the forward kernels' names (see registry.GradTable).
GRADS = GradTable("cuda backward")


def blocks(total: int) -> int:
    """Blocks of THREADS threads covering ``total`` outputs."""
    return max(1, (total + THREADS - 1) // THREADS)


def channels(a) -> int:
    """The last dimension (channels of NHWC data; the simulator's arrays take no -1)."""
    return a.shape[len(a.shape) - 1]


def flat(a):
    """A device array as one dimension (kernels index NHWC data by hand)."""
    return a.reshape(a.size)


def epilogue(backend, step, res) -> tuple:
    """(residual, has_res, act, alpha, beta) as the fused epilogues take them."""
    a = step.attrs
    has_res = res.size > 0
    return (
        flat(res) if has_res else backend.dummy,
        has_res,
        a.get("act", 0),
        np.float32(a.get("alpha", 0.0)),
        np.float32(a.get("beta", 0.0)),
    )
