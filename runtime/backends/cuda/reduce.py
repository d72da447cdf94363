"""Per-channel sums on CUDA (numba.cuda): the reductions of the backward pass (bias and
per-channel weight gradients, batch norm's statistics and its gradient's two sums).

One block per channel; its threads take rows in turn and add in float64, then a fixed tree
in shared memory adds the threads' partial sums: deterministic, no atomics.
"""

from __future__ import annotations

from numba import cuda, float64

from .launch import THREADS, flat

#: What ``column_reduce`` sums per element: ``a``, ``a * b``, ``(a - center)^2``, ``a * b``
#: where ``b <= 0`` (PReLU's slope), ``a * (b - center) * scale`` (batch norm's ``gy * xhat``).
SUM, DOT, SQUARED_DEVIATION, NEGATIVE_DOT, NORMALISED_DOT = range(5)


@cuda.jit(device=True, inline=True)
def block_total(value, cache):
    """The sum of ``value`` over the block's THREADS threads (1-D blocks), in a fixed order;
    every thread of the block calls it and gets the total."""
    t = cuda.threadIdx.x
    cache[t] = value
    cuda.syncthreads()
    n = THREADS
    while n > 1:
        half = (n + 1) // 2
        if t < n - half:
            cache[t] += cache[t + half]
        cuda.syncthreads()
        n = half
    total = cache[0]
    cuda.syncthreads()  # the cache may be reused at once
    return total


@cuda.jit
def column_reduce(a, b, center, scale, out, rows, c, mode, factor):
    """``out[ch] = factor * sum over rows r`` of the term ``mode`` names, on (rows, c) data;
    grid (c,), blocks of THREADS."""
    ch = cuda.blockIdx.x
    cache = cuda.shared.array(THREADS, float64)
    acc = 0.0
    for r in range(cuda.threadIdx.x, rows, THREADS):
        i = r * c + ch
        v = float64(a[i])
        if mode == DOT:
            v *= b[i]
        elif mode == SQUARED_DEVIATION:
            v -= center[ch]
            v *= v
        elif mode == NEGATIVE_DOT:
            v = v * b[i] if b[i] <= 0 else 0.0
        elif mode == NORMALISED_DOT:
            v *= (float64(b[i]) - center[ch]) * scale[ch]
        acc += v
    total = block_total(acc, cache)
    if cuda.threadIdx.x == 0:
        out[ch] = total * factor


def column_sums(backend, out, a, rows, c, mode=SUM, b=None, center=None, scale=None, factor=1.0):
    """Launch ``column_reduce``: ``out`` (c floats, any shape) from ``a`` (and ``b``) seen as
    (rows, c), ``center`` and ``scale`` per channel where the mode reads them."""
    d = backend.dummy
    column_reduce[c, THREADS](
        flat(a),
        d if b is None else flat(b),
        d if center is None else flat(center),
        d if scale is None else flat(scale),
        flat(out),
        rows,
        c,
        mode,
        float(factor),
    )
