"""The CPU's convolution weight gradient (runtime/backends/cpu/weight_grad.py) on each of its
paths (shared by rows or by blocks; im2col, the input itself, shifted GEMMs; with and without
float64 flushes) against a float64 NumPy sum, on one and two threads. The small layers here
would all take one path: the thresholds are lowered to send them down the others."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from cnnc.runtime.backends import backend_for
from cnnc.runtime.backends.cpu import weight_grad
from cnnc.runtime.backends.cpu.blas import single_threaded


def reference(x, gy, groups, geometry):
    """gW[o, c, ky, kx] = sum over pixels of gy[o] * the input the tap reads, in float64."""
    kh, kw, sh, sw, ph, pw, dh, dw = geometry
    n, h, w, c_in = x.shape
    _, ho, wo, c_out = gy.shape
    cg, og = c_in // groups, c_out // groups
    xp = np.zeros((n, h + 2 * ph, w + 2 * pw, c_in))
    xp[:, ph : ph + h, pw : pw + w] = x
    gw = np.zeros((c_out, cg, kh, kw))
    for ky in range(kh):
        for kx in range(kw):
            tap = xp[:, ky * dh :: sh, kx * dw :: sw][:, :ho, :wo]
            for g in range(groups):
                a = tap[..., g * cg : (g + 1) * cg].reshape(-1, cg)
                b = gy[..., g * og : (g + 1) * og].reshape(-1, og).astype(np.float64)
                gw[g * og : (g + 1) * og, :, ky, kx] = b.T @ a
    return gw


IM2COL, DIRECT, SHIFTED = (
    weight_grad.SOURCE_IM2COL,
    weight_grad.SOURCE_DIRECT,
    weight_grad.SOURCE_SHIFTED,
)
LAYERS = [  # x shape NHWC, out channels, groups, geometry (kh kw sh sw ph pw dh dw), rows' source
    ((3, 9, 16, 16), 24, 1, (3, 3, 1, 1, 1, 1, 1, 1), SHIFTED),
    ((2, 9, 12, 32), 20, 2, (3, 3, 1, 1, 1, 1, 1, 1), SHIFTED),  # grouped
    ((2, 6, 20, 16), 8, 1, (3, 3, 1, 1, 2, 2, 2, 2), SHIFTED),  # dilated
    ((3, 7, 6, 5), 6, 1, (3, 2, 2, 1, 1, 0, 1, 2), IM2COL),  # strided, dilated
    ((4, 5, 5, 12), 8, 1, (1, 1, 1, 1, 0, 0, 1, 1), DIRECT),
    ((2, 8, 7, 6), 9, 3, (5, 3, 2, 3, 2, 1, 1, 1), IM2COL),  # grouped
]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("blocks", [False, True], ids=["rows", "blocks"])
@pytest.mark.parametrize("flush", [False, True], ids=["float32", "flushed"])
@pytest.mark.parametrize("layer", LAYERS, ids=lambda v: str(v) if isinstance(v, tuple) else None)
def test_weight_gradient_paths(monkeypatch, layer, blocks, flush, threads):
    if numba.config.NUMBA_NUM_THREADS < threads:
        pytest.skip(f"Numba runs at most {numba.config.NUMBA_NUM_THREADS} thread(s) here")
    shape, c_out, groups, geometry, source = layer
    kh, kw, sh, sw, ph, pw, dh, dw = geometry
    n, h, w, c_in = shape
    ho, wo = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    rng = np.random.default_rng(len(shape) + c_out + groups)
    x = rng.standard_normal(shape).astype(np.float32)
    gy = rng.standard_normal((n, ho, wo, c_out)).astype(np.float32)
    # blocks: any gradient is large; flushed: a float64 flush after every few rows
    monkeypatch.setattr(weight_grad, "BLOCKS_FLOATS", 1 if blocks else 1 << 30)
    monkeypatch.setattr(weight_grad, "BLOCK_K", 8)
    monkeypatch.setattr(weight_grad, "BLOCK_OUT", 4)
    monkeypatch.setattr(weight_grad, "CHUNK_FLOATS", 1)  # one image per chunk
    monkeypatch.setattr(weight_grad, "FLUSH_ROWS", 7 if flush else 1 << 30)
    tiling = weight_grad.weight_grad_tiling(x.shape, gy.shape, geometry, groups, threads)
    assert tiling.by_blocks == blocks and tiling.flushes == flush
    assert tiling.source == (IM2COL if blocks and source == SHIFTED else source)
    gw = np.full((c_out, c_in // groups, kh, kw), np.nan, np.float32)
    before = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        with single_threaded():
            for backend in (None, backend_for("cpu", "direct", tune=False)):
                weight_grad.conv_weight_grad(x, gy, gw, groups, geometry, backend)
                want = reference(x, gy, groups, geometry)
                err = np.abs(gw - want).max() / np.abs(want).max()
                assert err < 1e-5, (tiling, err)
    finally:
        numba.set_num_threads(before)


def test_shifted_and_direct_sources_are_chosen():
    """The paths above are the ones real layers take: ResNet's 56x56 layer shifted, a 1x1
    layer its input, a strided one im2col, a 7x7x512 layer shared by blocks."""
    pick = weight_grad.weight_grad_tiling
    assert pick((8, 56, 56, 64), (8, 56, 56, 64), (3, 3, 1, 1, 1, 1, 1, 1), 1, 2).source == SHIFTED
    assert pick((8, 28, 28, 64), (8, 28, 28, 96), (1, 1, 1, 1, 0, 0, 1, 1), 1, 2).source == DIRECT
    assert pick((8, 56, 56, 64), (8, 28, 28, 64), (3, 3, 2, 2, 1, 1, 1, 1), 1, 2).source == IM2COL
    assert pick((8, 7, 7, 512), (8, 7, 7, 512), (3, 3, 1, 1, 1, 1, 1, 1), 1, 2).by_blocks
