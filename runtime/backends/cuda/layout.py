"""Kernels that move data on CUDA (numba.cuda): resampling, concat, crop, flatten, channel
gathers and padding. NHWC float32, one thread per output."""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32

from ..codes import PAD_MODES
from .indexing import nhwc
from .launch import KERNELS, THREADS, blocks, flat


@cuda.jit(device=True, inline=True)
def _source(dst, scale, size):
    """align_corners=False source index pair and weight, in float32 as PyTorch computes."""
    src = max(scale * (float32(dst) + float32(0.5)) - float32(0.5), float32(0.0))
    i0 = min(int(src), size - 1)
    i1 = i0 + 1 if i0 < size - 1 else i0
    return i0, i1, src - float32(i0)


@cuda.jit
def resize(x, out, n_img, h, wd, c, ho, wo, sy, sx, bilinear):
    """Nearest (source floor(dst * scale)) or bilinear resampling, scales = input / output."""
    i = cuda.grid(1)
    if i >= n_img * ho * wo * c:
        return
    n, oy, ox, ch = nhwc(i, ho, wo, c)
    if not bilinear:
        iy = min(int(math.floor(float32(oy) * sy)), h - 1)
        ix = min(int(math.floor(float32(ox) * sx)), wd - 1)
        out[i] = x[((n * h + iy) * wd + ix) * c + ch]
        return
    y0, y1, ly = _source(oy, sy, h)
    x0, x1, lx = _source(ox, sx, wd)
    row0 = (n * h + y0) * wd
    row1 = (n * h + y1) * wd
    top = x[(row0 + x0) * c + ch] * (1 - lx) + x[(row0 + x1) * c + ch] * lx
    bot = x[(row1 + x0) * c + ch] * (1 - lx) + x[(row1 + x1) * c + ch] * lx
    out[i] = top * (1 - ly) + bot * ly


@cuda.jit
def concat(x, out, pixels, cx, c_out, c0):
    i = cuda.grid(1)
    if i < pixels * cx:
        ch = i % cx
        p = i // cx
        out[p * c_out + c0 + ch] = x[i]


@cuda.jit
def crop(x, out, n_img, h, wd, c, ho, wo, oy, ox):
    i = cuda.grid(1)
    if i >= n_img * ho * wo * c:
        return
    n, y, xx, ch = nhwc(i, ho, wo, c)
    out[i] = x[((n * h + y + oy) * wd + xx + ox) * c + ch]


@cuda.jit
def flatten(x, out, n_img, h, wd, c):
    """NHWC to (N, C*H*W) in C, H, W order."""
    i = cuda.grid(1)
    if i >= n_img * h * wd * c:
        return
    n, iy, ix, ch = nhwc(i, h, wd, c)
    out[n * c * h * wd + (ch * h + iy) * wd + ix] = x[i]


@cuda.jit
def gather_channels(x, index, out, size, c_in, c_out):
    i = cuda.grid(1)
    if i < size:
        out[i] = x[(i // c_out) * c_in + index[i % c_out]]


@cuda.jit(device=True, inline=True)
def _pad_source(i, size, mode):
    if 0 <= i < size:
        return i
    if mode == 1:
        return -i if i < 0 else 2 * (size - 1) - i
    if mode == 2:
        return 0 if i < 0 else size - 1
    return -1


@cuda.jit
def pad(x, out, n_img, h, wd, c, ho, wo, top, left, mode):
    i = cuda.grid(1)
    if i >= n_img * ho * wo * c:
        return
    n, oy, ox, ch = nhwc(i, ho, wo, c)
    iy = _pad_source(oy - top, h, mode)
    ix = _pad_source(ox - left, wd, mode)
    out[i] = float32(0.0) if iy < 0 or ix < 0 else x[((n * h + iy) * wd + ix) * c + ch]


def _resize(x, out, sy, sx, bilinear):
    n, h, wd, c = x.shape
    _, ho, wo, _ = out.shape
    resize[blocks(out.size), THREADS](
        flat(x), flat(out), n, h, wd, c, ho, wo, np.float32(sy), np.float32(sx), bilinear
    )


@KERNELS.register("upsample")
def launch_upsample(backend, step, arrays, ins, res, out, work):
    a = step.attrs
    _resize(ins[0], out, 1.0 / a["scale"][0], 1.0 / a["scale"][1], a["mode"] == "bilinear")


@KERNELS.register("resize")
def launch_resize(backend, step, arrays, ins, res, out, work):
    x = ins[0]
    _resize(
        x,
        out,
        x.shape[1] / out.shape[1],
        x.shape[2] / out.shape[2],
        step.attrs["mode"] == "bilinear",
    )


@KERNELS.register("concat")
def launch_concat(backend, step, arrays, ins, res, out, work):
    c_out = out.shape[len(out.shape) - 1]
    pixels = out.size // c_out
    c0 = 0
    for x in ins:
        cx = x.shape[len(x.shape) - 1]
        concat[blocks(pixels * cx), THREADS](flat(x), flat(out), pixels, cx, c_out, c0)
        c0 += cx


@KERNELS.register("crop")
def launch_crop(backend, step, arrays, ins, res, out, work):
    n, h, wd, c = ins[0].shape
    _, ho, wo, _ = out.shape
    crop[blocks(out.size), THREADS](
        flat(ins[0]), flat(out), n, h, wd, c, ho, wo, step.attrs["oy"], step.attrs["ox"]
    )


@KERNELS.register("flatten")
def launch_flatten(backend, step, arrays, ins, res, out, work):
    n, h, wd, c = ins[0].shape
    flatten[blocks(ins[0].size), THREADS](flat(ins[0]), flat(out), n, h, wd, c)


@KERNELS.register("channels")
def launch_channels(backend, step, arrays, ins, res, out, work):
    x = ins[0]
    gather_channels[blocks(out.size), THREADS](
        flat(x),
        arrays["index"],
        flat(out),
        out.size,
        x.shape[len(x.shape) - 1],
        out.shape[len(out.shape) - 1],
    )


@KERNELS.register("pad")
def launch_pad(backend, step, arrays, ins, res, out, work):
    n, h, wd, c = ins[0].shape
    _, ho, wo, _ = out.shape
    top, _, left, _ = step.attrs["p"]
    pad[blocks(out.size), THREADS](
        flat(ins[0]), flat(out), n, h, wd, c, ho, wo, top, left, PAD_MODES[step.attrs["mode"]]
    )
