"""Elementwise kernels on CUDA (numba.cuda): activations, per-channel affine, sums, products,
PReLU and softmax, dropout and layer scale in training, and their backward passes. Flat NHWC
(or (N, C)) data, one thread per output (a gate's gradient: one per gate element)."""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32, float64

from ..codes import act_needs
from .activations import activate, activate_grad
from .launch import GRADS, KERNELS, THREADS, blocks, channels, epilogue, flat
from .reduce import DOT, NEGATIVE_DOT, column_sums


@cuda.jit
def affine(x, scale, shift, out, size, c, act, alpha, beta):
    i = cuda.grid(1)
    if i < size:
        ch = i % c
        out[i] = activate(x[i] * scale[ch] + shift[ch], act, alpha, beta)


@cuda.jit
def act(x, out, size, code, alpha, beta):
    i = cuda.grid(1)
    if i < size:
        out[i] = activate(x[i], code, alpha, beta)


@cuda.jit
def add(a, b, out, size, code, alpha, beta):
    i = cuda.grid(1)
    if i < size:
        out[i] = activate(a[i] + b[i], code, alpha, beta)


@cuda.jit
def softmax(x, out, rows, c):
    r = cuda.grid(1)
    if r >= rows:
        return
    m = float32(-math.inf)
    for ch in range(c):
        m = max(m, x[r * c + ch])
    s = float32(0.0)
    for ch in range(c):
        e = math.exp(x[r * c + ch] - m)
        out[r * c + ch] = e
        s += e
    for ch in range(c):
        out[r * c + ch] /= s


@cuda.jit
def mul(a, b, out, size, code, alpha, beta):
    i = cuda.grid(1)
    if i < size:
        out[i] = activate(a[i] * b[i], code, alpha, beta)


@cuda.jit
def mul_channels(x, gate, out, size, c, pixels, gate_c, code, alpha, beta):
    """``x * gate``, the gate (N, C) or (N, 1) broadcast over each sample's positions."""
    i = cuda.grid(1)
    if i < size:
        n = i // (pixels * c)
        ch = i % c if gate_c > 1 else 0
        out[i] = activate(x[i] * gate[n * gate_c + ch], code, alpha, beta)


@cuda.jit
def prelu(x, slope, out, size, c, shared):
    i = cuda.grid(1)
    if i < size:
        v = x[i]
        s = slope[0] if shared else slope[i % c]
        out[i] = v if v > 0 else v * s


@KERNELS.register("affine")
def launch_affine(backend, step, arrays, ins, res, out, work):
    _, _, act_, alpha, beta = epilogue(backend, step, res)
    affine[blocks(out.size), THREADS](
        flat(ins[0]),
        arrays["scale"],
        arrays["shift"],
        flat(out),
        out.size,
        channels(out),
        act_,
        alpha,
        beta,
    )


@KERNELS.register("act")
def launch_act(backend, step, arrays, ins, res, out, work):
    _, _, code, alpha, beta = epilogue(backend, step, res)
    act[blocks(out.size), THREADS](flat(ins[0]), flat(out), out.size, code, alpha, beta)


@KERNELS.register("add")
def launch_add(backend, step, arrays, ins, res, out, work):
    _, _, code, alpha, beta = epilogue(backend, step, res)
    o, last = flat(out), len(ins) - 1
    add[blocks(out.size), THREADS](
        flat(ins[0]), flat(ins[1]), o, out.size, code if last == 1 else 0, alpha, beta
    )
    for i in range(2, len(ins)):
        add[blocks(out.size), THREADS](
            o, flat(ins[i]), o, out.size, code if i == last else 0, alpha, beta
        )


@KERNELS.register("mul")
def launch_mul(backend, step, arrays, ins, res, out, work):
    """As on the CPU: full-shape operands first, then each broadcast gate."""
    _, _, code, alpha, beta = epilogue(backend, step, res)
    full = [x for x in ins if x.shape == out.shape]
    gates = [x for x in ins if x.shape != out.shape]
    src, o = flat(full[0]), flat(out)
    for i in range(1, len(full)):
        last = i == len(full) - 1 and not gates
        mul[blocks(out.size), THREADS](
            src, flat(full[i]), o, out.size, code if last else 0, alpha, beta
        )
        src = o
    pixels = out.shape[1] * out.shape[2] if len(out.shape) == 4 else 1
    for i, gate in enumerate(gates):
        mul_channels[blocks(out.size), THREADS](
            src,
            flat(gate),
            o,
            out.size,
            channels(out),
            pixels,
            channels(gate),
            code if i == len(gates) - 1 else 0,
            alpha,
            beta,
        )
        src = o


