"""Pooling on CUDA (numba.cuda), NHWC float32, one thread per output."""

from __future__ import annotations

import math

from numba import cuda, float32

from .indexing import nhwc
from .launch import KERNELS, THREADS, blocks, flat


@cuda.jit
def maxpool(x, out, n_img, h, wd, c, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw):
    i = cuda.grid(1)
    if i >= n_img * ho * wo * c:
        return
    n, oy, ox, ch = nhwc(i, ho, wo, c)
    best = float32(-math.inf)
    for ky in range(kh):
        iy = oy * sh - ph + ky * dh
        if iy < 0 or iy >= h:
            continue
        for kx in range(kw):
            ix = ox * sw - pw + kx * dw
            if ix < 0 or ix >= wd:
                continue
            v = x[((n * h + iy) * wd + ix) * c + ch]
            if v > best or v != v:
                best = v
    out[i] = best


@cuda.jit
def avgpool(x, out, n_img, h, wd, c, ho, wo, kh, kw, sh, sw, ph, pw, count_pad):
    i = cuda.grid(1)
    if i >= n_img * ho * wo * c:
        return
    n, oy, ox, ch = nhwc(i, ho, wo, c)
    y0 = oy * sh - ph
    x0 = ox * sw - pw
    y1 = min(y0 + kh, h + ph)
    x1 = min(x0 + kw, wd + pw)
    pool = (y1 - y0) * (x1 - x0)
    ya = max(y0, 0)
    yb = min(y1, h)
    xa = max(x0, 0)
    xb = min(x1, wd)
    s = float32(0.0)
    for iy in range(ya, yb):
        for ix in range(xa, xb):
            s += x[((n * h + iy) * wd + ix) * c + ch]
    div = pool if count_pad else (yb - ya) * (xb - xa)
    out[i] = s / max(div, 1)


@cuda.jit
def global_pool(x, out, n_img, hw, c, is_max):
    """gap and gmp: one thread per (sample, channel)."""
    i = cuda.grid(1)
    if i >= n_img * c:
        return
    ch = i % c
    n = i // c
    acc = float32(-math.inf) if is_max else float32(0.0)
    for p in range(hw):
        v = x[(n * hw + p) * c + ch]
        if is_max:
            if v > acc or v != v:
                acc = v
        else:
            acc += v
    out[i] = acc if is_max else acc / hw


@cuda.jit
def adaptive_avgpool(x, out, n_img, h, wd, c, ho, wo):
    """PyTorch's cells: rows floor(i*H/h) <= y < ceil((i+1)*H/h), the same for columns."""
    i = cuda.grid(1)
    if i >= n_img * ho * wo * c:
        return
    n, oy, ox, ch = nhwc(i, ho, wo, c)
    y0 = (oy * h) // ho
    y1 = -((-(oy + 1) * h) // ho)
    x0 = (ox * wd) // wo
    x1 = -((-(ox + 1) * wd) // wo)
    s = float32(0.0)
    for iy in range(y0, y1):
        for ix in range(x0, x1):
            s += x[((n * h + iy) * wd + ix) * c + ch]
    out[i] = s / float32((y1 - y0) * (x1 - x0))


def _window(a):
    return a["kh"], a["kw"], a["sh"], a["sw"], a["ph"], a["pw"]


@KERNELS.register("maxpool")
def launch_maxpool(backend, step, arrays, ins, res, out, work):
    n, h, wd, c = ins[0].shape
    _, ho, wo, _ = out.shape
    maxpool[blocks(out.size), THREADS](
        flat(ins[0]),
        flat(out),
        n,
        h,
        wd,
        c,
        ho,
        wo,
        *_window(step.attrs),
        step.attrs["dh"],
        step.attrs["dw"],
    )


@KERNELS.register("avgpool")
def launch_avgpool(backend, step, arrays, ins, res, out, work):
    n, h, wd, c = ins[0].shape
    _, ho, wo, _ = out.shape
    avgpool[blocks(out.size), THREADS](
        flat(ins[0]), flat(out), n, h, wd, c, ho, wo, *_window(step.attrs), step.attrs["count_pad"]
    )


@KERNELS.register("gap", "gmp")
def launch_global_pool(backend, step, arrays, ins, res, out, work):
    n, h, wd, c = ins[0].shape
    global_pool[blocks(n * c), THREADS](flat(ins[0]), flat(out), n, h * wd, c, step.kernel == "gmp")


@KERNELS.register("adaptive_avgpool")
def launch_adaptive_avgpool(backend, step, arrays, ins, res, out, work):
    n, h, wd, c = ins[0].shape
    _, ho, wo, _ = out.shape
    adaptive_avgpool[blocks(out.size), THREADS](flat(ins[0]), flat(out), n, h, wd, c, ho, wo)
