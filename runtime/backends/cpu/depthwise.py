"""Depthwise convolution on the CPU (Numba), NHWC float32: MobileNet's and EfficientNet's
3x3 and 5x5 layers, any stride and dilation.

The multiply-adds run in ``microkernel.dw_tile_out``: MR output pixels of one row x one block
of DW_CH channels (the micro-kernel's NV vectors) in registers, every tap, then bias, residual
and activation in registers and one store. Work items are (image, output row, run of channel
blocks). A tile runs only the kernel rows whose input rows lie inside the image (the others
add zeros). 3x3 and 5x5 windows of stride 1 or 2 run full tiles through ``dw_slide_*`` (each
input column loaded once per kernel row); small stride-1 maps as one long row of a padded
copy (``_flat_image``: 14x14 with AVX-512 code, 7x7 with AVX2); with AVX-512 code other rows
whole, in place, the border columns included: such a tile reads zeros for the first and last
columns of its span that lie outside the image (``_slide_row``). Otherwise the pixels whose
taps all fall inside the image run in place and the border columns (a pixel or two) from a
small zero-padded copy of their window (``_fill_patch``), so no pixel tests a border in the
loop.
A channel multiplier other than 1 (no zoo network has one), and every layer under the ``blas``
policy (which keeps off the micro-kernel), takes plain loops (``dwconv_mult``).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .activations import JIT, PJIT, activate, clamp_bounds
from .blocked import post_code
from .bounds import DEPTHWISE_PATCH, DEPTHWISE_TILE, checking
from .caches import from_memory
from .elementwise import run_call
from .extents import copy_lanes_fits, dw_slide_fits, dw_tile_fits
from .microkernel import (
    DW_CH,
    DW_EDGE,
    DW_SMALL,
    MR,
    copy_lanes,
    dw_slide_3s1,
    dw_slide_3s2,
    dw_slide_5s1,
    dw_slide_5s2,
    dw_tile_out,
    dw_tile_small,
    prefetch_lines,
)
from .table import BOUND_ONLY, GRADS, KERNELS, step_key

F4 = 4
#: Floats of a thread's scratch row before its patch: a tile's MR output offsets (int64),
#: rounded up to a cache line so that the patch's vectors start lines.
ROW_FLOATS = -(-2 * MR // 16) * 16


@njit(**PJIT)
def dwconv(x, w, bias, res, out, scratch, kh, kw, sh, sw, ph, pw, dh, dw, lo, hi, post, slope,
           rows, per_item, hint_input, flat):  # fmt: skip
    """Depthwise convolution (channel multiplier 1), ``w`` (kh, kw, C), epilogue as
    ``dw_tile_out`` takes it. ``per_item`` channel blocks (DW_CH channels) per work item;
    ``scratch`` holds ``dw_scratch_floats`` per thread; ``hint_input`` (0 or 1): see
    ``caches.from_memory``; ``flat`` (0 or 1): each work item an image's channel block
    through a padded copy of the image (``flat_patch_pixels``).

    ``rows`` (``whole_rows``: every row of ``x`` and ``out``) runs a band of rows (bands.py):
    (h, row0, oy_first, oy_last): output rows ``oy_first .. oy_last - 1`` of images ``h``
    rows high, where ``x`` holds image rows ``row0`` on (all of ``out``'s rows are there).
    The geometry is the whole image's, so the padding is right at a band's edge; the rows a
    band reads must lie in ``x`` (checked mode verifies every tile's extents). (A band
    written into a buffer of its own rows, as ``x`` is read from one, made the tiles 35-50%
    slower, 56x56x144 232 -> 316 us: the output's addresses are the whole image's.)"""
    n_img, x_rows, wd, c_n = x.shape
    _, ho, wo, _ = out.shape
    h, row0, oy_first, oy_last = rows
    n_rows = 1 if flat else max(0, oy_last - oy_first)  # flat: one item per image
    n_vec = (c_n + DW_CH - 1) // DW_CH
    blocks = (n_vec + per_item - 1) // per_item
    items = n_img * n_rows * blocks
    threads = scratch.shape[0]
    geometry = (h, wd, c_n, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw, n_vec, blocks, per_item,
                oy_first, n_rows, x_rows, row0)  # fmt: skip
    # the arrays go into the parallel loop, never bare addresses (see blocked.py)
    arrays = (x, w, bias, out, res)
    for thr in prange(threads):
        rows = scratch[thr, : 2 * MR].view(np.int64)
        zero = scratch[thr, ROW_FLOATS : ROW_FLOATS + DW_CH]
        zero[:] = 0.0
        patch = scratch[thr, ROW_FLOATS + DW_CH :]
        _dw_items(thr * items // threads, (thr + 1) * items // threads, geometry, arrays, rows,
                  zero, patch, lo, hi, post, slope, hint_input, flat)  # fmt: skip


@njit(**JIT)
def _dw_items(first, last, geometry, arrays, rows, zero, patch, lo, hi, post, slope, hint_input,
              flat):  # fmt: skip
    """One thread's work items ``first``..``last - 1`` of ``dwconv``. Addresses are taken
    here, once (the caller's references keep the arrays alive until this returns): views
    inside the loops would be atomic updates of shared reference counts. Where checked mode
    is on, each kernel's extents are verified before it runs (extents.py)."""
    h, wd, c_n, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw, n_vec, blocks, per_item = geometry[:16]
    oy_first, n_rows, x_rows, row0 = geometry[16:20]
    x, w, bias, out, res = arrays
    # as int64: an unsigned address plus a signed offset is a float64 in Numba (and each mix
    # of types compiled the tiles again)
    x_at, w_at = np.int64(x.ctypes.data), np.int64(w.ctypes.data)
    bias_at, out_at = np.int64(bias.ctypes.data), np.int64(out.ctypes.data)
    res_at = np.int64(res.ctypes.data) if res.size > 0 else np.int64(0)
    rows_at = np.int64(rows.ctypes.data)
    patch_at = np.int64(patch.ctypes.data)
    zero_at = np.int64(zero.ctypes.data)
    addresses = (x_at, w_at, bias_at, out_at, res_at, rows_at, zero_at, patch_at)
    check = checking()
    pixel = c_n * F4
    block_bytes = DW_CH * F4
    inner0, inner1 = _inner_columns(wd, wo, kw, sw, pw, dw)
    slide = slide_variant(kw, sw, dw)
    for item in range(first, last):
        block = item % blocks
        r = item // blocks
        oy = oy_first + r % n_rows
        n = r // n_rows
        if flat:
            _flat_image(geometry, n, block, addresses, rows, x, w, out, res, bias, zero, patch,
                        lo, hi, post, slope, check)  # fmt: skip
            continue
        # the kernel rows whose input row lies inside the image, ky0 .. ky0 + k_rows - 1: the
        # others would only add zeros, so the tiles skip them (no padded copy of the top and
        # bottom rows)
        ky0, k_rows = _rows_inside(oy * sh - ph, kh, dh, h)
        iy0 = oy * sh - ph + ky0 * dh
        w_row = ky0 * kw * pixel
        row_at = x_at + ((n * x_rows + iy0 - row0) * wd) * pixel
        if slide and DW_EDGE > 0:
            _slide_row(geometry, n, oy, block, iy0, k_rows, w_row, row_at, addresses, rows,
                       x, w, out, res, bias, zero, patch, lo, hi, post, slope, hint_input,
                       check)  # fmt: skip
            continue
        # runs of up to MR pixels: the border columns through a zero-padded patch, the rest
        # in place; with no residual, the last run inside the image is a full tile moved back
        # over pixels already written (the same values again) instead of a partial one
        ox0 = 0
        while ox0 < wo:
            inside = inner0 <= ox0 < inner1
            end = inner1 if inside else (inner0 if ox0 < inner0 else wo)
            count = min(MR if inside else DW_SMALL, end - ox0)
            if inside and count < MR and res_at == 0 and inner1 - inner0 >= MR:
                ox0, count = end - MR, MR
            ix0 = ox0 * sw - pw
            span = (count - 1) * sw + (kw - 1) * dw + 1
            if blocks == 1:
                _hint_run(x_at, out_at, geometry, n, oy, ox0, count, ix0, span, hint_input)
            for v in range(block * per_item, min(n_vec, (block + 1) * per_item)):
                c0 = v * DW_CH
                nk = min(DW_CH, c_n - c0)
                _run_rows(rows, ((n * ho + oy) * wo + ox0) * c_n + c0, count, c_n)
                if inside:
                    a = row_at + ix0 * pixel + c0 * F4
                    steps = (sw * pixel, dw * pixel, dh * wd * pixel)
                else:
                    window = (n, iy0, ix0, k_rows, dh, span, h, wd, c_n, c0, nk, span, x_rows, row0)
                    # checked mode: every copy's extents first, out of line (a test per copy
                    # cost the unchecked path 3%)
                    if check and not _patch_fits(x_at, patch_at, window, patch, x):
                        return
                    _fill_patch(x_at, patch_at, window)
                    a = patch_at
                    steps = (sw * block_bytes, dw * block_bytes, span * block_bytes)
                args = (k_rows, kw, a, steps[0], steps[1], steps[2], w_at + w_row + c0 * F4,
                        pixel, count, rows_at, out_at, res_at, bias_at + c0 * F4, nk)  # fmt: skip
                if inside:  # a slide tile where it is full (AVX2 code: see DW_EDGE)
                    if check and not dw_tile_fits(DEPTHWISE_TILE, MR, *args, x, w, rows, out,
                                                  res, bias):  # fmt: skip
                        return
                    _full_tile(slide if count == MR else 0, args, lo, hi, post, slope, ix0, wd,
                               zero_at)  # fmt: skip
                else:  # a border column or two: a smaller tile
                    if check and not dw_tile_fits(DEPTHWISE_TILE, DW_SMALL, *args, patch, w,
                                                  rows, out, res, bias):  # fmt: skip
                        return
                    dw_tile_small(*args, lo, hi, post, slope)
            ox0 += count


@njit(**JIT)
def _slide_row(geometry, n, oy, block, iy0, k_rows, w_row, row_at, addresses, rows, x, w, out,
               res, bias, zero, patch, lo, hi, post, slope, hint_input, check):  # fmt: skip
    """Output row ``oy`` of image ``n``, channel blocks of work item ``block``, in tiles of MR
    pixels through ``dw_slide_*`` (``slide_variant``). A tile reads the image in place where
    no more than the first and last DW_EDGE columns of its span lie outside the image (the
    tile reads zeros for those): every tile of a row at least MR wide, its last moved back
    over pixels already written (the same values again) where the layer has no residual.
    The others (a row narrower than a tile, a residual row's short last tile) read a
    zero-padded copy of their span (``_fill_patch``): one tile, and a copy, where a row ran
    a small tile for each border column and a patch for it (56x56x144, Zen 4, one thread:
    205 -> 150 us)."""
    h, wd, c_n, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw, n_vec, blocks, per_item = geometry[:16]
    x_rows, row0 = geometry[18], geometry[19]
    x_at, w_at, bias_at, out_at, res_at, rows_at, zero_at, patch_at = addresses
    slide = slide_variant(kw, sw, dw)
    pixel = c_n * F4
    block_bytes = DW_CH * F4
    span = (MR - 1) * sw + (kw - 1) * dw + 1  # input columns a tile reads
    ox0 = 0
    while ox0 < wo:
        count = min(MR, wo - ox0)
        if count < MR and res_at == 0 and wo >= MR:
            ox0, count = wo - MR, MR
        ix0 = ox0 * sw - pw
        in_place = count == MR and ix0 >= -DW_EDGE and ix0 + span <= wd + DW_EDGE
        if blocks == 1:
            _hint_run(x_at, out_at, geometry, n, oy, ox0, count, ix0, span, hint_input)
        # every channel block of this run before the next run: the run's output pixels are
        # then written whole, one after the other (C=144 at 56x56: 436 -> 257 us)
        for v in range(block * per_item, min(n_vec, (block + 1) * per_item)):
            c0 = v * DW_CH
            nk = min(DW_CH, c_n - c0)
            _run_rows(rows, ((n * ho + oy) * wo + ox0) * c_n + c0, count, c_n)
            if in_place:  # column ix0 (-pw at a row's start) as if the row went on
                a, col0, width = row_at + ix0 * pixel + c0 * F4, ix0, wd
                steps = (sw * pixel, dw * pixel, dh * wd * pixel)
            else:  # the columns the row's pixels read (the rest feed no stored pixel)
                used = min(span, (count - 1) * sw + (kw - 1) * dw + 1)
                window = (n, iy0, ix0, k_rows, dh, used, h, wd, c_n, c0, nk, span, x_rows, row0)
                if check and not _patch_fits(x_at, patch_at, window, patch, x):
                    return
                _fill_patch(x_at, patch_at, window)
                a, col0, width = patch_at, 0, span
                steps = (sw * block_bytes, dw * block_bytes, span * block_bytes)
            args = (k_rows, kw, a, steps[0], steps[1], steps[2], w_at + w_row + c0 * F4, pixel,
                    count, rows_at, out_at, res_at, bias_at + c0 * F4, nk)  # fmt: skip
            if not _slide_call(slide, args, lo, hi, post, slope, col0, width, zero_at, sw,
                               in_place, check, x, patch,
                               (w, rows, out, res, bias, zero)):  # fmt: skip
                return
        ox0 += count


@njit(**JIT)
def _flat_image(geometry, n, block, addresses, rows, x, w, out, res, bias, zero, patch, lo, hi,
                post, slope, check):  # fmt: skip
    """Image ``n``, channel blocks of work item ``block``, of a stride-1 layer with small
    maps (``flat_patch_pixels``): each block's image, zero-padded, is copied whole into the
    patch, whose rows then run on as one row, and ``dw_slide_*`` tiles take MR positions of
    it at a time: output pixel (r, c) is position ``r * wp + c`` (``wp`` the padded width),
    and the ``wp - wo`` positions after each row's pixels are computed and dropped. A 14x14
    map then takes 16 positions a row (3x3) or 18 (5x5) where two tiles took 24 (Zen 4, one
    thread: MobileNetV2's 384x14x14 layers 44 -> 38 us, EfficientNet-B0's 672x14x14 5x5
    ones 207 -> 168 us)."""
    h, wd, c_n, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw, n_vec, blocks, per_item = geometry[:16]
    x_rows, row0 = geometry[18], geometry[19]
    x_at, w_at, bias_at, out_at, res_at, rows_at, zero_at, patch_at = addresses
    slide = slide_variant(kw, sw, dw)
    hp, wp, extra = _flat_shape(ho, wo, kh, kw, dh)
    block_bytes = DW_CH * F4
    span = (MR - 1) * sw + (kw - 1) * dw + 1
    last = (ho - 1) * wp + wo  # positions of the last output row's last pixel, plus one
    for v in range(block * per_item, min(n_vec, (block + 1) * per_item)):
        c0 = v * DW_CH
        nk = min(DW_CH, c_n - c0)
        # padded rows -ph on, ``extra`` rows of zeros after them (they lie past the image)
        # for what the last tiles read past the last row
        # (np.int64 and np.bool_ of constants here and below: typed as variables, so that the
        # callees are the ones _slide_row and the patches compile; a constant typed them
        # again, and the four slide tiles' second copy was 4 s of a cold compile)
        one = np.int64(1)
        window = (n, -ph, -pw, hp + extra, one, wp, h, wd, c_n, c0, nk, wp, x_rows, row0)
        if check and not _patch_fits(x_at, patch_at, window, patch, x):
            return
        _fill_patch(x_at, patch_at, window)
        r, c = 0, 0  # position p0's row and column (by increments: a division per position
        # cost as much as a 3x3 tile's multiply-adds with AVX2 code)
        for p0 in range(0, last, MR):
            for i in range(MR):
                rows[i] = ((n * ho + r) * wo + c) * c_n + c0 if c < wo and r < ho else -1
                c += 1
                if c == wp:
                    r, c = r + 1, 0
            args = (kh, kw, patch_at + p0 * block_bytes, sw * block_bytes, dw * block_bytes,
                    dh * wp * block_bytes, w_at + c0 * F4, c_n * F4, np.int64(MR), rows_at,
                    out_at, res_at, bias_at + c0 * F4, nk)  # fmt: skip
            if not _slide_call(slide, args, lo, hi, post, slope, np.int64(0), span, zero_at,
                               sw, np.bool_(False), check, x, patch,
                               (w, rows, out, res, bias, zero)):  # fmt: skip
                return


@njit(inline="always", **JIT)
def _flat_shape(ho, wo, kh, kw, dh):
    """A flat patch's padded rows and width (stride 1, no column dilation), and the rows of
    zeros after them that hold what the last tile reads past them."""
    hp = ho + (kh - 1) * dh
    wp = wo + kw - 1
    span = MR + kw - 1
    return hp, wp, -(-span // wp)


def flat_patch_pixels(ho, wo, kh, kw, sh, sw, dh, dw, whole) -> int:
    """The pixels (of DW_CH floats) of ``_flat_image``'s patch where a layer runs that way,
    else 0: a stride-1 3x3 or 5x5 window (a ``dw_slide_*`` tile), ``whole`` images (no band
    of rows, and the layer in the cache), a padded image of at most FLAT_PIXELS, and fewer
    positions per row than the row tiles would compute (``ceil(wo / MR) * MR``), rows of
    two tiles: a row of one tile already computes as many positions (7x7 maps with AVX-512
    code: no faster, measured), and wider ones waste little (14x14 with AVX2 code: slower)."""
    if not whole or sh != 1 or sw != 1 or dw != 1 or kw not in (3, 5):  # see slide_variant
        return 0
    hp, wp, extra = _flat_shape.py_func(ho, wo, kh, kw, dh)
    if (hp + extra) * wp > FLAT_PIXELS or wp >= -(-wo // MR) * MR or not MR < wo < 2 * MR:
        return 0
    return (hp + extra) * wp


def layer_flat_pixels(a: dict, x_shape, out_shape, whole: bool = True) -> int:
    """``flat_patch_pixels`` of a layer (attributes ``a``) from ``x_shape`` to ``out_shape``
    (NHWC), ``whole`` images: only where its input and output are in the cache (no input
    hints). A block's copy reads two lines of each pixel's channels, a stride the
    prefetchers do not follow from memory (MobileNetV3-Large's 672x14x14 at batch 32, two
    threads, Zen 4: 2.40 ms row by row, 2.85 ms flat)."""
    in_cache = not from_memory(F4 * (math.prod(x_shape) + math.prod(out_shape)))
    return flat_patch_pixels(out_shape[1], out_shape[2], a["kh"], a["kw"], a["sh"], a["sw"],
                             a["dh"], a["dw"], whole and in_cache)  # fmt: skip


#: The largest padded image (pixels) that ``_flat_image`` copies: 14x14 with a 5x5 window
#: (18 x 18 + a row) at most, so a patch of a block's image stays in L1 and L2 (44 KB).
FLAT_PIXELS = 400


@njit(inline="always", **JIT)
def _slide_call(slide, args, lo, hi, post, slope, col0, width, zero_at, sw, in_place, check, x,
                patch, arrays):  # fmt: skip
    """``_full_tile`` for a slide tile, first (in checked mode) its extents: False where
    they do not fit and it did not run. Inlined: a call that takes arrays updates their
    reference counts (atomics) on every tile (56x56x144: 170 -> 230 us)."""
    if check and not _slide_fits(args, col0, width, zero_at, sw, in_place, x, patch, arrays):
        return False
    _full_tile(slide, args, lo, hi, post, slope, col0, width, zero_at)
    return True


@njit(inline="always", **JIT)
def _slide_fits(args, col0, width, zero_at, sw, in_place, x, patch, arrays):
    """Checked mode: ``extents.dw_slide_fits`` for a tile read in place (from ``x``) or
    from the patch."""
    w, rows, out, res, bias, zero = arrays
    if in_place:
        return dw_slide_fits(DEPTHWISE_TILE, *args, col0, width, zero_at, sw, x, w, rows, out,
                             res, bias, zero)  # fmt: skip
    return dw_slide_fits(DEPTHWISE_TILE, *args, col0, width, zero_at, sw, patch, w, rows, out,
                         res, bias, zero)  # fmt: skip


@njit(inline="always", **JIT)
def _hint_run(x_at, out_at, geometry, n, oy, ox0, count, ix0, span, hint_input):
    """Before a run of ``count`` output pixels from ``ox0`` (all channels: a work item of
    every channel block): its output lines into L2 (see prefetch_lines), and where the
    layer hints its input (``caches.from_memory``) the columns ``ix0 .. ix0 + span - 1`` of
    the rows the next output row reads."""
    c_n, ho, wo = geometry[2], geometry[3], geometry[4]
    o_at = out_at + ((n * ho + oy) * wo + ox0) * c_n * F4
    prefetch_lines(o_at, o_at + count * c_n * F4)
    if hint_input and oy + 1 < ho:
        _hint_next_row(x_at, geometry, n, oy, ix0, span)


@njit(inline="always", **JIT)
def _run_rows(rows, first_out, count, c_n):
    """A tile's output offsets: pixel i of the run at ``first_out + i * c_n`` (floats), -1
    past its ``count`` pixels (not stored)."""
    for i in range(MR):
        rows[i] = first_out + i * c_n if i < count else -1


@njit(inline="always", **JIT)
def _hint_next_row(x_at, geometry, n, oy, ix0, span):
    """Hint into L2 the input columns ``ix0 .. ix0 + span - 1`` (all channels) of the rows
    that output row ``oy + 1`` reads and row ``oy`` does not: the rows this thread reads
    next, a row of work ahead (see ``caches.from_memory``)."""
    h, wd, c_n, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw = geometry[:13]
    x_rows, row0 = geometry[18], geometry[19]  # rows held (see ``dwconv``)
    last_now = oy * sh - ph + (kh - 1) * dh
    first_next = (oy + 1) * sh - ph
    col0 = max(0, ix0)
    col1 = min(wd, ix0 + span)
    for ky in range(kh):
        iy = first_next + ky * dh
        if last_now < iy < min(h, row0 + x_rows) and iy >= row0 and col1 > col0:
            row = x_at + ((n * x_rows + iy - row0) * wd) * c_n * F4
            prefetch_lines(row + col0 * c_n * F4, row + col1 * c_n * F4)


@njit(**JIT)
def _full_tile(slide, args, lo, hi, post, slope, col0, width, zero):
    """A full tile: the ``dw_slide_*`` tile that ``slide`` names (``slide_variant``; its
    arguments ``col0``, ``width`` and ``zero`` as ``microkernel._dw_slide_codegen`` takes
    them), else ``dw_tile_out`` (``args`` as it takes them). One function for every caller,
    not inlined: the four slide tiles are compiled once (1.2-1.6 s each copy), and a second
    call around each tile ran AVX2 code 15-40% slower."""
    if slide == 1:
        dw_slide_3s1(*args, lo, hi, post, slope, col0, width, zero)
    elif slide == 2:
        dw_slide_3s2(*args, lo, hi, post, slope, col0, width, zero)
    elif slide == 3:
        dw_slide_5s1(*args, lo, hi, post, slope, col0, width, zero)
    elif slide == 4:
        dw_slide_5s2(*args, lo, hi, post, slope, col0, width, zero)
    else:
        dw_tile_out(*args, lo, hi, post, slope)


@njit(inline="always", **JIT)
def _inner_columns(wd, wo, kw, sw, pw, dw):
    """The output columns whose taps all fall inside the image's width: [inner0, inner1)."""
    inner0 = min(wo, (pw + sw - 1) // sw)
    return inner0, max(inner0, min(wo, (wd - 1 + pw - (kw - 1) * dw) // sw + 1))


@njit(inline="always", **JIT)
def _rows_inside(iy0, kh, dh, h):
    """The first kernel row whose input row ``iy0 + ky * dh`` is inside the image (0 .. h-1),
    and how many from it are (none: 0 rows, from row 0)."""
    ky0 = max(0, (-iy0 + dh - 1) // dh)
    ky1 = min(kh, (h - iy0 + dh - 1) // dh)
    if ky1 <= ky0:
        return 0, 0
    return ky0, ky1 - ky0


@njit(inline="always", **JIT)
def slide_variant(kw, sw, dw):
    """Which ``dw_slide_*`` tile runs full inside tiles of this window (0: ``dw_tile_out``)."""
    if dw != 1 or sw > 2 or kw not in (3, 5):
        return 0
    return (1 if kw == 3 else 3) + (sw - 1)


@njit(inline="always", **JIT)
def _fill_patch(x_at, patch_at, window):
    """Input rows iy0 + ky * dh (ky < kh), columns ix0 .. ix0 + span - 1, channels c0 ..
    c0 + nk - 1 (``window``), as (kh, pitch, DW_CH) at ``patch_at`` (columns ``span`` ..
    ``pitch - 1`` left as they are), with zeros outside the image; one block's copy per pixel
    (``copy_lanes``)."""
    kh, span, nk = window[3], window[5], window[10]
    for ky in range(kh):
        for j in range(span):
            dst, src = _patch_copy(x_at, patch_at, window, ky, j)
            copy_lanes(dst, src, nk)


@njit(**JIT)
def _patch_fits(x_at, patch_at, window, patch, x):
    """Whether every copy of ``_fill_patch`` stays inside ``patch`` and ``x`` (extents.py)."""
    kh, span, nk = window[3], window[5], window[10]
    for ky in range(kh):
        for j in range(span):
            dst, src = _patch_copy(x_at, patch_at, window, ky, j)
            if not copy_lanes_fits(DEPTHWISE_PATCH, dst, src, nk, patch, x):
                return False
    return True


@njit(inline="always", **JIT)
def _patch_copy(x_at, patch_at, window, ky, j):
    """``copy_lanes``' destination and source for row ``ky``, column ``j`` of the patch
    (source 0: outside the image, zeros)."""
    n, iy0, ix0, kh, dh, span, h, wd, c_n, c0, nk, pitch, x_rows, row0 = window
    iy = iy0 + ky * dh
    ix = ix0 + j
    dst = patch_at + (ky * pitch + j) * DW_CH * F4
    src = 0
    if 0 <= iy < h and 0 <= ix < wd:
        src = x_at + (((n * x_rows + iy - row0) * wd + ix) * c_n + c0) * F4
    return dst, src


@njit(**PJIT)
def dwconv_mult(x, w, bias, res, out, kh, kw, sh, sw, ph, pw, dh, dw, mult, act, alpha, beta):
    """Depthwise convolution with a channel multiplier: output channel c reads input channel
    c // mult. ``w``: (kh, kw, C*mult). Rare (no zoo network has one): plain loops."""
    n_img, h, wd, _ = x.shape
    _, ho, wo, c_out = out.shape
    has_res = res.size > 0
    for t in prange(n_img * ho):
        n = t // ho
        oy = t % ho
        for ox in range(wo):
            d = out[n, oy, ox]
            for c in range(c_out):
                d[c] = bias[c]
            for ky in range(kh):
                iy = oy * sh - ph + ky * dh
                if iy < 0 or iy >= h:
                    continue
                for kx in range(kw):
                    ix = ox * sw - pw + kx * dw
                    if 0 <= ix < wd:
                        for c in range(c_out):
                            d[c] += x[n, iy, ix, c // mult] * w[ky, kx, c]
            for c in range(c_out):
                v = d[c] + (res[n, oy, ox, c] if has_res else np.float32(0.0))
                d[c] = activate(v, act, alpha, beta)


def dw_vectors_per_item(n_img: int, ho: int, c_n: int, threads: int) -> int:
    """Channel blocks (DW_CH channels each) per work item: all of a row's, unless that leaves
    fewer than four items per thread (7x7 maps), then halved until it does not or one is left."""
    n_blocks = -(-c_n // DW_CH)
    per = n_blocks
    while per > 1 and n_img * ho * -(-n_blocks // per) < 4 * threads:
        per = -(-per // 2)
    return per


def dw_scratch_floats(kh: int, kw: int, sw: int, dw: int, flat: int = 0) -> int:
    """Floats per thread: a tile's output offsets (int64), DW_CH zeros (what the ``dw_slide_*``
    tiles read outside the image) and a padded patch of a tile's span, or of ``flat``
    pixels (``flat_patch_pixels``)."""
    span = (MR - 1) * sw + (kw - 1) * dw + 1
    return ROW_FLOATS + DW_CH + max(kh * span, flat) * DW_CH


def whole_rows(x, out) -> tuple:
    """``dwconv``'s ``rows`` for all rows of ``x`` and ``out``."""
    return (x.shape[1], 0, 0, out.shape[1])


def dwconv_call(backend, a, arrays, x, res, out, rows=None) -> tuple:
    """A depthwise step's call (``a`` its attributes; see elementwise.run_call); ``rows``:
    see ``dwconv`` (None: ``whole_rows``)."""
    rows = whole_rows(x, out) if rows is None else rows
    if rows != whole_rows(x, out) and x.shape[0] != 1:
        raise ValueError("a band of rows (dwconv's rows) is of one image")
    act, alpha, beta = a["act"], np.float32(a["alpha"]), np.float32(a["beta"])
    window = (a["kh"], a["kw"], a["sh"], a["sw"], a["ph"], a["pw"], a["dh"], a["dw"])
    if a["mult"] != 1 or backend.algorithm == "blas":  # plain loops: no micro-kernel
        args = (x, arrays["w"], arrays["b"], res, out, *window, a["mult"], act, alpha, beta)
        return dwconv_mult, args, None
    lo, hi, rest = clamp_bounds(act, alpha, beta)
    post, rest = post_code(rest)
    hint = from_memory(x.nbytes + out.nbytes)
    flat = layer_flat_pixels(a, x.shape, out.shape, rows == whole_rows(x, out))
    per = dw_vectors_per_item(x.shape[0], 1 if flat else rows[3] - rows[2], x.shape[3],
                              backend.threads)  # fmt: skip
    scratch = backend.scratch(dw_scratch_floats(a["kh"], a["kw"], a["sw"], a["dw"], flat))
    args = (x, arrays["w"], arrays["b"], res, out, scratch, *window, lo, hi, post, alpha, rows,
            per, hint, int(flat > 0))  # fmt: skip
    return dwconv, args, (out, rest, alpha, beta) if rest else None


@KERNELS.register("dwconv")
def launch_dwconv(backend, step, arrays, ins, res, out, work):
    x = ins[0]
    key = step_key(step, ins, res, out)
    bind = lambda: dwconv_call(backend, step.attrs, arrays, x, res, out)  # noqa: E731
    run_call(backend.bound_call(key, bind))


BOUND_ONLY.add("dwconv")


# ---- backward ----------------------------------------------------------------------------


@njit(inline="always", **JIT)
def _columns(kx, dw, pw, sw, wd, wo):
    """Output columns ``ox`` whose tap ``kx`` reads an input column inside the image, as a
    range, and that column's offset: ``ix = ox * sw + off``."""
    off = kx * dw - pw
    ox0 = max(0, (-off + sw - 1) // sw)
    ox1 = min(wo, (wd - off + sw - 1) // sw)
    return ox0, max(ox0, ox1), off


@njit(**JIT)
def _dw_data_row(gy, w, gx, n, iy, kh, kw, sh, sw, ph, pw, dh, dw, mult):
    """Row ``iy`` of image ``n`` of ``gx``: every (output row, tap row) that reads it adds
    its taps' products with ``gy`` along the row, one channel vector at a time."""
    _, ho, wo, _ = gy.shape
    wd, c = gx.shape[2], gx.shape[3]
    row = gx[n, iy]
    for ix in range(wd):
        for ch in range(c):
            row[ix, ch] = 0.0
    for ky in range(kh):
        ty = iy + ph - ky * dh
        if ty < 0 or ty % sh != 0 or ty // sh >= ho:
            continue
        g = gy[n, ty // sh]
        for kx in range(kw):
            ox0, ox1, off = _columns(kx, dw, pw, sw, wd, wo)
            tap = w[ky, kx]
            for ox in range(ox0, ox1):
                ix = ox * sw + off
                if mult == 1:
                    for ch in range(c):
                        row[ix, ch] += g[ox, ch] * tap[ch]
                else:
                    for ch in range(c):
                        acc = np.float32(0.0)
                        for j in range(mult):
                            acc += g[ox, ch * mult + j] * tap[ch * mult + j]
                        row[ix, ch] += acc


@njit(**PJIT)
def dwconv_backward_data(gy, w, gx, kh, kw, sh, sw, ph, pw, dh, dw, mult):
    """Input gradient of a depthwise convolution (``w`` packed (kh, kw, C*mult)): parallel
    over the rows of ``gx``, each written whole by one thread."""
    n_img, h = gx.shape[0], gx.shape[1]
    for t in prange(n_img * h):
        _dw_data_row(gy, w, gx, t // h, t % h, kh, kw, sh, sw, ph, pw, dh, dw, mult)


@njit(**JIT)
def _dw_weight_rows(x, gy, part, acc, r0, r1, kh, kw, sh, sw, ph, pw, dh, dw, mult):
    """Output rows ``r0 .. r1`` (over images) of the weight gradient into ``part`` (kh, kw,
    C*mult), float64: each row sums in float32 into ``acc`` (a row is short), then is added
    into ``part``."""
    _, h, wd, _ = x.shape
    _, ho, wo, c_out = gy.shape
    for ky in range(kh):
        for kx in range(kw):
            for co in range(c_out):
                part[ky, kx, co] = 0.0
    for r in range(r0, r1):
        n, oy = r // ho, r % ho
        g = gy[n, oy]
        for ky in range(kh):
            iy = oy * sh - ph + ky * dh
            if iy < 0 or iy >= h:
                continue
            xr = x[n, iy]
            for kx in range(kw):
                ox0, ox1, off = _columns(kx, dw, pw, sw, wd, wo)
                a = acc[ky, kx]
                for co in range(c_out):
                    a[co] = 0.0
                for ox in range(ox0, ox1):
                    ix = ox * sw + off
                    if mult == 1:
                        for co in range(c_out):
                            a[co] += g[ox, co] * xr[ix, co]
                    else:
                        for co in range(c_out):
                            a[co] += g[ox, co] * xr[ix, co // mult]
                p = part[ky, kx]
                for co in range(c_out):
                    p[co] += a[co]


@njit(**PJIT)
def dwconv_backward_weight(x, gy, parts, kh, kw, sh, sw, ph, pw, dh, dw, mult):
    """Weight gradient of a depthwise convolution, (kh, kw, C*mult) float64: the output rows
    (over images) split into ``parts.shape[0]`` contiguous ranges, each summed into its own
    partial by one thread, then the partials added in order (deterministic, no races)."""
    items = parts.shape[0]
    rows = gy.shape[0] * gy.shape[1]
    for t in prange(items):
        acc = np.empty((kh, kw, gy.shape[3]), np.float32)
        r0, r1 = t * rows // items, (t + 1) * rows // items
        _dw_weight_rows(x, gy, parts[t], acc, r0, r1, kh, kw, sh, sw, ph, pw, dh, dw, mult)
    for t in range(1, items):
        parts[0] += parts[t]


#: Partial sums of a depthwise weight gradient: a fixed count (not one per thread), so the
#: result does not depend on the number of threads; more threads than this idle.
DW_WEIGHT_PARTS = 32


@GRADS.register("dwconv")
def grad_dwconv(backend, step, arrays, saved, gy, gxs, gws):
    """Depthwise convolution's gradients: ``gx`` and the weight (PyTorch's (C*m, 1, kh, kw))
    by direct loops over channel vectors, the bias as the sum of ``gy``."""
    a = step.attrs
    x, gx = saved.xs[0], gxs[0]
    window = (a["kh"], a["kw"], a["sh"], a["sw"], a["ph"], a["pw"], a["dh"], a["dw"])
    if gx is not None:
        dwconv_backward_data(gy, arrays["w"], gx, *window, a["mult"])
    if "weight" in gws:
        items = max(1, min(gy.shape[0] * gy.shape[1], DW_WEIGHT_PARTS))
        parts = np.empty((items, a["kh"], a["kw"], gy.shape[3]), np.float64)
        dwconv_backward_weight(x, gy, parts, *window, a["mult"])
        gws["weight"][...] = parts[0].transpose(2, 0, 1)[:, None]
    if "bias" in gws:
        gws["bias"][...] = gy.reshape(-1, gy.shape[3]).sum(axis=0, dtype=np.float64)