@KERNELS.register("prelu")
def launch_prelu(backend, step, arrays, ins, res, out, work):
    prelu[blocks(out.size), THREADS](
        flat(ins[0]), arrays["w"], flat(out), out.size, channels(out), arrays["w"].size == 1
    )


@KERNELS.register("softmax")
def launch_softmax(backend, step, arrays, ins, res, out, work):
    c = channels(out)
    softmax[blocks(out.size // c), THREADS](flat(ins[0]), flat(out), out.size // c, c)


# ---- training forward steps and backward passes --------------------------------------------

ZERO = np.float32(0.0)


def _act(step) -> tuple:
    a = step.attrs
    return a.get("act", 0), np.float32(a.get("alpha", 0.0)), np.float32(a.get("beta", 0.0))


@cuda.jit
def act_grad(x, y, gy, gx, size, code, alpha, beta):
    """``gx = gy * activate'(x)``."""
    i = cuda.grid(1)
    if i < size:
        gx[i] = gy[i] * activate_grad(x[i], y[i], code, alpha, beta)


@cuda.jit
def copy(src, dst, size):
    i = cuda.grid(1)
    if i < size:
        dst[i] = src[i]


@cuda.jit
def scale_channels(x, weight, out, size, c):
    """``out = x * weight[channel]``: layer scale, and its input gradient."""
    i = cuda.grid(1)
    if i < size:
        out[i] = x[i] * weight[i % c]


@cuda.jit
def scale_samples(x, mask, out, size, per_sample):
    """``out = x * mask[sample]``: droppath's per-sample keep-and-rescale."""
    i = cuda.grid(1)
    if i < size:
        out[i] = x[i] * mask[i // per_sample]


@cuda.jit
def gate_sums(gy, other, out, n_img, pixels, c, gate_c):
    """A broadcast gate's gradient: ``out[n, ch]`` the sum over sample ``n``'s positions of
    ``gy * other`` (``gate_c`` 1: over its channels as well); one thread per gate element."""
    t = cuda.grid(1)
    if t >= n_img * gate_c:
        return
    n = t // gate_c
    base = n * pixels * c
    acc = 0.0
    if gate_c == 1:
        for j in range(base, base + pixels * c):
            acc += float64(gy[j]) * other[j]
    else:
        for p in range(pixels):
            j = base + p * c + t % gate_c
            acc += float64(gy[j]) * other[j]
    out[t] = acc


@cuda.jit
def prelu_grad(x, slope, gy, gx, size, c, shared):
    """PReLU's input gradient: ``gy`` where x > 0, else ``gy * slope`` (PyTorch's at 0)."""
    i = cuda.grid(1)
    if i < size:
        s = slope[0] if shared else slope[i % c]
        gx[i] = gy[i] if x[i] > 0 else gy[i] * s


@cuda.jit
def softmax_grad(y, gy, gx, rows, c):
    """Per row ``gx = y * (gy - sum(gy * y))``."""
    r = cuda.grid(1)
    if r >= rows:
        return
    s = 0.0
    for ch in range(c):
        s += float64(gy[r * c + ch]) * y[r * c + ch]
    dot = float32(s)
    for ch in range(c):
        i = r * c + ch
        gx[i] = y[i] * (gy[i] - dot)


def _copy(src, dst):
    copy[blocks(dst.size), THREADS](flat(src), flat(dst), dst.size)


@GRADS.register("act", needs=act_needs)
def grad_act(backend, step, arrays, saved, gy, gxs, gws):
    """As the CPU's: ``act_needs`` keeps the output alone for relu, relu6, sigmoid and tanh
    (their derivative reads the same on it), the input alone for most others."""
    gx = gxs[0]
    if gx is not None:
        x = saved.xs[0] if saved.xs is not None else saved.y
        y = saved.y if saved.y is not None else x
        act_grad[blocks(gx.size), THREADS](flat(x), flat(y), flat(gy), flat(gx), gx.size,
                                           *_act(step))  # fmt: skip


@GRADS.register("add", needs=())
def grad_add(backend, step, arrays, saved, gy, gxs, gws):
    for gx in gxs:
        if gx is not None:
            _copy(gy, gx)


@KERNELS.register("dropout")
def launch_dropout(backend, step, arrays, ins, res, out, work):
    mul[blocks(out.size), THREADS](
        flat(ins[0]), flat(arrays["mask"]), flat(out), out.size, 0, ZERO, ZERO
    )


@GRADS.register("dropout", needs=())
def grad_dropout(backend, step, arrays, saved, gy, gxs, gws):
    gx = gxs[0]
    if gx is not None:
        mul[blocks(gx.size), THREADS](
            flat(gy), flat(arrays["mask"]), flat(gx), gx.size, 0, ZERO, ZERO
        )


def _drop_samples(x, mask, out):
    scale_samples[blocks(out.size), THREADS](
        flat(x), flat(mask), flat(out), out.size, out.size // out.shape[0]
    )


@KERNELS.register("droppath")
def launch_droppath(backend, step, arrays, ins, res, out, work):
    _drop_samples(ins[0], arrays["mask"], out)


@GRADS.register("droppath", needs=())
def grad_droppath(backend, step, arrays, saved, gy, gxs, gws):
    if gxs[0] is not None:
        _drop_samples(gy, arrays["mask"], gxs[0])


def _scale(x, weight, out):
    scale_channels[blocks(out.size), THREADS](
        flat(x), flat(weight), flat(out), out.size, channels(out)
    )


@KERNELS.register("scale")
def launch_scale(backend, step, arrays, ins, res, out, work):
    """Layer scale in training: a per-channel multiplier that keeps its own weight."""
    _scale(ins[0], arrays["param.weight"], out)


@GRADS.register("scale")
def grad_scale(backend, step, arrays, saved, gy, gxs, gws):
    if gxs[0] is not None:
        _scale(gy, arrays["param.weight"], gxs[0])
    if "weight" in gws:
        c = channels(gy)
        column_sums(backend, gws["weight"], saved.xs[0], gy.size // c, c, DOT, b=gy)


def _product_into(backend, dst, gy, operands, shape) -> None:
    """``dst = gy * every one of operands`` (full-shape ones elementwise, broadcast gates per
    sample and channel), ``dst`` of the output's shape."""
    src, size = gy, dst.size
    pixels = shape[1] * shape[2] if len(shape) == 4 else 1
    for x in operands:
        if tuple(x.shape) == tuple(shape):
            mul[blocks(size), THREADS](flat(src), flat(x), flat(dst), size, 0, ZERO, ZERO)
        else:
            mul_channels[blocks(size), THREADS](
                flat(src), flat(x), flat(dst), size, channels(dst), pixels, channels(x), 0,
                ZERO, ZERO,
            )  # fmt: skip
        src = dst
    if src is gy:
        _copy(gy, dst)


@GRADS.register("mul")
def grad_mul(backend, step, arrays, saved, gy, gxs, gws):
    """Each operand's gradient is ``gy`` times every other operand; a broadcast gate's is
    that product summed over the positions it was broadcast to (as on the CPU)."""
    xs, shape = saved.xs, tuple(gy.shape)
    pixels = shape[1] * shape[2] if len(shape) == 4 else 1
    for i, gx in enumerate(gxs):
        if gx is None:
            continue
        others = xs[:i] + xs[i + 1 :]
        if tuple(gx.shape) == shape:
            _product_into(backend, gx, gy, others, shape)
            continue
        # a gate: some other operand has the output's shape (else the gate would have it)
        f = next(j for j, x in enumerate(others) if tuple(x.shape) == shape)
        rest = others[:f] + others[f + 1 :]
        weighted = gy
        if rest:
            weighted = backend.empty(gy.size).reshape(shape)
            _product_into(backend, weighted, gy, rest, shape)
        gate_c = channels(gx)
        gate_sums[blocks(gx.size), THREADS](
            flat(weighted), flat(others[f]), flat(gx), shape[0], pixels, channels(gy), gate_c
        )


@GRADS.register("prelu")
def grad_prelu(backend, step, arrays, saved, gy, gxs, gws):
    x, slope = saved.xs[0], arrays["w"]
    c, shared = channels(x), arrays["w"].size == 1
    if gxs[0] is not None:
        prelu_grad[blocks(x.size), THREADS](
            flat(x), slope, flat(gy), flat(gxs[0]), x.size, c, shared
        )
    if "weight" in gws:
        w = gws["weight"]
        sums = backend.empty(c) if shared else w
        column_sums(backend, sums, gy, x.size // c, c, NEGATIVE_DOT, b=x)
        if shared:
            column_sums(backend, w, sums, c, 1)


@GRADS.register("softmax", needs=("y",))
def grad_softmax(backend, step, arrays, saved, gy, gxs, gws):
    if gxs[0] is not None:
        c = channels(gy)
        rows = gy.size // c
        softmax_grad[blocks(rows), THREADS](flat(saved.y), flat(gy), flat(gxs[0]), rows, c)
