"""Normalisations on CUDA (numba.cuda): local response, layer and group norm, batch norm in
training, and their backward passes; NHWC float32.

Layer norm runs one thread per position (its channels are contiguous); group norm one thread
per (sample, group) for the statistics, then one per output; batch norm's per-channel sums
are reduce.py's block reductions.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32, float64

from .elementwise import affine
from .launch import GRADS, KERNELS, THREADS, blocks, channels, flat
from .reduce import DOT, NORMALISED_DOT, SQUARED_DEVIATION, SUM, column_sums

Z = np.float32(0.0)


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


# ---- batch norm in training, and the backward passes ---------------------------------------


@cuda.jit
def bn_coefficients(mean_in, var, weight, bias, eps, mean, rstd, scale, shift, c):
    """Per channel: ``mean`` (copied from ``mean_in``, which may be the same array),
    ``rstd = 1 / sqrt(var + eps)`` and the affine ``scale``, ``shift`` that normalise."""
    ch = cuda.grid(1)
    if ch >= c:
        return
    m = float64(mean_in[ch])
    r = 1.0 / math.sqrt(float64(var[ch]) + eps)
    mean[ch] = m
    rstd[ch] = r
    s = weight[ch] * r
    scale[ch] = s
    shift[ch] = bias[ch] - m * s


@cuda.jit
def bn_grad(gy, x, mean, rstd, weight, sum_gy, sum_gy_xhat, gx, size, c, count, train):
    """Batch norm's input gradient: with the batch's statistics (``train``)
    ``gx = w * rstd * (gy - (sum_gy + xhat * sum_gy_xhat) / count)``, else ``gy * w * rstd``."""
    i = cuda.grid(1)
    if i >= size:
        return
    ch = i % c
    g = gy[i]
    if train:
        xhat = (x[i] - mean[ch]) * rstd[ch]
        g -= (sum_gy[ch] + xhat * sum_gy_xhat[ch]) / count
    gx[i] = weight[ch] * rstd[ch] * g


@KERNELS.register("batchnorm")
def launch_batchnorm(backend, step, arrays, ins, res, out, work):
    """Batch norm of a training step: normalised with the batch's mean and biased variance
    (``train``), kept in ``arrays["mean"]`` and ``arrays["rstd"]`` for the backward pass and
    the running statistics; or with the running statistics (evaluation)."""
    a, x, c = step.attrs, ins[0], channels(ins[0])
    rows = x.size // c
    mean, rstd = arrays["mean"], arrays["rstd"]
    if a["train"]:
        var = backend.empty(c)
        column_sums(backend, mean, x, rows, c, SUM, factor=1.0 / rows)
        column_sums(backend, var, x, rows, c, SQUARED_DEVIATION, center=mean, factor=1.0 / rows)
        mean_in = mean
    else:
        mean_in, var = arrays["param.running_mean"], arrays["param.running_var"]
    scale, shift = backend.empty(c), backend.empty(c)
    bn_coefficients[blocks(c), THREADS](
        flat(mean_in), flat(var), flat(arrays["param.weight"]), flat(arrays["param.bias"]),
        float(a["eps"]), flat(mean), flat(rstd), scale, shift, c,
    )  # fmt: skip
    affine[blocks(out.size), THREADS](flat(x), scale, shift, flat(out), out.size, c, 0, Z, Z)


@GRADS.register("batchnorm")
def grad_batchnorm(backend, step, arrays, saved, gy, gxs, gws):
    x, c = saved.xs[0], channels(gy)
    rows = gy.size // c
    mean, rstd = flat(arrays["mean"]), flat(arrays["rstd"])
    sum_gy = gws["bias"] if "bias" in gws else backend.empty(c)
    sum_gy_xhat = gws["weight"] if "weight" in gws else backend.empty(c)
    column_sums(backend, sum_gy, gy, rows, c, SUM)
    column_sums(backend, sum_gy_xhat, gy, rows, c, NORMALISED_DOT, b=x, center=mean, scale=rstd)
    if gxs[0] is not None:
        bn_grad[blocks(gy.size), THREADS](
            flat(gy), flat(x), mean, rstd, flat(arrays["param.weight"]), flat(sum_gy),
            flat(sum_gy_xhat), flat(gxs[0]), gy.size, c, np.float32(rows), step.attrs["train"],
        )  # fmt: skip


@cuda.jit
def lrn_grad(x, gy, gx, rows, c, size, alpha, beta, k):
    """Local response norm's input gradient, one thread per element. With
    ``d_c = k + alpha/size * (window sum of squares around c)`` and ``y_c = x_c d_c^-beta``:
    ``gx_j = gy_j d_j^-beta - 2 alpha beta / size * x_j * sum over the c whose window holds j
    of gy_c x_c d_c^(-beta-1)``."""
    i = cuda.grid(1)
    if i >= rows * c:
        return
    j = i % c
    base = i - j
    before = size // 2
    after = (size - 1) // 2
    acc = 0.0
    own = 0.0
    for ch in range(max(0, j - after), min(c, j + before + 1)):
        s = 0.0
        for m in range(max(0, ch - before), min(c, ch + after + 1)):
            v = float64(x[base + m])
            s += v * v
        d = k + alpha * s / size
        acc += float64(gy[base + ch]) * x[base + ch] * math.pow(d, -beta - 1.0)
        if ch == j:
            own = math.pow(d, -beta)
    gx[i] = gy[i] * own - 2.0 * alpha * beta / size * x[i] * acc


@GRADS.register("lrn")
def grad_lrn(backend, step, arrays, saved, gy, gxs, gws):
    a, c = step.attrs, channels(gy)
    if gxs[0] is not None:
        lrn_grad[blocks(gy.size), THREADS](
            flat(saved.xs[0]), flat(gy), flat(gxs[0]), gy.size // c, c, a["size"],
            np.float32(a["alpha"]), np.float32(a["beta"]), np.float32(a["k"]),
        )  # fmt: skip


@cuda.jit
def layernorm_grad(x, weight, gy, gx, xhat, rows, c, eps):
    """Layer norm's input gradient per row (one thread each), ``gx = rstd * (g - mean(g) -
    xhat * mean(g * xhat))`` with ``g = gy * weight``; ``xhat`` kept for the weight's."""
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
    rstd = 1.0 / math.sqrt(var / c + eps)
    s1 = 0.0
    s2 = 0.0
    for ch in range(c):
        xh = (x[base + ch] - mean) * rstd
        xhat[base + ch] = xh
        g = float64(gy[base + ch]) * weight[ch]
        s1 += g
        s2 += g * xh
    s1 /= c
    s2 /= c
    for ch in range(c):
        g = float64(gy[base + ch]) * weight[ch]
        gx[base + ch] = rstd * (g - s1 - xhat[base + ch] * s2)


