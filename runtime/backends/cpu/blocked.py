"""Direct convolution on cnnc's own register-blocked micro-kernel (microkernel.py), NHWC.

No im2col and no BLAS: the input is read in place (a zero-padded copy where the layer pads)
and each tile of MR output pixels x NR output channels accumulates over every kernel tap
and input channel in registers, then leaves through the usual epilogue (bias, residual,
activation). Tiles run over the real output pixels in order, across rows and images: each
tile gathers its MR pixels' input addresses into a table (``conv_tile_out``), so only the
last tile of the layer is partial. (Before, pixels were numbered across the padded width
with stride 1, a tile running over a row's end into columns computed and dropped, and
within one output row otherwise: a 7x7 map took 6 tiles of 12 pixels with stride 1 and 7
with stride 2, where 5 hold its 49 pixels; a 14-pixel row took 2.) Numbered across images,
a run of tiles at batch > 1 takes the pixels of several images through each weight panel.

Weights are packed once per layer into panels of NR output channels (zero-padded), rows
(ky, kx, c). Work items are (block of panels, run of tiles), block-major like Winograd's, so
that a thread keeps one block of weights in its cache.
"""

from __future__ import annotations

import functools

import numpy as np
from llvmlite import ir
from numba import carray, cfunc, njit, prange, types
from numba.extending import intrinsic

from ..codes import HARDSIGMOID, HARDSWISH, LEAKY_RELU, SIGMOID, SILU
from . import microkernel as mk
from .activations import JIT, PJIT, clamp_bounds
from .aligned import aligned_empty, spread_4k
from .bounds import MICRO_TILE, SLOTS
from .caches import PAGE_BYTES, from_memory
from .elementwise import run_call
from .extents import conv_tile_out_fits
from .microkernel import (
    LANES,
    MR,
    MR_SMALL,
    NARROW_MR,
    NR,
    conv_tile_out,
    conv_tile_out_narrow,
    conv_tile_out_small,
    prefetch_lines,
)

F4, I8 = 4, 8
#: The int64 parameters ``items_kernel``'s work items read (``_fill_params``): seven counts,
#: the tile geometry (GEOMETRY), the addresses of the six arrays and of ``narrow_kernel``'s
#: C function (0 where the layer has no narrow panel), then the bytes of a tile's input and
#: output that each tile hints ahead (``stream_hints``).
GEOMETRY = 20
N_PARAMS = 7 + GEOMETRY + 9
# _fill_params writes the addresses at constant indices 27-32 (see there): keep them in step
assert 7 + GEOMETRY == 27, "_fill_params' address slots follow the geometry"
#: Per-thread scratch: the output offsets of a tile, its input addresses (MR each, NARROW_MR
#: for a narrow tile: ``_tile_table``), then ``_items``' N_PARAMS parameters (int64, two
#: floats each).
ROWS = 2 * NARROW_MR
SCRATCH_FLOATS = 2 * (ROWS + N_PARAMS)


def pack_panels(wmat: np.ndarray) -> np.ndarray:
    """``conv``'s packed weights (1, kh*kw*C, K) as (ceil(K / NR), kh*kw*C, NR) panels, the
    last zero-padded past K. One pass over the weights: a zero-padded copy first, then its
    panels, took three (new memory each time, page faults included: 18-95 ms against 17-19
    for ResNet-18's 11 M weights, first packing of a process, 2-core Zen 4)."""
    _, rows, k_out = wmat.shape
    full, rest = divmod(k_out, NR)
    out = aligned_empty((full + (rest > 0), rows, NR))
    out[:full] = wmat[0, :, : full * NR].reshape(rows, full, NR).transpose(1, 0, 2)
    if rest:
        out[full, :, rest:] = 0.0
        out[full, :, :rest] = wmat[0, :, full * NR :]
    return out


def unpack_panels(panels: np.ndarray, k_out: int) -> np.ndarray:
    """``pack_panels``'s input again, (1, rows, k_out), from its panels."""
    n_panels, rows, _ = panels.shape
    flat = panels.transpose(1, 0, 2).reshape(rows, n_panels * NR)[:, :k_out]
    return np.ascontiguousarray(flat)[None]


def applies(groups: int) -> bool:
    return groups == 1


def pixel_stride(c_in: int, kw: int, dw: int) -> int:
    """Floats from one pixel to the next in the input the kernel reads (``xp``): ``c_in``,
    spread where a tap is one kernel position (1x1 kernels, dilated along x) and ``c_in``
    floats are a multiple of 4 KiB (``aligned.spread_4k``): a tile reads its MR pixels at
    the same channel. The layer then reads a copy with the wider stride, as it reads a
    padded copy where it pads."""
    return spread_4k(c_in) if kw == 1 or dw != 1 else c_in


