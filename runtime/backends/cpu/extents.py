"""What each micro-kernel of microkernel.py reads and writes, for the checked mode (bounds.py).

The micro-kernels take raw addresses, so nothing stops one from reading past its input or
writing past its output. Each function here takes the same arguments as the kernel it is
named after, followed by the arrays those addresses point into, derives every byte range the
kernel touches from the arguments exactly as the kernel's code does, and returns whether all
of them lie in their arrays (recording the first that does not). Drivers call them before each
kernel call when ``bounds.checking()``; a kernel changed without its function here is a bug
the checked tests (CI runs the kernel tests with CNNC_CHECK_BOUNDS=1) can still miss, so keep
them side by side. Addresses and steps are in bytes.
"""

from __future__ import annotations

from numba import njit

from .bounds import (
    BIAS,
    INPUT,
    OUTPUT,
    PATCH,
    PIXELS,
    RESIDUAL,
    ROWS,
    TAP_OFFSETS,
    WEIGHTS,
    count_in,
    inside,
)
from .microkernel import DW_CH, MR, NR

F4, I8 = 4, 8
CHECK = dict(cache=True, nogil=True)


@njit(**CHECK)
def _tap_range(site, ntaps, offsets, taps):
    """(fits, lowest, highest) of the ``ntaps`` int64 tap offsets at address ``offsets``."""
    if not inside(site, TAP_OFFSETS, offsets, offsets + ntaps * I8, taps):
        return False, 0, 0
    first_tap = (offsets - taps.ctypes.data) // I8
    low = high = taps[first_tap]
    for t in range(first_tap, first_tap + ntaps):
        low = min(low, taps[t])
        high = max(high, taps[t])
    return True, low, high


@njit(**CHECK)
def _pixels(site, ntaps, cin, a, step, offsets, count, xs, taps) -> bool:
    """The inputs of ``conv_tile``'s ``_accumulate``: pixel i of tap t reads floats
    0..cin-1 at ``a + min(i, count - 1) * step + offsets[t]``."""
    fits, low, high = _tap_range(site, ntaps, offsets, taps)
    return fits and inside(site, INPUT, a + low, a + (count - 1) * step + high + cin * F4, xs)


@njit(**CHECK)
def _gathered_pixels(site, tile, ntaps, cin, pixels, offsets, xs, taps, pixel_array) -> bool:
    """The inputs of ``conv_tile_out``'s ``_accumulate``: ``tile`` int64 addresses at
    ``pixels``; pixel i of tap t reads floats 0..cin-1 at ``pixels[i] + offsets[t]``."""
    fits, low, high = _tap_range(site, ntaps, offsets, taps)
    if not (fits and inside(site, PIXELS, pixels, pixels + tile * I8, pixel_array)):
        return False
    first = (pixels - pixel_array.ctypes.data) // I8
    for i in range(first, first + tile):
        at = pixel_array[i]
        if not inside(site, INPUT, at + low, at + high + cin * F4, xs):
            return False
    return True


@njit(**CHECK)
def _epilogue(site, pixels, rows, out, res, bias, nk, row_array, outs, residuals, biases):
    """The epilogue's ranges: ``pixels`` int64 row offsets at ``rows``; for each one not
    negative, ``nk`` floats from that float index of ``out`` (written) and of ``res`` (read,
    where ``res`` is not 0); ``nk`` floats of ``bias``."""
    if not (
        inside(site, ROWS, rows, rows + pixels * I8, row_array)
        and inside(site, BIAS, bias, bias + nk * F4, biases)
    ):
        return False
    first_row = (rows - row_array.ctypes.data) // I8
    for i in range(first_row, first_row + pixels):
        r = row_array[i]
        if r < 0:
            continue
        if not inside(site, OUTPUT, out + r * F4, out + (r + nk) * F4, outs):
            return False
        if res != 0 and not inside(site, RESIDUAL, res + r * F4, res + (r + nk) * F4, residuals):
            return False
    return True


@njit(**CHECK)
def conv_tile_out_fits(
    site, tile, ntaps, cin, pixels, offsets, b, rows, out, res, bias, nk, xs, taps, panels,
    pixel_array, row_array, outs, residuals, biases,
) -> bool:  # fmt: skip
    """``microkernel.conv_tile_out`` (``tile`` MR) or ``conv_tile_out_small`` (MR_SMALL):
    its pixels (``_gathered_pixels``), one panel of ``ntaps * cin`` rows of NR floats at
    ``b``, and the epilogue of ``tile`` rows (``_epilogue``)."""
    return (
        count_in(site, nk, 1, NR)
        and _gathered_pixels(site, tile, ntaps, cin, pixels, offsets, xs, taps, pixel_array)
        and inside(site, WEIGHTS, b, b + ntaps * cin * NR * F4, panels)
        and _epilogue(site, tile, rows, out, res, bias, nk, row_array, outs, residuals, biases)
    )


