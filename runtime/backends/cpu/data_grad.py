"""Input gradients of convolutions on the CPU.

With stride 1 (and padding within the dilated kernel) a convolution's input gradient is itself
a convolution: of ``gy``, padded by ``d (k - 1) - p``, with the weights flipped and in- and
output channels swapped; that runs on the forward path, its algorithm chosen as for any layer.

Other geometries (strided, or padded past the kernel) take the transposed GEMM and col2im,
an image per thread at a time: a tile of ``gy``'s rows times the weights (``gy W``, one BLAS
call per group into the thread's scratch), then each column entry added back to the input
pixel and channel it was read from, in order (deterministic), into the image's gradient
that the same thread zeroed just before (cache-warm). Measured on one thread (CPU time)
at batch 64, CIFAR ResNet-20's strided layers: 1x1 16->32 7.7 -> 0.3 ms, 3x3 16->32 11.1 ->
2.1 ms; ResNet-18's at batch 8, 3x3 64->128 17 -> 10 ms (NumPy's GEMM over blocks of
images and a col2im pass indexing per channel before).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .activations import JIT, PJIT
from .blas import gemm
from .conv import _bind
from .elementwise import run_call
from .tiling import TILE_FLOATS

F4 = 4  # bytes per float32

_NO_RESIDUAL = np.empty((0, 0, 0, 0), np.float32)


def conv_data_grad(gy, weight, gx, groups: int, geometry: tuple, backend=None):
    """Input gradient ``gx`` (NHWC) of a convolution with ``weight`` (PyTorch's (out, C/g,
    kh, kw)). ``backend`` lets a stride-1 layer's run as a forward convolution on it. The
    flipped (or reordered) weights are made for the call and dropped after it: a training
    step changes the weights before the next, and a copy kept for every layer would hold
    as much memory as the weights (ResNet-18: 40 MiB)."""
    kh, kw, sh, sw, ph, pw, dh, dw = geometry
    flip_ph, flip_pw = dh * (kh - 1) - ph, dw * (kw - 1) - pw
    if backend is None or sh != 1 or sw != 1 or flip_ph < 0 or flip_pw < 0:
        data_grad_columns(gy, _column_weights(weight, groups, kh, kw), gx, geometry, backend)
        return
    step, arrays = _flipped_conv(weight, groups, geometry)
    run_call(_bind(backend, step, arrays, gy, _NO_RESIDUAL, gx))


def _column_weights(weight, groups: int, kh: int, kw: int) -> np.ndarray:
    """(groups, out/g, kh*kw*C/g) float32, columns ordered (ky, kx, c) as im2col's."""
    c_out, cg = weight.shape[:2]
    og = c_out // groups
    w = weight.reshape(groups, og, cg, kh, kw).transpose(0, 1, 3, 4, 2)
    return np.ascontiguousarray(w.reshape(groups, og, kh * kw * cg), np.float32)


def _flipped_conv(weight, groups: int, geometry: tuple):
    """The forward step (and its packed weights) whose output is a stride-1 convolution's
    input gradient: weights (C, out/g, kh, kw) = the layer's with each group's channels
    transposed and taps reversed."""
    from ...lowering import EPILOGUE, PACKERS, Step

    kh, kw, _, _, ph, pw, dh, dw = geometry
    c_out, cg = weight.shape[:2]
    og = c_out // groups
    flipped = weight.reshape(groups, og, cg, kh, kw).transpose(0, 2, 1, 3, 4)[..., ::-1, ::-1]
    flipped = flipped.reshape(groups * cg, og, kh, kw)
    attrs = dict(
        kh=kh, kw=kw, sh=1, sw=1, ph=dh * (kh - 1) - ph, pw=dw * (kw - 1) - pw, dh=dh, dw=dw,
        groups=groups, mult=1, **EPILOGUE,
    )  # fmt: skip
    raw = {"weight": flipped, "bias": np.zeros(groups * cg, np.float32)}
    packed = PACKERS["conv"](raw, attrs)
    arrays = {k: np.ascontiguousarray(v, np.float32) for k, v in packed.items()}
    return Step("conv", ["gradient"], [], -1, attrs=attrs), arrays