def padded_shape(x_shape, ph: int, pw: int, kw: int, dw: int):
    """The shape of the copy ``blocked_kernel`` reads (``xp``): (N, H + 2 ph, W + 2 pw,
    ``pixel_stride``), or None where it reads the input ``x_shape`` itself."""
    n, h, w, c = x_shape
    stride = pixel_stride(c, kw, dw)
    if ph or pw or stride != c:
        return n, h + 2 * ph, w + 2 * pw, stride
    return None


def tile_count(out_shape) -> int:
    """Tiles of ``blocked_conv`` with this output: MR output pixels each, numbered across
    rows and images (whatever the stride and padding)."""
    n_img, ho, wo, _ = out_shape
    return -(-n_img * ho * wo // MR)


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
        np.float32(alpha), per_item, blocks, tiles_outer, items_kernel().address,
        narrow_kernel().address if has_narrow_panel(out.shape[3]) else 0,
        *stream_hints(x, xp, out, kh, kw, sh, sw, blocks),
        0,
    )  # fmt: skip
    return blocked_run, args, (out, rest, alpha, beta) if rest else None


def reading_nchw(args: tuple, x_nchw: np.ndarray) -> tuple | None:
    """Two calls in place of ``blocked_call``'s arguments ``args``, where the layer copies its
    input into a padded buffer anyway (``xp``, its pixels C floats apart): ``pad_nchw`` from
    the NCHW ``x_nchw`` into that buffer, then ``blocked_kernel`` on it without its own copy.
    The input's conversion to NHWC is saved (``CpuBackend.replay``: a network's first layer
    on the caller's array). None where the layer reads its input in place, or the shapes
    differ. A kernel of its own rather than a branch of ``_pad_row``: that made ResNet-18's
    first run (no replay) 0.3 s longer to compile."""
    x, xp = args[0], args[1]
    n, h, w, c = x.shape
    ph, pw = args[11], args[12]
    if xp is x or not (ph or pw) or xp.shape[3] != c or x_nchw.shape != (n, c, h, w):
        return None
    return (pad_nchw, (x_nchw, xp, ph, pw)), (*args[:-1], 1)


@njit(**PJIT)
def pad_nchw(x, xp, ph, pw):
    """The NCHW ``x`` into ``xp`` (N, H + 2 ph, W + 2 pw, C) between zeros, rows shared out
    across the threads."""
    n_img, c, h, w = x.shape
    hp, wp = xp.shape[1], xp.shape[2]
    for r in prange(n_img * hp):
        n, y = r // hp, r % hp
        row = xp[n, y]
        inside = ph <= y < ph + h
        for i in range(wp):
            if not inside or i < pw or i >= pw + w:
                for k in range(c):
                    row[i, k] = 0.0
        if inside:
            for k in range(c):
                plane = x[n, k, y - ph]
                for i in range(w):
                    row[pw + i, k] = plane[i]


def stream_hints(x, xp, out, kh, kw, sh, sw, blocks: int) -> tuple[int, int]:
    """The bytes of a tile's input and of its output (MR pixels) that each tile hints into
    L2 for the tile HINT_AHEAD on (``_hint_ahead``), 0 for none: in a layer that streams from
    memory (``caches.from_memory``), a stream of at least a page per tile. The hardware's
    prefetchers start again at each 4 KiB page, and a tile of 144-channel pixels crosses one
    or two: a 144 -> 32 1x1 at 56x56, batch 8, 2 threads, 2-core Zen 4, 1.64-2.07
    -> 1.25-1.39 ms with its input hinted, a 24 -> 144 1.40-2.18 -> 1.06-1.25 with its
    output. Narrower streams (32 -> 16 at 112x112) lost: the hardware follows them, and the
    hints only take load slots. The input only where a tile's pixels are consecutive in it
    (1x1, stride 1, read in place); the output only where a tile writes all its channels
    (one block of panels)."""
    if not from_memory(x.nbytes + out.nbytes):
        return 0, 0
    x_tile, out_tile = MR * x.shape[3] * F4, MR * out.shape[3] * F4
    pointwise = xp is x and kh == kw == sh == sw == 1
    return (x_tile if pointwise and x_tile >= PAGE_BYTES else 0,
            out_tile if blocks == 1 and out_tile >= PAGE_BYTES else 0)  # fmt: skip