def _weight_and_bias(backend, gws, gy, xhat, rows, c):
    """The per-channel weight (sum of ``gy * xhat``) and bias (sum of ``gy``) gradients."""
    if "weight" in gws:
        column_sums(backend, gws["weight"], gy, rows, c, DOT, b=xhat)
    if "bias" in gws:
        column_sums(backend, gws["bias"], gy, rows, c, SUM)


@GRADS.register("layernorm")
def grad_layernorm(backend, step, arrays, saved, gy, gxs, gws):
    c = channels(gy)
    rows = gy.size // c
    xhat = backend.empty(gy.size)
    gx = gxs[0] if gxs[0] is not None else backend.empty(gy.size)
    layernorm_grad[blocks(rows), THREADS](
        flat(saved.xs[0]), arrays["weight"], flat(gy), flat(gx), xhat, rows, c, step.attrs["eps"]
    )
    _weight_and_bias(backend, gws, gy, xhat, rows, c)


@cuda.jit
def group_grad_sums(gy, x, stats, weight, sums, n_img, pixels, c, groups):
    """Per (sample, group), one thread each: ``sums[2t]`` the mean over the group of
    ``g = gy * weight`` and ``sums[2t + 1]`` that of ``g * xhat``."""
    t = cuda.grid(1)
    if t >= n_img * groups:
        return
    n = t // groups
    cg = c // groups
    c0 = (t % groups) * cg
    mean, rstd = stats[2 * t], stats[2 * t + 1]
    s1 = 0.0
    s2 = 0.0
    for p in range(pixels):
        for ch in range(c0, c0 + cg):
            i = (n * pixels + p) * c + ch
            g = float64(gy[i]) * weight[ch]
            s1 += g
            s2 += g * (x[i] - mean) * rstd
    sums[2 * t] = s1 / (pixels * cg)
    sums[2 * t + 1] = s2 / (pixels * cg)


@cuda.jit
def group_grad(gy, x, stats, weight, sums, gx, xhat, size, pixels, c, groups):
    """Group norm's input gradient (layer norm's, over a sample's group), one thread per
    element; ``xhat`` kept for the weight's gradient."""
    i = cuda.grid(1)
    if i >= size:
        return
    ch = i % c
    n = i // (pixels * c)
    t = n * groups + ch // (c // groups)
    rstd = stats[2 * t + 1]
    xh = (x[i] - stats[2 * t]) * rstd
    xhat[i] = xh
    gx[i] = rstd * (float64(gy[i]) * weight[ch] - sums[2 * t] - xh * sums[2 * t + 1])


@GRADS.register("groupnorm")
def grad_groupnorm(backend, step, arrays, saved, gy, gxs, gws):
    n, h, wd, c = gy.shape
    groups, x = step.attrs["groups"], flat(saved.xs[0])
    stats = cuda.device_array(2 * n * groups, np.float64)
    sums = cuda.device_array(2 * n * groups, np.float64)
    group_stats[blocks(n * groups), THREADS](x, stats, n, h * wd, c, groups, step.attrs["eps"])
    group_grad_sums[blocks(n * groups), THREADS](
        flat(gy), x, stats, arrays["weight"], sums, n, h * wd, c, groups
    )
    xhat = backend.empty(gy.size)
    gx = gxs[0] if gxs[0] is not None else backend.empty(gy.size)
    group_grad[blocks(gy.size), THREADS](
        flat(gy), x, stats, arrays["weight"], sums, flat(gx), xhat, gy.size, h * wd, c, groups
    )
    _weight_and_bias(backend, gws, gy, xhat, gy.size // c, c)
