"""Pooling on the CPU (Numba), NHWC float32: windowed max and average, global and adaptive.

Max and global pooling run on one thread: a parallel region costs 1-1.5 s of compilation on
a cold cache, more than these light passes gain from a second thread (ResNet-18's max pool:
0.2 ms per image; its global pool reads 100 KB)."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .activations import JIT, PJIT
from .table import GRADS, KERNELS


@njit(inline="always", **JIT)
def _max_nan(a, v):
    """``max(a, v)`` that keeps a NaN from either side, as PyTorch's max pool does; a select,
    so that loops of it vectorise."""
    return v if (v > a) | (v != v) else a


@njit(**JIT)
def maxpool(x, out, kh, kw, sh, sw, ph, pw, dh, dw):
    """Windowed max. Per output pixel and kernel row, the taps inside the image are folded
    three (then two, then one) at a time into one vectorised loop over the pixel's channels:
    a loop per tap paid its setup (alias checks, remainder) nine times per pixel for a 3x3
    window. Indices are unsigned (no negative-index wraparound in the loops). One Zen 4 core,
    64 channels, fastest of 100: ResNet's 3x3 s2 pool of a 112x112 map 0.35 -> 0.21 ms
    (batch 8: 2.9 -> 1.9 ms), Inception's 3x3 s2 of 147x147 0.48 -> 0.32 ms, VGG's 2x2 0.49
    both ways. Any strides (a pool may write into a concatenation's channel slice)."""
    n_img, h, w, c = x.shape
    _, ho, wo, _ = out.shape
    channels = np.uint64(c)
    for t in range(n_img * ho):
        n = np.uint64(t // ho)
        oy = np.uint64(t % ho)
        for ox in range(np.uint64(wo)):
            for ch in range(channels):
                out[n, oy, ox, ch] = -np.inf
            x0 = int(ox) * sw - pw
            kx0, kx1 = 0, kw  # the taps of a kernel row that lie inside the image
            while kx0 < kw and x0 + kx0 * dw < 0:
                kx0 += 1
            while kx1 > kx0 and x0 + (kx1 - 1) * dw >= w:
                kx1 -= 1
            for ky in range(kh):
                iy = int(oy) * sh - ph + ky * dh
                if iy < 0 or iy >= h:
                    continue
                row = np.uint64(iy)
                kx = kx0
                while kx + 3 <= kx1:
                    a = np.uint64(x0 + kx * dw)
                    b, e = np.uint64(x0 + (kx + 1) * dw), np.uint64(x0 + (kx + 2) * dw)
                    for ch in range(channels):
                        m = _max_nan(out[n, oy, ox, ch], x[n, row, a, ch])
                        m = _max_nan(m, x[n, row, b, ch])
                        out[n, oy, ox, ch] = _max_nan(m, x[n, row, e, ch])
                    kx += 3
                if kx + 2 <= kx1:
                    a, b = np.uint64(x0 + kx * dw), np.uint64(x0 + (kx + 1) * dw)
                    for ch in range(channels):
                        m = _max_nan(out[n, oy, ox, ch], x[n, row, a, ch])
                        out[n, oy, ox, ch] = _max_nan(m, x[n, row, b, ch])
                    kx += 2
                if kx < kx1:
                    a = np.uint64(x0 + kx * dw)
                    for ch in range(channels):
                        out[n, oy, ox, ch] = _max_nan(out[n, oy, ox, ch], x[n, row, a, ch])


@njit(**PJIT)
def avgpool(x, out, kh, kw, sh, sw, ph, pw, count_pad):
    """Average pooling with PyTorch's divisor: the window clipped to the padded input
    (``count_pad``) or the number of real pixels."""
    n_img, h, w, c = x.shape
    _, ho, wo, _ = out.shape
    for t in prange(n_img * ho):
        n = t // ho
        oy = t % ho
        y0 = oy * sh - ph
        y1 = min(y0 + kh, h + ph)
        for ox in range(wo):
            x0 = ox * sw - pw
            x1 = min(x0 + kw, w + pw)
            pool = (y1 - y0) * (x1 - x0)
            ya, yb, xa, xb = max(y0, 0), min(y1, h), max(x0, 0), min(x1, w)
            div = pool if count_pad else (yb - ya) * (xb - xa)
            for ch in range(c):
                out[n, oy, ox, ch] = 0.0
            for iy in range(ya, yb):
                for ix in range(xa, xb):
                    for ch in range(c):
                        out[n, oy, ox, ch] += x[n, iy, ix, ch]
            scale = np.float32(1.0) / np.float32(max(div, 1))
            for ch in range(c):
                out[n, oy, ox, ch] *= scale


@njit(**JIT)
def _gap_image(x, out, n):
    """Image n's channel means: its pixels summed four at a time into the output row, in
    loops over the channels that vectorise (slices: element indexing did not, 60 against 23
    us at 56x56x144); four at a time, so that the row's round trip through memory, which
    each step waits for, comes a quarter as often (112x112x32: 47 -> 27 us; Zen 4)."""
    _, h, w, c = x.shape
    p = h * w
    xf = x[n].reshape(p, c)
    d = out[n, 0, 0, :]
    d[:] = 0.0
    i = 0
    while i + 4 <= p:
        s0, s1, s2, s3 = xf[i], xf[i + 1], xf[i + 2], xf[i + 3]
        for ch in range(c):
            d[ch] += (s0[ch] + s1[ch]) + (s2[ch] + s3[ch])
        i += 4
    while i < p:
        s0 = xf[i]
        for ch in range(c):
            d[ch] += s0[ch]
        i += 1
    inv = np.float32(1.0) / np.float32(p)
    for ch in range(c):
        d[ch] *= inv


@njit(**JIT)
def gap(x, out):
    """Global average pooling on one thread: at batch 1 faster than any split of the
    channels between threads (EfficientNet-B0's 112x112x32 squeeze: 26 us against 61 on two
    threads; each thread's channels were a short loop per pixel)."""
    for n in range(x.shape[0]):
        _gap_image(x, out, n)


@njit(**JIT)
def gap_small(x, out):
    """Global average pooling of small images (``SMALL_GAP_FLOATS``): plain indexed loops,
    a third of ``gap``'s cold compile (0.19 against 0.7 s, which a ResNet's first run pays
    for its one 7x7x512 head) and as fast there (1.9 us at 7x7x512, 3.2 at 7x7x1280)."""
    n_img, h, w, c = x.shape
    inv = np.float32(1.0) / np.float32(h * w)
    for n in range(n_img):
        for ch in range(c):
            out[n, 0, 0, ch] = 0.0
        for iy in range(h):
            for ix in range(w):
                for ch in range(c):
                    out[n, 0, 0, ch] += x[n, iy, ix, ch]
        for ch in range(c):
            out[n, 0, 0, ch] *= inv


@njit(**PJIT)
def gap_parallel(x, out):
    """Global average pooling, parallel over images (a batch of at least the threads);
    a kernel of its own, so that networks run at batch 1 never compile a parallel one."""
    for n in prange(x.shape[0]):
        _gap_image(x, out, n)


@njit(**JIT)
def gmp(x, out):
    n_img, h, w, c = x.shape
    for n in range(n_img):
        for ch in range(c):
            out[n, 0, 0, ch] = -np.inf
        for iy in range(h):
            for ix in range(w):
                for ch in range(c):
                    v = x[n, iy, ix, ch]
                    if v > out[n, 0, 0, ch] or v != v:
                        out[n, 0, 0, ch] = v


@njit(**PJIT)
def adaptive_avgpool(x, out):
    """Output cell (i, j) averages input rows ``floor(i*H/h) <= y < ceil((i+1)*H/h)`` and the
    same for columns, as PyTorch does."""
    n_img, h, w, c = x.shape
    _, ho, wo, _ = out.shape
    for t in prange(n_img * ho):
        n = t // ho
        oy = t % ho
        y0 = (oy * h) // ho
        y1 = -((-(oy + 1) * h) // ho)
        for ox in range(wo):
            x0 = (ox * w) // wo
            x1 = -((-(ox + 1) * w) // wo)
            for ch in range(c):
                out[n, oy, ox, ch] = 0.0
            for iy in range(y0, y1):
                for ix in range(x0, x1):
                    for ch in range(c):
                        out[n, oy, ox, ch] += x[n, iy, ix, ch]
            scale = np.float32(1.0) / np.float32((y1 - y0) * (x1 - x0))
            for ch in range(c):
                out[n, oy, ox, ch] *= scale


def _window(a):
    return a["kh"], a["kw"], a["sh"], a["sw"], a["ph"], a["pw"]


@KERNELS.register("maxpool")
def launch_maxpool(backend, step, arrays, ins, res, out, work):
    maxpool(ins[0], out, *_window(step.attrs), step.attrs["dh"], step.attrs["dw"])


@KERNELS.register("avgpool")
def launch_avgpool(backend, step, arrays, ins, res, out, work):
    avgpool(ins[0], out, *_window(step.attrs), step.attrs["count_pad"])


@KERNELS.register("gap")
def launch_gap(backend, step, arrays, ins, res, out, work):
    x = ins[0]
    if x[0].size < SMALL_GAP_FLOATS:
        gap_small(x, out)
    elif x.size < PARALLEL_GAP_FLOATS or x.shape[0] < backend.threads:
        gap(x, out)
    else:
        gap_parallel(x, out)


#: Images (floats) up to which global average pooling takes ``gap_small``: the 7x7 heads of
#: classifiers and EfficientNet's last squeezes (7x7x1152); larger ones (14x14x480 on) take
#: ``gap``'s unrolled loops.
SMALL_GAP_FLOATS = 1 << 16


#: Inputs (floats, all images) from which global average pooling runs its images on every
#: thread, where there are as many images as threads: 8x7x7x512 took 11.0 us on one thread
#: and 6.9 on two (Zen 4); smaller ones take microseconds anyway.
PARALLEL_GAP_FLOATS = 1 << 17


@KERNELS.register("gmp")
def launch_gmp(backend, step, arrays, ins, res, out, work):
    gmp(ins[0], out)


@KERNELS.register("adaptive_avgpool")
def launch_adaptive_avgpool(backend, step, arrays, ins, res, out, work):
    adaptive_avgpool(ins[0], out)


# ---- backward ----------------------------------------------------------------------------


@njit(**PJIT)
def gap_backward(gy, gx):
    """Each position receives its channel's gradient divided by the positions averaged."""
    n_img, h, w, c = gx.shape
    inv = np.float32(1.0 / (h * w))
    for t in prange(n_img * h):
        n, iy = t // h, t % h
        for ix in range(w):
            for ch in range(c):
                gx[n, iy, ix, ch] = gy[n, 0, 0, ch] * inv


@GRADS.register("gap", needs=())
def grad_gap(backend, step, arrays, saved, gy, gxs, gws):
    gap_backward(gy, gxs[0])


def channel_blocks(n_img: int, c: int, threads: int) -> int:
    """Channel blocks of a backward pass parallel over (image, channel block): enough items
    for two per thread when the batch is small, blocks of at least 16 channels."""
    return max(1, min(c // 16, -(-2 * threads // n_img)))


@njit(inline="always", **JIT)
def _block(t, blocks, c):
    """Work item ``t`` of (image, channel block) -> (image, first channel, end channel)."""
    size = (c + blocks - 1) // blocks
    c0 = (t % blocks) * size
    return t // blocks, c0, min(c, c0 + size)


@njit(**JIT)
def _zero_block(gx, n, c0, c1):
    _, h, w, _ = gx.shape
    for iy in range(h):
        for ix in range(w):
            for ch in range(c0, c1):
                gx[n, iy, ix, ch] = 0.0


@njit(**JIT)
def _maxpool_back_block(x, gy, gx, n, c0, c1, kh, kw, sh, sw, ph, pw, dh, dw):
    """Channels c0..c1 of image n: each window's gradient to its maximum, found as PyTorch's
    CPU kernel finds it (rows then columns, a strictly greater value or a NaN replaces the
    held one, starting from the window's first pixel inside the image at -inf)."""
    _, h, w, _ = x.shape
    _, ho, wo, _ = gy.shape
    _zero_block(gx, n, c0, c1)
    nb = c1 - c0
    best = np.empty(nb, np.float32)
    arg = np.empty(nb, np.int64)
    for oy in range(ho):
        y0 = oy * sh - ph
        y1 = min(y0 + (kh - 1) * dh + 1, h)
        while y0 < 0:
            y0 += dh
        for ox in range(wo):
            x0 = ox * sw - pw
            x1 = min(x0 + (kw - 1) * dw + 1, w)
            while x0 < 0:
                x0 += dw
            if y0 >= h or x0 >= w:
                continue  # a window wholly in the padding (PyTorch's shapes never make one)
            for j in range(nb):
                best[j] = -np.inf
                arg[j] = y0 * w + x0
            for iy in range(y0, y1, dh):
                for ix in range(x0, x1, dw):
                    src = x[n, iy, ix, c0:c1]
                    for j in range(nb):
                        v = src[j]
                        if v > best[j] or v != v:
                            best[j] = v
                            arg[j] = iy * w + ix
            for j in range(nb):
                gx[n, arg[j] // w, arg[j] % w, c0 + j] += gy[n, oy, ox, c0 + j]


@njit(**PJIT)
def maxpool_backward(x, gy, gx, kh, kw, sh, sw, ph, pw, dh, dw, blocks):
    """Gradient of ``maxpool``, parallel over (image, channel block): each item owns its
    part of ``gx`` and scatters into it in window order (no races, deterministic)."""
    n_img, c = x.shape[0], x.shape[3]
    for t in prange(n_img * blocks):
        n, c0, c1 = _block(t, blocks, c)
        _maxpool_back_block(x, gy, gx, n, c0, c1, kh, kw, sh, sw, ph, pw, dh, dw)


@njit(**JIT)
def _avgpool_back_block(gy, gx, n, c0, c1, kh, kw, sh, sw, ph, pw, count_pad):
    """Channels c0..c1 of image n: each window's gradient over its divisor, spread evenly
    over its pixels inside the image (the divisors of ``avgpool``)."""
    _, h, w, _ = gx.shape
    _, ho, wo, _ = gy.shape
    _zero_block(gx, n, c0, c1)
    for oy in range(ho):
        y0 = oy * sh - ph
        y1 = min(y0 + kh, h + ph)
        for ox in range(wo):
            x0 = ox * sw - pw
            x1 = min(x0 + kw, w + pw)
            pool = (y1 - y0) * (x1 - x0)
            ya, yb, xa, xb = max(y0, 0), min(y1, h), max(x0, 0), min(x1, w)
            div = pool if count_pad else (yb - ya) * (xb - xa)
            scale = np.float32(1.0) / np.float32(max(div, 1))
            g = gy[n, oy, ox, c0:c1]
            for iy in range(ya, yb):
                for ix in range(xa, xb):
                    d = gx[n, iy, ix, c0:c1]
                    for j in range(c1 - c0):
                        d[j] += g[j] * scale


@njit(**PJIT)
def avgpool_backward(gy, gx, kh, kw, sh, sw, ph, pw, count_pad, blocks):
    n_img, c = gx.shape[0], gx.shape[3]
    for t in prange(n_img * blocks):
        n, c0, c1 = _block(t, blocks, c)
        _avgpool_back_block(gy, gx, n, c0, c1, kh, kw, sh, sw, ph, pw, count_pad)


@njit(**JIT)
def _adaptive_back_block(gy, gx, n, c0, c1):
    _, h, w, _ = gx.shape
    _, ho, wo, _ = gy.shape
    _zero_block(gx, n, c0, c1)
    for oy in range(ho):
        y0 = (oy * h) // ho
        y1 = -((-(oy + 1) * h) // ho)
        for ox in range(wo):
            x0 = (ox * w) // wo
            x1 = -((-(ox + 1) * w) // wo)
            scale = np.float32(1.0) / np.float32((y1 - y0) * (x1 - x0))
            g = gy[n, oy, ox, c0:c1]
            for iy in range(y0, y1):
                for ix in range(x0, x1):
                    d = gx[n, iy, ix, c0:c1]
                    for j in range(c1 - c0):
                        d[j] += g[j] * scale


@njit(**PJIT)
def adaptive_avgpool_backward(gy, gx, blocks):
    """Each output cell's gradient spread evenly over the cell's input window (PyTorch's
    start ``floor(i*H/h)`` and end ``ceil((i+1)*H/h)``); cells may overlap."""
    n_img, c = gx.shape[0], gx.shape[3]
    for t in prange(n_img * blocks):
        n, c0, c1 = _block(t, blocks, c)
        _adaptive_back_block(gy, gx, n, c0, c1)


@njit(**JIT)
def gmp_backward(x, y, gy, gx):
    """Gradient of global max pooling as ``torch.amax``'s: shared evenly by every position
    equal to the maximum (a tie splits; max pooling's windows instead pick one)."""
    n_img, h, w, c = x.shape
    count = np.zeros(c, np.int64)
    for n in range(n_img):
        m = y[n, 0, 0]
        count[:] = 0
        for iy in range(h):
            for ix in range(w):
                s = x[n, iy, ix]
                for ch in range(c):
                    if s[ch] == m[ch]:
                        count[ch] += 1
        for iy in range(h):
            for ix in range(w):
                s = x[n, iy, ix]
                d = gx[n, iy, ix]
                for ch in range(c):
                    hit = s[ch] == m[ch]
                    d[ch] = gy[n, 0, 0, ch] / np.float32(count[ch]) if hit else np.float32(0.0)


@GRADS.register("maxpool", needs=("x",))
def grad_maxpool(backend, step, arrays, saved, gy, gxs, gws):
    x, a = saved.xs[0], step.attrs
    if gxs[0] is not None:
        blocks = channel_blocks(x.shape[0], x.shape[3], backend.threads)
        maxpool_backward(x, gy, gxs[0], *_window(a), a["dh"], a["dw"], blocks)


@GRADS.register("avgpool", needs=())
def grad_avgpool(backend, step, arrays, saved, gy, gxs, gws):
    gx = gxs[0]
    if gx is not None:
        blocks = channel_blocks(gx.shape[0], gx.shape[3], backend.threads)
        avgpool_backward(gy, gx, *_window(step.attrs), step.attrs["count_pad"], blocks)


@GRADS.register("adaptive_avgpool", needs=())
def grad_adaptive_avgpool(backend, step, arrays, saved, gy, gxs, gws):
    gx = gxs[0]
    if gx is not None:
        adaptive_avgpool_backward(gy, gx, channel_blocks(gx.shape[0], gx.shape[3], backend.threads))


@GRADS.register("gmp", needs=("x", "y"))
def grad_gmp(backend, step, arrays, saved, gy, gxs, gws):
    if gxs[0] is not None:
        gmp_backward(saved.xs[0], saved.y, gy, gxs[0])
