"""Depthwise convolution on the CPU (Numba), NHWC float32: MobileNet's and EfficientNet's
3x3 and 5x5 layers, strides 1 and 2.

Work items are blocks of output rows of one image. Each copies the input rows it reads into a
zero-padded per-thread buffer, so the hot loop has no border tests; every output pixel then
sums its taps a kernel row at a time in loops over contiguous channels (3 and 5 taps written
out: one pass over the pixel's channels per kernel row), and bias, residual and activation
are applied while the pixel is in cache. Optionally the per-channel sums of the output are
accumulated per thread (``sums``): the squeeze of a following squeeze-and-excitation.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .activations import JIT, PJIT, activate, activate_run
from .table import KERNELS

#: Output rows per work item at most: the padded input rows of a block are copied once, so
#: longer blocks copy less overlap (stride 1, 3x3: (R + 2) / R) but balance threads worse.
MAX_ROWS = 8


@njit(inline="always", **JIT)
def _tap_row(d, a, wr, kw, dw, c_n, first):
    """``d (+)= sum_kx a[kx * dw] * wr[kx]`` over the channels: one pass per kernel row."""
    if kw == 3 and dw == 1:
        a0, a1, a2 = a[0], a[1], a[2]
        w0, w1, w2 = wr[0], wr[1], wr[2]
        if first:
            for c in range(c_n):
                d[c] = a0[c] * w0[c] + a1[c] * w1[c] + a2[c] * w2[c]
        else:
            for c in range(c_n):
                d[c] += a0[c] * w0[c] + a1[c] * w1[c] + a2[c] * w2[c]
    elif kw == 5 and dw == 1:
        a0, a1, a2, a3, a4 = a[0], a[1], a[2], a[3], a[4]
        w0, w1, w2, w3, w4 = wr[0], wr[1], wr[2], wr[3], wr[4]
        if first:
            for c in range(c_n):
                d[c] = a0[c] * w0[c] + a1[c] * w1[c] + a2[c] * w2[c] + a3[c] * w3[c] + a4[c] * w4[c]
        else:
            for c in range(c_n):
                d[c] += (
                    a0[c] * w0[c] + a1[c] * w1[c] + a2[c] * w2[c] + a3[c] * w3[c] + a4[c] * w4[c]
                )
    else:
        if first:
            d[:c_n] = 0.0
        for kx in range(kw):
            ax, wx = a[kx * dw], wr[kx]
            for c in range(c_n):
                d[c] += ax[c] * wx[c]


@njit(**PJIT)
def dwconv(
    x, w, bias, res, out, scratch, sums, kh, kw, sh, sw, ph, pw, dh, dw, act, alpha, beta, rows
):
    """Depthwise convolution (channel multiplier 1), ``w`` (kh, kw, C). ``scratch`` holds one
    padded input block per thread; ``sums`` is (threads, N, C) or empty: each thread adds the
    output's channel sums per image into its own row (the caller reduces over threads)."""
    n_img, h, wd, c_n = x.shape
    _, ho, wo, _ = out.shape
    has_res = res.size > 0
    squeeze = sums.size > 0
    wp = (wo - 1) * sw + (kw - 1) * dw + 1
    tiles = (ho + rows - 1) // rows
    items = n_img * tiles
    threads = scratch.shape[0]
    for t in prange(threads):
        if squeeze:
            sums[t] = 0.0
        for item in range(t * items // threads, (t + 1) * items // threads):
            n = item // tiles
            oy0 = (item % tiles) * rows
            oy1 = min(ho, oy0 + rows)
            in_rows = (oy1 - oy0 - 1) * sh + (kh - 1) * dh + 1
            buf = scratch[t, : in_rows * wp * c_n].reshape(in_rows, wp, c_n)
            iy0 = oy0 * sh - ph
            for r in range(in_rows):
                iy = iy0 + r
                row = buf[r]
                if iy < 0 or iy >= h:
                    row[:] = 0.0
                    continue
                # columns -pw .. wp - pw - 1 of input row iy: zeros outside the image
                lo = min(wp, max(0, pw))
                hi = max(lo, min(wp, wd + pw))
                src = x[n, iy]
                for col in range(wp):
                    if lo <= col < hi:
                        for c in range(c_n):
                            row[col, c] = src[col - pw, c]
                    else:
                        for c in range(c_n):
                            row[col, c] = 0.0
            for oy in range(oy0, oy1):
                r0 = (oy - oy0) * sh
                for ox in range(wo):
                    d = out[n, oy, ox]
                    c0 = ox * sw
                    for ky in range(kh):
                        _tap_row(d, buf[r0 + ky * dh, c0:], w[ky], kw, dw, c_n, ky == 0)
                    b = bias
                    if has_res:
                        r = res[n, oy, ox]
                        for c in range(c_n):
                            d[c] += b[c] + r[c]
                    else:
                        for c in range(c_n):
                            d[c] += b[c]
                    activate_run(d, c_n, act, alpha, beta)
                    if squeeze:
                        s = sums[t, n]
                        for c in range(c_n):
                            s[c] += d[c]


@njit(**PJIT)
def dwconv_mult(x, w, bias, res, out, kh, kw, sh, sw, ph, pw, dh, dw, mult, act, alpha, beta):
    """Depthwise convolution with a channel multiplier: output channel c reads input channel
    c // mult. ``w``: (kh, kw, C*mult). Rare (no zoo network has one): plain loops."""
    n_img, h, wd, _ = x.shape
    _, ho, wo, c_out = out.shape
    has_res = res.size > 0
    for t in prange(n_img * ho):
        n = t // ho
        oy = t % ho
        for ox in range(wo):
            d = out[n, oy, ox]
            for c in range(c_out):
                d[c] = bias[c]
            for ky in range(kh):
                iy = oy * sh - ph + ky * dh
                if iy < 0 or iy >= h:
                    continue
                for kx in range(kw):
                    ix = ox * sw - pw + kx * dw
                    if 0 <= ix < wd:
                        for c in range(c_out):
                            d[c] += x[n, iy, ix, c // mult] * w[ky, kx, c]
            for c in range(c_out):
                v = d[c] + (res[n, oy, ox, c] if has_res else np.float32(0.0))
                d[c] = activate(v, act, alpha, beta)


def dw_rows(n_img: int, ho: int, threads: int) -> int:
    """Output rows per work item: up to MAX_ROWS while every thread gets two items or more."""
    rows = MAX_ROWS
    while rows > 1 and n_img * math.ceil(ho / rows) < 2 * threads:
        rows //= 2
    return rows


def dw_scratch_floats(rows: int, out_shape, c_n: int, kh, kw, sh, sw, dh, dw) -> int:
    """Floats of one thread's padded input block."""
    ho, wo = out_shape[1], out_shape[2]
    in_rows = (min(rows, ho) - 1) * sh + (kh - 1) * dh + 1
    return in_rows * ((wo - 1) * sw + (kw - 1) * dw + 1) * c_n


NO_SUMS = np.zeros((0, 0, 0), np.float32)


def run_dwconv(backend, a, arrays, x, res, out, sums=NO_SUMS):
    """Run a depthwise step (``a`` its attributes); ``sums`` as ``dwconv`` takes it."""
    act, alpha, beta = a["act"], np.float32(a["alpha"]), np.float32(a["beta"])
    window = (a["kh"], a["kw"], a["sh"], a["sw"], a["ph"], a["pw"], a["dh"], a["dw"])
    if a["mult"] != 1:
        dwconv_mult(x, arrays["w"], arrays["b"], res, out, *window, a["mult"], act, alpha, beta)
        return
    rows = dw_rows(x.shape[0], out.shape[1], backend.threads)
    floats = dw_scratch_floats(rows, out.shape, x.shape[3], *window[:4], *window[6:])
    dwconv(
        x,
        arrays["w"],
        arrays["b"],
        res,
        out,
        backend.scratch(floats),
        sums,
        *window,
        act,
        alpha,
        beta,
        rows,
    )


@KERNELS.register("dwconv")
def launch_dwconv(backend, step, arrays, ins, res, out, work):
    run_dwconv(backend, step.attrs, arrays, ins[0], res, out)
