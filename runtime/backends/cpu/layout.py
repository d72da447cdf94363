"""Kernels that move data on the CPU (Numba): resampling, concat, crop, flatten, channel
selection and padding. NHWC float32."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..codes import PAD_MODES
from .activations import JIT, PJIT
from .table import GRADS, KERNELS


@njit(**PJIT)
def _resize_nearest(x, out, sy, sx):
    """PyTorch's nearest: source ``min(floor(dst * scale), size - 1)`` in float32."""
    n_img, h, w, c = x.shape
    _, ho, wo, _ = out.shape
    for t in prange(n_img * ho):
        n = t // ho
        oy = t % ho
        iy = min(int(np.floor(np.float32(oy) * sy)), h - 1)
        for ox in range(wo):
            ix = min(int(np.floor(np.float32(ox) * sx)), w - 1)
            for ch in range(c):
                out[n, oy, ox, ch] = x[n, iy, ix, ch]


@njit(**PJIT)
def _resize_bilinear(x, out, sy, sx):
    n_img = x.shape[0]
    ho = out.shape[1]
    for t in prange(n_img * ho):
        _bilinear_row(x, out, t // ho, t % ho, sy, sx)


@njit(**JIT)
def _source(dst, scale, size):
    """align_corners=False: ``scale * (dst + 0.5) - 0.5`` clamped at 0, in float32; returns
    (first index, second index, weight of the second)."""
    src = max(scale * (np.float32(dst) + np.float32(0.5)) - np.float32(0.5), np.float32(0.0))
    i0 = min(int(src), size - 1)
    i1 = i0 + 1 if i0 < size - 1 else i0
    return i0, i1, src - np.float32(i0)


@njit(**JIT)
def _bilinear_row(x, out, n, oy, sy, sx):
    """One output row. Its own function: Numba's parallel transform mishandled the variables
    of a kernel that branched inside its ``prange`` body."""
    h, w, c = x.shape[1], x.shape[2], x.shape[3]
    wo = out.shape[2]
    y0, y1, ly = _source(oy, sy, h)
    for ox in range(wo):
        x0, x1, lx = _source(ox, sx, w)
        for ch in range(c):
            top = x[n, y0, x0, ch] * (1 - lx) + x[n, y0, x1, ch] * lx
            bot = x[n, y1, x0, ch] * (1 - lx) + x[n, y1, x1, ch] * lx
            out[n, oy, ox, ch] = top * (1 - ly) + bot * ly


@njit(**PJIT)
def concat(x, out, c0):
    """Copy ``x`` (N, H, W, Cx) into channels [c0, c0 + Cx) of ``out``."""
    n_img, h, w, c = x.shape
    for t in prange(n_img * h):
        n = t // h
        iy = t % h
        for ix in range(w):
            for ch in range(c):
                out[n, iy, ix, c0 + ch] = x[n, iy, ix, ch]


@njit(**PJIT)
def crop(x, out, oy, ox):
    n_img, ho, wo, c = out.shape
    for t in prange(n_img * ho):
        n = t // ho
        y = t % ho
        for xx in range(wo):
            for ch in range(c):
                out[n, y, xx, ch] = x[n, y + oy, xx + ox, ch]


@njit(**PJIT)
def nchw_to_nhwc(x, out):
    """The (N, C, H, W) ``x`` into the (N, H, W, C) ``out``, rows shared across the threads
    (``CpuBackend.nchw_to_runtime`` for large inputs)."""
    n_img, c, h, w = x.shape
    for r in prange(n_img * h):
        n, iy = r // h, r % h
        for ix in range(w):
            for ch in range(c):
                out[n, iy, ix, ch] = x[n, ch, iy, ix]


@njit(**PJIT)
def flatten(x, out):
    """NHWC to (N, C*H*W) in C, H, W order, as PyTorch flattens NCHW."""
    n_img, h, w, c = x.shape
    for n in prange(n_img):
        for iy in range(h):
            for ix in range(w):
                for ch in range(c):
                    out[n, (ch * h + iy) * w + ix] = x[n, iy, ix, ch]


@njit(**PJIT)
def gather_channels(x2, index, out2):
    """``out[:, j] = x[:, index[j]]`` on (positions, C) views: channel slices and shuffles."""
    rows, c = out2.shape
    for r in prange(rows):
        for j in range(c):
            out2[r, j] = x2[r, index[j]]


@njit(inline="always", **JIT)
def _pad_source(i, size, mode):
    """Input index for padded index ``i`` (already shifted by the leading padding); -1 reads
    zero."""
    if 0 <= i < size:
        return i
    if mode == 1:
        return -i if i < 0 else 2 * (size - 1) - i
    if mode == 2:
        return 0 if i < 0 else size - 1
    return -1


@njit(**PJIT)
def pad(x, out, top, left, mode):
    n_img, h, w, c = x.shape
    _, ho, wo, _ = out.shape
    for t in prange(n_img * ho):
        n = t // ho
        oy = t % ho
        iy = _pad_source(oy - top, h, mode)
        for ox in range(wo):
            ix = _pad_source(ox - left, w, mode)
            if iy < 0 or ix < 0:
                for ch in range(c):
                    out[n, oy, ox, ch] = 0.0
            else:
                for ch in range(c):
                    out[n, oy, ox, ch] = x[n, iy, ix, ch]


def resize(x, out, scale_y, scale_x, bilinear):
    """Nearest or bilinear resampling with PyTorch's source scales (input / output size, or
    1 / factor for ``upsample``), computed in float32 as PyTorch does."""
    sy, sx = np.float32(scale_y), np.float32(scale_x)
    (_resize_bilinear if bilinear else _resize_nearest)(x, out, sy, sx)


@KERNELS.register("upsample")
def launch_upsample(backend, step, arrays, ins, res, out, work):
    a = step.attrs
    resize(ins[0], out, 1.0 / a["scale"][0], 1.0 / a["scale"][1], a["mode"] == "bilinear")


@KERNELS.register("resize")
def launch_resize(backend, step, arrays, ins, res, out, work):
    x = ins[0]
    resize(
        x,
        out,
        x.shape[1] / out.shape[1],
        x.shape[2] / out.shape[2],
        step.attrs["mode"] == "bilinear",
    )


@KERNELS.register("concat")
def launch_concat(backend, step, arrays, ins, res, out, work):
    c0 = 0
    o4 = out if out.ndim == 4 else out.reshape(out.shape[0], 1, 1, out.shape[1])
    for x in ins:
        x4 = x if x.ndim == 4 else x.reshape(x.shape[0], 1, 1, x.shape[1])
        concat(x4, o4, c0)
        c0 += x4.shape[3]


@KERNELS.register("crop")
def launch_crop(backend, step, arrays, ins, res, out, work):
    crop(ins[0], out, step.attrs["oy"], step.attrs["ox"])


@KERNELS.register("flatten")
def launch_flatten(backend, step, arrays, ins, res, out, work):
    flatten(ins[0], out)


@KERNELS.register("channels")
def launch_channels(backend, step, arrays, ins, res, out, work):
    x = ins[0]
    gather_channels(x.reshape(-1, x.shape[-1]), arrays["index"], out.reshape(-1, out.shape[-1]))


@KERNELS.register("pad")
def launch_pad(backend, step, arrays, ins, res, out, work):
    top, _, left, _ = step.attrs["p"]
    pad(ins[0], out, top, left, PAD_MODES[step.attrs["mode"]])


# ---- backward ----------------------------------------------------------------------------


@njit(**PJIT)
def unflatten(g, gx):
    """The adjoint of ``flatten``: (N, C*H*W) in C, H, W order back to NHWC."""
    n_img, h, w, c = gx.shape
    for n in prange(n_img):
        for iy in range(h):
            for ix in range(w):
                for ch in range(c):
                    gx[n, iy, ix, ch] = g[n, (ch * h + iy) * w + ix]


@GRADS.register("flatten", needs=())
def grad_flatten(backend, step, arrays, saved, gy, gxs, gws):
    unflatten(gy, gxs[0])


def _blocks(gx, backend) -> int:
    from .pool import channel_blocks

    return channel_blocks(gx.shape[0], gx.shape[3], backend.threads)


@njit(inline="always", **JIT)
def _block(t, blocks, c):
    """Work item ``t`` of (image, channel block) -> (image, first channel, end channel)."""
    size = (c + blocks - 1) // blocks
    c0 = (t % blocks) * size
    return t // blocks, c0, min(c, c0 + size)


@njit(**JIT)
def _zero_block(gx, n, c0, c1):
    _, h, w, _ = gx.shape
    for iy in range(h):
        for ix in range(w):
            for ch in range(c0, c1):
                gx[n, iy, ix, ch] = 0.0


@njit(**PJIT)
def _resize_nearest_backward(gy, gx, sy, sx, blocks):
    """Each output pixel's gradient added to the input pixel it copied; items (image,
    channel block) own their part of ``gx``."""
    n_img, h, w, c = gx.shape
    _, ho, wo, _ = gy.shape
    for t in prange(n_img * blocks):
        n, c0, c1 = _block(t, blocks, c)
        _zero_block(gx, n, c0, c1)
        for oy in range(ho):
            iy = min(int(np.floor(np.float32(oy) * sy)), h - 1)
            for ox in range(wo):
                ix = min(int(np.floor(np.float32(ox) * sx)), w - 1)
                for ch in range(c0, c1):
                    gx[n, iy, ix, ch] += gy[n, oy, ox, ch]


@njit(**PJIT)
def _resize_bilinear_backward(gy, gx, sy, sx, blocks):
    n_img, c = gx.shape[0], gx.shape[3]
    for t in prange(n_img * blocks):
        n, c0, c1 = _block(t, blocks, c)
        _bilinear_back_block(gy, gx, n, c0, c1, sy, sx)


@njit(**JIT)
def _bilinear_back_block(gy, gx, n, c0, c1, sy, sx):
    """Each output pixel's gradient shared among its four sources with the forward's
    weights (``_source``), channels c0..c1 of image n."""
    _, h, w, _ = gx.shape
    _, ho, wo, _ = gy.shape
    _zero_block(gx, n, c0, c1)
    for oy in range(ho):
        y0, y1, ly = _source(oy, sy, h)
        for ox in range(wo):
            x0, x1, lx = _source(ox, sx, w)
            w00 = (1 - ly) * (1 - lx)
            w01 = (1 - ly) * lx
            w10 = ly * (1 - lx)
            w11 = ly * lx
            for ch in range(c0, c1):
                g = gy[n, oy, ox, ch]
                gx[n, y0, x0, ch] += g * w00
                gx[n, y0, x1, ch] += g * w01
                gx[n, y1, x0, ch] += g * w10
                gx[n, y1, x1, ch] += g * w11


def resize_backward(gy, gx, scale_y, scale_x, bilinear, blocks):
    """The adjoint of ``resize`` (same scales)."""
    sy, sx = np.float32(scale_y), np.float32(scale_x)
    (_resize_bilinear_backward if bilinear else _resize_nearest_backward)(gy, gx, sy, sx, blocks)


@njit(**PJIT)
def concat_backward(gy, gx, c0):
    """``gx`` = channels [c0, c0 + Cx) of ``gy``: the adjoint of ``concat``."""
    n_img, h, w, c = gx.shape
    for t in prange(n_img * h):
        n = t // h
        iy = t % h
        for ix in range(w):
            for ch in range(c):
                gx[n, iy, ix, ch] = gy[n, iy, ix, c0 + ch]


@njit(**PJIT)
def crop_backward(gy, gx, oy, ox):
    """``gy`` put back at (oy, ox) of a zeroed ``gx``; each thread writes whole rows."""
    n_img, h, w, c = gx.shape
    _, ho, wo, _ = gy.shape
    for t in prange(n_img * h):
        n = t // h
        iy = t % h
        inside = oy <= iy < oy + ho
        for ix in range(w):
            if inside and ox <= ix < ox + wo:
                for ch in range(c):
                    gx[n, iy, ix, ch] = gy[n, iy - oy, ix - ox, ch]
            else:
                for ch in range(c):
                    gx[n, iy, ix, ch] = 0.0


@njit(**PJIT)
def scatter_channels(g2, index, gx2):
    """The adjoint of ``gather_channels``: ``gx[:, index[j]] += g[:, j]``, unread channels
    zero; each thread owns whole rows."""
    rows, c = g2.shape
    for r in prange(rows):
        d = gx2[r]
        d[:] = 0.0
        for j in range(c):
            d[index[j]] += g2[r, j]


@njit(**PJIT)
def pad_backward(gy, gx, top, left, mode, blocks):
    """The adjoint of ``pad``: each padded pixel's gradient added to the pixel it copied
    (reflect and replicate add the border's several copies into one), padding's zeros
    dropped. Items (image, channel block) own their part of ``gx``."""
    n_img, h, w, c = gx.shape
    _, ho, wo, _ = gy.shape
    for t in prange(n_img * blocks):
        n, c0, c1 = _block(t, blocks, c)
        _zero_block(gx, n, c0, c1)
        for oy in range(ho):
            iy = _pad_source(oy - top, h, mode)
            if iy < 0:
                continue
            for ox in range(wo):
                ix = _pad_source(ox - left, w, mode)
                if ix >= 0:
                    for ch in range(c0, c1):
                        gx[n, iy, ix, ch] += gy[n, oy, ox, ch]


@GRADS.register("upsample", needs=())
def grad_upsample(backend, step, arrays, saved, gy, gxs, gws):
    a, gx = step.attrs, gxs[0]
    if gx is not None:
        bilinear = a["mode"] == "bilinear"
        scales = 1.0 / a["scale"][0], 1.0 / a["scale"][1]
        resize_backward(gy, gx, *scales, bilinear, _blocks(gx, backend))


@GRADS.register("resize", needs=())
def grad_resize(backend, step, arrays, saved, gy, gxs, gws):
    gx = gxs[0]
    if gx is not None:
        scales = gx.shape[1] / gy.shape[1], gx.shape[2] / gy.shape[2]
        bilinear = step.attrs["mode"] == "bilinear"
        resize_backward(gy, gx, *scales, bilinear, _blocks(gx, backend))


@GRADS.register("concat", needs=())
def grad_concat(backend, step, arrays, saved, gy, gxs, gws):
    c0 = 0
    g4 = gy if gy.ndim == 4 else gy.reshape(gy.shape[0], 1, 1, gy.shape[1])
    for gx, c in zip(gxs, step.attrs["widths"]):
        if gx is not None:
            concat_backward(g4, gx if gx.ndim == 4 else gx.reshape(gx.shape[0], 1, 1, c), c0)
        c0 += c


@GRADS.register("crop", needs=())
def grad_crop(backend, step, arrays, saved, gy, gxs, gws):
    if gxs[0] is not None:
        crop_backward(gy, gxs[0], step.attrs["oy"], step.attrs["ox"])


@GRADS.register("channels", needs=())
def grad_channels(backend, step, arrays, saved, gy, gxs, gws):
    gx = gxs[0]
    if gx is not None:
        g2 = gy.reshape(-1, gy.shape[-1])
        scatter_channels(g2, arrays["index"], gx.reshape(-1, gx.shape[-1]))


@GRADS.register("pad", needs=())
def grad_pad(backend, step, arrays, saved, gy, gxs, gws):
    gx = gxs[0]
    if gx is not None:
        top, _, left, _ = step.attrs["p"]
        mode = PAD_MODES[step.attrs["mode"]]
        pad_backward(gy, gx, top, left, mode, _blocks(gx, backend))
