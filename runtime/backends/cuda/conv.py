"""Convolutions and fully connected layers on CUDA (numba.cuda), NHWC float32.

conv is an implicit GEMM: rows are output pixels, columns output channels, and the reduction
runs over (ky, kx, c). Each block computes a BM x BN tile from shared-memory tiles of the
(never materialised) im2col matrix and of the weights; each thread keeps a WORK x WORK register
tile. fc and the first phase of convt use the same tiling over a strided GEMM. The epilogue
(bias, residual add, activation) is fused as on the CPU. Weight layouts: runtime/lowering.py.
"""

from __future__ import annotations

import numpy as np
from numba import cuda, float32

from .activations import activate
from .elementwise import mul_channels
from .indexing import nhwc
from .launch import BK, BM, BN, KERNELS, THREADS, TILE, WORK, blocks, channels, epilogue, flat


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
