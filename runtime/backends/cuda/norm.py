"""Normalisations on CUDA (numba.cuda): local response, layer and group norm, NHWC float32.

Layer norm runs one thread per position (its channels are contiguous); group norm one thread
per (sample, group) for the statistics, then one per output.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32

from .launch import KERNELS, THREADS, blocks, channels, flat


@cuda.jit
def lrn(x, out, rows, c, size, alpha, beta, k):
    i = cuda.grid(1)
    if i >= rows * c:
        return
    ch = i % c
    base = i - ch
    s = float32(0.0)
    for j in range(max(0, ch - size // 2), min(c, ch + (size - 1) // 2 + 1)):
        v = x[base + j]
        s += v * v
    out[i] = x[i] / math.pow(k + alpha * s / size, beta)


@cuda.jit
def layernorm(x, weight, bias, out, rows, c, eps):
    r = cuda.grid(1)
    if r >= rows:
        return
    base = r * c
    mean = 0.0
    for ch in range(c):
        mean += x[base + ch]
    mean /= c
    var = 0.0
    for ch in range(c):
        d = x[base + ch] - mean
        var += d * d
    inv = 1.0 / math.sqrt(var / c + eps)
    for ch in range(c):
        out[base + ch] = float32((x[base + ch] - mean) * inv) * weight[ch] + bias[ch]


@cuda.jit
def group_stats(x, stats, n_img, pixels, c, groups, eps):
    """stats[2*(n*groups+g)] = mean, [+1] = 1/std of one sample's group of channels."""
    t = cuda.grid(1)
    if t >= n_img * groups:
        return
    n = t // groups
    cg = c // groups
    c0 = (t % groups) * cg
    count = pixels * cg
    mean = 0.0
    for p in range(pixels):
        for ch in range(c0, c0 + cg):
            mean += x[(n * pixels + p) * c + ch]
    mean /= count
    var = 0.0
    for p in range(pixels):
        for ch in range(c0, c0 + cg):
            d = x[(n * pixels + p) * c + ch] - mean
            var += d * d
    stats[2 * t] = mean
    stats[2 * t + 1] = 1.0 / math.sqrt(var / count + eps)


@cuda.jit
def group_apply(x, stats, weight, bias, out, size, pixels, c, groups):
    i = cuda.grid(1)
    if i >= size:
        return
    ch = i % c
    n = i // (pixels * c)
    t = n * groups + ch // (c // groups)
    out[i] = float32((x[i] - stats[2 * t]) * stats[2 * t + 1]) * weight[ch] + bias[ch]


@KERNELS.register("lrn")
def launch_lrn(backend, step, arrays, ins, res, out, work):
    a, c = step.attrs, channels(out)
    lrn[blocks(out.size), THREADS](
        flat(ins[0]),
        flat(out),
        out.size // c,
        c,
        a["size"],
        np.float32(a["alpha"]),
        np.float32(a["beta"]),
        np.float32(a["k"]),
    )


@KERNELS.register("layernorm")
def launch_layernorm(backend, step, arrays, ins, res, out, work):
    c = channels(out)
    layernorm[blocks(out.size // c), THREADS](
        flat(ins[0]),
        arrays["weight"],
        arrays["bias"],
        flat(out),
        out.size // c,
        c,
        step.attrs["eps"],
    )


@KERNELS.register("groupnorm")
def launch_groupnorm(backend, step, arrays, ins, res, out, work):
    n, h, wd, c = out.shape
    groups = step.attrs["groups"]
    stats = cuda.device_array(2 * n * groups, np.float64)
    group_stats[blocks(n * groups), THREADS](
        flat(ins[0]), stats, n, h * wd, c, groups, step.attrs["eps"]
    )
    group_apply[blocks(out.size), THREADS](
        flat(ins[0]),
        stats,
        arrays["weight"],
        arrays["bias"],
        flat(out),
        out.size,
        h * wd,
        c,
        groups,
    )
