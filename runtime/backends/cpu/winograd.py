"""Winograd convolution F(m x m, 3 x 3) for stride-1, ungrouped 3x3 layers, NHWC.

Each output tile of m x m pixels reads a (m+2) x (m+2) input patch. The patch is transformed
(``B^T d B``), the (m+2)^2 transformed positions each become one GEMM over channels against
the pre-transformed weights (``G g G^T``, done once per layer), and the products are
transformed back (``A^T M A``) with bias, residual and activation applied on the way out.
Work items are runs of ``tiles_per_item`` tiles; one thread transforms a run's inputs into
its own scratch, calls single-threaded BLAS once per position, and writes the run's outputs,
so the transforms stay in cache around the GEMMs.

F(4x4, 3x3) does 36 multiplies per 16 outputs and channel pair where direct convolution does
144 (4x fewer), F(2x2, 3x3) 16 per 4 (2.25x fewer); both add rounding error that grows with
the tile (measured against direct convolution in tests/test_runtime_winograd.py and
docs/performance.md). ``--algorithm direct`` forces the exact path.

Dilated layers (DeepLabV3's backbone and ASPP) are d_h x d_w ordinary 3x3 convolutions, one on
each interleaved sub-image (the pixels whose row is ry mod d_h and column rx mod d_w; the
"space-to-batch" of TensorFlow's atrous convolution). Nothing is copied: a tile's m x m
outputs lie d apart in the output, and its (m+2) x (m+2) input patch d apart in the input,
so the transforms take the dilation as their step. The tiles of one image run sub-image by
sub-image, each sub-image's tiles numbered as an undilated layer's are.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .activations import JIT, PJIT, activate_run
from .aligned import aligned_empty, spread_4k
from .blocked import next_tile
from .bounds import MICRO_TILE, checking
from .extents import conv_tile_fits
from .microkernel import MR, NR, conv_tile, conv_tile_small

#: Transform matrices (B^T, G, A^T) per output tile size m, in float64 for packing.
TRANSFORMS = {
    2: (
        np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64),
        np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64),
        np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64),
    ),
    4: (
        np.array(
            [
                [4, 0, -5, 0, 1, 0],
                [0, -4, -4, 1, 1, 0],
                [0, 4, -4, -1, 1, 0],
                [0, -2, -1, 2, 1, 0],
                [0, 2, -1, -2, 1, 0],
                [0, 4, 0, -5, 0, 1],
            ],
            np.float64,
        ),
        np.array(
            [
                [1 / 4, 0, 0],
                [-1 / 6, -1 / 6, -1 / 6],
                [-1 / 6, 1 / 6, -1 / 6],
                [1 / 24, 1 / 12, 1 / 6],
                [1 / 24, -1 / 12, 1 / 6],
                [0, 0, 1],
            ],
            np.float64,
        ),
        np.array(
            [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
            np.float64,
        ),
    ),
}


def applies(kh, kw, sh, sw, dh, dw, groups) -> bool:
    """Winograd F(m, 3x3) computes exactly these layers (up to rounding), dilated or not."""
    return kh == kw == 3 and sh == sw == 1 and dh >= 1 and dw >= 1 and groups == 1


def transform_weights(wmat: np.ndarray, m: int) -> np.ndarray:
    """``conv``'s packed weights (1, 9*C, K), rows (ky, kx, c), as G g G^T in the
    micro-kernel's panels: (t*t, ceil(K / NR), C, NR), zero-padded past K.

    Computed in float64 by ``_transform_panels``, one channel of one panel at a time in a
    small scratch, and rounded to float32 once: the values NumPy's two ``tensordot`` per panel
    gave, bit for bit, in 48-81 ms for ResNet-18's 13 3x3 layers against 104-378 ms (page
    faults of the 144 MiB result included; 2-core Zen 4, one thread, shared). The whole layer
    at once in NumPy held float64 copies of 8x the result's size (ResNet's 512-channel
    layers: 300 MB for F4)."""
    _, rows, k_out = wmat.shape
    c_in = rows // 9
    t = m + 2
    out = aligned_empty((t * t, -(-k_out // NR), c_in, NR))
    _transform_panels(wmat.reshape(9, c_in, k_out), TRANSFORMS[m][1], out)
    return out


@njit(**JIT)
def _transform_panels(w, g, out):
    """``out[a*t + b, panel, c, j]`` = (G w[:, :, c, k] G^T)[a, b] for k = panel*NR + j < K,
    0 past K; ``w`` (9, C, K) rows (ky, kx), ``g`` (t, 3). Float64 sums, vectorised over the
    NR output channels of a panel."""
    t = g.shape[0]
    c_in, k_out = w.shape[1], w.shape[2]
    gw = np.empty((t, 3, NR))  # G g: row a of G times the kernel's column kx
    for panel in range(out.shape[1]):
        k0 = panel * NR
        nk = min(NR, k_out - k0)
        for c in range(c_in):
            for a in range(t):
                for kx in range(3):
                    for j in range(nk):
                        gw[a, kx, j] = (
                            g[a, 0] * w[kx, c, k0 + j]
                            + g[a, 1] * w[3 + kx, c, k0 + j]
                            + g[a, 2] * w[6 + kx, c, k0 + j]
                        )
            for a in range(t):
                for b in range(t):
                    row = out[a * t + b, panel, c]
                    for j in range(nk):
                        row[j] = (
                            g[b, 0] * gw[a, 0, j] + g[b, 1] * gw[a, 1, j] + g[b, 2] * gw[a, 2, j]
                        )
                    for j in range(nk, NR):
                        row[j] = 0.0


def untransform_weights(u: np.ndarray, m: int, k_out: int) -> np.ndarray:
    """``transform_weights``' input again, (1, 9*C, K), through G's pseudo-inverse (G has full
    column rank, so G g G^T keeps all of g), in float64: the weights come back within float32
    rounding. For a layer whose Winograd weights are its only copy (conv.py's ``_bind``)."""
    tt, panels, c_in, _ = u.shape
    t = m + 2
    g_inv = np.linalg.pinv(TRANSFORMS[m][1])
    w = np.empty((3, 3, c_in, k_out), np.float32)
    for panel in range(panels):
        k0, k1 = panel * NR, min(k_out, panel * NR + NR)
        part = u[:, panel, :, : k1 - k0].reshape(t, t, c_in, k1 - k0).astype(np.float64)
        back = np.tensordot(g_inv, np.tensordot(g_inv, part, axes=(1, 0)), axes=(1, 1))
        w[..., k0:k1] = back.transpose(1, 0, 2, 3)
    return w.reshape(1, 9 * c_in, k_out)


def matrices(m: int) -> tuple[np.ndarray, np.ndarray]:
    """(B^T, A^T) in float32, as the kernel takes them."""
    bt, _, at = TRANSFORMS[m]
    return bt.astype(np.float32), at.astype(np.float32)


@njit(**JIT)
def block_channels(k_out, k_blocks):
    """Output channels per block: whole panels of the micro-kernel."""
    panels = -(-k_out // NR)
    return -(-panels // k_blocks) * NR


def scratch_floats(m: int, tiles_per_item: int, c_in: int, k_out: int, k_blocks: int = 1) -> int:
    """Floats of scratch one thread of ``winograd_conv`` needs."""
    t = m + 2
    kb = block_channels.py_func(k_out, k_blocks)
    rows = -(-tiles_per_item // MR) * MR
    c = max(c_in, kb)
    v_row = row_stride.py_func(c_in)
    return t * t * (tiles_per_item * v_row + rows * kb) + 2 * t * t * c + m * t * kb + kb


@njit(**JIT)
def row_stride(c_in):
    """Floats from one tile's transformed input to the next in the scratch: the products
    read MR tiles at the same channel, so rows are spread off 4 KiB (``aligned.spread_4k``,
    as the direct kernel's pixels are: ``blocked.pixel_stride``)."""
    return spread_4k(c_in)


def tile_count(n_img: int, ho: int, wo: int, m: int, dh: int = 1, dw: int = 1) -> int:
    """Tiles of ``winograd_conv``: per image, each sub-image with the largest one's tiles
    (``_tile_grid``)."""
    th, tw, sub_h, sub_w = _tile_grid.py_func(ho, wo, m, dh, dw)
    return n_img * sub_h * sub_w * th * tw


@njit(**JIT)
def _tile_grid(ho, wo, m, dh, dw):
    """(tile rows, tile columns) of each sub-image and (row, column) residues that have
    any output: a sub-image has the tiles of the largest (the first: ceil(ho / dh) rows and
    ceil(wo / dw) columns, where the others have at most one fewer; a tile wholly past a
    smaller one's edge is computed and dropped), and a dilation past the map's size leaves
    the residues from ``ho`` (``wo``) on without outputs, so without tiles."""
    return (-(-ho // dh) + m - 1) // m, (-(-wo // dw) + m - 1) // m, min(dh, ho), min(dw, wo)


@njit(**JIT)
def _tile_origin(tile, grid, m, dh, dw):
    """(image, first output row, first output column) of tile number ``tile`` in ``grid``
    (``_tile_grid``): images, then sub-images (row residue, then column residue), then the
    sub-image's tile rows and columns. The tile's outputs are ``dh`` rows and ``dw`` columns
    apart."""
    th, tw, sub_h, sub_w = grid
    per_sub = th * tw
    per_image = sub_h * sub_w * per_sub
    n = tile // per_image
    r = tile - n * per_image
    sub = r // per_sub
    q = r - sub * per_sub
    ty = q // tw
    return n, sub // sub_w + ty * m * dh, sub % sub_w + (q - ty * tw) * m * dw


@njit(**JIT)
def _input_transform(x, n, iy0, ix0, dh, dw, t, bt, d, tmp, v, p):
    """v[i*t + j, p, :] = (B^T d B)[i, j, :] for the patch of x at (iy0, ix0), its rows ``dh``
    and columns ``dw`` apart, zero outside."""
    _, h, w, c_in = x.shape
    for a in range(t):
        iy = iy0 + a * dh
        for b in range(t):
            ix = ix0 + b * dw
            row = d[a, b]
            if 0 <= iy < h and 0 <= ix < w:
                src = x[n, iy, ix]
                for c in range(c_in):
                    row[c] = src[c]
            else:
                for c in range(c_in):
                    row[c] = 0.0
    for i in range(t):
        for b in range(t):
            acc = tmp[i, b]
            for c in range(c_in):
                acc[c] = 0.0
            for a in range(t):
                f = bt[i, a]
                if f != 0.0:
                    src = d[a, b]
                    for c in range(c_in):
                        acc[c] += f * src[c]
    for i in range(t):
        for j in range(t):
            dst = v[i * t + j, p]
            for c in range(c_in):
                dst[c] = 0.0
            for b in range(t):
                f = bt[j, b]
                if f != 0.0:
                    src = tmp[i, b]
                    for c in range(c_in):
                        dst[c] += f * src[c]


@njit(**JIT)
def _output_transform(
    mm, p, at, n, oy0, ox0, dh, dw, tmp, y, bias, res, has_res, out, k0, nk, act, alpha, beta
):
    """out[n, oy0 + r dh, ox0 + s dw, k0 + k] = act((A^T M A)[r, s, k] + bias (+ res)) for
    the ``nk`` channels from ``k0``, inside the image."""
    _, ho, wo, _ = out.shape
    m, t = at.shape
    b = bias[k0 : k0 + nk]
    for r in range(m):
        for j in range(t):
            acc = tmp[r, j]
            for k in range(nk):
                acc[k] = 0.0
            for i in range(t):
                f = at[r, i]
                if f != 0.0:
                    src = mm[i * t + j, p]
                    for k in range(nk):
                        acc[k] += f * src[k]
    for r in range(min(m, (ho - oy0 + dh - 1) // dh)):
        for s in range(min(m, (wo - ox0 + dw - 1) // dw)):
            for k in range(nk):
                y[k] = b[k]
            for j in range(t):
                f = at[s, j]
                if f != 0.0:
                    src = tmp[r, j]
                    for k in range(nk):
                        y[k] += f * src[k]
            oy, ox = oy0 + r * dh, ox0 + s * dw
            dst = out[n, oy, ox, k0 : k0 + nk]
            if has_res:
                rr = res[n, oy, ox, k0 : k0 + nk]
                for k in range(nk):
                    y[k] += rr[k]
            activate_run(y, nk, act, alpha, beta)
            for k in range(nk):
                dst[k] = y[k]


@njit(**JIT)
def _products(v, c_in, u, mm, no_offset, k0, nk, count, check):
    """``mm[xi, p, k] = sum over c < c_in of v[xi, p, c] * u[xi, k, c]`` for the run's ``count``
    tiles p and channels k0..k0 + nk - 1, on the micro-kernel: MR tiles by one panel of NR
    channels per call (MR_SMALL for the last few: ``blocked.next_tile``), the addresses
    taken from the arrays given (each position's own, which checked mode verifies the
    kernel stays in: extents.py)."""
    tt, _, step = v.shape  # a row of v holds c_in floats, then padding (``row_stride``)
    kb = mm.shape[2]
    for xi in range(tt):
        vx, ux, mx = v[xi], u[xi], mm[xi]
        for panel in range(k0 // NR, (k0 + nk + NR - 1) // NR):
            r0 = 0
            while r0 < count:
                tile = next_tile(count - r0)
                args = (1, c_in, vx.ctypes.data + r0 * step * 4, step * 4, no_offset.ctypes.data,
                        ux.ctypes.data + panel * c_in * NR * 4,
                        mx.ctypes.data + (r0 * kb + panel * NR - k0) * 4, kb * 4,
                        min(tile, count - r0))  # fmt: skip
                if check and not conv_tile_fits(MICRO_TILE, tile, *args, vx, no_offset, ux, mx):
                    return
                if tile == MR:
                    conv_tile(*args)
                else:
                    conv_tile_small(*args)
                r0 += tile


@njit(**PJIT)
def winograd_conv(
    x, u, bias, res, out, scratch, ph, pw, bt, at, act, alpha, beta, per_item, k_blocks, dh, dw
):
    """Stride-1 3x3 convolution, NHWC, by Winograd F(m x m, 3 x 3) with m = ``at.shape[0]``,
    dilated by ``dh`` rows and ``dw`` columns (1 for none).

    ``u``: transformed weights in panels (``transform_weights``); ``res`` a residual added
    before the activation (size 0 for none); ``scratch`` one row per thread of at least
    ``scratch_floats`` floats. Work items are (block of ``k_blocks``-th of the panels, run
    of ``per_item`` tiles), block-major: a thread's consecutive items share one block of the
    transformed weights, which matters where they are large (512 channels: 36 MB for F4).
    The per-position products over channels run on the micro-kernel (microkernel.py): with
    few tiles and many channels (deep layers at batch 1) BLAS spent its time packing weights
    used by a handful of rows (36 GEMMs of 49 x 512 x 512: 25 GFLOP/s; pre-packed panels 39)."""
    n_img, _, _, c_in = x.shape
    _, ho, wo, k_out = out.shape
    m, t = at.shape
    tt = t * t
    grid = _tile_grid(ho, wo, m, dh, dw)
    total = n_img * grid[0] * grid[1] * grid[2] * grid[3]
    runs = (total + per_item - 1) // per_item
    kb = block_channels(k_out, k_blocks)
    rows = (per_item + MR - 1) // MR * MR
    items = runs * k_blocks
    threads = scratch.shape[0]
    has_res = res.size > 0
    c_max = max(c_in, kb)
    v_row = row_stride(c_in)
    v_end = tt * per_item * v_row
    m_end = v_end + tt * rows * kb
    y_start = m_end + 2 * tt * c_max
    no_offset = np.zeros(1, np.intp)  # used in the loop: alive until it ends
    check = checking()
    for thr in prange(threads):
        buf = scratch[thr]
        v = buf[:v_end].reshape(tt, per_item, v_row)
        d = buf[m_end : m_end + tt * c_in].reshape(t, t, c_in)
        tmp_in = buf[m_end + tt * c_max : m_end + tt * c_max + tt * c_in].reshape(t, t, c_in)
        y = buf[y_start + m * t * kb : y_start + m * t * kb + kb]
        last_run = -1
        for item in range(thr * items // threads, (thr + 1) * items // threads):
            k0 = (item // runs) * kb
            nk = min(k_out, k0 + kb) - k0
            if nk <= 0:
                continue
            run = item % runs
            p0 = run * per_item
            count = min(total, p0 + per_item) - p0
            mm = buf[v_end:m_end].reshape(tt, rows, kb)
            tmp_out = buf[y_start : y_start + m * t * kb].reshape(m, t, kb)
            if run != last_run:  # the same tiles for the next block: transformed already
                for p in range(count):
                    n, oy0, ox0 = _tile_origin(p0 + p, grid, m, dh, dw)
                    _input_transform(x, n, oy0 - ph, ox0 - pw, dh, dw, t, bt, d, tmp_in, v, p)
                last_run = run
            _products(v, c_in, u, mm, no_offset, k0, nk, count, check)
            for p in range(count):
                n, oy0, ox0 = _tile_origin(p0 + p, grid, m, dh, dw)
                _output_transform(
                    mm,
                    p,
                    at,
                    n,
                    oy0,
                    ox0,
                    dh,
                    dw,
                    tmp_out,
                    y,
                    bias,
                    res,
                    has_res,
                    out,
                    k0,
                    nk,
                    act,
                    alpha,
                    beta,
                )
