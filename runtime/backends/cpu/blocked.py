"""Direct convolution on cnnc's own register-blocked micro-kernel (microkernel.py), NHWC.

No im2col and no BLAS: the input is read in place (a zero-padded copy where the layer pads)
and each tile of MR output pixels x NR output channels accumulates over every kernel tap
and input channel in registers, then leaves through the usual epilogue (bias, residual,
activation). With stride 1, pixels are numbered across the padded width, so a tile may run
over a row's end into columns that are computed and dropped, and every tile is full-width;
with larger strides a tile stays within one output row.

Weights are packed once per layer into panels of NR output channels (zero-padded), rows
(ky, kx, c). Work items are (block of panels, run of tiles), block-major like Winograd's, so
that a thread keeps one block of weights in its cache.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..codes import HARDSIGMOID, HARDSWISH, LEAKY_RELU, SIGMOID, SILU
from . import microkernel as mk
from .activations import JIT, PJIT, clamp_bounds
from .aligned import aligned_copy
from .bounds import MICRO_TILE, checking
from .elementwise import run_call
from .extents import conv_tile_out_fits
from .microkernel import MR, NR, conv_tile_out

F4 = 4
#: Per-thread scratch: the MR output offsets of a tile (int64, two floats each).
SCRATCH_FLOATS = 2 * MR


def pack_panels(wmat: np.ndarray) -> np.ndarray:
    """``conv``'s packed weights (1, kh*kw*C, K) as (ceil(K / NR), kh*kw*C, NR) panels."""
    _, rows, k_out = wmat.shape
    panels = -(-k_out // NR)
    padded = np.zeros((rows, panels * NR), np.float32)
    padded[:, :k_out] = wmat[0]
    return aligned_copy(padded.reshape(rows, panels, NR).transpose(1, 0, 2))


def unpack_panels(panels: np.ndarray, k_out: int) -> np.ndarray:
    """``pack_panels``'s input again, (1, rows, k_out), from its panels."""
    n_panels, rows, _ = panels.shape
    flat = panels.transpose(1, 0, 2).reshape(rows, n_panels * NR)[:, :k_out]
    return np.ascontiguousarray(flat)[None]


def applies(groups: int) -> bool:
    return groups == 1


def tile_count(x_shape, out_shape, sh: int, sw: int, pw: int) -> int:
    """Tiles of ``blocked_conv`` for these shapes (as it numbers them)."""
    n_img, _, w, _ = x_shape
    _, ho, wo, _ = out_shape
    if sh == 1 and sw == 1:
        return n_img * -(-((ho - 1) * (w + 2 * pw) + wo) // MR)
    return n_img * ho * -(-wo // MR)


@njit(**JIT)
def _pad_row(x, xp, ph, pw, n, y):
    """Row y of ``xp``: row y - ph of ``x`` between ``pw`` zero columns, or zeros."""
    _, h, w, c = x.shape
    wp = xp.shape[2]
    row = xp[n, y]
    if y < ph or y >= ph + h:
        for i in range(wp):
            for k in range(c):
                row[i, k] = 0.0
        return
    for i in range(pw):
        for k in range(c):
            row[i, k] = 0.0
            row[wp - 1 - i, k] = 0.0
    src = x[n, y - ph]
    for i in range(w):
        for k in range(c):
            row[pw + i, k] = src[i, k]


#: Activations the micro-kernel applies in its registers after the clamp.
_POST = {
    SILU: mk.POST_SILU,
    SIGMOID: mk.POST_SIGMOID,
    HARDSWISH: mk.POST_HARDSWISH,
    HARDSIGMOID: mk.POST_HARDSIGMOID,
    LEAKY_RELU: mk.POST_LEAKY,
}


def post_code(act: int) -> tuple:
    """(post, rest): ``act`` as the micro-kernels' in-register activation (microkernel.POST_*)
    where they have it, else POST_NONE and ``act`` itself for a pass after the kernel."""
    if act in _POST:
        return _POST[act], 0
    return mk.POST_NONE, act


def blocked_call(
    x, xp, panels, bias, res, out, scratch, kh, kw, sh, sw, ph, pw, dh, dw, act, alpha, beta,
    per_item, blocks, tiles_outer,
) -> tuple:  # fmt: skip
    """``blocked_kernel`` with activation ``act`` (scalars ``alpha``, ``beta``), as a call for
    ``elementwise.run_call``: in the micro-kernel's registers where it can (a clamp, or one of
    ``_POST``), else as a pass over the output after it (GELU, ELU, tanh, ... : rare after a
    convolution)."""
    lo, hi, rest = clamp_bounds(act, alpha, beta)
    post, rest = post_code(rest)
    args = (
        x, xp, panels, bias, res, out, scratch, kh, kw, sh, sw, ph, pw, dh, dw, lo, hi, post,
        np.float32(alpha), per_item, blocks, tiles_outer,
    )  # fmt: skip
    return blocked_kernel, args, (out, rest, alpha, beta) if rest else None


def blocked_conv(*args) -> None:
    """Run ``blocked_call(*args)``."""
    run_call(blocked_call(*args))


@njit(**PJIT)
def blocked_kernel(
    x, xp, panels, bias, res, out, scratch, kh, kw, sh, sw, ph, pw, dh, dw, lo, hi, post, slope,
    per_item, blocks, tiles_outer,
):  # fmt: skip
    """Convolution of the NHWC input ``x`` with ``panels`` (``pack_panels``), padded first
    into ``xp`` (N, H + 2 ph, W + 2 pw, C) where ph or pw is not 0 (``xp`` is ``x`` itself
    otherwise). ``per_item`` tiles per work item, ``blocks`` blocks of panels; ``scratch``
    holds one row of at least SCRATCH_FLOATS per thread; ``lo``, ``hi``, ``post``, ``slope``
    the epilogue as ``microkernel.conv_tile_out`` takes it. One kernel for both steps: each
    parallel kernel costs about a second to compile on a cold cache. ``tiles_outer``: each
    tile runs through all panels of its block (see ``tiles_outer``), else each panel through
    all tiles of its run."""
    n_img, hp, wp, c_in = xp.shape
    if ph or pw:
        for item in prange(n_img * hp):
            _pad_row(x, xp, ph, pw, item // hp, item % hp)
    _, ho, wo, k_out = out.shape
    n_panels = panels.shape[0]
    # Undilated along x, a kernel row's taps read kw * C consecutive floats, in the order of
    # the packed weights' rows (ky, kx, c): one long run per kernel row instead of kw short
    # ones (VGG's first layer: runs of 9 floats instead of 3).
    row_taps = dw == 1
    ntaps = kh if row_taps else kh * kw
    span = kw * c_in if row_taps else c_in
    offsets = np.empty(ntaps, np.intp)
    for ky in range(kh):
        if row_taps:
            offsets[ky] = ky * dh * wp * c_in * F4
        else:
            for kx in range(kw):
                offsets[ky * kw + kx] = ((ky * dh) * wp + kx * dw) * c_in * F4
    flat = sh == 1 and sw == 1
    # stride 1: one segment per image, pixels numbered over the padded width (wq = wp);
    # otherwise one segment per output row (wq = wo)
    wq = wp if flat else wo
    seg_len = (ho - 1) * wp + wo if flat else wo
    segs = 1 if flat else ho
    per_seg = (seg_len + MR - 1) // MR
    tiles = n_img * segs * per_seg
    runs = (tiles + per_item - 1) // per_item
    per_block = (n_panels + blocks - 1) // blocks
    items = runs * blocks
    threads = scratch.shape[0]
    step = sw * c_in * F4
    # the tile's geometry as one argument: a call of over 30 arguments compiles to a call
    # with *args, which Numba does not inline
    geometry = (segs, per_seg, seg_len, flat, wo, wq, hp, wp, sh, sw, c_in, ntaps, span, step,
                ho, k_out)  # fmt: skip
    # the arrays themselves go into the parallel loop, never their addresses: ``offsets`` is
    # this function's own, and Numba frees an array after its last use in the code, so an
    # address taken here would point at freed memory while the tiles read it
    arrays = (xp, panels, offsets, out, res, bias)
    for thr in prange(threads):
        rows = scratch[thr, : 2 * MR].view(np.int64)
        _items(
            thr * items // threads, (thr + 1) * items // threads, runs, per_item, tiles,
            per_block, n_panels, tiles_outer, geometry, arrays, rows, lo, hi, post, slope,
        )  # fmt: skip


@njit(**JIT)
def _items(
    first, last, runs, per_item, tiles, per_block, n_panels, tiles_outer, geometry, arrays, rows,
    lo, hi, post, slope,
):  # fmt: skip
    """One thread's work items ``first``..``last - 1`` of ``blocked_kernel``. A function of
    its own rather than the parallel loop's body: Numba's parallel passes then leave it
    alone, which took a second off its compile on a cold cache. ``arrays``' addresses are
    taken here, once: the caller's references keep them alive until this returns, and a view
    per tile or pixel would be an atomic update of the array's reference count, a cache line
    the threads pass back and forth."""
    xp, panels, offsets, out, res, bias = arrays
    addresses = (
        xp.ctypes.data, panels.ctypes.data, offsets.ctypes.data, rows.ctypes.data,
        out.ctypes.data, res.ctypes.data if res.size > 0 else np.uint64(0), bias.ctypes.data,
    )  # fmt: skip
    check = checking()
    ntaps, span = geometry[11], geometry[12]
    for item in range(first, last):
        p0 = (item // runs) * per_block
        p1 = min(n_panels, p0 + per_block)
        t0 = (item % runs) * per_item
        t1 = min(tiles, t0 + per_item)
        # one loop nest for both orders: two copies of the inlined tile cost a cold start a
        # second of compiling
        n_outer = t1 - t0 if tiles_outer else p1 - p0
        n_inner = p1 - p0 if tiles_outer else t1 - t0
        for o in range(n_outer):
            for i in range(n_inner):
                t = t0 + (o if tiles_outer else i)
                panel = p0 + (i if tiles_outer else o)
                at = panel * ntaps * span * NR * F4
                # checked mode: the tile's extents first, out of line (inside the tile they
                # cost 2% of a 1x1 layer's time even when off)
                if check and not _tile_fits(geometry, addresses, at, panel, t, rows, arrays):
                    return
                _tile(geometry, addresses, at, panel, t, rows, lo, hi, post, slope)


#: Weight blocks up to this size run tile by tile through all their panels.
TILES_OUTER_BYTES = 32 * 1024


def tiles_outer(w_rows: int, k_out: int, blocks: int) -> bool:
    """Small weight blocks (few input channels: MobileNet's 1x1 expansions, 16->96 at 112x112
    0.71 -> 0.59 ms) stay in L1 while each tile runs through all of them, writing whole output
    pixels at once; large ones stream once per run of tiles (whose inputs stay in L2)."""
    panels = -(-k_out // NR)
    per_block = -(-panels // blocks)
    return per_block * w_rows * NR * F4 <= TILES_OUTER_BYTES


@njit(inline="always", **JIT)
def _tile(geometry, addresses, panel_offset, panel, t, rows, lo, hi, post, slope):
    """Tile ``t`` of the numbering against weight panel ``panel`` (``panel_offset`` bytes
    into the panels): the micro-kernel with its epilogue and activation into ``out``."""
    args = _tile_args(geometry, addresses, panel_offset, panel, t, rows)
    conv_tile_out(*args, lo, hi, post, slope)


@njit(**JIT)
def _tile_fits(geometry, addresses, panel_offset, panel, t, rows, arrays):
    """Whether ``_tile``'s call of the micro-kernel stays inside ``arrays`` (extents.py)."""
    xp, panels, offsets, out, res, bias = arrays
    args = _tile_args(geometry, addresses, panel_offset, panel, t, rows)
    return conv_tile_out_fits(MICRO_TILE, *args, xp, offsets, panels, rows, out, res, bias)


@njit(inline="always", **JIT)
def _tile_args(geometry, addresses, panel_offset, panel, t, rows):
    """``conv_tile_out``'s arguments up to the epilogue's, for tile ``t`` and ``panel``.
    ``rows`` gets each tile row's offset in ``out``, or -1 for columns past the output's
    width (stride 1's padding columns). The pixel's row and column advance by increments: two
    integer divisions per row cost more than the multiply-adds of a 1x1 layer with 16 input
    channels."""
    segs, per_seg, seg_len, flat, wo, wq, hp, wp, sh, sw, c_in, ntaps, span, step, ho, k_out = (
        geometry
    )
    x_at, panels_at, offsets_at, rows_at, out_at, res_at, bias_at = addresses
    n = t // (segs * per_seg)
    r = t - n * (segs * per_seg)
    seg = r // per_seg
    start = (r - seg * per_seg) * MR
    count = min(MR, seg_len - start)
    if flat:
        q0 = start
        a = x_at + (n * hp * wp + q0) * c_in * F4
    else:
        q0 = seg * wo + start
        a = x_at + ((n * hp + seg * sh) * wp + start * sw) * c_in * F4
    k0 = panel * NR
    nk = min(k_out, k0 + NR) - k0
    oy = q0 // wq
    ox = q0 - oy * wq
    for i in range(MR):
        rows[i] = ((n * ho + oy) * wo + ox) * k_out + k0 if i < count and ox < wo else -1
        ox += 1
        if flat and ox == wq:
            ox = 0
            oy += 1
    return (ntaps, span, a, step, offsets_at, panels_at + panel_offset, count, rows_at, out_at,
            res_at, bias_at + k0 * F4, nk)  # fmt: skip