@njit(**CHECK)
def conv_tile_fits(
    site, tile, ntaps, cin, a, step, offsets, b, c, ldc, count, xs, taps, panels, products
) -> bool:  # fmt: skip
    """``microkernel.conv_tile`` (``tile`` MR) or ``conv_tile_small`` (MR_SMALL): its pixels,
    one panel at ``b``, and ``tile`` rows of NR floats written at ``c``, ``ldc`` bytes apart
    (all of them, whatever ``count``)."""
    return (
        count_in(site, count, 1, tile)
        and _pixels(site, ntaps, cin, a, step, offsets, count, xs, taps)
        and inside(site, WEIGHTS, b, b + ntaps * cin * NR * F4, panels)
        and inside(site, OUTPUT, c, c + (tile - 1) * ldc + NR * F4, products)
    )


@njit(**CHECK)
def dw_tile_fits(
    site, pixels, kh, kw, a, step, col_step, row_step, w, w_tap, count, rows, out, res, bias,
    nk, xs, weights, row_array, outs, residuals, biases,
) -> bool:  # fmt: skip
    """``microkernel.dw_tile_out`` (``pixels`` MR) and ``dw_tile_small`` (DW_SMALL): ``nk``
    floats at ``a + min(i, count - 1) * step + ky * row_step + kx * col_step`` and at
    ``w + (ky * kw + kx) * w_tap`` for every tap (none where ``kh`` is 0: the input rows all
    outside the image), and the epilogue of ``pixels`` rows."""
    end = a + (count - 1) * step + (kh - 1) * row_step + (kw - 1) * col_step + nk * F4
    return (
        count_in(site, count, 1, pixels)
        and count_in(site, nk, 1, DW_CH)
        and (kh == 0 or inside(site, INPUT, a, end, xs))
        and (kh == 0 or inside(site, WEIGHTS, w, w + (kh * kw - 1) * w_tap + nk * F4, weights))
        and _epilogue(site, pixels, rows, out, res, bias, nk, row_array, outs, residuals, biases)
    )


@njit(**CHECK)
def dw_slide_fits(
    site, kh, kw, a, step, col_step, row_step, w, w_tap, count, rows, out, res, bias, nk,
    col0, width, zero, sw, xs, weights, row_array, outs, residuals, biases, zeros,
) -> bool:  # fmt: skip
    """``microkernel.dw_slide_*`` (stride ``sw``, no dilation: ``col_step`` one pixel): MR
    pixels whatever ``count``; for each kernel row ky, ``nk`` floats at ``a + ky * row_step
    + j * col_step`` for the columns j (of ``(MR - 1) * sw + kw``) whose ``col0 + j`` lies in
    ``0 .. width - 1``, and at ``zero`` (DW_CH floats) for the others; the weights as
    ``dw_tile_out``'s, and the epilogue of MR rows."""
    span = (MR - 1) * sw + kw
    j0 = min(span, max(0, -col0))
    j1 = max(j0, min(span, width - col0))
    first = a + j0 * col_step
    end = a + (kh - 1) * row_step + (j1 - 1) * col_step + nk * F4
    return (
        count_in(site, count, 1, MR)
        and count_in(site, nk, 1, DW_CH)
        and (kh == 0 or j1 == j0 or inside(site, INPUT, first, end, xs))
        and (
            kh == 0
            or (j0 == 0 and j1 == span)
            or inside(site, PATCH, zero, zero + DW_CH * F4, zeros)
        )  # fmt: skip
        and (kh == 0 or inside(site, WEIGHTS, w, w + (kh * kw - 1) * w_tap + nk * F4, weights))
        and _epilogue(site, MR, rows, out, res, bias, nk, row_array, outs, residuals, biases)
    )


@njit(**CHECK)
def copy_lanes_fits(site, dst, src, nk, patch, xs) -> bool:
    """``microkernel.copy_lanes``: DW_CH floats written at ``dst``, ``nk`` read at ``src``
    (nothing where ``src`` is 0)."""
    return (
        count_in(site, nk, 1, DW_CH)
        and inside(site, PATCH, dst, dst + DW_CH * F4, patch)
        and (src == 0 or inside(site, INPUT, src, src + nk * F4, xs))
    )
