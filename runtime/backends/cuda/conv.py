"""Convolutions and fully connected layers on CUDA (numba.cuda), NHWC float32.

conv is an implicit GEMM: rows are output pixels, columns output channels, and the reduction
runs over (ky, kx, c). Each block computes a BM x BN tile from shared-memory tiles of the
(never materialised) im2col matrix and of the weights; each thread keeps a WORK x WORK register
tile. fc and the first phase of convt use the same tiling over a strided GEMM. The epilogue
(bias, residual add, activation) is fused as on the CPU. Weight layouts: runtime/lowering.py.
"""

from __future__ import annotations

import numpy as np
from numba import cuda, float32, float64

from .activations import activate
from .elementwise import mul_channels
from .indexing import nhwc
from .launch import (
    BK,
    BM,
    BN,
    GRADS,
    KERNELS,
    THREADS,
    TILE,
    WORK,
    blocks,
    channels,
    epilogue,
    flat,
)
from .reduce import block_total, column_sums


@cuda.jit(device=True, inline=True)
def _im2col_value(x, r, k, m, h, wd, c_in, ho, wo, kw, sh, sw, ph, pw, dh, dw, c0, cg, kdim):
    if r >= m or k >= kdim:
        return float32(0.0)
    hw = ho * wo
    n = r // hw
    rem = r - n * hw
    oy = rem // wo
    ox = rem - oy * wo
    tap = k // cg
    c = k - tap * cg
    ky = tap // kw
    kx = tap - ky * kw
    iy = oy * sh - ph + ky * dh
    ix = ox * sw - pw + kx * dw
    if iy < 0 or iy >= h or ix < 0 or ix >= wd:
        return float32(0.0)
    return x[((n * h + iy) * wd + ix) * c_in + c0 + c]


@cuda.jit(device=True, inline=True)
def _zero(acc):
    for i in range(WORK):
        for j in range(WORK):
            acc[i, j] = 0.0


@cuda.jit(device=True, inline=True)
def _multiply_tiles(a_tile, b_tile, acc, ty, tx):
    """acc (WORK x WORK registers) += this thread's rows of a_tile times its columns of
    b_tile; the caller synchronises around it."""
    for kk in range(BK):
        for i in range(WORK):
            a = a_tile[ty + i * TILE, kk]
            for j in range(WORK):
                acc[i, j] += a * b_tile[kk, tx + j * TILE]


@cuda.jit
def conv(
    x,
    w,
    bias,
    res,
    out,
    n_img,
    h,
    wd,
    c_in,
    ho,
    wo,
    c_out,
    kh,
    kw,
    sh,
    sw,
    ph,
    pw,
    dh,
    dw,
    groups,
    act,
    alpha,
    beta,
    has_res,
):
    """Implicit-GEMM convolution; grid (ceil(og/BN), ceil(pixels/BM), groups)."""
    gi = cuda.blockIdx.z
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    cg = c_in // groups
    og = c_out // groups
    kdim = kh * kw * cg
    m = n_img * ho * wo
    m0 = cuda.blockIdx.y * BM
    n0 = cuda.blockIdx.x * BN
    a_tile = cuda.shared.array((BM, BK), float32)
    b_tile = cuda.shared.array((BK, BN), float32)
    acc = cuda.local.array((WORK, WORK), float32)
    _zero(acc)
    for k0 in range(0, kdim, BK):
        for i in range(WORK):
            a_tile[ty + i * TILE, tx] = _im2col_value(
                x,
                m0 + ty + i * TILE,
                k0 + tx,
                m,
                h,
                wd,
                c_in,
                ho,
                wo,
                kw,
                sh,
                sw,
                ph,
                pw,
                dh,
                dw,
                gi * cg,
                cg,
                kdim,
            )
        for j in range(WORK):
            col = n0 + tx + j * TILE
            k = k0 + ty
            b_tile[ty, tx + j * TILE] = (
                w[(gi * kdim + k) * og + col] if (k < kdim and col < og) else float32(0.0)
            )
        cuda.syncthreads()
        _multiply_tiles(a_tile, b_tile, acc, ty, tx)
        cuda.syncthreads()
    for i in range(WORK):
        r = m0 + ty + i * TILE
        for j in range(WORK):
            col = n0 + tx + j * TILE
            if r < m and col < og:
                co = gi * og + col
                v = acc[i, j] + bias[co]
                if has_res:
                    v += res[r * c_out + co]
                out[r * c_out + co] = activate(v, act, alpha, beta)


