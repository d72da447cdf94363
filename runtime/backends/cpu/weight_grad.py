"""Weight gradients of convolutions on the CPU: ``gW = columns^T @ gy`` summed over every output
pixel of the batch, as single-threaded BLAS calls (``gemm_tn``) from Numba's threads.

The sum is long (a batch's pixels: 65 536 rows for a CIFAR layer at batch 64) and its result
can be large (2.4 M floats for a 3x3 512-channel layer), so the work is shared in one of two
ways (``weight_grad_tiling`` chooses):

- by rows: each thread sums its own run of output rows into its own float32 gradient, BLAS
  accumulating call after call (beta 1), and adds it into a float64 sum every FLUSH_ROWS
  rows; the threads' sums are added in float64 at the end. For layers whose gradient is
  small and whose pixels are many (the early layers).
- by blocks of the gradient: the batch's rows go a chunk of images at a time (their im2col
  rows, built by all threads), and each thread owns blocks of the gradient. For layers with
  a large gradient and few pixels (the deep layers), where a copy of the gradient per
  thread, and its float64 sum, would cost more memory and time than the GEMMs.

Each BLAS call is sized for OpenBLAS's small-matrix kernels (m*n*k up to SMALL_MNK, faster
than its packed path here) where the shapes allow. Stride-1 layers of 16 or more channels a
group on images wide enough take no im2col copy: one GEMM per kernel tap on a zero-padded
copy of the tile's input rows (the "shifted GEMM" of the forward pass).

Measured on one thread (CPU time), ResNet-18 at batch 8: the 7x7x512 3x3 layer's weight
gradient 119 -> 27 ms, 14x14x256 44 -> 24 ms, 28x28x128 22 -> 19 ms (forward: 28, 20, 19).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from .activations import JIT, PJIT
from .blas import SMALL_MNK, gemm_tn
from .conv import _im2col  # conv.py imports this module where it runs a backward pass
from .tiling import TILE_FLOATS, uses_direct_gemm

F4 = 4  # bytes per float32

#: Rows a float32 partial sum takes before it is added into the float64 total: BLAS sums each
#: call's rows in float32 (as PyTorch does for the whole batch), cnnc at most this many.
FLUSH_ROWS = 8192
#: Gradients of at least this many floats are shared out by blocks (a copy per thread and its
#: float64 sum would cost more than the shared im2col chunks).
BLOCKS_FLOATS = 1024 * 1024
#: The im2col chunk of the block-shared path: at most this many floats (or one image).
CHUNK_FLOATS = 1 << 20
#: Block-shared gradient blocks: rows of the gradient (kernel taps x channels) and columns
#: (output channels) per BLAS call, within the small-matrix kernels for ~240 rows of pixels.
BLOCK_K, BLOCK_OUT = 64, 64
#: Rows-shared path: the GEMM's summed length per call, at least (when the small-matrix bound
#: would allow fewer) and at most.
MIN_CALL_ROWS, MAX_CALL_ROWS = 256, 4096
#: The shifted GEMM's summed length per call (pixels of padded rows), at least.
SHIFTED_ROWS = 128
#: The shifted GEMM computes ``(w + 2 pw) / wo`` times the columns it needs: at most this.
SHIFTED_WASTE = 1.2

SOURCE_IM2COL, SOURCE_DIRECT, SOURCE_SHIFTED = 0, 1, 2


class WeightTiling(NamedTuple):
    """How ``conv_weight_grad`` cuts a layer's work (see the module's docstring)."""

    by_blocks: bool
    source: int  # SOURCE_*
    images: int  # images per work item (rows) or per chunk (blocks)
    rows: int  # output rows per work item (all of an image's where images > 1)
    call_rows: int  # pixels summed per BLAS call (blocks)
    scratch: int  # floats per thread (rows: the im2col or padded tile)
    grad_floats: int  # groups * k * og
    flushes: bool  # whether a float64 sum beside the float32 one is needed

    def workspace_floats(self, threads: int) -> int:
        """Floats of memory the layer's weight gradient takes beyond its output: float32
        partial sums (per thread where shared by rows), their float64 sums, and the im2col
        chunk or per-thread tiles."""
        copies = 1 if self.by_blocks else threads
        wide = 2 * self.grad_floats * copies if self.flushes else 0
        return self.grad_floats * copies + wide + self.scratch * copies


def weight_grad_tiling(x_shape, gy_shape, geometry: tuple, groups: int, threads: int):
    """The tiling of a convolution's weight gradient for these shapes and thread count."""
    n_img, h, w, c_in = x_shape
    _, ho, wo, c_out = gy_shape
    kh, kw, sh, sw, ph, pw, dh, dw = geometry
    cg, og = c_in // groups, c_out // groups
    k = kh * kw * cg
    pixels = ho * wo
    grad = groups * k * og
    direct = uses_direct_gemm.py_func(kh, kw, sh, sw, ph, pw)
    blocks = groups * -(-k // BLOCK_K) * -(-og // BLOCK_OUT)
    if grad >= BLOCKS_FLOATS and blocks >= 2 * threads:
        per_image = 0 if direct else groups * pixels * k
        images = n_img if direct else max(1, min(n_img, CHUNK_FLOATS // max(1, per_image)))
        images = max(1, min(images, FLUSH_ROWS // max(1, pixels)))
        call = max(MIN_CALL_ROWS, SMALL_MNK // (BLOCK_K * BLOCK_OUT))
        source = SOURCE_DIRECT if direct else SOURCE_IM2COL
        flushes = n_img * pixels > FLUSH_ROWS
        return WeightTiling(True, source, images, ho, call, images * per_image, grad, flushes)
    wp = w + 2 * pw
    shifted = sh == 1 and sw == 1 and kh * kw > 1 and cg >= 16 and wp <= SHIFTED_WASTE * wo
    if shifted:
        source, images = SOURCE_SHIFTED, 1
        rows = max(1, min(ho, max(SMALL_MNK // (wp * cg * og), -(-SHIFTED_ROWS // wp))))
    else:
        source = SOURCE_DIRECT if direct else SOURCE_IM2COL
        target = min(MAX_CALL_ROWS, max(MIN_CALL_ROWS, SMALL_MNK // max(1, k * og)))
        if not direct:  # an im2col tile near the L2 cache
            target = max(1, min(target, TILE_FLOATS // max(1, k)))
        if target >= pixels:
            images, rows = max(1, min(n_img, target // pixels)), ho
        else:
            images, rows = 1, max(1, min(ho, target // max(1, wo)))
    while images > 1 and -(-n_img // images) < 2 * threads:
        images = (images + 1) // 2
    while images == 1 and rows > 1 and n_img * -(-ho // rows) < 2 * threads:
        rows = (rows + 1) // 2
    if source == SOURCE_SHIFTED:
        scratch = ((rows + dh * (kh - 1)) * wp + dw * (kw - 1) + 1) * c_in + rows * wp * c_out
    elif source == SOURCE_DIRECT:
        scratch = 0
    else:
        scratch = images * rows * wo * k
    items = -(-n_img // images) * -(-ho // rows)
    per_thread = -(-items // threads) * images * rows * wo
    return WeightTiling(False, source, images, rows, 0, scratch, grad, per_thread > FLUSH_ROWS)


def conv_weight_grad(x, gy, gw, groups: int, geometry: tuple, backend=None) -> None:
    """Weight gradient of a convolution into ``gw`` (out, C/g, kh, kw), NHWC ``x`` and ``gy``.
    ``backend`` (a CpuBackend) lends its kept buffers for the partial sums and tiles: fresh
    ones each call would page-fault, and grow the heap beyond what the memory plan holds."""
    import numba

    kh, kw = geometry[:2]
    c_out, cg = gw.shape[:2]
    k = kh * kw * cg
    og = c_out // groups
    threads = backend.threads if backend is not None else numba.get_num_threads()
    plan = weight_grad_tiling(x.shape, gy.shape, geometry, groups, threads)
    copies = 1 if plan.by_blocks else threads
    acc = _floats(backend, "grad.acc", copies * plan.grad_floats, np.float32)
    acc = acc.reshape(copies, groups, og, k)
    wide = _floats(
        backend, "grad.sum", copies * plan.grad_floats if plan.flushes else 0, np.float64
    )
    wide = wide.reshape(copies if plan.flushes else 0, groups, og, k)
    if plan.by_blocks:
        col = _floats(backend, "grad.col", plan.scratch, np.float32)
        _by_blocks(x, gy, acc[0], wide[0] if plan.flushes else wide.reshape(0, 0, 0), col,
                   *geometry, groups, plan.images, plan.call_rows, BLOCK_K, BLOCK_OUT,
                   plan.source, FLUSH_ROWS)  # fmt: skip
    else:
        if backend is not None:
            scratch = backend.scratch(plan.scratch)
        else:
            scratch = np.empty((threads, max(1, plan.scratch)), np.float32)
        _by_rows(x, gy, acc, wide, scratch, *geometry, groups, plan.images, plan.rows,
                 plan.source, FLUSH_ROWS)  # fmt: skip
    _store(wide if plan.flushes else acc, gw)


def _floats(backend, name: str, n: int, dtype) -> np.ndarray:
    """``n`` values of ``dtype`` (float32 or float64): a view of the backend's kept buffer."""
    per = np.dtype(dtype).itemsize // F4
    if backend is None:
        return np.empty(n, dtype)
    return backend.buffer(name, max(1, n * per))[: n * per].view(dtype)


@njit(**PJIT)
def _store(parts, gw):
    """``gw`` (out, C/g, kh, kw) = the sum over ``parts`` (copies, groups, og, k), added in
    float64; a row of ``parts`` is ordered (ky, kx, c), one of ``gw`` (c, ky, kx)."""
    c_out, cg, kh, kw = gw.shape
    copies, groups, og, k = parts.shape
    taps = kh * kw
    g2 = gw.reshape(c_out, cg * taps)
    for o in prange(c_out):
        gi, j = o // og, o % og
        for tap in range(taps):
            for c in range(cg):
                s = 0.0
                for t in range(copies):
                    s += np.float64(parts[t, gi, j, tap * cg + c])
                g2[o, c * taps + tap] = s


@njit(**JIT)
def _im2col_rows(x, n0, n1, oy0, oy1, wo, kh, kw, sh, sw, ph, pw, dh, dw, c0, cg, col):
    """im2col rows of images ``n0 .. n1`` (rows ``oy0 .. oy1`` of each) one after another."""
    per = (oy1 - oy0) * wo
    for n in range(n0, n1):
        r = (n - n0) * per
        _im2col(x, n, oy0, oy1, wo, kh, kw, sh, sw, ph, pw, dh, dw, c0, cg, col[r : r + per])


@njit(**PJIT)
def _by_rows(x, gy, acc, wide, scratch, kh, kw, sh, sw, ph, pw, dh, dw, groups, images,
             rows_per_tile, source, flush_rows):  # fmt: skip
    """Thread ``t`` sums its contiguous run of work items (``images`` whole images, or a tile
    of ``rows_per_tile`` rows of one) into ``acc[t]`` (groups, og, k), float32, BLAS
    accumulating; into ``wide[t]`` (float64) every FLUSH_ROWS rows where ``wide`` has rows."""
    n_img, ho = gy.shape[0], gy.shape[1]
    tiles = (ho + rows_per_tile - 1) // rows_per_tile
    items = ((n_img + images - 1) // images) * tiles
    threads = acc.shape[0]
    flushing = wide.shape[0] > 0
    for t in prange(threads):
        first, last = t * items // threads, (t + 1) * items // threads
        if last == first:
            acc[t][...] = 0.0
        beta = np.float32(0.0)
        since = 0
        if flushing:
            wide[t][...] = 0.0
        for item in range(first, last):
            n0 = (item // tiles) * images
            n1 = min(n_img, n0 + images)
            oy0 = (item % tiles) * rows_per_tile
            oy1 = min(ho, oy0 + rows_per_tile)
            if source == SOURCE_SHIFTED:
                _item_shifted(x, gy, acc[t], scratch[t], n0, oy0, oy1, kh, kw, ph, pw, dh, dw,
                              groups, rows_per_tile, beta)  # fmt: skip
            else:
                _item_columns(x, gy, acc[t], scratch[t], n0, n1, oy0, oy1, kh, kw, sh, sw, ph,
                              pw, dh, dw, groups, source, beta)  # fmt: skip
            since += (n1 - n0) * (oy1 - oy0) * gy.shape[2]
            beta = np.float32(1.0)
            if flushing and (since >= flush_rows or item == last - 1):
                _add_into(wide[t], acc[t])
                beta = np.float32(0.0)
                since = 0


@njit(**JIT)
def _add_into(dst, src):
    d, s = dst.reshape(-1), src.reshape(-1)
    for i in range(d.size):
        d[i] += s[i]


@njit(**JIT)
def _item_columns(x, gy, acc, scratch, n0, n1, oy0, oy1, kh, kw, sh, sw, ph, pw, dh, dw,
                  groups, source, beta):  # fmt: skip
    """One work item of ``_by_rows`` from im2col rows (or, direct, the input rows)."""
    c_in = x.shape[3]
    _, ho, wo, c_out = gy.shape
    cg, og = c_in // groups, c_out // groups
    k = kh * kw * cg
    m = (n1 - n0) * (oy1 - oy0) * wo
    r0 = (n0 * ho + oy0) * wo
    for gi in range(groups):
        g0, c0 = r0 * c_out + gi * og, gi * og * k
        if source == SOURCE_DIRECT:
            gemm_tn(og, k, m, gy, g0, c_out, x, r0 * c_in + gi * cg, c_in, acc, c0, k, beta)
        else:
            col = scratch[: m * k].reshape(m, k)
            _im2col_rows(x, n0, n1, oy0, oy1, wo, kh, kw, sh, sw, ph, pw, dh, dw, gi * cg, cg, col)
            gemm_tn(og, k, m, gy, g0, c_out, scratch, 0, k, acc, c0, k, beta)


@njit(**JIT)
def _item_shifted(x, gy, acc, scratch, n, oy0, oy1, kh, kw, ph, pw, dh, dw, groups,
                  rows_per_tile, beta):  # fmt: skip
    """One work item of ``_by_rows`` for a stride-1 layer: the tile's input rows copied once,
    zero-padded to width ``wp``, and its ``gy`` rows widened to ``wp`` with zeros; each tap's
    block of the gradient is then the padded rows shifted by the tap, transposed, times the
    widened ``gy`` (the zeros drop the extra columns)."""
    _, h, w, c_in = x.shape
    _, ho, wo, c_out = gy.shape
    cg, og = c_in // groups, c_out // groups
    k = kh * kw * cg
    wp = w + 2 * pw
    rows = oy1 - oy0
    xp_rows = (rows_per_tile + dh * (kh - 1)) * wp + dw * (kw - 1) + 1
    xp = scratch[: xp_rows * c_in].reshape(xp_rows, c_in)
    at = xp_rows * c_in
    gyw = scratch[at : at + rows_per_tile * wp * c_out].reshape(-1, c_out)
    xp[:] = 0.0
    for r in range(rows + dh * (kh - 1)):
        iy = oy0 - ph + r
        if 0 <= iy < h:
            for ix in range(w):
                for c in range(c_in):
                    xp[r * wp + pw + ix, c] = x[n, iy, ix, c]
    for r in range(rows):
        for ox in range(wp):
            if ox < wo:
                for c in range(c_out):
                    gyw[r * wp + ox, c] = gy[n, oy0 + r, ox, c]
            else:
                for c in range(c_out):
                    gyw[r * wp + ox, c] = 0.0
    m = rows * wp
    for gi in range(groups):
        for ky in range(kh):
            for kx in range(kw):
                shift = ky * dh * wp + kx * dw
                tap = (ky * kw + kx) * cg
                gemm_tn(
                    og, cg, m, scratch, at + gi * og, c_out, scratch, shift * c_in + gi * cg,
                    c_in, acc, gi * og * k + tap, k, beta,
                )  # fmt: skip


@njit(**PJIT)
def _by_blocks(x, gy, acc, wide, col, kh, kw, sh, sw, ph, pw, dh, dw, groups, images,
               call_rows, block_k, block_out, source, flush_rows):  # fmt: skip
    """The batch a chunk of ``images`` at a time: its im2col rows built by all threads into
    ``col`` (groups, rows, k), then BLOCK_OUT x BLOCK_K blocks of ``acc`` (groups, og, k)
    shared out among the threads, each summing the chunk's rows ``call_rows`` per BLAS call;
    ``acc`` goes into ``wide`` (float64, when it has rows) every FLUSH_ROWS rows or so."""
    n_img, h, w, c_in = x.shape
    _, ho, wo, c_out = gy.shape
    cg, og = c_in // groups, c_out // groups
    k = kh * kw * cg
    pixels = ho * wo
    kblocks = (k + block_k - 1) // block_k
    oblocks = (og + block_out - 1) // block_out
    blocks = groups * kblocks * oblocks
    flushing = wide.shape[0] > 0
    if flushing:
        wide[...] = 0.0
    since = 0  # rows summed in ``acc`` since it last went into ``wide``
    for n0 in range(0, n_img, images):
        n1 = min(n_img, n0 + images)
        m = (n1 - n0) * pixels
        r0 = n0 * pixels
        if source == SOURCE_IM2COL:
            for j in prange((n1 - n0) * groups):
                n, gi = n0 + j // groups, j % groups
                at = (gi * m + (n - n0) * pixels) * k
                _im2col(x, n, 0, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw, gi * cg, cg,
                        col[at : at + pixels * k].reshape(pixels, k))  # fmt: skip
        for b in prange(blocks):
            gi = b // (kblocks * oblocks)
            k0 = (b // oblocks) % kblocks * block_k
            o0 = b % oblocks * block_out
            kb, ob = min(k, k0 + block_k) - k0, min(og, o0 + block_out) - o0
            at = (gi * og + o0) * k + k0
            for c0 in range(0, m, call_rows):
                rows = min(m, c0 + call_rows) - c0
                beta = np.float32(1.0) if c0 > 0 or since > 0 else np.float32(0.0)
                g0 = (r0 + c0) * c_out + gi * og + o0
                if source == SOURCE_DIRECT:
                    x0 = (r0 + c0) * c_in + gi * cg + k0
                    gemm_tn(ob, kb, rows, gy, g0, c_out, x, x0, c_in, acc, at, k, beta)
                else:
                    col0 = (gi * m + c0) * k + k0
                    gemm_tn(ob, kb, rows, gy, g0, c_out, col, col0, k, acc, at, k, beta)
        since += m
        if flushing and (since >= flush_rows or n1 == n_img):
            for gi in prange(groups):
                _add_into(wide[gi], acc[gi])
            since = 0
