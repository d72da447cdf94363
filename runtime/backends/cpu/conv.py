"""Convolutions and fully connected layers on the CPU (Numba), NHWC float32.

Convolutions are tiled GEMMs with a fused epilogue (bias, residual add, activation): 1x1
stride-1 layers multiply the input itself, other stride-1 layers run one GEMM per kernel tap
over a padded row buffer ("shifted GEMM"), the rest build im2col tiles. ``prange`` spreads
work items over the threads, each calling single-threaded BLAS; tiling.py chooses the items.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from . import autotune, blocked, winograd
from .activations import JIT, PJIT, activate, activate_run, clamp_bounds, epilogue_run
from .blas import gemm, gemm_tn
from .elementwise import activation_pass, run_call
from .table import BOUND_ONLY, GRADS, KERNELS, step_key
from .tiling import conv_scratch_floats, uses_direct_gemm, uses_shifted_gemm

F4 = 4  # bytes per float32


@njit(**JIT)
def _epilogue(src, s0, sc, dst, d0, dc, bias, res, has_res, rows, nb, act, alpha, beta):
    """``dst[d0 + i, dc + j] = act(src[s0 + i, sc + j] + bias[dc + j] (+ res[d0 + i, dc + j]))``
    for i < rows, j < nb; ``src`` may be ``dst``."""
    b = bias[dc : dc + nb]
    for i in range(rows):
        s = src[s0 + i, sc : sc + nb]
        r = res[d0 + i, dc : dc + nb] if has_res else s
        epilogue_run(dst[d0 + i, dc : dc + nb], s, b, r, has_res, nb, act, alpha, beta)


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
                    row[base : base + span] = 0.0
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
                            row[base + kx * cg : base + kx * cg + cg] = 0.0


@njit(inline="always", **JIT)
def _work_item(item, n_img, tiles, rows_per_tile, ho):
    """Item -> (channel block, image, first row, end row). Items run block-major, so the
    contiguous run of items a thread takes shares few blocks of weights."""
    b = item // (n_img * tiles)
    tile = item % (n_img * tiles)
    oy0 = (tile % tiles) * rows_per_tile
    return b, tile // tiles, oy0, min(ho, oy0 + rows_per_tile)


@njit(**PJIT)
def conv(
    x,
    wmat,
    bias,
    res,
    out,
    scratch,
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
    rows_per_tile,
    channel_blocks,
):
    """Convolution by im2col tiles (or the input itself for 1x1 stride-1 layers), NHWC;
    ``convolve`` sends stride-1 layers to ``_conv_shifted`` instead. ``wmat``: (groups,
    kh*kw*C/g, out/g), rows ordered (ky, kx, c).

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
    has_res = res.size > 0
    tiles = (ho + rows_per_tile - 1) // rows_per_tile
    block = (og + channel_blocks - 1) // channel_blocks
    out2 = out.reshape(n_img * ho * wo, c_out)
    res2 = res.reshape(-1, c_out) if has_res else out2
    threads = scratch.shape[0]
    items = n_img * tiles * channel_blocks
    for t in prange(threads):
        for item in range(t * items // threads, (t + 1) * items // threads):
            b, n, oy0, oy1 = _work_item(item, n_img, tiles, rows_per_tile, ho)
            m = (oy1 - oy0) * wo
            r0 = (n * ho + oy0) * wo
            col = scratch[t, : 0 if direct else m * k].reshape(-1, k)
            for gi in range(groups):
                c0 = gi * og + b * block
                c1 = min(gi * og + og, c0 + block)
                if c1 <= c0:
                    continue
                w0 = gi * k * og + c0 - gi * og
                if direct:
                    gemm(m, c1 - c0, k, x, r0 * c_in + gi * cg, c_in, wmat, w0, og, out,
                         r0 * c_out + c0, c_out, 0.0)  # fmt: skip
                else:
                    _im2col(x, n, oy0, oy1, wo, kh, kw, sh, sw, ph, pw, dh, dw, gi * cg, cg, col)
                    gemm(m, c1 - c0, k, col, 0, k, wmat, w0, og, out, r0 * c_out + c0, c_out,
                         0.0)  # fmt: skip
                _epilogue(
                    out2, r0, c0, out2, r0, c0, bias, res2, has_res, m, c1 - c0, act, alpha, beta
                )


@njit(**PJIT)
def _conv_shifted(
    x,
    wmat,
    bias,
    res,
    out,
    scratch,
    kh,
    kw,
    ph,
    pw,
    dh,
    dw,
    groups,
    act,
    alpha,
    beta,
    rows_per_tile,
    channel_blocks,
):
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
    threads = scratch.shape[0]
    items = n_img * tiles * channel_blocks
    for t in prange(threads):
        for item in range(t * items // threads, (t + 1) * items // threads):
            b, n, oy0, oy1 = _work_item(item, n_img, tiles, rows_per_tile, ho)
            rows = oy1 - oy0
            in_rows = rows + dh * (kh - 1)
            # padded input rows oy0 - ph ... , plus slack for the last taps' overhang
            xp_rows = in_rows * wp + dw * (kw - 1) + 1
            xp = scratch[t, : xp_rows * c_in].reshape(xp_rows, c_in)
            xp[:] = 0.0
            for r in range(in_rows):
                iy = oy0 - ph + r
                if 0 <= iy < h:  # a loop: slice-from-array assignment compiles seconds of
                    for ix in range(w):  # shape-error formatting into the first kernel
                        for c in range(c_in):
                            xp[r * wp + pw + ix, c] = x[n, iy, ix, c]
            m = rows * wp
            for gi in range(groups):
                c0 = gi * og + b * block
                c1 = min(gi * og + og, c0 + block)
                if c1 <= c0:
                    continue
                nb = c1 - c0
                acc = scratch[t, xp_rows * c_in : xp_rows * c_in + m * nb].reshape(m, nb)
                for ky in range(kh):
                    for kx in range(kw):
                        shift = ky * dh * wp + kx * dw
                        tap = (ky * kw + kx) * cg
                        gemm(
                            m,
                            nb,
                            cg,
                            xp,
                            shift * c_in + gi * cg,
                            c_in,
                            wmat,
                            gi * k * og + tap * og + c0 - gi * og,
                            og,
                            acc,
                            0,
                            nb,
                            0.0 if ky == 0 and kx == 0 else 1.0,
                        )
                for r in range(rows):
                    _epilogue(
                        acc,
                        r * wp,
                        0,
                        out2,
                        (n * ho + oy0 + r) * wo,
                        c0,
                        bias,
                        res2,
                        has_res,
                        wo,
                        nb,
                        act,
                        alpha,
                        beta,
                    )


def convolve(x, wmat, bias, res, out, scratch, kh, kw, sh, sw, ph, pw, dh, dw, *rest):
    """Direct convolution, ``conv``'s arguments (``rest``: groups, act, alpha, beta, rows per
    tile, channel blocks): the shifted GEMM for stride-1 layers wider than 1x1
    (tiling.uses_shifted_gemm), else ``conv``. Two kernels chosen here rather than one calling
    the other: a network compiles only the paths it uses (each takes seconds)."""
    arrays = (x, wmat, bias, res, out, scratch)
    if uses_shifted_gemm.py_func(kh, kw, sh, sw, x.shape[3] // rest[0]):
        _conv_shifted(*arrays, kh, kw, ph, pw, dh, dw, *rest)
    else:
        conv(*arrays, kh, kw, sh, sw, ph, pw, dh, dw, *rest)


@njit(**PJIT)
def convt(x, wmat, bias, res, out, cols, kh, kw, sh, sw, ph, pw, dh, dw, groups, act, alpha, beta):
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
        gemm(p, kk, cg, x, gi * cg, c_in, wmat, gi * cg * kk, kk, cols, gi * p * kk, kk, 0.0)
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
                out[n, oy, ox, co] = activate(acc, act, alpha, beta)


@njit(**JIT)
def _fc_rows(x, w, bias, res, out, lo, hi, xt, ct, r0, r1):
    """Output features r0..r1 of ``fc``, given ``xt`` = x.T; ``ct`` receives w[r0:r1] @ xt."""
    n_img, n_in = x.shape
    has_res = res.size > 0
    gemm(r1 - r0, n_img, n_in, w, r0 * n_in, n_in, xt, 0, n_img, ct, r0 * n_img, n_img, 0.0)
    for o in range(r0, r1):
        for n in range(n_img):
            v = ct[o, n] + bias[o]
            if has_res:
                v += res[n, o]
            out[n, o] = min(max(v, lo), hi)


@njit(**PJIT)
def fc(x, w, bias, res, out, lo, hi, xt, ct, blocks):
    """Fully connected: ``out (N, O) = x (N, I) @ w.T`` with ``w`` (O, I) in PyTorch's layout.

    Computed as ``w @ x.T`` by blocks of rows of ``w``: each thread streams a contiguous part
    of the weights, which is what limits fc layers (VGG's fc6 holds 411 MB)."""
    n_out = out.shape[1]
    size = (n_out + blocks - 1) // blocks
    for b in prange(blocks):
        r0 = b * size
        r1 = min(n_out, r0 + size)
        if r1 > r0:
            _fc_rows(x, w, bias, res, out, lo, hi, xt, ct, r0, r1)


#: Weights (floats) from which ``fc`` runs on all threads; smaller layers (ResNet's 2 MB) take
#: one thread, which spares compiling a parallel kernel (1-2 s on a cold cache).
FC_PARALLEL_FLOATS = 1 << 20


#: Up to this many images, fc streams its weights once through dot products (memory-bound,
#: no packing); above it, sgemm's packed panels win. VGG-19's fc6 at batch 1: 29-40 ms
#: streamed against 65-100 ms through sgemm, which packs all 411 MB of weights for one column.
STREAM_MAX_IMAGES = 4


@njit(**JIT)
def _fc_stream_rows(x, w, bias, res, out, lo, hi, r0, r1):
    """Output features r0..r1 for a few images: each weight row is read once and dotted with
    up to four images at a time (memory-bound; no packing, no BLAS)."""
    n_img, n_in = x.shape
    has_res = res.size > 0
    for o in range(r0, r1):
        for n0 in range(0, n_img, 4):
            a0 = np.float32(0.0)
            a1 = np.float32(0.0)
            a2 = np.float32(0.0)
            a3 = np.float32(0.0)
            if n0 + 4 <= n_img:
                for i in range(n_in):
                    wv = w[o, i]
                    a0 += wv * x[n0, i]
                    a1 += wv * x[n0 + 1, i]
                    a2 += wv * x[n0 + 2, i]
                    a3 += wv * x[n0 + 3, i]
            else:
                for i in range(n_in):
                    a0 += w[o, i] * x[n0, i]
                if n0 + 1 < n_img:
                    for i in range(n_in):
                        a1 += w[o, i] * x[n0 + 1, i]
                if n0 + 2 < n_img:
                    for i in range(n_in):
                        a2 += w[o, i] * x[n0 + 2, i]
            for j in range(min(4, n_img - n0)):
                v = (a0 if j == 0 else a1 if j == 1 else a2 if j == 2 else a3) + bias[o]
                if has_res:
                    v += res[n0 + j, o]
                out[n0 + j, o] = min(max(v, lo), hi)


@njit(**JIT)
def _fc_stream_one(x, w, bias, res, out, lo, hi):
    """``_fc_stream_rows`` for one image and every row, on one thread: a classifier's head
    at batch 1. Its own small kernel: the general one's loops for two to four images were
    0.2 s more of compiling in a ResNet's first run, for a head that never runs them."""
    has_res = res.size > 0
    xv = x[0]
    for o in range(out.shape[1]):
        wr = w[o]
        acc = np.float32(0.0)
        for i in range(x.shape[1]):
            acc += wr[i] * xv[i]
        v = acc + bias[o]
        if has_res:
            v += res[0, o]
        out[0, o] = min(max(v, lo), hi)


@njit(**PJIT)
def fc_stream(x, w, bias, res, out, lo, hi, blocks):
    """Fully connected for a few images, each thread streaming a contiguous block of rows."""
    n_out = out.shape[1]
    size = (n_out + blocks - 1) // blocks
    for b in prange(blocks):
        _fc_stream_rows(x, w, bias, res, out, lo, hi, b * size, min(n_out, (b + 1) * size))


def _f32(a) -> tuple:
    """The epilogue's activation scalars as the kernels take them."""
    return a["act"], np.float32(a["alpha"]), np.float32(a["beta"])


GEOMETRY = ("kh", "kw", "sh", "sw", "ph", "pw", "dh", "dw", "groups")


def _run_choice(backend, choice, arrays, x, res, out, a):
    """Run the convolution by the algorithm and tiling of ``choice`` (autotune.Choice)."""
    run_call(_bind_choice(backend, choice, arrays, x, res, out, a))


def _bind_choice(backend, choice, arrays, x, res, out, a) -> tuple:
    """The call (kernel, arguments, after: elementwise.run_call) that runs the convolution by
    the algorithm and tiling of ``choice``, its weights packed or transformed first."""
    geometry = [a[name] for name in GEOMETRY]
    if choice.algorithm == "winograd":
        m, per_item, k_blocks = choice.a, choice.b, choice.c
        name = f"winograd{m}"
        if name not in arrays:  # transformed once, on first use, for this executor
            arrays[name] = winograd.transform_weights(_packed(arrays, out.shape[3]), m)
        bt, at = winograd.matrices(m)
        floats = winograd.scratch_floats(m, per_item, x.shape[3], out.shape[3], k_blocks)
        args = (x, arrays[name], arrays["b"], res, out, backend.scratch(floats), a["ph"],
                a["pw"], bt, at, *_f32(a), per_item, k_blocks, a["dh"], a["dw"])  # fmt: skip
        return winograd.winograd_conv, args, None
    if choice.algorithm == "blocked":
        if "panels" not in arrays:  # packed once, on first use, for this executor
            arrays["panels"] = blocked.pack_panels(_packed(arrays, out.shape[3]))
        ph, pw = a["ph"], a["pw"]
        xp = x
        shape = blocked.padded_shape(x.shape, ph, pw, a["kw"], a["dw"])
        if shape is not None:
            xp = backend.buffer("padded", math.prod(shape)).reshape(shape)
        return blocked.blocked_call(
            x,
            xp,
            arrays["panels"],
            arrays["b"],
            res,
            out,
            backend.scratch(blocked.SCRATCH_FLOATS),
            *(a[name] for name in ("kh", "kw", "sh", "sw", "ph", "pw", "dh", "dw")),
            *_f32(a),
            choice.a,
            choice.b,
            blocked.tiles_outer(arrays["panels"].shape[1], out.shape[3], choice.b),
        )
    rows, blocks = choice.a, choice.b
    floats = conv_scratch_floats(rows, blocks, x.shape, out.shape, *geometry)
    args = (x, _packed(arrays, out.shape[3]), arrays["b"], res, out, backend.scratch(floats),
            *geometry, *_f32(a), rows, blocks)  # fmt: skip
    return convolve, args, None


#: The forms a convolution's weights take: packed for BLAS, the micro-kernel's panels,
#: Winograd's transformed panels. After binding a layer keeps only the one it runs on.
FORMS = ("w", "panels", "winograd2", "winograd4")


def _packed(arrays: dict, k_out: int) -> np.ndarray:
    """The layer's packed weights (1, kh*kw*C, K), rebuilt from the form it kept where it
    kept another (see ``_bind``)."""
    if "w" not in arrays:
        if "panels" in arrays:
            arrays["w"] = blocked.unpack_panels(arrays["panels"], k_out)
        else:
            m = 4 if "winograd4" in arrays else 2
            arrays["w"] = winograd.untransform_weights(arrays[f"winograd{m}"], m, k_out)
    return arrays["w"]


def _form(choice) -> str:
    """The weights' form that ``choice`` runs on (FORMS)."""
    if choice.algorithm == "blocked":
        return "panels"
    return f"winograd{choice.a}" if choice.algorithm == "winograd" else "w"


def _choose(backend, step, arrays, x, res, out):
    """This layer's algorithm and tiling: the cached measurement of this shape on this machine
    (autotune.py), measured now if the backend tunes and none is cached, else tiling.py's
    default; ``winograd`` forced and layers too small to be worth it take the default."""
    a = step.attrs
    geometry = {name: a[name] for name in GEOMETRY}
    shape = autotune.shape_key(x.shape, out.shape, geometry, res.size > 0, backend.algorithm)
    choice = backend.choices.get(shape)
    if choice is not None:
        return choice
    args = (x.shape, out.shape, geometry, backend.threads, backend.algorithm)
    if backend.algorithm == "winograd" or not autotune.worth_tuning(x.shape, out.shape, geometry):
        choice = autotune.default_choice(*args)
    else:
        cache = backend.tune_cache()
        choice = None if backend.retune else cache.get(shape, measuring=backend.tune)
        if choice is None and not backend.tune:
            choice = autotune.default_choice(*args)  # not measured, so not cached
        elif choice is None:
            if backend.on_tune is not None:
                backend.on_tune(step.label)
            taken = autotune.conditions()
            scratch_out = np.empty_like(out)
            candidates = list(autotune.candidates(*args))
            seconds = autotune.measure_all(
                [
                    lambda c=c: _run_choice(backend, c, arrays, x, res, scratch_out, a)
                    for c in candidates
                ]
            )
            seconds, choice = min(zip(seconds, candidates), key=lambda tc: tc[0])
            cache.put(shape, choice, seconds * 1e3, taken)
    backend.choices[shape] = choice
    return choice


@njit(**JIT)
def pointwise_vector(x2, w, bias, res2, out2, act, alpha, beta):
    """A 1x1 convolution of 1x1 images, ``out (N, O) = x (N, C) @ w (C, O)``: the squeeze and
    excite layers of SE blocks. One thread and no BLAS: these are a few thousand multiply-adds,
    and a parallel region with tiled GEMMs cost them ten times that in overhead."""
    n_img, c_in = x2.shape
    c_out = out2.shape[1]
    for n in range(n_img):
        d = out2[n]
        for j in range(c_out):
            d[j] = bias[j]
        for c in range(c_in):
            v = x2[n, c]
            wr = w[c]
            for j in range(c_out):
                d[j] += v * wr[j]
        if res2.size > 0:
            for j in range(c_out):
                d[j] += res2[n, j]
        activate_run(d, c_out, act, alpha, beta)


def _is_pointwise_vector(x, out, a) -> bool:
    return (
        x.shape[1] == x.shape[2] == 1
        and out.shape[1] == out.shape[2] == 1
        and (a["kh"] == a["kw"] == 1 and a["groups"] == 1 and a["ph"] == a["pw"] == 0)
    )


@KERNELS.register("conv")
def launch_conv(backend, step, arrays, ins, res, out, work):
    x = ins[0]
    key = step_key(step, ins, res, out)
    if len(ins) == 2:  # a squeeze-and-excitation gate folded in (plan._fold_gate)
        bind = lambda: _bind_gated(backend, step, arrays, x, ins[1], res, out)  # noqa: E731
    else:
        bind = lambda: _bind(backend, step, arrays, x, res, out)  # noqa: E731
    run_call(backend.bound_call(key, bind))


BOUND_ONLY.add("conv")


def _bind_gated(backend, step, arrays, x, gate, res, out) -> tuple:
    """A 1x1 convolution of ``x * gate`` (per image and channel) on the micro-kernel, one
    image at a time, the gate applied to whichever is smaller: the weight panels (early
    blocks: 16x96 weights against 112x112x16 inputs) or the image (late ones: 1152x320
    weights against 7x7x1152 inputs)."""
    a = step.attrs
    n_img = x.shape[0]
    if backend.algorithm == "blas":
        return _bind_gated_blas(backend, step, arrays, x, gate, res, out)
    one = (1, *x.shape[1:]), (1, *out.shape[1:])
    geometry = {name: a[name] for name in GEOMETRY}
    choice = autotune.blocked_default(*one, geometry, backend.threads)
    backend.chosen[id(step)] = choice.label() + " gated"
    if "panels" not in arrays:
        arrays["panels"] = blocked.pack_panels(_packed(arrays, out.shape[3]))
    _keep_only(step, arrays, "panels")
    panels = arrays["panels"]
    on_weights = panels.size <= x[0].size
    if on_weights:
        scaled = backend.buffer("gated", panels.size).reshape(panels.shape)
    else:
        scaled = backend.buffer("gated", x[0].size).reshape(1, -1, x.shape[3])
    kernel, args, after = blocked.blocked_call(
        x[:1], x[:1], panels, arrays["b"], res[:1] if res.size else res, out[:1],
        backend.scratch(blocked.SCRATCH_FLOATS), 1, 1, 1, 1, 0, 0, 1, 1, *_f32(a), choice.a,
        choice.b, blocked.tiles_outer(panels.shape[1], out.shape[3], choice.b),
    )  # fmt: skip
    images = [
        (x[n : n + 1], res[n : n + 1] if res.size else res, out[n : n + 1]) for n in range(n_img)
    ]
    after = (out, *after[1:]) if after else None  # the activation pass over every image
    gates = gate.reshape(n_img, -1)
    return _gated, (kernel, args, panels, scaled, gates, images, on_weights), after


def _gated(kernel, args, panels, scaled, gates, images, on_weights):
    """Run ``_bind_gated``'s call: per image, the panels or the image scaled by its gate
    into ``scaled``, then the micro-kernel (``args`` with that image put in)."""
    for n, (x1, res1, out1) in enumerate(images):
        if on_weights:
            scale_rows(panels, gates[n], scaled)
            kernel(x1, x1, scaled, args[3], res1, out1, *args[6:])
        else:
            xs = scaled.reshape(x1.shape)
            scale_rows(x1.reshape(1, -1, x1.shape[3]), gates[n], scaled, True)
            kernel(xs, xs, panels, args[3], res1, out1, *args[6:])


def _bind_gated_blas(backend, step, arrays, x, gate, res, out) -> tuple:
    """``_bind_gated`` under the ``blas`` policy: the image scaled by its gate into a buffer,
    then the BLAS convolution of it (no micro-kernel)."""
    a = step.attrs
    geometry = {name: a[name] for name in GEOMETRY}
    choice = autotune.default_choice(x.shape, out.shape, geometry, backend.threads, "blas")
    backend.chosen[id(step)] = choice.label() + " gated"
    scaled = backend.buffer("gated", x.size).reshape(x.shape)
    call = _bind_choice(backend, choice, arrays, scaled, res, out, a)
    _keep_only(step, arrays, _form(choice))
    gates = gate.reshape(x.shape[0], -1)
    return _gated_blas, (x, gates, scaled, call), None


def _gated_blas(x, gates, scaled, call):
    """Run ``_bind_gated_blas``'s call: each image times its gate, then the convolution."""
    for n in range(x.shape[0]):
        flat = (1, -1, x.shape[3])
        scale_rows(x[n].reshape(flat), gates[n], scaled[n].reshape(flat), True)
    run_call(call)


@njit(**JIT)
def scale_rows(a, gate, scaled, by_column=False):
    """``scaled = a * gate``, ``a`` (P, R, W): by row (``gate[r]``: weight panels, rows are
    input channels) or by column (``gate[w]``: pixels of channels); a gate of one value
    scales everything."""
    shared = gate.size == 1
    for p in range(a.shape[0]):
        for r in range(a.shape[1]):
            if by_column:
                for j in range(a.shape[2]):
                    scaled[p, r, j] = a[p, r, j] * (gate[0] if shared else gate[j])
            else:
                g = gate[0] if shared else gate[r]
                for j in range(a.shape[2]):
                    scaled[p, r, j] = a[p, r, j] * g


def _bind(backend, step, arrays, x, res, out) -> tuple:
    """``step``'s call: its algorithm chosen (and measured, if tuning), weights packed."""
    a = step.attrs
    if _is_pointwise_vector(x, out, a):
        n_img, c_out = x.shape[0], out.shape[3]
        res2 = res.reshape(n_img, c_out) if res.size else res.reshape(0, 0)
        w2 = _packed(arrays, c_out).reshape(x.shape[3], c_out)
        args = (x.reshape(n_img, -1), w2, arrays["b"], res2, out.reshape(n_img, c_out), *_f32(a))
        return pointwise_vector, args, None
    choice = _choose(backend, step, arrays, x, res, out)
    backend.chosen[id(step)] = choice.label()
    call = _bind_choice(backend, choice, arrays, x, res, out, a)
    _keep_only(step, arrays, _form(choice))
    return call


def _keep_only(step, arrays: dict, keep: str) -> None:
    """Only the form ``keep`` of the layer's weights stays, in the executor's arrays and in
    the plan: one copy of them in memory (another algorithm, for another batch size,
    rebuilds its own: ``_packed``)."""
    step.arrays[keep] = arrays[keep]
    for form in FORMS:
        if form != keep:
            step.arrays.pop(form, None)
            arrays.pop(form, None)


@KERNELS.register("convt")
def launch_convt(backend, step, arrays, ins, res, out, work):
    a, x = step.attrs, ins[0]
    g = a["groups"]
    kk = a["kh"] * a["kw"] * out.shape[3] // g
    pixels = x.shape[0] * x.shape[1] * x.shape[2]
    cols = work[: g * pixels * kk].reshape(g, pixels, kk)
    convt(
        x,
        arrays["w"],
        arrays["b"],
        res,
        out,
        cols,
        a["kh"],
        a["kw"],
        a["sh"],
        a["sw"],
        a["ph"],
        a["pw"],
        a["dh"],
        a["dw"],
        g,
        *_f32(a),
    )


@KERNELS.register("fc")
def launch_fc(backend, step, arrays, ins, res, out, work):
    x, w, b = ins[0], arrays["w"], arrays["b"]
    res2 = res.reshape(-1, out.shape[1]) if res.size else res.reshape(0, 0)
    a = step.attrs
    lo, hi, rest = clamp_bounds(a["act"], a["alpha"], a["beta"])
    parallel = w.size >= FC_PARALLEL_FLOATS
    blocks = max(1, min(8 * backend.threads, out.shape[1] // 64))
    if x.shape[0] <= STREAM_MAX_IMAGES:
        if not parallel and x.shape[0] == 1:
            _fc_stream_one(x, w, b, res2, out, lo, hi)
        elif not parallel:
            _fc_stream_rows(x, w, b, res2, out, lo, hi, 0, out.shape[1])
        else:
            fc_stream(x, w, b, res2, out, lo, hi, blocks)
    else:
        xt = np.ascontiguousarray(x.T)
        ct = np.empty((out.shape[1], x.shape[0]), np.float32)
        if not parallel:
            _fc_rows(x, w, b, res2, out, lo, hi, xt, ct, 0, out.shape[1])
        else:
            fc(x, w, b, res2, out, lo, hi, xt, ct, blocks)
    activation_pass(out, rest, a["alpha"], a["beta"])


# ---- backward: data and weight gradients -----------------------------------------------------

#: Bytes of im2col rows a convolution's backward builds at a time (a block of images).
COLUMN_BYTES = 32 << 20


@njit(**PJIT)
def _im2col_images(x, n0, n1, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw, c0, cg, cols):
    """im2col rows of images ``n0 <= n < n1``, one image per thread at a time."""
    for n in prange(n0, n1):
        r0 = (n - n0) * ho * wo
        _im2col(x, n, 0, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw, c0, cg, cols[r0 : r0 + ho * wo])


def _geometry(a: dict) -> tuple:
    return a["kh"], a["kw"], a["sh"], a["sw"], a["ph"], a["pw"], a["dh"], a["dw"]


def conv_backward(x, gy, weight, gx, gw, gb, groups: int, geometry: tuple, backend=None) -> None:
    """Gradients of a (grouped) convolution, NHWC; ``weight`` PyTorch's (out, C/g, kh, kw).
    ``gw`` (same layout) by ``weight_grad.conv_weight_grad``, ``gb`` the sum of ``gy``, ``gx``
    by ``data_grad.conv_data_grad`` (each None: not wanted). ``backend`` lends its buffers,
    and runs a stride-1 layer's data gradient as a forward convolution."""
    if gb is not None:
        gb[...] = gy.reshape(-1, gy.shape[3]).sum(axis=0, dtype=np.float64)
    if gw is not None:
        from .weight_grad import conv_weight_grad

        conv_weight_grad(x, gy, gw, groups, geometry, backend)
    if gx is not None:
        from .data_grad import conv_data_grad

        conv_data_grad(gy, weight, gx, groups, geometry, backend)


@GRADS.register("conv")
def grad_conv(backend, step, arrays, saved, gy, gxs, gws):
    conv_backward(
        saved.xs[0], gy, arrays["param.weight"], gxs[0], gws.get("weight"), gws.get("bias"),
        step.attrs["groups"], _geometry(step.attrs), backend,
    )  # fmt: skip


@njit(**PJIT)
def fc_backward(x, w, gy, gx, gw, blocks):
    """``gx = gy W`` and ``gW = gy^T x`` for ``y = x W^T + b`` (``gx`` or ``gw`` of size 0:
    not wanted), by cnnc's own single-threaded GEMM on ``blocks`` column blocks of the
    input features, one per thread at a time: NumPy's matmul would run on NumPy's BLAS,
    whose own threads stall beside Numba's (20 ms instead of 0.2 for ResNet's 512 -> 1000
    head at batch 8, on a busy machine)."""
    n, c_in = x.shape
    c_out = gy.shape[1]
    for b in prange(blocks):
        c0 = b * c_in // blocks
        c1 = (b + 1) * c_in // blocks
        if c1 <= c0:
            continue
        if gx.size:
            gemm(n, c1 - c0, c_out, gy, 0, c_out, w, c0, c_in, gx, c0, c_in, 0.0)
        if gw.size:
            gemm_tn(c_out, c1 - c0, n, gy, 0, c_out, x, c0, c_in, gw, c0, c_in, 0.0)


#: Input features per block of ``fc_backward`` at least.
FC_BLOCK = 256


@GRADS.register("fc")
def grad_fc(backend, step, arrays, saved, gy, gxs, gws):
    """``gx = gy W``, ``gW = gy^T x``, ``gb = sum(gy)`` for ``y = x W^T + b``."""
    x, w = saved.xs[0], arrays["param.weight"]
    c_in = x.shape[1]
    blocks = max(1, min(4 * backend.threads, c_in // FC_BLOCK))
    gx = gxs[0] if gxs[0] is not None else _NOTHING
    gw = gws.get("weight", _NOTHING)
    fc_backward(x, w, gy, gx, gw, blocks)
    if "bias" in gws:
        gws["bias"][...] = gy.sum(axis=0, dtype=np.float64)


_NOTHING = np.empty((0, 0), np.float32)


def convt_backward(x, gy, weight, gx, gw, gb, groups: int, geometry: tuple) -> None:
    """Gradients of a transposed convolution ``y = convt(x, W)``, NHWC. Its input gradient is
    the convolution of ``gy`` with the same weights and geometry (convt is that
    convolution's transpose), evaluated at ``x``'s pixels: the im2col rows of ``gy``
    (columns (ky, kx, co)) times ``W`` per group; its weight gradient reuses those rows,
    ``x_g^T @ rows``. ``weight``: PyTorch's (C_in, out/g, kh, kw); ``gw`` the same layout,
    ``gb`` the sum of ``gy`` (None: not wanted)."""
    kh, kw = geometry[:2]
    n_img, h, w, c_in = x.shape
    c_out = gy.shape[3]
    cg, og = c_in // groups, c_out // groups
    k = kh * kw * og
    # (groups, k, C/g): rows (ky, kx, co), a convolution's packed weights
    wmat = weight.reshape(groups, cg, og, kh, kw).transpose(0, 3, 4, 2, 1).reshape(groups, k, cg)
    if gb is not None:
        gb[...] = gy.reshape(-1, c_out).sum(axis=0, dtype=np.float64)
    gwm = np.zeros((groups, k, cg), np.float64) if gw is not None else None
    block = max(1, min(n_img, COLUMN_BYTES // max(1, h * w * k * F4)))
    cols = np.empty((block * h * w, k), np.float32)
    for n0 in range(0, n_img, block):
        n1 = min(n_img, n0 + block)
        rows = (n1 - n0) * h * w
        x2 = x[n0:n1].reshape(rows, c_in)
        gx2 = gx[n0:n1].reshape(rows, c_in) if gx is not None else None
        for gi in range(groups):
            col = cols[:rows]
            _im2col_images(gy, n0, n1, h, w, *geometry, gi * og, og, col)
            if gwm is not None:
                gwm[gi] += col.T @ x2[:, gi * cg : (gi + 1) * cg]
            if gx2 is not None:
                if groups == 1:
                    np.matmul(col, wmat[0], out=gx2)
                else:
                    gx2[:, gi * cg : (gi + 1) * cg] = col @ wmat[gi]
    if gw is not None:
        w_rows = gwm.reshape(groups, kh, kw, og, cg).transpose(0, 4, 3, 1, 2)
        gw[...] = w_rows.reshape(c_in, og, kh, kw)


@GRADS.register("convt")
def grad_convt(backend, step, arrays, saved, gy, gxs, gws):
    convt_backward(
        saved.xs[0], gy, arrays["param.weight"], gxs[0], gws.get("weight"), gws.get("bias"),
        step.attrs["groups"], _geometry(step.attrs),
    )  # fmt: skip