#: How many tiles ahead ``_hint_ahead`` hints: two tiles of a 1x1 layer with 144 input
#: channels are about 7000 cycles, far more than a line takes to come from memory.
HINT_AHEAD = 2


@njit(inline="always", **JIT)
def _hint_ahead(at, end, tile_bytes, t, width):
    """Hint into L2 the ``width`` tiles of ``tile_bytes`` each from tile ``t + HINT_AHEAD``
    of the stream at ``at`` (up to ``end``), where ``tile_bytes`` is not 0."""
    if tile_bytes:
        start = min(end, at + (t + HINT_AHEAD) * tile_bytes)
        prefetch_lines(start, min(end, start + width * tile_bytes))


def blocked_conv(*args) -> None:
    """Run ``blocked_call(*args)``."""
    run_call(blocked_call(*args))


def blocked_run(*args) -> None:
    """``blocked_kernel(*args)``; in checked mode (bounds.py) every tile's extents are checked
    first, by ``blocked_fits``, and nothing runs where one fails. The checks are a kernel of
    their own so that a run without them never compiles them: inside the parallel kernel
    they were 3-5 s of a cold start on every machine, checked or not."""
    if SLOTS[0] and not blocked_fits(*args):
        return
    blocked_kernel(*args)


@njit(**JIT)
def _layout(xp, panels, out, scratch, kh, kw, sh, sw, ph, pw, dh, dw, per_item, blocks):
    """How ``blocked_kernel`` numbers its work: (tile geometry, runs of tiles, tiles, panels
    per block, work items, threads). The tap offsets are ``_tap_offsets``'s. Not inlined:
    Numba's array analysis fails on a tuple of shapes returned into a parallel kernel."""
    n_img, hp, wp, stride = xp.shape
    _, ho, wo, k_out = out.shape
    n_panels = panels.shape[0]
    c_in = panels.shape[1] // (kh * kw)
    # Undilated along x, a kernel row's taps read kw * C consecutive floats, in the order of
    # the packed weights' rows (ky, kx, c): one long run per kernel row instead of kw short
    # ones (VGG's first layer: runs of 9 floats instead of 3).
    # (A pixel stride wider than the channels, ``pixel_stride``, breaks the run.)
    row_taps = dw == 1 and stride == c_in
    ntaps = kh if row_taps else kh * kw
    span = kw * c_in if row_taps else c_in
    pixels = n_img * ho * wo
    tiles = (pixels + MR - 1) // MR
    runs = (tiles + per_item - 1) // per_item
    per_block = (n_panels + blocks - 1) // blocks
    # the tile's geometry as one argument: a call of over 30 arguments compiles to a call
    # with *args, which Numba does not inline. Then what ``_live_taps`` needs: the kernel
    # (its row count 0 where the layer does not pad: every tap reads the image), the
    # dilation, the padding and the output rows and columns whose taps all read the image.
    h, w = hp - 2 * ph, wp - 2 * pw
    first_row, first_col = (ph + sh - 1) // sh, (pw + sw - 1) // sw
    last_row = _floor_div(ph + h - 1 - (kh - 1) * dh, sh)
    last_col = _floor_div(pw + w - 1 - (kw - 1) * dw, sw)
    if last_row < first_row:  # no such row
        first_row, last_row = ho, 0
    if last_col < first_col:
        first_col, last_col = wo, 0
    geometry = (pixels, tiles, ho, wo, hp, wp, sh, sw, stride, ntaps, span, k_out,
                kh if ph or pw else 0, kw, dh, dw, ph, pw, first_row * (1 << 32) + last_row,
                first_col * (1 << 32) + last_col)  # fmt: skip
    return geometry, runs, tiles, per_block, runs * blocks, scratch.shape[0]


@njit(inline="always", **JIT)
def _tap_offsets(geometry, kh, kw, dh, dw):
    """Each tap's (or, undilated along x, each kernel row's) byte offset in the input."""
    wp, stride, ntaps = geometry[5], geometry[8], geometry[9]
    offsets = np.empty(ntaps, np.intp)
    for ky in range(kh):
        if ntaps == kh and dw == 1:
            offsets[ky] = ky * dh * wp * stride * F4
        else:
            for kx in range(kw):
                offsets[ky * kw + kx] = ((ky * dh) * wp + kx * dw) * stride * F4
    return offsets


