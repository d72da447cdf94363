"""Pooling on CUDA (numba.cuda), NHWC float32, one thread per output; backward passes one
thread per input element, gathering what reaches it (no atomics, deterministic)."""

from __future__ import annotations

import math

from numba import cuda, float32

from .indexing import nhwc
from .launch import GRADS, KERNELS, THREADS, blocks, flat


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


# ---- backward passes: one thread per input element, summing the windows that hold it ------


@cuda.jit(device=True, inline=True)
def _window_argmax(x, n, oy, ox, ch, h, wd, c, kh, kw, sh, sw, ph, pw, dh, dw):
    """Flat pixel (iy * wd + ix) of the maximum of one max-pooling window, as PyTorch's CPU
    kernel picks it: rows then columns, a strictly greater value or a NaN replaces the held
    one, starting at -inf from the window's first pixel inside the image."""
    best = float32(-math.inf)
    arg = -1
    for ky in range(kh):
        iy = oy * sh - ph + ky * dh
        if iy < 0 or iy >= h:
            continue
        for kx in range(kw):
            ix = ox * sw - pw + kx * dw
            if ix < 0 or ix >= wd:
                continue
            if arg < 0:
                arg = iy * wd + ix
            v = x[((n * h + iy) * wd + ix) * c + ch]
            if v > best or v != v:
                best = v
                arg = iy * wd + ix
    return arg


@cuda.jit
def maxpool_grad(x, gy, gx, n_img, h, wd, c, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw):
    """Each window's gradient to its one maximum (a tie: the first in scan order)."""
    i = cuda.grid(1)
    if i >= n_img * h * wd * c:
        return
    n, iy, ix, ch = nhwc(i, h, wd, c)
    me = iy * wd + ix
    acc = float32(0.0)
    for ky in range(kh):
        ty = iy + ph - ky * dh
        if ty < 0 or ty % sh != 0 or ty // sh >= ho:
            continue
        oy = ty // sh
        for kx in range(kw):
            tx = ix + pw - kx * dw
            if tx < 0 or tx % sw != 0 or tx // sw >= wo:
                continue
            ox = tx // sw
            if _window_argmax(x, n, oy, ox, ch, h, wd, c, kh, kw, sh, sw, ph, pw, dh, dw) == me:
                acc += gy[((n * ho + oy) * wo + ox) * c + ch]
    gx[i] = acc


@cuda.jit
def avgpool_grad(gy, gx, n_img, h, wd, c, ho, wo, kh, kw, sh, sw, ph, pw, count_pad):
    """Each window's gradient over its divisor (the forward's), to every pixel it covers."""
    i = cuda.grid(1)
    if i >= n_img * h * wd * c:
        return
    n, iy, ix, ch = nhwc(i, h, wd, c)
    acc = float32(0.0)
    for ky in range(kh):
        ty = iy + ph - ky
        if ty < 0 or ty % sh != 0 or ty // sh >= ho:
            continue
        oy = ty // sh
        y0 = oy * sh - ph
        y1 = min(y0 + kh, h + ph)
        for kx in range(kw):
            tx = ix + pw - kx
            if tx < 0 or tx % sw != 0 or tx // sw >= wo:
                continue
            ox = tx // sw
            x0 = ox * sw - pw
            x1 = min(x0 + kw, wd + pw)
            if count_pad:
                div = (y1 - y0) * (x1 - x0)
            else:
                div = (min(y1, h) - max(y0, 0)) * (min(x1, wd) - max(x0, 0))
            acc += gy[((n * ho + oy) * wo + ox) * c + ch] / float32(max(div, 1))
    gx[i] = acc


@cuda.jit
def adaptive_avgpool_grad(gy, gx, n_img, h, wd, c, ho, wo):
    """Each cell's gradient spread evenly over its window (cells may overlap)."""
    i = cuda.grid(1)
    if i >= n_img * h * wd * c:
        return
    n, iy, ix, ch = nhwc(i, h, wd, c)
    acc = float32(0.0)
    for oy in range(ho):
        y0 = (oy * h) // ho
        y1 = -((-(oy + 1) * h) // ho)
        if iy < y0 or iy >= y1:
            continue
        for ox in range(wo):
            x0 = (ox * wd) // wo
            x1 = -((-(ox + 1) * wd) // wo)
            if x0 <= ix < x1:
                acc += gy[((n * ho + oy) * wo + ox) * c + ch] / float32((y1 - y0) * (x1 - x0))
    gx[i] = acc


@cuda.jit
def gap_grad(gy, gx, size, hw, c):
    i = cuda.grid(1)
    if i < size:
        gx[i] = gy[(i // (hw * c)) * c + i % c] / float32(hw)


@cuda.jit
def gmp_grad(x, y, gy, gx, n_img, hw, c):
    """Global max pooling's gradient as ``torch.amax``'s: shared evenly by every position
    equal to the maximum; one thread per (sample, channel) writes its column."""
    t = cuda.grid(1)
    if t >= n_img * c:
        return
    n = t // c
    ch = t % c
    m = y[t]
    count = 0
    for p in range(hw):
        if x[(n * hw + p) * c + ch] == m:
            count += 1
    share = gy[t] / float32(max(count, 1))
    for p in range(hw):
        j = (n * hw + p) * c + ch
        gx[j] = share if x[j] == m else float32(0.0)


@GRADS.register("maxpool", needs=("x",))
def grad_maxpool(backend, step, arrays, saved, gy, gxs, gws):
    gx, a = gxs[0], step.attrs
    if gx is None:
        return
    n, h, wd, c = gx.shape
    _, ho, wo, _ = gy.shape
    maxpool_grad[blocks(gx.size), THREADS](
        flat(saved.xs[0]), flat(gy), flat(gx), n, h, wd, c, ho, wo, *_window(a), a["dh"], a["dw"]
    )


@GRADS.register("avgpool", needs=())
def grad_avgpool(backend, step, arrays, saved, gy, gxs, gws):
    gx, a = gxs[0], step.attrs
    if gx is None:
        return
    n, h, wd, c = gx.shape
    _, ho, wo, _ = gy.shape
    avgpool_grad[blocks(gx.size), THREADS](
        flat(gy), flat(gx), n, h, wd, c, ho, wo, *_window(a), a["count_pad"]
    )


@GRADS.register("adaptive_avgpool", needs=())
def grad_adaptive_avgpool(backend, step, arrays, saved, gy, gxs, gws):
    gx = gxs[0]
    if gx is not None:
        n, h, wd, c = gx.shape
        _, ho, wo, _ = gy.shape
        adaptive_avgpool_grad[blocks(gx.size), THREADS](flat(gy), flat(gx), n, h, wd, c, ho, wo)


@GRADS.register("gap", needs=())
def grad_gap(backend, step, arrays, saved, gy, gxs, gws):
    gx = gxs[0]
    if gx is not None:
        n, h, wd, c = gx.shape
        gap_grad[blocks(gx.size), THREADS](flat(gy), flat(gx), gx.size, h * wd, c)


@GRADS.register("gmp", needs=("x", "y"))
def grad_gmp(backend, step, arrays, saved, gy, gxs, gws):
    gx = gxs[0]
    if gx is not None:
        n, h, wd, c = gx.shape
        gmp_grad[blocks(n * c), THREADS](
            flat(saved.xs[0]), flat(saved.y), flat(gy), flat(gx), n, h * wd, c
        )