@cuda.jit
def gemm(
    a,
    a_off,
    sam,
    sak,
    b,
    b_off,
    sbk,
    sbn,
    c,
    c_off,
    ldc,
    m,
    n,
    kdim,
    bias,
    has_bias,
    res,
    has_res,
    act,
    alpha,
    beta,
):
    """Tiled strided GEMM ``C[m, n] = sum_k A[m, k] B[k, n]`` with a fused epilogue;
    A[m, k] = a[a_off + m*sam + k*sak], B[k, n] = b[b_off + k*sbk + n*sbn]."""
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    m0 = cuda.blockIdx.y * BM
    n0 = cuda.blockIdx.x * BN
    a_tile = cuda.shared.array((BM, BK), float32)
    b_tile = cuda.shared.array((BK, BN), float32)
    acc = cuda.local.array((WORK, WORK), float32)
    _zero(acc)
    for k0 in range(0, kdim, BK):
        for i in range(WORK):
            r = m0 + ty + i * TILE
            k = k0 + tx
            a_tile[ty + i * TILE, tx] = (
                a[a_off + r * sam + k * sak] if (r < m and k < kdim) else float32(0.0)
            )
        for j in range(WORK):
            col = n0 + tx + j * TILE
            k = k0 + ty
            b_tile[ty, tx + j * TILE] = (
                b[b_off + k * sbk + col * sbn] if (k < kdim and col < n) else float32(0.0)
            )
        cuda.syncthreads()
        _multiply_tiles(a_tile, b_tile, acc, ty, tx)
        cuda.syncthreads()
    for i in range(WORK):
        r = m0 + ty + i * TILE
        for j in range(WORK):
            col = n0 + tx + j * TILE
            if r < m and col < n:
                v = acc[i, j]
                if has_bias:
                    v += bias[col]
                if has_res:
                    v += res[r * ldc + col]
                c[c_off + r * ldc + col] = activate(v, act, alpha, beta)


@cuda.jit
def convt_gather(
    cols,
    bias,
    res,
    out,
    n_img,
    h,
    wd,
    ho,
    wo,
    c_out,
    kh,
    kw,
    sh,
    sw,
    ph,
    pw,
    dh,
    dw,
    groups,
    act,
    alpha,
    beta,
    has_res,
):
    """Second phase of transposed conv: each output sums the taps that reach it."""
    i = cuda.grid(1)
    total = n_img * ho * wo * c_out
    if i >= total:
        return
    n, oy, ox, co = nhwc(i, ho, wo, c_out)
    og = c_out // groups
    gi = co // og
    j = co - gi * og
    p = n_img * h * wd
    kk = kh * kw * og
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
            if ix >= wd:
                continue
            acc += cols[(gi * p + (n * h + iy) * wd + ix) * kk + (ky * kw + kx) * og + j]
    if has_res:
        acc += res[i]
    out[i] = activate(acc, act, alpha, beta)