@njit(**PJIT)
def blocked_kernel(
    x, xp, panels, bias, res, out, scratch, kh, kw, sh, sw, ph, pw, dh, dw, lo, hi, post, slope,
    per_item, blocks, tiles_outer, items_at, narrow_at, x_hint, out_hint, padded,
):  # fmt: skip
    """Convolution of the NHWC input ``x`` with ``panels`` (``pack_panels``), padded first into
    ``xp`` (N, H + 2 ph, W + 2 pw, ``pixel_stride``) where ph or pw is not 0 or the stride is wider
    than C (``xp`` is ``x`` itself otherwise). ``per_item`` tiles per work item, ``blocks`` blocks
    of panels; ``scratch`` holds one row of at least SCRATCH_FLOATS per thread; ``lo``, ``hi``,
    ``post``, ``slope`` the epilogue as ``microkernel.conv_tile_out`` takes it. One kernel for both
    steps: each parallel kernel costs about a second to compile on a cold cache. ``tiles_outer``:
    each tile runs through all panels of its block (see ``tiles_outer``), else each panel through
    all tiles of its run. ``items_at``: the address of ``items_kernel()``, which each thread calls
    for its share of the work items; ``narrow_at`` that of ``narrow_kernel()`` where the last
    panel is narrow (``has_narrow_panel``), else 0; ``x_hint`` and ``out_hint`` as
    ``stream_hints`` returns them; ``padded`` 1 where ``xp`` holds the padded input already
    (``reading_nchw``), which ``x`` then does not."""
    n_img, hp = xp.shape[:2]
    geometry, runs, tiles, per_block, items, threads = _layout(
        xp, panels, out, scratch, kh, kw, sh, sw, ph, pw, dh, dw, per_item, blocks
    )
    offsets = _tap_offsets(geometry, kh, kw, dh, dw)
    shares = (runs, per_item, tiles, per_block, panels.shape[0], 1 if tiles_outer else 0, post)
    # the arrays themselves go into the parallel loop, never their addresses: ``offsets`` is
    # this function's own, and Numba frees an array after its last use in the code, so an
    # address taken here would point at freed memory while the tiles read it
    arrays = (xp, panels, offsets, out, res, bias)
    padded_rows = n_img * hp
    # two passes of one parallel loop, the padding's rows (where the layer pads), then the
    # tiles: a second parallel loop compiled into four more modules (0.5 s of a cold start)
    for phase in range(0 if (ph or pw or xp.shape[3] != x.shape[3]) and not padded else 1, 2):
        for thr in prange(threads):
            if phase == 0:
                for row in range(thr * padded_rows // threads, (thr + 1) * padded_rows // threads):
                    _pad_row(x, xp, ph, pw, row // hp, row % hp)
            else:
                # MR output offsets, MR input addresses, then the parameters (int64)
                rows_at = scratch.ctypes.data + thr * scratch.strides[0]
                params_at = rows_at + ROWS * I8
                _fill_params(carray(int64_at(params_at), N_PARAMS), shares, geometry, arrays,
                             (narrow_at, x_hint, out_hint))  # fmt: skip
                call_items(
                    items_at, thr * items // threads, (thr + 1) * items // threads, params_at,
                    rows_at, lo, hi, slope,
                )  # fmt: skip


@njit(inline="always", **JIT)
def _fill_params(params, shares, geometry, arrays, calls):
    """``params`` as ``_items`` reads them; the addresses are taken in the parallel loop, where
    ``arrays`` are held until the thread's work is done."""
    for i in range(7):
        params[i] = shares[i]
    for i in range(GEOMETRY):
        params[7 + i] = geometry[i]
    xp, panels, offsets, out, res, bias = arrays
    # constant indices (7 + GEOMETRY on): computed ones wrote nothing in the parallel loop
    params[27] = xp.ctypes.data
    params[28] = panels.ctypes.data
    params[29] = offsets.ctypes.data
    params[30] = out.ctypes.data
    params[31] = res.ctypes.data if res.size > 0 else 0
    params[32] = bias.ctypes.data
    params[33], params[34], params[35] = calls


@njit(**JIT)
def blocked_fits(
    x, xp, panels, bias, res, out, scratch, kh, kw, sh, sw, ph, pw, dh, dw, lo, hi, post, slope,
    per_item, blocks, tiles_outer, items_at, narrow_at, x_hint, out_hint, padded,
):  # fmt: skip
    """Whether every tile ``blocked_kernel`` would run with these arguments stays inside its
    arrays (extents.py), the first fault recorded otherwise: each panel against each tile,
    the pairs the kernel's work items share out (pairs of tiles on a narrow panel)."""
    geometry, _, tiles, _, _, _ = _layout(
        xp, panels, out, scratch, kh, kw, sh, sw, ph, pw, dh, dw, per_item, blocks
    )
    offsets = _tap_offsets(geometry, kh, kw, dh, dw)
    arrays = (xp, panels, offsets, out, res, bias)
    rows = scratch[0, : 2 * ROWS].view(np.int64)  # output offsets, then input addresses
    addresses = _addresses(arrays, rows)
    ntaps, span = geometry[9], geometry[10]
    n_panels = panels.shape[0]
    for panel in range(n_panels):
        at = panel * ntaps * span * NR * F4
        for t in range(tiles):
            first = t - t % per_item  # the run's first tile
            width = _narrow_width(
                narrow_at, panel, n_panels, t, first, min(tiles, first + per_item)
            )
            if width == 2:
                live = _tile_table(geometry, addresses, t, rows, 2)
                args = _tile_args(geometry, addresses, at, panel, live, 2)
                pixel_rows, out_rows = rows[NARROW_MR:], rows[:NARROW_MR]
                if not conv_tile_out_fits(MICRO_TILE, NARROW_MR, *args, xp, offsets, panels,
                                          pixel_rows, out_rows, out, res, bias):  # fmt: skip
                    return False
            elif width == 1 and not _tile_fits(geometry, addresses, at, panel, t, rows, arrays):
                return False
    return True


@njit(inline="always", **JIT)
def _narrow_width(narrow_at, panel, n_panels, t, first, end):
    """How tile ``t`` of a run of tiles ``first``..``end - 1`` meets ``panel``: 1 as one tile,
    2 as the first of a pair through the narrow tile (the last panel, where ``narrow_at`` is
    not 0: tiles paired from the run's first, the last alone where the run is odd), 0 not
    at all (the second of a pair)."""
    if narrow_at == 0 or panel != n_panels - 1:
        return 1
    if (t - first) % 2 == 1:
        return 0
    return 2 if t + 1 < end else 1


@njit(inline="always", **JIT)
def _addresses(arrays, rows):
    """The addresses of ``blocked_kernel``'s arrays and of a thread's ``rows``."""
    xp, panels, offsets, out, res, bias = arrays
    return (
        xp.ctypes.data, panels.ctypes.data, offsets.ctypes.data, rows.ctypes.data,
        out.ctypes.data, res.ctypes.data if res.size > 0 else np.uint64(0), bias.ctypes.data,
    )  # fmt: skip


def _items(first, last, params_at, rows_at, lo, hi, slope):
    """One thread's work items ``first``..``last - 1`` of ``blocked_kernel``, with the
    parameters at ``params_at`` (``_fill_params``) and 2 MR int64 of scratch at ``rows_at``.
    Compiled on its own as a C function (``items_kernel``) that the parallel kernel calls by
    address: linked into it, as a Numba function, the micro-kernel's code was optimised and
    compiled again in each of the four modules of a parallel loop (1-2 s of a cold start).
    Work on addresses, taken once per thread: a view per tile or pixel would be an atomic
    update of the array's reference count, a cache line the threads pass back and forth."""
    p = carray(int64_at(params_at), N_PARAMS)
    rows = carray(int64_at(rows_at), ROWS)
    runs, per_item, tiles, per_block, n_panels, tiles_outer, post = (
        p[0], p[1], p[2], p[3], p[4], p[5] != 0, p[6]
    )  # fmt: skip
    geometry = (p[7], p[8], p[9], p[10], p[11], p[12], p[13], p[14], p[15], p[16], p[17], p[18],
                p[19], p[20], p[21], p[22], p[23], p[24], p[25], p[26])  # fmt: skip
    addresses = (p[27], p[28], p[29], rows_at, p[30], p[31], p[32])
    narrow_at, x_hint, out_hint = p[33], p[34], p[35]
    ntaps, span = geometry[9], geometry[10]
    x_end = p[27] + geometry[0] * geometry[8] * F4  # where hints stop (``stream_hints``)
    out_end = p[30] + geometry[0] * geometry[11] * F4
    for item in range(first, last):
        p0 = (item // runs) * per_block
        p1 = min(n_panels, p0 + per_block)
        t0 = (item % runs) * per_item
        t1 = min(tiles, t0 + per_item)
        # one loop nest for both orders: two copies of the inlined tile cost a cold start a
        # second of compiling
        n_outer = t1 - t0 if tiles_outer else p1 - p0
        n_inner = p1 - p0 if tiles_outer else t1 - t0
        live = (0, 0)
        for o in range(n_outer):
            for i in range(n_inner):
                t = t0 + (o if tiles_outer else i)
                panel = p0 + (i if tiles_outer else o)
                at = panel * ntaps * span * NR * F4
                width = _narrow_width(narrow_at, panel, n_panels, t, t0, t1)
                if width == 0:  # the second tile of a pair, done with the first
                    continue
                # a tile's table once for all its panels where they are the inner loop (a
                # 16->96 1x1 layer at 112x112 filled it three times per tile); a pair's
                # table (width 2) is its own. One call site each: every copy of these
                # inlined loops is compiled again (a cold start's second).
                if width == 2 or i == 0 or not tiles_outer or live[0] < 0:
                    live = _tile_table(geometry, addresses, t, rows, width)
                    if tiles_outer or o == 0:  # the first pass over these tiles
                        _hint_ahead(p[27], x_end, x_hint, t, width)
                        _hint_ahead(p[30], out_end, out_hint, t, width)
                args = _tile_args(geometry, addresses, at, panel, live, width)
                if width == 2:  # this tile and the next through the narrow tile
                    call_tile(narrow_at, *args, lo, hi, post, slope)
                    live = (-1, -1)  # the rows hold the pair's table now
                else:
                    _tile(args, t, geometry[0], lo, hi, post, slope)


def has_narrow_panel(k_out: int) -> bool:
    """Whether a layer of ``k_out`` channels ends in a panel of LANES channels or fewer,
    which runs through ``narrow_kernel`` (pairs of tiles by one vector)."""
    return 0 < k_out % NR <= LANES and NR > LANES


def _narrow(ntaps, span, pixels_at, offsets_at, b, rows_at, out_at, res_at, bias_at, nk, lo, hi,
            post, slope):  # fmt: skip
    """``conv_tile_out_narrow`` with these arguments (``_tile_args`` of a pair of tiles)."""
    conv_tile_out_narrow(ntaps, span, pixels_at, offsets_at, b, rows_at, out_at, res_at,
                         bias_at, nk, lo, hi, post, slope)  # fmt: skip


@functools.cache
def narrow_kernel():
    """``_narrow`` compiled as a C function on first use (a layer with a narrow panel), so
    that networks without one (ResNets, VGG) never compile it."""
    signature = types.void(*([types.int64] * 10), types.float32, types.float32, types.int64,
                           types.float32)  # fmt: skip
    return cfunc(signature, **JIT)(_narrow)


@functools.cache
def items_kernel():
    """``_items`` compiled as a C function (on first use, then from the disk cache)."""
    signature = types.void(types.int64, types.int64, types.int64, types.int64, types.float32,
                           types.float32, types.float32)  # fmt: skip
    return cfunc(signature, **JIT)(_items)


def _call_at(*arg_types):
    """An intrinsic's (signature, codegen) that calls the C function at the address of its
    first argument (int64) with the others (Numba types ``arg_types``)."""

    def codegen(context, builder, signature, args):
        values = [context.get_value_type(t) for t in arg_types]
        function = ir.FunctionType(ir.VoidType(), values)
        builder.call(builder.inttoptr(args[0], function.as_pointer()), args[1:])
        return context.get_dummy_value()

    return types.void(types.int64, *arg_types), codegen


I64, F32 = types.int64, types.float32


@intrinsic
def call_items(typingctx, fn, first, last, params, rows, lo, hi, slope):
    """Call the C function at address ``fn`` (``items_kernel``) with the other arguments."""
    return _call_at(I64, I64, I64, I64, F32, F32, F32)


@intrinsic
def call_tile(typingctx, fn, ntaps, span, pixels, offsets, b, rows, out, res, bias, nk, lo, hi,
              post, slope):  # fmt: skip
    """Call the C function at address ``fn`` (``narrow_kernel``) with the other arguments."""
    return _call_at(*[I64] * 10, F32, F32, I64, F32)


@intrinsic
def int64_at(typingctx, address):
    """The address as a pointer to int64 (for ``carray``)."""
    sig = types.CPointer(types.int64)(types.int64)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], ir.IntType(64).as_pointer())

    return sig, codegen


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
def _tile(args, t, pixels, lo, hi, post, slope):
    """Tile ``t`` of ``pixels``, with its arguments (``_tile_args``): the micro-kernel with
    its epilogue and activation into ``out``. The last tile, where it holds MR - MR_SMALL
    pixels or fewer, runs as small tiles."""
    small = _small_tiles(pixels, t)
    if small == 0:
        conv_tile_out(*args, lo, hi, post, slope)
    else:
        _run_small(args, small, lo, hi, post, slope)


@njit(inline="always", **JIT)
def _small_tiles(pixels, t):
    """How many small tiles (MR_SMALL pixels) run tile ``t`` of ``pixels``: 0 for a full one
    (only the last tile can be short: ``next_tile``)."""
    count = min(MR, pixels - t * MR)
    return 0 if next_tile(count) == MR else (count + MR_SMALL - 1) // MR_SMALL


@njit(inline="always", **JIT)
def next_tile(left):
    """The pixels of the tile that takes the next of ``left`` pixels (of a layer or of a run
    of Winograd tiles): MR, or MR_SMALL where MR - MR_SMALL or fewer are left. A tile of 1 to
    MR - MR_SMALL pixels costs MR pixels' work as a full tile, a third or two thirds as small
    ones (a 7x7 map at batch 1: 52 pixels' work for its 49 instead of 60)."""
    return MR if left > MR - MR_SMALL else MR_SMALL


@njit(inline="always", **JIT)
def _run_small(args, small, lo, hi, post, slope):
    """``small`` tiles of ``conv_tile_out_small`` over a tile's table of output rows and
    input addresses (``_tile_args``), MR_SMALL entries each. Inlined: as a function of its
    own it cost ResNet-18's first run 0.27 s of compiling, inlined 0.1 s or less."""
    for j in range(small):
        conv_tile_out_small(*_small_args(args, j), lo, hi, post, slope)


@njit(inline="always", **JIT)
def _small_args(args, j):
    """Small tile ``j``'s arguments within a tile's (``_tile_args``): its MR_SMALL entries of
    the table of output rows and of input addresses."""
    ntaps, span, pixels_at, offsets_at, b, rows_at, out_at, res_at, bias_at, nk = args
    shift = j * MR_SMALL * I8
    return (ntaps, span, pixels_at + shift, offsets_at, b, rows_at + shift, out_at, res_at,
            bias_at, nk)  # fmt: skip


@njit(**JIT)
def _tile_fits(geometry, addresses, panel_offset, panel, t, rows, arrays):
    """Whether ``_tile``'s calls of the micro-kernel stay inside ``arrays`` (extents.py)."""
    xp, panels, offsets, out, res, bias = arrays
    live = _tile_table(geometry, addresses, t, rows, 1)
    args = _tile_args(geometry, addresses, panel_offset, panel, live, 1)
    small = _small_tiles(geometry[0], t)
    if small == 0:
        return conv_tile_out_fits(
            MICRO_TILE, MR, *args, xp, offsets, panels, rows[MR:], rows[:MR], out, res, bias
        )
    for j in range(small):
        if not conv_tile_out_fits(MICRO_TILE, MR_SMALL, *_small_args(args, j), xp, offsets,
                                  panels, rows[MR:], rows[:MR], out, res, bias):  # fmt: skip
            return False
    return True


@njit(inline="always", **JIT)
def _tile_table(geometry, addresses, t, rows, width):
    """The table of ``width`` tiles from tile ``t`` (1, or 2 for the narrow tile): output
    pixels ``t * MR`` on, numbered across rows and images. ``rows`` gets each pixel's offset
    in ``out``, in floats from its channel 0 (-1 past the last pixel), then its input address
    (the last pixel's again past it): ``width`` MR int64 each.
    Returns the run of taps [t0, t1) that read the image for some pixel of the tile
    (``_live_taps``; all where the layer does not pad). The pixel's row and column advance
    by increments: two integer divisions per pixel cost more than the multiply-adds of a 1x1
    layer with 16 input channels."""
    pixels, tiles, ho, wo, hp, wp, sh, sw, stride, ntaps, span, k_out = geometry[:12]
    x_at = addresses[0]
    p0 = t * MR
    size = width * MR
    count = min(size, pixels - p0)
    n = p0 // (ho * wo)
    oy = (p0 - n * (ho * wo)) // wo
    ox = p0 - n * (ho * wo) - oy * wo
    pixel_bytes = stride * F4
    a = x_at + ((n * hp + oy * sh) * wp + ox * sw) * pixel_bytes
    last = a
    n0, oy0, ox0 = n, oy, ox
    n1, oy1, ox1 = n, oy, ox
    for i in range(size):
        if i < count:
            rows[i] = (p0 + i) * k_out
            last = a
            n1, oy1, ox1 = n, oy, ox
            ox += 1
            if ox < wo:
                a += sw * pixel_bytes
            else:
                ox = 0
                oy += 1
                if oy == ho:
                    oy = 0
                    n += 1
                a = x_at + (n * hp + oy * sh) * wp * pixel_bytes
        else:
            rows[i] = -1
        rows[size + i] = last
    t0, t1 = 0, ntaps
    if geometry[12] > 0:
        if n1 != n0:  # across images: every row and column
            oy0, oy1, ox0, ox1 = 0, ho - 1, 0, wo - 1
        elif oy1 != oy0:  # across rows: every column
            ox0, ox1 = 0, wo - 1
        t0, t1 = _live_taps(geometry, oy0, oy1, ox0, ox1)
    return t0, t1


@njit(inline="always", **JIT)
def _tile_args(geometry, addresses, panel_offset, panel, live, width):
    """``conv_tile_out``'s arguments up to the epilogue's, for a tile whose table is filled
    (``_tile_table`` for ``width``, which returned the ``live`` taps) and ``panel``: the
    output, residual and bias addresses moved to the panel's first channel."""
    span, k_out = geometry[10], geometry[11]
    _, panels_at, offsets_at, rows_at, out_at, res_at, bias_at = addresses
    t0, t1 = live
    k0 = panel * NR
    nk = min(k_out, k0 + NR) - k0
    return (t1 - t0, span, rows_at + width * MR * I8, offsets_at + t0 * I8,
            panels_at + panel_offset + t0 * span * NR * F4, rows_at, out_at + k0 * F4,
            res_at + k0 * F4 if res_at != 0 else 0, bias_at + k0 * F4, nk)  # fmt: skip


@njit(inline="always", **JIT)
def _floor_div(a, b):
    """a // b rounded down for a negative ``a`` too (b > 0), as integers."""
    return a // b if a >= 0 else -((-a + b - 1) // b)


@njit(inline="always", **JIT)
def _live_range(o0, o1, interior, k, s, d, p, size):
    """The kernel positions [k0, k1) that read inside the image (``size`` rows or columns
    after ``p`` of padding, in padded coordinates) for some output o0..o1, stride ``s`` and
    dilation ``d``: position j reads o * s + j * d. All ``k`` where o0..o1 lie in the
    ``interior`` (first, last packed as first * 2^32 + last: ``_layout``); one position
    that reads only padding where none does (the tile's sum is then 0 all the same)."""
    if o0 >= interior >> 32 and o1 <= interior & 0xFFFFFFFF:
        return 0, k
    low = p - o1 * s  # j * d >= low
    k0 = 0 if low <= 0 else min(k, (low + d - 1) // d)
    high = p + size - 1 - o0 * s  # j * d <= high
    k1 = 0 if high < 0 else min(k, high // d + 1)
    if k1 <= k0:
        k0 = min(k0, k - 1)
        k1 = k0 + 1
    return k0, k1


# _live_taps is called, not inlined: inlined into the tile loop (as Numba inlines, its IR
# typed again in the caller) it and _live_range doubled the cold compile of ``_items``,
# 0.77 -> 1.41 s CPU when they came; called, 1.11 s (a call per tile of at least MR x NR
# multiply-adds per tap and channel). 2-core Zen 4 under load 2.8, ResNet-18's first run.
# _live_range is inlined into it: a function of its own cost 0.15 s more of that run.
@njit(**JIT)
def _live_taps(geometry, oy0, oy1, ox0, ox1):
    """The run of taps [t0, t1) (in the packed weights' order) that holds every tap reading
    the image for some output pixel in rows oy0..oy1 and columns ox0..ox1: the taps of dilated
    layers with wide padding (DeepLabV3's ASPP: dilation 36 on a 65x65 map) that read only
    padding are skipped, their weights and their input offsets both. Kernel rows run whole
    where a tap is a whole kernel row (``_layout``'s ``row_taps``); otherwise the run takes
    the live rows' taps from the first live column of the first to the last of the last."""
    hp, wp, sh, sw, ntaps = geometry[4], geometry[5], geometry[6], geometry[7], geometry[9]
    kh, kw, dh, dw, ph, pw, rows_in, cols_in = geometry[12:20]
    ky0, ky1 = _live_range(oy0, oy1, rows_in, kh, sh, dh, ph, hp - 2 * ph)
    if ntaps == kh:  # a tap is a kernel row
        return ky0, ky1
    kx0, kx1 = _live_range(ox0, ox1, cols_in, kw, sw, dw, pw, wp - 2 * pw)
    return ky0 * kw + kx0, (ky1 - 1) * kw + kx1
