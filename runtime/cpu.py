"""CPU kernels (Numba), one per op, named as the ops are; their CUDA twins live in cuda.py.

Layout: activations are NHWC float32 (vectors are (N, C)), contiguous. Every kernel writes into
a preallocated ``out`` and takes sizes as ints, so each compiles once. Convolutions are tiled
im2col + BLAS GEMM with a fused epilogue (bias, residual add, activation); ``prange`` spreads
tiles over the threads, each calling single-threaded BLAS.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .blas import SMALL_MNK, gemm

# No 'nnan'/'ninf': max pooling starts from -inf.
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
JIT = dict(cache=True, nogil=True, fastmath=FASTMATH)
PJIT = dict(JIT, parallel=True)

#: Activation codes shared by every fused epilogue (and by the CUDA kernels).
ACT_NONE, ACT_RELU, ACT_RELU6, ACT_LEAKY, ACT_SIGMOID, ACT_TANH = range(6)
ACTIVATIONS = {"relu": ACT_RELU, "relu6": ACT_RELU6, "leaky_relu": ACT_LEAKY,
               "sigmoid": ACT_SIGMOID, "tanh": ACT_TANH}

#: Target im2col tile size in floats: about the 1 MiB L2 cache of a core here. Measured on a
#: 3x3 conv, 256 channels at 14x14: 83 GFLOP/s with 1-row tiles, 146 with 8-row tiles.
TILE_FLOATS = 256 * 1024
#: Output channels per work item in small-GEMM tiles: 64-wide blocks beat 32 and 128 on
#: ResNet's and VGG's 512-channel layers (7x7: 115 GFLOP/s against 89 with 128).
CHANNEL_BLOCK = 64
F4 = 4  # bytes per float32


@njit(inline="always", **JIT)
def activate(v, act, alpha):
    if act == ACT_RELU:
        return v if v > 0.0 else np.float32(0.0)
    if act == ACT_RELU6:
        return min(max(v, np.float32(0.0)), np.float32(6.0))
    if act == ACT_LEAKY:
        return v if v > 0.0 else v * alpha
    if act == ACT_SIGMOID:
        return np.float32(1.0) / (np.float32(1.0) + np.exp(-v))
    if act == ACT_TANH:
        return np.tanh(v)
    return v


@njit(**JIT)
def _epilogue(src, s0, sc, dst, d0, dc, bias, res, has_res, rows, nb, act, alpha):
    """``dst[d0 + i, dc + j] = act(src[s0 + i, sc + j] + bias[dc + j] (+ res[d0 + i, dc + j]))``
    for i < rows, j < nb; ``src`` may be ``dst``. The branches sit outside the inner loops so
    that these vectorise: the branchy form cost 1.3 ms on ResNet's stem, as much as its GEMM."""
    b = bias[dc:dc + nb]
    for i in range(rows):
        s = src[s0 + i, sc:sc + nb]
        d = dst[d0 + i, dc:dc + nb]
        if has_res:
            r = res[d0 + i, dc:dc + nb]
            for j in range(nb):
                d[j] = s[j] + b[j] + r[j]
        else:
            for j in range(nb):
                d[j] = s[j] + b[j]
        if act == ACT_RELU:
            for j in range(nb):
                d[j] = d[j] if d[j] > 0.0 else np.float32(0.0)
        elif act != ACT_NONE:
            for j in range(nb):
                d[j] = activate(d[j], act, alpha)


@njit(**JIT)
def _im2col(x, n, oy0, oy1, wo, kh, kw, sh, sw, ph, pw, dh, dw, c0, cg, col):
    """Rows (oy, ox) of the im2col matrix, columns (ky, kx, c). Where a kernel row lies
    inside the image and dw == 1 and the group spans all channels, its kw*C inputs are one
    contiguous run of NHWC memory and are copied as such (ResNet's stem: 21 floats, not 3)."""
    h, w, c_in = x.shape[1], x.shape[2], x.shape[3]
    xf = x.reshape(-1)
    span = kw * cg
    runs = dw == 1 and cg == c_in
    for oy in range(oy0, oy1):
        for ox in range(wo):
            row = col[(oy - oy0) * wo + ox]
            ix0 = ox * sw - pw
            for ky in range(kh):
                iy = oy * sh - ph + ky * dh
                base = ky * span
                if iy < 0 or iy >= h:
                    row[base:base + span] = 0.0
                elif runs and ix0 >= 0 and ix0 + kw <= w:
                    src = ((n * h + iy) * w + ix0) * c_in
                    for j in range(span):
                        row[base + j] = xf[src + j]
                else:
                    for kx in range(kw):
                        ix = ix0 + kx * dw
                        if 0 <= ix < w:
                            src = ((n * h + iy) * w + ix) * c_in + c0
                            for c in range(cg):
                                row[base + kx * cg + c] = xf[src + c]
                        else:
                            row[base + kx * cg:base + kx * cg + cg] = 0.0


