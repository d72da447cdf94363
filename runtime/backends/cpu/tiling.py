"""Tiling policy of the CPU convolution: which path a convolution takes, how its output is cut
into work items, and how much scratch a thread needs. Pure Python and a few jitted predicates
that the kernels share (Python calls their ``py_func``: loading them compiled costs a cold
process tenths of a second); the kernels live in conv.py.
"""

from __future__ import annotations

import math

from numba import njit

from .activations import JIT
from .blas import SMALL_MNK

#: Target im2col tile size in floats: about the 1 MiB L2 cache of a core here. Measured on a
#: 3x3 conv, 256 channels at 14x14: 83 GFLOP/s with 1-row tiles, 146 with 8-row tiles.
TILE_FLOATS = 256 * 1024
#: Output channels per work item in small-GEMM tiles: 64-wide blocks beat 32 and 128 on
#: ResNet's and VGG's 512-channel layers (7x7: 115 GFLOP/s against 89 with 128).
CHANNEL_BLOCK = 64


@njit(**JIT)
def uses_direct_gemm(kh, kw, sh, sw, ph, pw):
    """1x1 convolutions with stride 1 and no padding multiply the input itself: no im2col."""
    return kh == 1 and kw == 1 and sh == 1 and sw == 1 and ph == 0 and pw == 0


@njit(**JIT)
def uses_shifted_gemm(kh, kw, sh, sw, cg):
    """Stride-1 convolutions wider than 1x1 with at least 32 channels per group run as one GEMM
    per kernel tap (K = channels), without im2col."""
    return sh == 1 and sw == 1 and kh * kw > 1 and cg >= 32


def conv_scratch_floats(
    rows_per_tile: int,
    channel_blocks: int,
    x_shape,
    out_shape,
    kh: int,
    kw: int,
    sh: int,
    sw: int,
    ph: int,
    pw: int,
    dh: int,
    dw: int,
    groups: int,
) -> int:
    """Floats of scratch one thread of ``conv`` needs with this tiling."""
    _, h, w, c_in = x_shape
    wo, c_out = out_shape[2], out_shape[3]
    cg = c_in // groups
    if uses_shifted_gemm.py_func(kh, kw, sh, sw, cg):
        wp = w + 2 * pw
        rows = min(rows_per_tile, out_shape[1])
        block = -(-(c_out // groups) // channel_blocks)
        return ((rows + dh * (kh - 1)) * wp + dw * (kw - 1) + 1) * c_in + rows * wp * block
    if uses_direct_gemm.py_func(kh, kw, sh, sw, ph, pw):
        return 0
    return min(rows_per_tile, out_shape[1]) * wo * kh * kw * cg


def conv_tiling(
    x_shape, out_shape, kh: int, kw: int, sh: int, sw: int, pw: int, groups: int, threads: int
):
    """(rows per tile, output-channel blocks) for ``conv`` on these shapes.

    Stride-1 convolutions on the shifted-GEMM path, and 1x1 convolutions with 128 to 976 input
    channels, get tiles sized for BLAS's small-matrix kernels (``small_gemm_tiling``); the
    rest get im2col tiles near TILE_FLOATS (``l2_tiling``). Measured with 2 threads, ResNet-50's
    1x1 layers: 28x28 512->128 170 -> 209 GFLOP/s, 7x7 512->2048 146 -> 189, and 2048->512
    150 with L2 tiles against 125 with small ones, hence the upper bound."""
    n_img, _, w, c_in = x_shape
    _, ho, wo, c_out = out_shape
    cg, og = c_in // groups, c_out // groups
    if uses_shifted_gemm.py_func(kh, kw, sh, sw, cg):
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
    while n_img * math.ceil(ho / rows) * blocks < 2 * threads and c_out // (blocks * 2) >= 64:
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
