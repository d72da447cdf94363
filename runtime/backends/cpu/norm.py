"""Normalisations on the CPU (Numba): local response, layer and group norm. NHWC float32;
statistics accumulate in float64 (PyTorch's float32 two-pass differs by about 1e-7)."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .activations import PJIT
from .elementwise import _rows
from .table import KERNELS


@njit(**PJIT)
def lrn(x2, out2, size, alpha, beta, k):
    """Local response norm across channels, PyTorch's form: the window sum of squares is
    divided by ``size`` (zero padded: size//2 before, (size-1)//2 after)."""
    rows, c = x2.shape
    before = size // 2
    after = (size - 1) // 2
    for r in prange(rows):
        for ch in range(c):
            s = np.float32(0.0)
            for j in range(max(0, ch - before), min(c, ch + after + 1)):
                s += x2[r, j] * x2[r, j]
            out2[r, ch] = x2[r, ch] / (k + alpha * s / size) ** beta


@njit(**PJIT)
def layernorm(x2, weight, bias, out2, eps):
    """Normalise each row (a position's channels, or a vector) to zero mean and unit variance,
    then scale and shift per channel."""
    rows, c = x2.shape
    for r in prange(rows):
        mean = 0.0
        for ch in range(c):
            mean += x2[r, ch]
        mean /= c
        var = 0.0
        for ch in range(c):
            d = x2[r, ch] - mean
            var += d * d
        inv = 1.0 / np.sqrt(var / c + eps)
        for ch in range(c):
            out2[r, ch] = np.float32((x2[r, ch] - mean) * inv) * weight[ch] + bias[ch]


@njit(**PJIT)
def groupnorm(x, weight, bias, out, groups, eps):
    """Statistics per sample and group of C/groups channels over all positions."""
    n_img, h, w, c = x.shape
    cg = c // groups
    count = h * w * cg
    for t in prange(n_img * groups):
        n = t // groups
        c0 = (t % groups) * cg
        mean = 0.0
        for iy in range(h):
            for ix in range(w):
                for ch in range(c0, c0 + cg):
                    mean += x[n, iy, ix, ch]
        mean /= count
        var = 0.0
        for iy in range(h):
            for ix in range(w):
                for ch in range(c0, c0 + cg):
                    d = x[n, iy, ix, ch] - mean
                    var += d * d
        inv = 1.0 / np.sqrt(var / count + eps)
        for iy in range(h):
            for ix in range(w):
                for ch in range(c0, c0 + cg):
                    v = np.float32((x[n, iy, ix, ch] - mean) * inv)
                    out[n, iy, ix, ch] = v * weight[ch] + bias[ch]


@KERNELS.register("lrn")
def launch_lrn(backend, step, arrays, ins, res, out, work):
    a = step.attrs
    lrn(
        _rows(ins[0]),
        _rows(out),
        a["size"],
        np.float32(a["alpha"]),
        np.float32(a["beta"]),
        np.float32(a["k"]),
    )


@KERNELS.register("layernorm")
def launch_layernorm(backend, step, arrays, ins, res, out, work):
    layernorm(_rows(ins[0]), arrays["weight"], arrays["bias"], _rows(out), step.attrs["eps"])


@KERNELS.register("groupnorm")
def launch_groupnorm(backend, step, arrays, ins, res, out, work):
    a = step.attrs
    groupnorm(ins[0], arrays["weight"], arrays["bias"], out, a["groups"], a["eps"])
