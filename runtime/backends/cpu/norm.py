"""Normalisations on the CPU (Numba): batch norm in training, local response, layer and group
norm, forward and backward. NHWC float32;
statistics accumulate in float64 (PyTorch's float32 two-pass differs by about 1e-7)."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .activations import PJIT
from .elementwise import _rows, affine
from .table import GRADS, KERNELS


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


# ---- batch norm in training: the batch's statistics, and its backward pass ----------------

_Z = np.float32(0.0)


@njit(**PJIT)
def _column_partials(x2, center, square, parts):
    """``parts[t]``: per channel, the sum over row block ``t`` of ``x - center`` (squared
    where ``square``), in float64; one block per thread and a few more."""
    rows, c = x2.shape
    blocks = parts.shape[0]
    for t in prange(blocks):
        acc = np.zeros(c, np.float64)
        for r in range(rows * t // blocks, rows * (t + 1) // blocks):
            for ch in range(c):
                d = np.float64(x2[r, ch]) - center[ch]
                acc[ch] += d * d if square else d
        parts[t] = acc


def _column_sum(x2, center, square, threads):
    parts = np.empty((max(1, min(4 * threads, x2.shape[0])), x2.shape[1]), np.float64)
    _column_partials(x2, center, square, parts)
    return parts.sum(axis=0)


#: Rows a float32 partial sum of the batch-norm backward takes before it goes into float64.
RUN_ROWS = 256


@njit(**PJIT)
def _bn_grad_partials(gy2, x2, mean, rstd, parts):
    """``parts[t, 0]``: per channel, the sum of ``gy`` over row block ``t``; ``parts[t, 1]``
    the sum of ``gy * xhat``: in float32 over runs of RUN_ROWS rows (they vectorise), the runs
    added in float64."""
    rows, c = x2.shape
    blocks = parts.shape[0]
    m32, r32 = mean.astype(np.float32), rstd.astype(np.float32)
    for t in prange(blocks):
        s = np.zeros(c, np.float64)
        sx = np.zeros(c, np.float64)
        run = np.empty(c, np.float32)
        runx = np.empty(c, np.float32)
        lo = rows * t // blocks
        gs, xs = gy2[lo : rows * (t + 1) // blocks], x2[lo : rows * (t + 1) // blocks]
        for r0 in range(0, gs.shape[0], RUN_ROWS):
            run[:] = 0.0
            runx[:] = 0.0
            for r in range(r0, min(gs.shape[0], r0 + RUN_ROWS)):
                for ch in range(c):
                    g = gs[r, ch]
                    run[ch] += g
                    runx[ch] += g * ((xs[r, ch] - m32[ch]) * r32[ch])
            for ch in range(c):
                s[ch] += run[ch]
                sx[ch] += runx[ch]
        parts[t, 0] = s
        parts[t, 1] = sx


@njit(**PJIT)
def _bn_grad_input(gy2, x2, mean, a, b, c0, gx2):
    """Batch norm's input gradient with the batch's statistics,
    ``gx = w * rstd * (gy - sum_gy / M - xhat * sum_gy_xhat / M)``, as
    ``a * gy + b * (x - mean) + c0`` per channel (float32 coefficients: the loop
    vectorises), a block of rows at a time."""
    rows, c = x2.shape
    per = max(1, 16384 // max(1, c))
    for blk in prange((rows + per - 1) // per):
        lo = blk * per
        gs, xs, out = gy2[lo : lo + per], x2[lo : lo + per], gx2[lo : lo + per]
        for r in range(xs.shape[0]):
            for ch in range(c):
                out[r, ch] = a[ch] * gs[r, ch] + b[ch] * (xs[r, ch] - mean[ch]) + c0[ch]


@KERNELS.register("batchnorm")
def launch_batchnorm(backend, step, arrays, ins, res, out, work):
    """Batch norm of a training step: normalised with the batch's mean and biased variance
    (``train``), kept in ``arrays`` for the backward pass and the running statistics; or
    with the running statistics (evaluation)."""
    a, x2 = step.attrs, _rows(ins[0])
    if a["train"]:
        zero = np.zeros(x2.shape[1], np.float64)
        mean = _column_sum(x2, zero, False, backend.threads) / x2.shape[0]
        var = _column_sum(x2, mean, True, backend.threads) / x2.shape[0]
    else:
        mean = arrays["param.running_mean"].astype(np.float64)
        var = arrays["param.running_var"].astype(np.float64)
    rstd = 1.0 / np.sqrt(var + a["eps"])
    arrays["mean"][...] = mean
    arrays["rstd"][...] = rstd
    scale = arrays["param.weight"] * rstd
    shift = arrays["param.bias"] - mean * scale
    affine(x2, scale.astype(np.float32), shift.astype(np.float32), _rows(out), 0, _Z, _Z)


@GRADS.register("batchnorm")
def grad_batchnorm(backend, step, arrays, saved, gy, gxs, gws):
    x2, gy2 = _rows(saved.xs[0]), _rows(gy)
    mean, rstd = arrays["mean"], arrays["rstd"]
    parts = np.empty((max(1, min(4 * backend.threads, x2.shape[0])), 2, x2.shape[1]))
    _bn_grad_partials(gy2, x2, mean, rstd, parts)
    sum_gy, sum_gy_xhat = parts.sum(axis=0)
    weight = arrays["param.weight"]
    if gxs[0] is None:  # only the weights' gradients are asked for
        pass
    elif step.attrs["train"]:
        count = x2.shape[0]
        a = weight * rstd  # float64 per channel, then float32 for the loop
        b = -a * rstd * sum_gy_xhat / count
        c0 = -a * sum_gy / count
        f32 = np.float32
        _bn_grad_input(gy2, x2, mean.astype(f32), a.astype(f32), b.astype(f32), c0.astype(f32),
                       _rows(gxs[0]))  # fmt: skip
    else:
        zero = np.zeros_like(weight)
        affine(gy2, (weight * rstd).astype(np.float32), zero, _rows(gxs[0]), 0, _Z, _Z)
    if "weight" in gws:
        gws["weight"][...] = sum_gy_xhat
    if "bias" in gws:
        gws["bias"][...] = sum_gy


# ---- local response, layer and group norm: backward passes ---------------------------------


@njit(**PJIT)
def lrn_backward(x2, gy2, gx2, size, alpha, beta, k, blocks):
    """Local response norm's input gradient. With ``d_c = k + alpha/size * (window sum of
    squares around c)`` and ``y_c = x_c * d_c^-beta``:
    ``gx_j = gy_j d_j^-beta - 2 alpha beta / size * x_j * sum over the c whose window holds j
    of gy_c x_c d_c^(-beta-1)``. (rows, C) views; rows split into ``blocks``."""
    rows, c = x2.shape
    before = size // 2
    after = (size - 1) // 2
    coef = 2.0 * alpha * beta / size
    for t in prange(blocks):
        d = np.empty(c, np.float64)
        u = np.empty(c, np.float64)
        for r in range(rows * t // blocks, rows * (t + 1) // blocks):
            for ch in range(c):
                s = 0.0
                for j in range(max(0, ch - before), min(c, ch + after + 1)):
                    s += np.float64(x2[r, j]) * x2[r, j]
                d[ch] = k + alpha * s / size
                u[ch] = np.float64(gy2[r, ch]) * x2[r, ch] * d[ch] ** (-beta - 1.0)
            for j in range(c):
                acc = 0.0
                for ch in range(max(0, j - after), min(c, j + before + 1)):
                    acc += u[ch]
                gx2[r, j] = gy2[r, j] * d[j] ** -beta - coef * x2[r, j] * acc


@GRADS.register("lrn")
def grad_lrn(backend, step, arrays, saved, gy, gxs, gws):
    a, x2 = step.attrs, _rows(saved.xs[0])
    blocks = max(1, min(4 * backend.threads, x2.shape[0]))
    lrn_backward(
        x2, _rows(gy), _rows(gxs[0]), a["size"], float(a["alpha"]), float(a["beta"]),
        float(a["k"]), blocks,
    )  # fmt: skip


@njit(**PJIT)
def layernorm_backward(x2, weight, gy2, gx2, eps, parts):
    """Layer norm's input gradient per row, ``gx = rstd * (g - mean(g) - xhat * mean(g *
    xhat))`` with ``g = gy * weight``; and in ``parts[t, 0]`` / ``parts[t, 1]`` row block
    ``t``'s per-channel sums of ``gy * xhat`` (the weight's gradient) and ``gy`` (the
    bias's), float64."""
    rows, c = x2.shape
    blocks = parts.shape[0]
    for t in prange(blocks):
        gw = np.zeros(c, np.float64)
        gb = np.zeros(c, np.float64)
        xhat = np.empty(c, np.float64)
        for r in range(rows * t // blocks, rows * (t + 1) // blocks):
            mean = 0.0
            for ch in range(c):
                mean += x2[r, ch]
            mean /= c
            var = 0.0
            for ch in range(c):
                dev = x2[r, ch] - mean
                var += dev * dev
            rstd = 1.0 / np.sqrt(var / c + eps)
            s1 = 0.0
            s2 = 0.0
            for ch in range(c):
                xh = (x2[r, ch] - mean) * rstd
                xhat[ch] = xh
                g = np.float64(gy2[r, ch])
                s1 += g * weight[ch]
                s2 += g * weight[ch] * xh
                gw[ch] += g * xh
                gb[ch] += g
            s1 /= c
            s2 /= c
            for ch in range(c):
                gx2[r, ch] = rstd * (np.float64(gy2[r, ch]) * weight[ch] - s1 - xhat[ch] * s2)
        parts[t, 0] = gw
        parts[t, 1] = gb


def _weight_and_bias(parts, gws) -> None:
    """Write the sums of ``parts`` (blocks, 2, C) into the wanted ``weight`` and ``bias``."""
    sums = parts.sum(axis=0)
    for key, row in (("weight", 0), ("bias", 1)):
        if key in gws:
            gws[key][...] = sums[row].reshape(gws[key].shape)


@GRADS.register("layernorm")
def grad_layernorm(backend, step, arrays, saved, gy, gxs, gws):
    x2 = _rows(saved.xs[0])
    parts = np.empty((max(1, min(4 * backend.threads, x2.shape[0])), 2, x2.shape[1]))
    gx2 = _rows(gxs[0]) if gxs[0] is not None else np.empty_like(x2)
    layernorm_backward(x2, arrays["weight"], _rows(gy), gx2, step.attrs["eps"], parts)
    _weight_and_bias(parts, gws)


@njit(**PJIT)
def groupnorm_backward(x, weight, gy, gx, groups, eps, parts):
    """Group norm's input gradient per sample and group (as layer norm's, over the group's
    channels and every position); ``parts[n, 0]`` / ``parts[n, 1]`` sample ``n``'s
    per-channel sums of ``gy * xhat`` and ``gy`` (each task writes its own channels)."""
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
                    dev = x[n, iy, ix, ch] - mean
                    var += dev * dev
        rstd = 1.0 / np.sqrt(var / count + eps)
        for ch in range(c0, c0 + cg):
            parts[n, 0, ch] = 0.0
            parts[n, 1, ch] = 0.0
        s1 = 0.0
        s2 = 0.0
        for iy in range(h):
            for ix in range(w):
                for ch in range(c0, c0 + cg):
                    xh = (x[n, iy, ix, ch] - mean) * rstd
                    g = np.float64(gy[n, iy, ix, ch])
                    s1 += g * weight[ch]
                    s2 += g * weight[ch] * xh
                    parts[n, 0, ch] += g * xh
                    parts[n, 1, ch] += g
        s1 /= count
        s2 /= count
        for iy in range(h):
            for ix in range(w):
                for ch in range(c0, c0 + cg):
                    xh = (x[n, iy, ix, ch] - mean) * rstd
                    g = np.float64(gy[n, iy, ix, ch]) * weight[ch]
                    gx[n, iy, ix, ch] = rstd * (g - s1 - xh * s2)


@GRADS.register("groupnorm")
def grad_groupnorm(backend, step, arrays, saved, gy, gxs, gws):
    x, a = saved.xs[0], step.attrs
    parts = np.empty((x.shape[0], 2, x.shape[-1]))
    gx = gxs[0] if gxs[0] is not None else np.empty_like(x)
    groupnorm_backward(x, arrays["weight"], gy, gx, a["groups"], a["eps"], parts)
    _weight_and_bias(parts, gws)
