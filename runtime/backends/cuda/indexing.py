"""Index arithmetic of one-thread-per-output kernels on flat NHWC arrays."""

from __future__ import annotations

from numba import cuda


@cuda.jit(device=True, inline=True)
def nhwc(i, h, w, c):
    """(n, y, x, channel) of flat index ``i`` in an (N, h, w, c) array."""
    ch = i % c
    pix = i // c
    x = pix % w
    t = pix // w
    return t // h, t % h, x, ch
