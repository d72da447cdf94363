"""Kernels that move data on CUDA (numba.cuda): resampling, concat, crop, flatten, channel
gathers and padding, and their adjoints. NHWC float32, one thread per output (backward: per
input element, gathering what reaches it)."""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32

from ..codes import PAD_MODES
from .indexing import nhwc
from .launch import GRADS, KERNELS, THREADS, blocks, flat


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


# ---- backward passes: one thread per input element, gathering what reaches it --------------


@cuda.jit(device=True, inline=True)
def _nearest(dst, scale, size):
    return min(int(math.floor(float32(dst) * scale)), size - 1)


@cuda.jit(device=True, inline=True)
def _readers(i, scale, out_size):
    """Output indices [lo, hi) along one axis that may read input index ``i`` when resampling
    by ``scale`` (input / output), with a margin; callers test each one exactly."""
    lo = max(0, int(math.floor((i - 1) / scale)) - 2)
    hi = min(out_size, int((i + 2) / scale) + 2)
    return lo, hi


@cuda.jit(device=True, inline=True)
def _share(i, dst, scale, size, bilinear):
    """The weight with which output index ``dst`` reads input ``i`` along one axis (the
    forward's float32 arithmetic, so the same pixels are found)."""
    if not bilinear:
        return float32(1.0) if _nearest(dst, scale, size) == i else float32(0.0)
    i0, i1, lam = _source(dst, scale, size)
    w = float32(0.0)
    if i0 == i:
        w += float32(1.0) - lam
    if i1 == i:
        w += lam
    return w


@cuda.jit
def resize_grad(gy, gx, n_img, h, wd, c, ho, wo, sy, sx, bilinear):
    """The adjoint of ``resize``: each input pixel sums the outputs that read it, weighted."""
    i = cuda.grid(1)
    if i >= n_img * h * wd * c:
        return
    n, iy, ix, ch = nhwc(i, h, wd, c)
    y_lo, y_hi = _readers(iy, sy, ho)
    x_lo, x_hi = _readers(ix, sx, wo)
    acc = float32(0.0)
    for oy in range(y_lo, y_hi):
        wy = _share(iy, oy, sy, h, bilinear)
        if wy == 0:
            continue
        for ox in range(x_lo, x_hi):
            wx = _share(ix, ox, sx, wd, bilinear)
            if wx != 0:
                acc += gy[((n * ho + oy) * wo + ox) * c + ch] * (wy * wx)
    gx[i] = acc