@cuda.jit
def dwconv(
    x,
    w,
    bias,
    res,
    out,
    n_img,
    h,
    wd,
    ho,
    wo,
    c_out,
    kh,
    kw,
    sh,
    sw,
    ph,
    pw,
    dh,
    dw,
    mult,
    act,
    alpha,
    beta,
    has_res,
):
    i = cuda.grid(1)
    if i >= n_img * ho * wo * c_out:
        return
    n, oy, ox, c = nhwc(i, ho, wo, c_out)
    c_in = c_out // mult
    acc = bias[c]
    for ky in range(kh):
        iy = oy * sh - ph + ky * dh
        if iy < 0 or iy >= h:
            continue
        for kx in range(kw):
            ix = ox * sw - pw + kx * dw
            if ix < 0 or ix >= wd:
                continue
            acc += x[((n * h + iy) * wd + ix) * c_in + c // mult] * w[(ky * kw + kx) * c_out + c]
    if has_res:
        acc += res[i]
    out[i] = activate(acc, act, alpha, beta)


ZERO = np.float32(0.0)


@KERNELS.register("conv")
def launch_conv(backend, step, arrays, ins, res, out, work):
    a, x = step.attrs, ins[0]
    n, h, wd, c_in = x.shape
    _, ho, wo, c_out = out.shape
    og = c_out // a["groups"]
    resf, has_res, act, alpha, beta = epilogue(backend, step, res)
    source = flat(x)
    if len(ins) == 2:  # a squeeze-and-excitation gate folded in (plan._fold_gate)
        gate = ins[1]
        source = work[: x.size]  # the plan's workspace holds the gated input
        mul_channels[blocks(x.size), THREADS](
            flat(x), flat(gate), source, x.size, c_in, h * wd, channels(gate), 0, ZERO, ZERO
        )
    grid = ((og + BN - 1) // BN, (n * ho * wo + BM - 1) // BM, a["groups"])
    conv[grid, (TILE, TILE)](
        source,
        arrays["w"],
        arrays["b"],
        resf,
        flat(out),
        n,
        h,
        wd,
        c_in,
        ho,
        wo,
        c_out,
        a["kh"],
        a["kw"],
        a["sh"],
        a["sw"],
        a["ph"],
        a["pw"],
        a["dh"],
        a["dw"],
        a["groups"],
        act,
        alpha,
        beta,
        has_res,
    )


@KERNELS.register("dwconv")
def launch_dwconv(backend, step, arrays, ins, res, out, work):
    a, x = step.attrs, ins[0]
    n, h, wd, _ = x.shape
    _, ho, wo, c_out = out.shape
    resf, has_res, act, alpha, beta = epilogue(backend, step, res)
    dwconv[blocks(out.size), THREADS](
        flat(x),
        arrays["w"],
        arrays["b"],
        resf,
        flat(out),
        n,
        h,
        wd,
        ho,
        wo,
        c_out,
        a["kh"],
        a["kw"],
        a["sh"],
        a["sw"],
        a["ph"],
        a["pw"],
        a["dh"],
        a["dw"],
        a["mult"],
        act,
        alpha,
        beta,
        has_res,
    )


@KERNELS.register("convt")
def launch_convt(backend, step, arrays, ins, res, out, work):
    """A GEMM per group into ``work`` (pixels x kh*kw*out/g), then a gather per output."""
    a, x = step.attrs, ins[0]
    n, h, wd, c_in = x.shape
    _, ho, wo, c_out = out.shape
    g = a["groups"]
    cg, og = c_in // g, c_out // g
    p, kk = n * h * wd, a["kh"] * a["kw"] * og
    for gi in range(g):
        grid = ((kk + BN - 1) // BN, (p + BM - 1) // BM)
        gemm[grid, (TILE, TILE)](
            flat(x),
            gi * cg,
            c_in,
            1,
            arrays["w"],
            gi * cg * kk,
            kk,
            1,
            work,
            gi * p * kk,
            kk,
            p,
            kk,
            cg,
            backend.dummy,
            False,
            backend.dummy,
            False,
            0,
            np.float32(0),
            np.float32(0),
        )
    resf, has_res, act, alpha, beta = epilogue(backend, step, res)
    convt_gather[blocks(out.size), THREADS](
        work,
        arrays["b"],
        resf,
        flat(out),
        n,
        h,
        wd,
        ho,
        wo,
        c_out,
        a["kh"],
        a["kw"],
        a["sh"],
        a["sw"],
        a["ph"],
        a["pw"],
        a["dh"],
        a["dw"],
        g,
        act,
        alpha,
        beta,
        has_res,
    )


@KERNELS.register("fc")
def launch_fc(backend, step, arrays, ins, res, out, work):
    x = ins[0]
    n, n_in = x.shape
    n_out = out.shape[1]
    resf, has_res, act, alpha, beta = epilogue(backend, step, res)
    grid = ((n_out + BN - 1) // BN, (n + BM - 1) // BM)
    gemm[grid, (TILE, TILE)](
        flat(x),
        0,
        n_in,
        1,
        arrays["w"],
        0,
        1,
        n_in,
        flat(out),
        0,
        n_out,
        n,
        n_out,
        n_in,
        arrays["b"],
        True,
        resf,
        has_res,
        act,
        alpha,
        beta,
    )


# ---- backward: data and weight gradients -----------------------------------------------------
# A convolution's data gradient is an implicit GEMM over (ky, kx, output channel) that gathers
# the output gradient each input pixel reached (conv_dgrad); its weight gradient an implicit
# GEMM over output pixels, im2col rows times the output gradient (conv_wgrad). A transposed
# convolution's data gradient is a convolution of the output gradient with the same weights
# and geometry (the forward ``conv`` kernel), its weight gradient conv_wgrad with the roles of
# input and output gradient swapped. Every output element is one thread's sum: deterministic.


@cuda.jit(device=True, inline=True)
def _dgrad_value(gy, r, k, m, h, wd, ho, wo, c_out, kw, sh, sw, ph, pw, dh, dw, o0, og, kdim):
    """Entry (r, k) of the data gradient's implicit matrix: input pixel r, (ky, kx, output
    channel) k; the output gradient at the output pixel whose tap (ky, kx) reads pixel r,
    zero where none does."""
    if r >= m or k >= kdim:
        return float32(0.0)
    hw = h * wd
    n = r // hw
    rem = r - n * hw
    iy = rem // wd
    ix = rem - iy * wd
    tap = k // og
    co = k - tap * og
    ky = tap // kw
    kx = tap - ky * kw
    ty = iy + ph - ky * dh
    tx = ix + pw - kx * dw
    if ty < 0 or tx < 0 or ty % sh != 0 or tx % sw != 0:
        return float32(0.0)
    oy = ty // sh
    ox = tx // sw
    if oy >= ho or ox >= wo:
        return float32(0.0)
    return gy[((n * ho + oy) * wo + ox) * c_out + o0 + co]


@cuda.jit
def conv_dgrad(
    gy, w, gx, n_img, h, wd, c_in, ho, wo, c_out, kh, kw, sh, sw, ph, pw, dh, dw, groups
):
    """``gx`` of a convolution (packed weights ``w`` as the forward's); grid
    (ceil(C/g / BN), ceil(input pixels / BM), groups)."""
    gi = cuda.blockIdx.z
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    cg = c_in // groups
    og = c_out // groups
    kdim = kh * kw * og
    m = n_img * h * wd
    m0 = cuda.blockIdx.y * BM
    n0 = cuda.blockIdx.x * BN
    a_tile = cuda.shared.array((BM, BK), float32)
    b_tile = cuda.shared.array((BK, BN), float32)
    acc = cuda.local.array((WORK, WORK), float32)
    _zero(acc)
    for k0 in range(0, kdim, BK):
        for i in range(WORK):
            a_tile[ty + i * TILE, tx] = _dgrad_value(
                gy, m0 + ty + i * TILE, k0 + tx, m, h, wd, ho, wo, c_out, kw, sh, sw, ph, pw,
                dh, dw, gi * og, og, kdim,
            )  # fmt: skip
        for j in range(WORK):
            col = n0 + tx + j * TILE
            k = k0 + ty
            v = float32(0.0)
            if k < kdim and col < cg:
                tap = k // og
                co = k - tap * og
                v = w[((gi * kh * kw + tap) * cg + col) * og + co]
            b_tile[ty, tx + j * TILE] = v
        cuda.syncthreads()
        _multiply_tiles(a_tile, b_tile, acc, ty, tx)
        cuda.syncthreads()
    for i in range(WORK):
        r = m0 + ty + i * TILE
        for j in range(WORK):
            col = n0 + tx + j * TILE
            if r < m and col < cg:
                gx[r * c_in + gi * cg + col] = acc[i, j]


@cuda.jit
def conv_wgrad(
    x, gy, gw, n_img, h, wd, c_in, ho, wo, c_out, kh, kw, sh, sw, ph, pw, dh, dw, groups
):
    """The weight gradient of a convolution in PyTorch's layout (out, C/g, kh, kw): rows
    (ky, kx, c), columns output channels, summed over output pixels; grid
    (ceil(out/g / BN), ceil(kh*kw*C/g / BM), groups)."""
    gi = cuda.blockIdx.z
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    cg = c_in // groups
    og = c_out // groups
    kdim = kh * kw * cg
    m = n_img * ho * wo
    m0 = cuda.blockIdx.y * BM
    n0 = cuda.blockIdx.x * BN
    a_tile = cuda.shared.array((BM, BK), float32)
    b_tile = cuda.shared.array((BK, BN), float32)
    acc = cuda.local.array((WORK, WORK), float32)
    _zero(acc)
    for p0 in range(0, m, BK):
        for i in range(WORK):
            a_tile[ty + i * TILE, tx] = _im2col_value(
                x, p0 + tx, m0 + ty + i * TILE, m, h, wd, c_in, ho, wo, kw, sh, sw, ph, pw,
                dh, dw, gi * cg, cg, kdim,
            )  # fmt: skip
        for j in range(WORK):
            col = n0 + tx + j * TILE
            p = p0 + ty
            b_tile[ty, tx + j * TILE] = (
                gy[p * c_out + gi * og + col] if (p < m and col < og) else float32(0.0)
            )
        cuda.syncthreads()
        _multiply_tiles(a_tile, b_tile, acc, ty, tx)
        cuda.syncthreads()
    for i in range(WORK):
        k = m0 + ty + i * TILE
        for j in range(WORK):
            col = n0 + tx + j * TILE
            if k < kdim and col < og:
                tap = k // cg
                c = k - tap * cg
                gw[((gi * og + col) * cg + c) * kh * kw + tap] = acc[i, j]


@cuda.jit
def pack_conv_weight(raw, packed, groups, og, cg, kh, kw):
    """PyTorch's (out, C/g, kh, kw) into the forward ``conv``'s (groups, kh*kw*C/g, out/g)."""
    i = cuda.grid(1)
    if i >= groups * og * cg * kh * kw:
        return
    tap = i % (kh * kw)
    t = i // (kh * kw)
    c = t % cg
    o = t // cg  # output channel over every group
    gi = o // og
    packed[((gi * kh * kw + tap) * cg + c) * og + o - gi * og] = raw[i]


@cuda.jit
def dwconv_dgrad(gy, w, gx, n_img, h, wd, c_in, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw, mult):
    """Depthwise convolution's ``gx``, one thread per input element over its ``mult``
    output channels and the taps that read it."""
    i = cuda.grid(1)
    if i >= n_img * h * wd * c_in:
        return
    n, iy, ix, ci = nhwc(i, h, wd, c_in)
    c_out = c_in * mult
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
            base = ((n * ho + oy) * wo + tx // sw) * c_out
            for j in range(mult):
                c = ci * mult + j
                acc += gy[base + c] * w[(ky * kw + kx) * c_out + c]
    gx[i] = acc


@cuda.jit
def dwconv_wgrad(x, gy, gw, n_img, h, wd, ho, wo, c_out, kh, kw, sh, sw, ph, pw, dh, dw, mult):
    """Depthwise convolution's weight gradient (C*m, 1, kh, kw): one block per weight, its
    threads over the output pixels, a fixed-order block sum."""
    e = cuda.blockIdx.x
    c = e // (kh * kw)
    tap = e - c * kh * kw
    ky = tap // kw
    kx = tap - ky * kw
    c_in = c_out // mult
    cache = cuda.shared.array(THREADS, float64)
    acc = 0.0
    for p in range(cuda.threadIdx.x, n_img * ho * wo, THREADS):
        ox = p % wo
        t = p // wo
        oy = t % ho
        n = t // ho
        iy = oy * sh - ph + ky * dh
        ix = ox * sw - pw + kx * dw
        if 0 <= iy < h and 0 <= ix < wd:
            acc += float64(gy[p * c_out + c]) * x[((n * h + iy) * wd + ix) * c_in + c // mult]
    total = block_total(acc, cache)
    if cuda.threadIdx.x == 0:
        gw[e] = total


def _geometry(a) -> tuple:
    return a["kh"], a["kw"], a["sh"], a["sw"], a["ph"], a["pw"], a["dh"], a["dw"]


def _bias_grad(backend, gws, gy) -> None:
    if "bias" in gws:
        c = channels(gy)
        column_sums(backend, gws["bias"], gy, gy.size // c, c)


def _weight_grad(x, gy, gw, groups, geometry) -> None:
    """conv_wgrad of a convolution from ``x`` to ``gy``'s shape, into ``gw`` (PyTorch's)."""
    n, h, wd, c_in = x.shape
    _, ho, wo, c_out = gy.shape
    kh, kw = geometry[:2]
    og, kdim = c_out // groups, kh * kw * (c_in // groups)
    grid = ((og + BN - 1) // BN, (kdim + BM - 1) // BM, groups)
    conv_wgrad[grid, (TILE, TILE)](
        flat(x), flat(gy), flat(gw), n, h, wd, c_in, ho, wo, c_out, *geometry, groups
    )


@GRADS.register("conv")
def grad_conv(backend, step, arrays, saved, gy, gxs, gws):
    a, x, gx = step.attrs, saved.xs[0], gxs[0]
    g, geometry = a["groups"], _geometry(a)
    if gx is not None:
        n, h, wd, c_in = gx.shape
        _, ho, wo, c_out = gy.shape
        grid = ((c_in // g + BN - 1) // BN, (n * h * wd + BM - 1) // BM, g)
        conv_dgrad[grid, (TILE, TILE)](
            flat(gy), arrays["w"], flat(gx), n, h, wd, c_in, ho, wo, c_out, *geometry, g
        )
    if "weight" in gws:
        _weight_grad(x, gy, gws["weight"], g, geometry)
    _bias_grad(backend, gws, gy)


@GRADS.register("dwconv")
def grad_dwconv(backend, step, arrays, saved, gy, gxs, gws):
    a, x, gx = step.attrs, saved.xs[0], gxs[0]
    n, h, wd, c_in = x.shape
    _, ho, wo, c_out = gy.shape
    if gx is not None:
        dwconv_dgrad[blocks(gx.size), THREADS](
            flat(gy), arrays["w"], flat(gx), n, h, wd, c_in, ho, wo, *_geometry(a), a["mult"]
        )
    if "weight" in gws:
        dwconv_wgrad[gws["weight"].size, THREADS](
            flat(x), flat(gy), flat(gws["weight"]), n, h, wd, ho, wo, c_out, *_geometry(a),
            a["mult"],
        )  # fmt: skip
    _bias_grad(backend, gws, gy)


@GRADS.register("convt")
def grad_convt(backend, step, arrays, saved, gy, gxs, gws):
    """A transposed convolution's ``gx`` is the convolution of ``gy`` with its weights, read
    as a convolution's (C_in, out/g, kh, kw), and the same geometry."""
    a, x, gx = step.attrs, saved.xs[0], gxs[0]
    g, geometry = a["groups"], _geometry(a)
    n, h, wd, c_in = x.shape
    _, ho, wo, c_out = gy.shape
    if gx is not None:
        cg, og = c_in // g, c_out // g
        raw = arrays["param.weight"]
        packed = backend.empty(raw.size)
        pack_conv_weight[blocks(raw.size), THREADS](flat(raw), packed, g, cg, og, *geometry[:2])
        zeros = backend.to_device(np.zeros(c_in, np.float32))
        grid = ((cg + BN - 1) // BN, (n * h * wd + BM - 1) // BM, g)
        conv[grid, (TILE, TILE)](
            flat(gy), packed, zeros, backend.dummy, flat(gx), n, ho, wo, c_out, h, wd, c_in,
            *geometry, g, 0, ZERO, ZERO, False,
        )  # fmt: skip
    if "weight" in gws:
        _weight_grad(gy, x, gws["weight"], g, geometry)
    _bias_grad(backend, gws, gy)


@GRADS.register("fc")
def grad_fc(backend, step, arrays, saved, gy, gxs, gws):
    """``gx = gy W``, ``gW = gy^T x``, ``gb = sum(gy)`` for ``y = x W^T + b``."""
    x, w = saved.xs[0], arrays["w"]
    n, n_in = x.shape
    n_out = gy.shape[1]
    d, z = backend.dummy, ZERO
    if gxs[0] is not None:
        grid = ((n_in + BN - 1) // BN, (n + BM - 1) // BM)
        gemm[grid, (TILE, TILE)](
            flat(gy), 0, n_out, 1, w, 0, n_in, 1, flat(gxs[0]), 0, n_in, n, n_in, n_out,
            d, False, d, False, 0, z, z,
        )  # fmt: skip
    if "weight" in gws:
        grid = ((n_in + BN - 1) // BN, (n_out + BM - 1) // BM)
        gemm[grid, (TILE, TILE)](
            flat(gy), 0, 1, n_out, flat(x), 0, n_in, 1, flat(gws["weight"]), 0, n_in, n_out,
            n_in, n, d, False, d, False, 0, z, z,
        )  # fmt: skip
    _bias_grad(backend, gws, gy)