@njit(inline="always", **JIT)
def _work_item(item, n_img, tiles, rows_per_tile, ho):
    """Item -> (channel block, image, first row, end row). Items run block-major, so the
    contiguous run of items a thread takes shares few blocks of weights."""
    b = item // (n_img * tiles)
    tile = item % (n_img * tiles)
    oy0 = (tile % tiles) * rows_per_tile
    return b, tile // tiles, oy0, min(ho, oy0 + rows_per_tile)


@njit(**PJIT)
def conv(x, wmat, bias, res, out, scratch, kh, kw, sh, sw, ph, pw, dh, dw, groups, act, alpha,
         rows_per_tile, channel_blocks):
    """Convolution, NHWC. ``wmat``: (groups, kh*kw*C/g, out/g), rows ordered (ky, kx, c).

    ``res`` is a residual added before the activation (size 0 for none). Work items are
    (image, row tile, output-channel block); each builds its im2col tile and calls GEMM.
    ``scratch`` holds one row per thread (``conv_scratch_floats``), allocated once by the
    caller (buffers allocated per item page-faulted on every call). Items are ordered by
    channel block and each thread takes one contiguous run, so a thread reuses its block of
    weights from its own cache tile after tile.
    """
    n_img, _, _, c_in = x.shape
    _, ho, wo, c_out = out.shape
    cg = c_in // groups
    og = c_out // groups
    k = kh * kw * cg
    direct = uses_direct_gemm(kh, kw, sh, sw, ph, pw)
    if uses_shifted_gemm(kh, kw, sh, sw, cg):
        _conv_shifted(x, wmat, bias, res, out, scratch, kh, kw, ph, pw, dh, dw, groups, act,
                      alpha, rows_per_tile, channel_blocks)
        return
    has_res = res.size > 0
    tiles = (ho + rows_per_tile - 1) // rows_per_tile
    block = (og + channel_blocks - 1) // channel_blocks
    out2 = out.reshape(n_img * ho * wo, c_out)
    res2 = res.reshape(-1, c_out) if has_res else out2
    x_addr, w_addr, o_addr = x.ctypes.data, wmat.ctypes.data, out.ctypes.data
    threads = scratch.shape[0]
    items = n_img * tiles * channel_blocks
    for t in prange(threads):
        for item in range(t * items // threads, (t + 1) * items // threads):
            b, n, oy0, oy1 = _work_item(item, n_img, tiles, rows_per_tile, ho)
            m = (oy1 - oy0) * wo
            r0 = (n * ho + oy0) * wo
            col = scratch[t, :0 if direct else m * k].reshape(-1, k)
            for gi in range(groups):
                c0 = gi * og + b * block
                c1 = min(gi * og + og, c0 + block)
                if c1 <= c0:
                    continue
                if direct:
                    a_addr = x_addr + (r0 * c_in + gi * cg) * F4
                    lda = c_in
                else:
                    _im2col(x, n, oy0, oy1, wo, kh, kw, sh, sw, ph, pw, dh, dw, gi * cg, cg,
                            col)
                    a_addr = col.ctypes.data
                    lda = k
                gemm(m, c1 - c0, k, a_addr, lda, w_addr + (gi * k * og + c0 - gi * og) * F4,
                     og, o_addr + (r0 * c_out + c0) * F4, c_out, 0.0)
                _epilogue(out2, r0, c0, out2, r0, c0, bias, res2, has_res, m, c1 - c0, act,
                          alpha)


@njit(**JIT)
def uses_direct_gemm(kh, kw, sh, sw, ph, pw):
    """1x1 convolutions with stride 1 and no padding multiply the input itself: no im2col."""
    return kh == 1 and kw == 1 and sh == 1 and sw == 1 and ph == 0 and pw == 0


@njit(**JIT)
def uses_shifted_gemm(kh, kw, sh, sw, cg):
    """Stride-1 convolutions wider than 1x1 with at least 32 channels per group run as one GEMM
    per kernel tap (K = channels), without im2col."""
    return sh == 1 and sw == 1 and kh * kw > 1 and cg >= 32


@njit(**PJIT)
def _conv_shifted(x, wmat, bias, res, out, scratch, kh, kw, ph, pw, dh, dw, groups, act, alpha,
                  rows_per_tile, channel_blocks):
    """Stride-1 convolution without im2col ("shifted GEMM"): each tile copies its input rows
    once into a zero-padded buffer of width ``wp``; then, for every kernel tap, the rows of
    the buffer shifted by that tap form a matrix (lda = C) that multiplies the tap's weights,
    accumulating into a wide output tile (``wp`` columns per row, the extra ones discarded)."""
    n_img, h, w, c_in = x.shape
    _, ho, wo, c_out = out.shape
    cg = c_in // groups
    og = c_out // groups
    k = kh * kw * cg
    wp = w + 2 * pw
    has_res = res.size > 0
    out2 = out.reshape(n_img * ho * wo, c_out)
    res2 = res.reshape(-1, c_out) if has_res else out2
    tiles = (ho + rows_per_tile - 1) // rows_per_tile
    block = (og + channel_blocks - 1) // channel_blocks
    w_addr = wmat.ctypes.data
    threads = scratch.shape[0]
    items = n_img * tiles * channel_blocks
    for t in prange(threads):
        for item in range(t * items // threads, (t + 1) * items // threads):
            b, n, oy0, oy1 = _work_item(item, n_img, tiles, rows_per_tile, ho)
            rows = oy1 - oy0
            in_rows = rows + dh * (kh - 1)
            # padded input rows oy0 - ph ... , plus slack for the last taps' overhang
            xp_rows = in_rows * wp + dw * (kw - 1) + 1
            xp = scratch[t, :xp_rows * c_in].reshape(xp_rows, c_in)
            xp[:] = 0.0
            for r in range(in_rows):
                iy = oy0 - ph + r
                if 0 <= iy < h:
                    xp[r * wp + pw:r * wp + pw + w] = x[n, iy]
            m = rows * wp
            for gi in range(groups):
                c0 = gi * og + b * block
                c1 = min(gi * og + og, c0 + block)
                if c1 <= c0:
                    continue
                nb = c1 - c0
                acc = scratch[t, xp_rows * c_in:xp_rows * c_in + m * nb].reshape(m, nb)
                for ky in range(kh):
                    for kx in range(kw):
                        shift = ky * dh * wp + kx * dw
                        tap = (ky * kw + kx) * cg
                        gemm(m, nb, cg, xp.ctypes.data + (shift * c_in + gi * cg) * F4, c_in,
                             w_addr + (gi * k * og + tap * og + c0 - gi * og) * F4, og,
                             acc.ctypes.data, nb, 0.0 if ky == 0 and kx == 0 else 1.0)
                for r in range(rows):
                    _epilogue(acc, r * wp, 0, out2, (n * ho + oy0 + r) * wo, c0, bias, res2,
                              has_res, wo, nb, act, alpha)


def conv_scratch_floats(rows_per_tile: int, channel_blocks: int, x_shape, out_shape, kh: int,
                        kw: int, sh: int, sw: int, ph: int, pw: int, dh: int, dw: int,
                        groups: int) -> int:
    """Floats of scratch one thread of ``conv`` needs with this tiling."""
    _, h, w, c_in = x_shape
    wo, c_out = out_shape[2], out_shape[3]
    cg = c_in // groups
    if uses_shifted_gemm(kh, kw, sh, sw, cg):
        wp = w + 2 * pw
        rows = min(rows_per_tile, out_shape[1])
        block = -(-(c_out // groups) // channel_blocks)
        return ((rows + dh * (kh - 1)) * wp + dw * (kw - 1) + 1) * c_in + rows * wp * block
    if uses_direct_gemm(kh, kw, sh, sw, ph, pw):
        return 0
    return min(rows_per_tile, out_shape[1]) * wo * kh * kw * cg


@njit(**PJIT)
def dwconv(x, w, bias, res, out, kh, kw, sh, sw, ph, pw, dh, dw, mult, act, alpha):
    """Depthwise convolution, NHWC, vectorised over channels. ``w``: (kh, kw, C*mult)."""
    n_img, h, wd, _ = x.shape
    _, ho, wo, c_out = out.shape
    has_res = res.size > 0
    for t in prange(n_img * ho):
        n = t // ho
        oy = t % ho
        acc = np.zeros(c_out, np.float32)
        for ox in range(wo):
            acc[:] = 0.0
            for ky in range(kh):
                iy = oy * sh - ph + ky * dh
                if iy < 0 or iy >= h:
                    continue
                for kx in range(kw):
                    ix = ox * sw - pw + kx * dw
                    if ix < 0 or ix >= wd:
                        continue
                    if mult == 1:
                        for c in range(c_out):
                            acc[c] += x[n, iy, ix, c] * w[ky, kx, c]
                    else:
                        for c in range(c_out):
                            acc[c] += x[n, iy, ix, c // mult] * w[ky, kx, c]
            for c in range(c_out):
                v = acc[c] + bias[c]
                if has_res:
                    v += res[n, oy, ox, c]
                out[n, oy, ox, c] = activate(v, act, alpha)


@njit(**PJIT)
def convt(x, wmat, bias, res, out, cols, kh, kw, sh, sw, ph, pw, dh, dw, groups, act, alpha):
    """Transposed convolution, NHWC: one GEMM per group into ``cols`` (groups, N*H*W,
    kh*kw*out/g), then each output pixel gathers the taps that reach it (no write races).
    ``wmat``: (groups, C/g, kh*kw*out/g), columns ordered (ky, kx, co)."""
    n_img, h, w, c_in = x.shape
    _, ho, wo, c_out = out.shape
    cg = c_in // groups
    og = c_out // groups
    p = n_img * h * w
    kk = kh * kw * og
    for gi in prange(groups):
        gemm(p, kk, cg, x.ctypes.data + gi * cg * F4, c_in, wmat.ctypes.data + gi * cg * kk * F4,
             kk, cols.ctypes.data + gi * p * kk * F4, kk, 0.0)
    has_res = res.size > 0
    for t in prange(n_img * ho):
        n = t // ho
        oy = t % ho
        for ox in range(wo):
            for co in range(c_out):
                gi = co // og
                j = co - gi * og
                acc = bias[co]
                for ky in range(kh):
                    ty = oy + ph - ky * dh
                    if ty < 0 or ty % sh != 0:
                        continue
                    iy = ty // sh
                    if iy >= h:
                        continue
                    for kx in range(kw):
                        tx = ox + pw - kx * dw
                        if tx < 0 or tx % sw != 0:
                            continue
                        ix = tx // sw
                        if ix >= w:
                            continue
                        acc += cols[gi, (n * h + iy) * w + ix, (ky * kw + kx) * og + j]
                if has_res:
                    acc += res[n, oy, ox, co]
                out[n, oy, ox, co] = activate(acc, act, alpha)


@njit(**PJIT)
def fc(x, w, bias, res, out, act, alpha, blocks):
    """Fully connected: ``out (N, O) = x (N, I) @ w.T`` with ``w`` (O, I) in PyTorch's layout.

    Computed as ``w @ x.T`` by blocks of rows of ``w``: each thread streams a contiguous part
    of the weights, which is what limits fc layers (VGG's fc6 holds 411 MB)."""
    n_img, n_in = x.shape
    n_out = out.shape[1]
    has_res = res.size > 0
    xt = np.empty((n_in, n_img), np.float32)
    for i in prange(n_in):
        for n in range(n_img):
            xt[i, n] = x[n, i]
    ct = np.empty((n_out, n_img), np.float32)
    size = (n_out + blocks - 1) // blocks
    for b in prange(blocks):
        r0 = b * size
        r1 = min(n_out, r0 + size)
        if r1 > r0:
            gemm(r1 - r0, n_img, n_in, w.ctypes.data + r0 * n_in * F4, n_in, xt.ctypes.data,
                 n_img, ct.ctypes.data + r0 * n_img * F4, n_img, 0.0)
            for o in range(r0, r1):
                for n in range(n_img):
                    v = ct[o, n] + bias[o]
                    if has_res:
                        v += res[n, o]
                    out[n, o] = activate(v, act, alpha)


@njit(**PJIT)
def maxpool(x, out, kh, kw, sh, sw, ph, pw, dh, dw):
    n_img, h, w, c = x.shape
    _, ho, wo, _ = out.shape
    for t in prange(n_img * ho):
        n = t // ho
        oy = t % ho
        for ox in range(wo):
            for ch in range(c):
                out[n, oy, ox, ch] = -np.inf
            for ky in range(kh):
                iy = oy * sh - ph + ky * dh
                if iy < 0 or iy >= h:
                    continue
                for kx in range(kw):
                    ix = ox * sw - pw + kx * dw
                    if ix < 0 or ix >= w:
                        continue
                    for ch in range(c):
                        v = x[n, iy, ix, ch]
                        if v > out[n, oy, ox, ch] or v != v:
                            out[n, oy, ox, ch] = v


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


@njit(**PJIT)
def gap(x, out):
    n_img, h, w, c = x.shape
    for n in prange(n_img):
        for ch in range(c):
            out[n, 0, 0, ch] = 0.0
        for iy in range(h):
            for ix in range(w):
                for ch in range(c):
                    out[n, 0, 0, ch] += x[n, iy, ix, ch]
        for ch in range(c):
            out[n, 0, 0, ch] /= h * w


@njit(**PJIT)
def gmp(x, out):
    n_img, h, w, c = x.shape
    for n in prange(n_img):
        for ch in range(c):
            out[n, 0, 0, ch] = -np.inf
        for iy in range(h):
            for ix in range(w):
                for ch in range(c):
                    v = x[n, iy, ix, ch]
                    if v > out[n, 0, 0, ch] or v != v:
                        out[n, 0, 0, ch] = v


@njit(**PJIT)
def affine(x2, scale, shift, out2, act, alpha):
    """Per-channel ``x * scale + shift`` then activation: inference batch norm. (rows, C)."""
    rows, c = x2.shape
    for r in prange(rows):
        for ch in range(c):
            out2[r, ch] = activate(x2[r, ch] * scale[ch] + shift[ch], act, alpha)


@njit(**PJIT)
def act(x1, out1, code, alpha):
    """Elementwise activation on flat arrays."""
    for i in prange(x1.size):
        out1[i] = activate(x1[i], code, alpha)


@njit(**PJIT)
def add(a1, b1, out1, code, alpha):
    """Elementwise ``a + b`` then activation, on flat arrays (more operands: call again)."""
    for i in prange(out1.size):
        out1[i] = activate(a1[i] + b1[i], code, alpha)


@njit(**PJIT)
def softmax(x2, out2):
    """Softmax over the last axis (channels in NHWC)."""
    rows, c = x2.shape
    for r in prange(rows):
        m = -np.inf
        for ch in range(c):
            m = max(m, x2[r, ch])
        s = np.float32(0.0)
        for ch in range(c):
            e = np.exp(x2[r, ch] - m)
            out2[r, ch] = e
            s += e
        inv = np.float32(1.0) / s
        for ch in range(c):
            out2[r, ch] *= inv


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


def upsample(x, out, sh, sw, bilinear):
    """Nearest or bilinear (align_corners=False) upsampling by integer factors.

    Two kernels: Numba's parallel transform mishandled the variables of one kernel that
    branched inside its ``prange`` body."""
    if bilinear:
        _upsample_bilinear(x, out, sh, sw)
    else:
        _upsample_nearest(x, out, sh, sw)


@njit(**PJIT)
def _upsample_nearest(x, out, sh, sw):
    n_img, _, _, c = x.shape
    _, ho, wo, _ = out.shape
    for t in prange(n_img * ho):
        n = t // ho
        oy = t % ho
        for ox in range(wo):
            for ch in range(c):
                out[n, oy, ox, ch] = x[n, oy // sh, ox // sw, ch]


@njit(**PJIT)
def _upsample_bilinear(x, out, sh, sw):
    n_img, h, w, c = x.shape
    _, ho, wo, _ = out.shape
    for t in prange(n_img * ho):
        n = t // ho
        oy = t % ho
        _bilinear_row(x, out, n, oy, h, w, c, wo, sh, sw)


@njit(**JIT)
def _bilinear_row(x, out, n, oy, h, w, c, wo, sh, sw):
    sy = max((oy + 0.5) / sh - 0.5, 0.0)
    y0 = min(int(sy), h - 1)
    y1 = min(y0 + 1, h - 1)
    ly = np.float32(sy - y0)
    for ox in range(wo):
        sx = max((ox + 0.5) / sw - 0.5, 0.0)
        x0 = min(int(sx), w - 1)
        x1 = min(x0 + 1, w - 1)
        lx = np.float32(sx - x0)
        for ch in range(c):
            top = x[n, y0, x0, ch] * (1 - lx) + x[n, y0, x1, ch] * lx
            bot = x[n, y1, x0, ch] * (1 - lx) + x[n, y1, x1, ch] * lx
            out[n, oy, ox, ch] = top * (1 - ly) + bot * ly


@njit(**PJIT)
def concat(x, out, c0):
    """Copy ``x`` (N, H, W, Cx) into channels [c0, c0 + Cx) of ``out``."""
    n_img, h, w, c = x.shape
    for t in prange(n_img * h):
        n = t // h
        iy = t % h
        for ix in range(w):
            for ch in range(c):
                out[n, iy, ix, c0 + ch] = x[n, iy, ix, ch]


@njit(**PJIT)
def crop(x, out, oy, ox):
    n_img, ho, wo, c = out.shape
    for t in prange(n_img * ho):
        n = t // ho
        y = t % ho
        for xx in range(wo):
            for ch in range(c):
                out[n, y, xx, ch] = x[n, y + oy, xx + ox, ch]


@njit(**PJIT)
def flatten(x, out):
    """NHWC to (N, C*H*W) in C, H, W order, as PyTorch flattens NCHW."""
    n_img, h, w, c = x.shape
    for n in prange(n_img):
        for iy in range(h):
            for ix in range(w):
                for ch in range(c):
                    out[n, (ch * h + iy) * w + ix] = x[n, iy, ix, ch]


def conv_tiling(x_shape, out_shape, kh: int, kw: int, sh: int, sw: int, pw: int, groups: int,
                threads: int):
    """(rows per tile, output-channel blocks) for ``conv`` on these shapes.

    Stride-1 convolutions on the shifted-GEMM path, and 1x1 convolutions with 128 to 976 input
    channels, get tiles sized for BLAS's small-matrix kernels (``small_gemm_tiling``); the
    rest get im2col tiles near TILE_FLOATS (``l2_tiling``). Measured with 2 threads, ResNet-50's
    1x1 layers: 28x28 512->128 170 -> 209 GFLOP/s, 7x7 512->2048 146 -> 189, and 2048->512
    150 with L2 tiles against 125 with small ones, hence the upper bound."""
    n_img, _, w, c_in = x_shape
    _, ho, wo, c_out = out_shape
    cg, og = c_in // groups, c_out // groups
    if uses_shifted_gemm(kh, kw, sh, sw, cg):
        return small_gemm_tiling(n_img, ho, w + 2 * pw, cg, og, threads)
    if kh == kw == 1 and 128 <= cg and SMALL_MNK // (CHANNEL_BLOCK * cg) >= 16:
        return small_gemm_tiling(n_img, ho, wo, cg, og, threads)
    return l2_tiling(n_img, ho, wo, kh * kw * cg, c_out, threads)


def l2_tiling(n_img: int, ho: int, wo: int, k: int, c_out: int, threads: int):
    """Rows per tile (im2col tile near TILE_FLOATS) and output-channel blocks, for at least
    two work items per thread. Channels are split before rows: a GEMM with few rows is slow
    (a 512-channel 7x7 layer ran at 40 GFLOP/s with 2-row tiles)."""
    rows = max(1, min(ho, TILE_FLOATS // max(1, (k + c_out) * wo)))
    blocks = 1
    while (n_img * math.ceil(ho / rows) * blocks < 2 * threads
           and c_out // (blocks * 2) >= 64):
        blocks *= 2
    while rows > 1 and n_img * math.ceil(ho / rows) * blocks < 2 * threads:
        rows = (rows + 1) // 2
    return rows, blocks


def small_gemm_tiling(n_img: int, ho: int, row_width: int, k: int, og: int, threads: int):
    """Rows per tile and output-channel blocks: blocks of about CHANNEL_BLOCK channels, and as
    many rows (of ``row_width`` GEMM rows each) as keep a tile's GEMM, rows * row_width x
    block x k, within BLAS's unpacked small-matrix kernels (SMALL_MNK). Measured with 2 threads:
    ResNet's 56x56x64 3x3 layer 191 GFLOP/s with 3-row tiles against 132 with 18-row tiles;
    its 7x7x512 layer 115 with 3 rows of 64 channels against 89 with 1 row of 128."""
    blocks = max(1, og // CHANNEL_BLOCK)
    block = -(-og // blocks)
    rows = max(1, min(ho, SMALL_MNK // (row_width * block * k)))
    while n_img * math.ceil(ho / rows) * blocks < 2 * threads:
        if rows > 1:
            rows = (rows + 1) // 2
        elif og // blocks >= 32:
            blocks *= 2
        else:
            break
    return rows, blocks
