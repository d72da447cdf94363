"""Elementwise kernels on CUDA (numba.cuda): activations, per-channel affine, sums, products,
PReLU and softmax. Flat NHWC (or (N, C)) data, one thread per output."""

from __future__ import annotations

import math

from numba import cuda, float32

from .activations import activate
from .launch import KERNELS, THREADS, blocks, channels, epilogue, flat


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