def columns_tiling(gy_shape, k: int) -> int:
    """Output rows per tile of ``data_grad_columns``: a tile's columns near TILE_FLOATS."""
    _, ho, wo, _ = gy_shape
    return max(1, min(ho, TILE_FLOATS // max(1, wo * k)))


def data_grad_columns(gy, wmat, gx, geometry: tuple, backend=None) -> None:
    """Input gradient by the transposed GEMM and col2im (the module's docstring); ``wmat``
    from ``_column_weights``; ``backend`` lends its per-thread scratch."""
    import numba

    groups, _, k = wmat.shape
    rows = columns_tiling(gy.shape, k)
    floats = rows * gy.shape[2] * k
    if backend is not None:
        scratch = backend.scratch(floats)
    else:
        scratch = np.empty((numba.get_num_threads(), floats), np.float32)
    _columns_images(gy, wmat, gx, scratch, *geometry, rows)


@njit(**PJIT)
def _columns_images(gy, wmat, gx, scratch, kh, kw, sh, sw, ph, pw, dh, dw, rows_per_tile):
    """Thread ``t`` takes a contiguous run of images: each zeroed, then its ``gy`` a tile
    of rows at a time through the GEMM into ``scratch[t]`` and col2im (``_col2im_add``)."""
    n_img, h, w, c_in = gx.shape
    _, ho, wo, c_out = gy.shape
    groups, og, k = wmat.shape
    cg = c_in // groups
    threads = scratch.shape[0]
    gxf = gx.reshape(-1)
    image = h * w * c_in
    for t in prange(threads):
        for n in range(t * n_img // threads, (t + 1) * n_img // threads):
            base = np.uintp(n * image)
            for j in range(np.uintp(image)):
                gxf[base + j] = 0.0
            for oy0 in range(0, ho, rows_per_tile):
                oy1 = min(ho, oy0 + rows_per_tile)
                m = (oy1 - oy0) * wo
                col = scratch[t, : m * k]
                for gi in range(groups):
                    g0 = (n * ho + oy0) * wo * c_out + gi * og
                    gemm(m, k, og, gy, g0, c_out, wmat, gi * og * k, k, col, 0, k, 0.0)
                    _col2im_add(col, gxf, n, oy0, oy1, h, w, c_in, wo, kh, kw, sh, sw, ph, pw,
                                dh, dw, gi * cg, cg)  # fmt: skip


@njit(**JIT)
def _col2im_add(col, gxf, n, oy0, oy1, h, w, c_in, wo, kh, kw, sh, sw, ph, pw, dh, dw, c0, cg):
    """The adjoint of im2col for rows ``oy0 .. oy1`` of image ``n``: each entry of ``col``
    (rows (oy, ox), columns (ky, kx, c)) added into the input pixel and channel ``c0 + c``
    it was read from. Flat, unsigned indices (the loops vectorise); where a kernel row lies
    inside the image and the group spans every channel, its kw*C entries are one run."""
    k = kh * kw * cg
    span = kw * cg
    runs = dw == 1 and cg == c_in
    for oy in range(oy0, oy1):
        for ox in range(wo):
            src0 = ((oy - oy0) * wo + ox) * k
            ix0 = ox * sw - pw
            inside = runs and ix0 >= 0 and ix0 + kw <= w
            for ky in range(kh):
                iy = oy * sh - ph + ky * dh
                if iy < 0 or iy >= h:
                    continue
                row = (n * h + iy) * w
                if inside:
                    dst = np.uintp((row + ix0) * c_in)
                    src = np.uintp(src0 + ky * span)
                    for j in range(np.uintp(span)):
                        gxf[dst + j] += col[src + j]
                    continue
                for kx in range(kw):
                    ix = ix0 + kx * dw
                    if 0 <= ix < w:
                        dst = np.uintp((row + ix) * c_in + c0)
                        src = np.uintp(src0 + (ky * kw + kx) * cg)
                        for j in range(np.uintp(cg)):
                            gxf[dst + j] += col[src + j]