@cuda.jit
def split(gy, gx, pixels, cx, c_out, c0):
    """The adjoint of ``concat``: one input's channels of the gradient."""
    i = cuda.grid(1)
    if i < pixels * cx:
        gx[i] = gy[(i // cx) * c_out + c0 + i % cx]


@cuda.jit
def uncrop(gy, gx, n_img, h, wd, c, ho, wo, oy, ox):
    """The adjoint of ``crop``: the gradient inside the crop, zero around it."""
    i = cuda.grid(1)
    if i >= n_img * h * wd * c:
        return
    n, y, xx, ch = nhwc(i, h, wd, c)
    y -= oy
    xx -= ox
    inside = 0 <= y < ho and 0 <= xx < wo
    gx[i] = gy[((n * ho + y) * wo + xx) * c + ch] if inside else float32(0.0)


@cuda.jit
def unflatten(gy, gx, n_img, h, wd, c):
    """The adjoint of ``flatten``: (N, C*H*W) in C, H, W order back to NHWC."""
    i = cuda.grid(1)
    if i >= n_img * h * wd * c:
        return
    n, iy, ix, ch = nhwc(i, h, wd, c)
    gx[i] = gy[n * c * h * wd + (ch * h + iy) * wd + ix]


@cuda.jit
def scatter_channels(gy, index, gx, size, c_in, c_out):
    """The adjoint of ``gather_channels``: input channel j sums the outputs that read it."""
    i = cuda.grid(1)
    if i >= size:
        return
    j = i % c_in
    row = (i // c_in) * c_out
    acc = float32(0.0)
    for k in range(c_out):
        if index[k] == j:
            acc += gy[row + k]
    gx[i] = acc


@cuda.jit(device=True, inline=True)
def _pad_readers(i, top, size, out_size, mode):
    """How many candidates ``_pad_reader`` gives for input index ``i`` along one axis."""
    if mode == 2 and (i == 0 or i == size - 1):  # replicate: the edge repeats
        return out_size
    return 3 if mode == 1 else 1


@cuda.jit(device=True, inline=True)
def _pad_reader(i, k, top, size, out_size, mode):
    """Candidate ``k`` of the output indices that read input ``i`` along one axis, or -1;
    each is tested against the forward's ``_pad_source`` so none counts twice."""
    if mode == 2 and (i == 0 or i == size - 1):
        o = k
    elif k == 0:
        o = i + top
    elif k == 1:
        o = top - i if i > 0 else -1
    else:
        o = top + 2 * (size - 1) - i if i < size - 1 else -1
    if o < 0 or o >= out_size or _pad_source(o - top, size, mode) != i:
        return -1
    return o


@cuda.jit
def pad_grad(gy, gx, n_img, h, wd, c, ho, wo, top, left, mode):
    """The adjoint of ``pad``: each input pixel sums the outputs that copy it (one with
    zeros; reflections and replicated edges add more)."""
    i = cuda.grid(1)
    if i >= n_img * h * wd * c:
        return
    n, iy, ix, ch = nhwc(i, h, wd, c)
    acc = float32(0.0)
    for ky in range(_pad_readers(iy, top, h, ho, mode)):
        oy = _pad_reader(iy, ky, top, h, ho, mode)
        if oy < 0:
            continue
        for kx in range(_pad_readers(ix, left, wd, wo, mode)):
            ox = _pad_reader(ix, kx, left, wd, wo, mode)
            if ox >= 0:
                acc += gy[((n * ho + oy) * wo + ox) * c + ch]
    gx[i] = acc


def _resize_grad(gy, gx, sy, sx, bilinear):
    n, h, wd, c = gx.shape
    _, ho, wo, _ = gy.shape
    resize_grad[blocks(gx.size), THREADS](
        flat(gy), flat(gx), n, h, wd, c, ho, wo, np.float32(sy), np.float32(sx), bilinear
    )


@GRADS.register("upsample", needs=())
def grad_upsample(backend, step, arrays, saved, gy, gxs, gws):
    a = step.attrs
    if gxs[0] is not None:
        bilinear = a["mode"] == "bilinear"
        _resize_grad(gy, gxs[0], 1.0 / a["scale"][0], 1.0 / a["scale"][1], bilinear)


@GRADS.register("resize", needs=())
def grad_resize(backend, step, arrays, saved, gy, gxs, gws):
    gx = gxs[0]
    if gx is not None:
        sy, sx = gx.shape[1] / gy.shape[1], gx.shape[2] / gy.shape[2]
        _resize_grad(gy, gx, sy, sx, step.attrs["mode"] == "bilinear")


@GRADS.register("concat", needs=())
def grad_concat(backend, step, arrays, saved, gy, gxs, gws):
    c_out = gy.shape[len(gy.shape) - 1]
    pixels = gy.size // c_out
    widths = step.attrs.get("widths") or [gx.size // pixels for gx in gxs]
    c0 = 0
    for gx, cx in zip(gxs, widths):
        if gx is not None:
            split[blocks(gx.size), THREADS](flat(gy), flat(gx), pixels, cx, c_out, c0)
        c0 += cx


@GRADS.register("crop", needs=())
def grad_crop(backend, step, arrays, saved, gy, gxs, gws):
    gx = gxs[0]
    if gx is not None:
        n, h, wd, c = gx.shape
        _, ho, wo, _ = gy.shape
        uncrop[blocks(gx.size), THREADS](
            flat(gy), flat(gx), n, h, wd, c, ho, wo, step.attrs["oy"], step.attrs["ox"]
        )


@GRADS.register("flatten", needs=())
def grad_flatten(backend, step, arrays, saved, gy, gxs, gws):
    gx = gxs[0]
    if gx is not None:
        n, h, wd, c = gx.shape
        unflatten[blocks(gx.size), THREADS](flat(gy), flat(gx), n, h, wd, c)


@GRADS.register("channels", needs=())
def grad_channels(backend, step, arrays, saved, gy, gxs, gws):
    gx = gxs[0]
    if gx is not None:
        scatter_channels[blocks(gx.size), THREADS](
            flat(gy),
            arrays["index"],
            flat(gx),
            gx.size,
            gx.shape[len(gx.shape) - 1],
            gy.shape[len(gy.shape) - 1],
        )


@GRADS.register("pad", needs=())
def grad_pad(backend, step, arrays, saved, gy, gxs, gws):
    gx = gxs[0]
    if gx is not None:
        n, h, wd, c = gx.shape
        _, ho, wo, _ = gy.shape
        top, _, left, _ = step.attrs["p"]
        pad_grad[blocks(gx.size), THREADS](
            flat(gy), flat(gx), n, h, wd, c, ho, wo, top, left, PAD_MODES[step.attrs["mode"]]
        )
