"""Elementwise kernels on the CPU (Numba): activations, batch norm's affine form, sums and
products, softmax and the normalisations. Flat or (rows, C) views of NHWC data."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..codes import HARDSWISH, RELU, RELU6, SIGMOID, SILU, TANH, act_needs
from .activations import JIT, PJIT, activate, activate_at, activate_grad, sigmoid, silu
from .bounds import SLOTS, raise_fault
from .table import GRADS, KERNELS


@njit(**PJIT)
def affine(x2, scale, shift, out2, act, alpha, beta):
    """Per-channel ``x * scale + shift`` then activation: batch norm, layer scale. (rows, C),
    a block of rows at a time on its views (loops that vectorise: 0.15 ns an element here,
    against 0.6 through ``activate`` per element)."""
    rows, c = x2.shape
    per = max(1, BLOCK // max(1, c))
    for b in prange((rows + per - 1) // per):
        lo = b * per
        xs, ys = x2[lo : lo + per], out2[lo : lo + per]
        for r in range(xs.shape[0]):
            for ch in range(c):
                ys[r, ch] = xs[r, ch] * scale[ch] + shift[ch]
        if act:
            flat = ys.reshape(-1)
            _activate_block(flat, flat, act, alpha, beta)


#: Elements per parallel work item of the elementwise kernels that choose their loop by the
#: activation once per item (a loop around ``activate``'s chain of tests does not vectorise).
BLOCK = 1 << 14


@njit(**PJIT)
def act(x1, out1, code, alpha, beta):
    """Elementwise activation on flat arrays, a block at a time, the common activations in
    branch-free loops of their own on the block's views (they vectorise: 0.1 ns an element
    for relu here, against 1-2 ns through ``activate``'s chain of tests or indices at an
    offset). ``x1`` may be ``out1``."""
    n = out1.size
    for b in prange((n + BLOCK - 1) // BLOCK):
        lo = b * BLOCK
        hi = min(n, lo + BLOCK)
        _activate_block(x1[lo:hi], out1[lo:hi], code, alpha, beta)


@njit(inline="always", **JIT)
def _activate_block(xs, ys, code, alpha, beta):
    zero = np.float32(0.0)
    if code == RELU:
        for j in range(ys.size):
            v = xs[j]
            ys[j] = v if v > zero else zero
    elif code == RELU6:
        for j in range(ys.size):
            ys[j] = min(max(xs[j], zero), np.float32(6.0))
    elif code == SILU:
        for j in range(ys.size):
            ys[j] = silu(xs[j])
    elif code == SIGMOID:
        for j in range(ys.size):
            ys[j] = sigmoid(xs[j])
    elif code == HARDSWISH:
        for j in range(ys.size):
            v = xs[j]
            ys[j] = v * min(max(v + np.float32(3.0), zero), np.float32(6.0)) / np.float32(6.0)
    else:
        for j in range(ys.size):
            ys[j] = activate(xs[j], code, alpha, beta)


def run_call(call: tuple) -> None:
    """Run ``(kernel, arguments, after)``: the kernel, then ``activation_pass(*after)`` where
    ``after`` is not None (see CpuBackend.bound_call)."""
    kernel, args, after = call
    kernel(*args)
    if SLOTS[1]:  # checked mode stopped the kernel (bounds.py)
        raise_fault(getattr(kernel, "__name__", ""))
    if after is not None:
        activation_pass(*after)


def activation_pass(out, code: int, alpha, beta) -> None:
    """Activation ``code`` over ``out`` in place, for kernels that do only a clamp in their
    epilogue (``activations.clamp_bounds``); nothing for NONE."""
    if code:
        flat = out.reshape(-1)
        act(flat, flat, code, np.float32(alpha), np.float32(beta))


@njit(**PJIT)
def add(a1, b1, out1, code, alpha, beta):
    """Elementwise ``a + b`` then activation, on flat arrays (more operands: call again)."""
    for i in prange(out1.size):
        out1[i] = activate(a1[i] + b1[i], code, alpha, beta)


@njit(**PJIT)
def softmax(x2, out2):
    """Softmax over the last axis (channels in NHWC)."""
    rows, c = x2.shape
    for r in prange(rows):
        m = -np.inf
        for ch in range(c):
            m = max(m, x2[r, ch])
        s = np.float32(0.0)
        for ch in range(c):
            e = np.exp(x2[r, ch] - m)
            out2[r, ch] = e
            s += e
        inv = np.float32(1.0) / s
        for ch in range(c):
            out2[r, ch] *= inv


@njit(**PJIT)
def mul(x1, y1, out1, code, alpha, beta):
    """Elementwise ``x * y`` then activation, on flat arrays of one shape."""
    for i in prange(out1.size):
        out1[i] = activate(x1[i] * y1[i], code, alpha, beta)


@njit(**PJIT)
def mul_channels(x2, gate, out2, pixels, code, alpha, beta):
    """``x * gate`` with a per-sample gate broadcast over positions (squeeze-and-excitation):
    ``x2`` (N*pixels, C), ``gate`` (N, C) or (N, 1). Flat arrays at offsets, not a view per
    row (each view is an atomic update of a reference count the threads share)."""
    rows, c = x2.shape
    width = gate.shape[1]
    xf, gf, of = x2.reshape(-1), gate.reshape(-1), out2.reshape(-1)
    for r in prange(rows):
        o = np.uintp(r * c)
        g = np.uintp((r // pixels) * width)
        if width == 1:
            g0 = gf[g]
            for ch in range(c):
                of[o + ch] = xf[o + ch] * g0
        else:
            for ch in range(c):
                of[o + ch] = xf[o + ch] * gf[g + ch]
        activate_at(of, o, c, code, alpha, beta)


@njit(**PJIT)
def prelu(x2, slope, out2):
    """Leaky ReLU with a slope per channel (``slope`` (C,)) or one for all (``slope`` (1,))."""
    rows, c = x2.shape
    shared = slope.size == 1
    for r in prange(rows):
        for ch in range(c):
            v = x2[r, ch]
            out2[r, ch] = v if v > 0.0 else v * (slope[0] if shared else slope[ch])


def _act(a) -> tuple:
    return a["act"], np.float32(a["alpha"]), np.float32(a["beta"])


def _rows(x):
    """(positions, C) view of NHWC data, (N, C) of vectors."""
    return x.reshape(-1, x.shape[-1])


@KERNELS.register("affine")
def launch_affine(backend, step, arrays, ins, res, out, work):
    affine(_rows(ins[0]), arrays["scale"], arrays["shift"], _rows(out), *_act(step.attrs))


@KERNELS.register("act")
def launch_act(backend, step, arrays, ins, res, out, work):
    act(ins[0].reshape(-1), out.reshape(-1), *_act(step.attrs))


@KERNELS.register("add")
def launch_add(backend, step, arrays, ins, res, out, work):
    code, alpha, beta = _act(step.attrs)
    flat, last = out.reshape(-1), len(ins) - 1
    add(ins[0].reshape(-1), ins[1].reshape(-1), flat, code if last == 1 else 0, alpha, beta)
    for i in range(2, len(ins)):
        add(flat, ins[i].reshape(-1), flat, code if i == last else 0, alpha, beta)


@KERNELS.register("mul")
def launch_mul(backend, step, arrays, ins, res, out, work):
    """Full-shape operands multiply first, then each broadcast gate scales the product; the
    activation, if fused, goes with the last multiplication."""
    code, alpha, beta = _act(step.attrs)
    full = [x for x in ins if x.shape == out.shape]
    gates = [x for x in ins if x.shape != out.shape]
    src = full[0]
    for i in range(1, len(full)):
        last = i == len(full) - 1 and not gates
        mul(src.reshape(-1), full[i].reshape(-1), out.reshape(-1), code if last else 0, alpha, beta)
        src = out
    pixels = out.shape[1] * out.shape[2] if out.ndim == 4 else 1
    for i, gate in enumerate(gates):
        mul_channels(
            _rows(src),
            gate.reshape(gate.shape[0], -1),
            _rows(out),
            pixels,
            code if i == len(gates) - 1 else 0,
            alpha,
            beta,
        )
        src = out


@KERNELS.register("prelu")
def launch_prelu(backend, step, arrays, ins, res, out, work):
    prelu(_rows(ins[0]), arrays["w"], _rows(out))


@KERNELS.register("softmax")
def launch_softmax(backend, step, arrays, ins, res, out, work):
    softmax(_rows(ins[0]), _rows(out))


# ---- training forward steps and backward passes --------------------------------------------

_Z = np.float32(0.0)


@njit(**PJIT)
def act_backward(x1, y1, gy1, gx1, code, alpha, beta):
    """``gx = gy * activate'(x)`` on flat arrays, a block at a time with the common
    activations' loops branch-free on the block's views (they vectorise, as ``act``'s); for
    FROM_OUTPUT activations ``x1`` may be the output (their tests read the same on it)."""
    n = gx1.size
    for b in prange((n + BLOCK - 1) // BLOCK):
        lo = b * BLOCK
        hi = min(n, lo + BLOCK)
        _act_backward_block(x1[lo:hi], y1[lo:hi], gy1[lo:hi], gx1[lo:hi], code, alpha, beta)


@njit(inline="always", **JIT)
def _act_backward_block(xs, ys, gys, gxs, code, alpha, beta):
    zero, one = np.float32(0.0), np.float32(1.0)
    if code == RELU:
        for j in range(gxs.size):
            gxs[j] = gys[j] if xs[j] > zero else zero
    elif code == RELU6:
        for j in range(gxs.size):
            v = xs[j]
            gxs[j] = gys[j] if zero < v < np.float32(6.0) else zero
    elif code == SIGMOID:
        for j in range(gxs.size):
            v = ys[j]
            gxs[j] = gys[j] * v * (one - v)
    elif code == TANH:
        for j in range(gxs.size):
            v = ys[j]
            gxs[j] = gys[j] * (one - v * v)
    elif code == SILU:
        for j in range(gxs.size):
            v = xs[j]
            s = sigmoid(v)
            gxs[j] = gys[j] * (s * (one + v * (one - s)))
    elif code == HARDSWISH:
        for j in range(gxs.size):
            v = xs[j]
            d = zero if v < np.float32(-3.0) else v / np.float32(3.0) + np.float32(0.5)
            gxs[j] = gys[j] * (one if v > np.float32(3.0) else d)
    else:
        for j in range(gxs.size):
            gxs[j] = gys[j] * activate_grad(xs[j], ys[j], code, alpha, beta)


@njit(**PJIT)
def copy(src1, dst1):
    for i in prange(dst1.size):
        dst1[i] = src1[i]


@njit(**PJIT)
def scale_samples(x2, mask, out2):
    """``out[n] = x[n] * mask[n]``: droppath's per-sample keep-and-rescale, (N, rest)."""
    for n in prange(x2.shape[0]):
        for j in range(x2.shape[1]):
            out2[n, j] = x2[n, j] * mask[n]


@njit(**PJIT)
def channel_products(x2, gy2, sums):
    """``sums[ch] = sum over rows of x * gy``: a per-channel weight's gradient, (rows, C)
    views; rows split into one block per thread, summed in float64."""
    rows, c = x2.shape
    blocks = sums.shape[0]
    for t in prange(blocks):
        acc = np.zeros(c, np.float64)
        for r in range(rows * t // blocks, rows * (t + 1) // blocks):
            for ch in range(c):
                acc[ch] += x2[r, ch] * gy2[r, ch]
        sums[t] = acc


def channel_sums(x2, gy2, threads: int) -> np.ndarray:
    """Per channel, the sum of ``x * gy`` over every position and sample (float64)."""
    sums = np.empty((max(1, min(threads * 4, x2.shape[0])), x2.shape[1]), np.float64)
    channel_products(x2, gy2, sums)
    return sums.sum(axis=0)


@GRADS.register("act", needs=act_needs)
def grad_act(backend, step, arrays, saved, gy, gxs, gws):
    y = saved.y.reshape(-1) if saved.y is not None else None
    x = saved.xs[0].reshape(-1) if saved.xs is not None else y
    act_backward(x, y if y is not None else x, gy.reshape(-1), gxs[0].reshape(-1),
                 *_act(step.attrs))  # fmt: skip


@GRADS.register("add", needs=())
def grad_add(backend, step, arrays, saved, gy, gxs, gws):
    for gx in gxs:
        copy(gy.reshape(-1), gx.reshape(-1))


@KERNELS.register("dropout")
def launch_dropout(backend, step, arrays, ins, res, out, work):
    mul(ins[0].reshape(-1), arrays["mask"].reshape(-1), out.reshape(-1), 0, _Z, _Z)


@GRADS.register("dropout", needs=())
def grad_dropout(backend, step, arrays, saved, gy, gxs, gws):
    mul(gy.reshape(-1), arrays["mask"].reshape(-1), gxs[0].reshape(-1), 0, _Z, _Z)


@KERNELS.register("droppath")
def launch_droppath(backend, step, arrays, ins, res, out, work):
    scale_samples(ins[0].reshape(out.shape[0], -1), arrays["mask"], out.reshape(out.shape[0], -1))


@GRADS.register("droppath", needs=())
def grad_droppath(backend, step, arrays, saved, gy, gxs, gws):
    n = gy.shape[0]
    scale_samples(gy.reshape(n, -1), arrays["mask"], gxs[0].reshape(n, -1))


@KERNELS.register("scale")
def launch_scale(backend, step, arrays, ins, res, out, work):
    """Layer scale in training: a per-channel multiplier that keeps its own weight."""
    w = arrays["param.weight"].reshape(-1)
    affine(_rows(ins[0]), w, np.zeros_like(w), _rows(out), 0, _Z, _Z)


@GRADS.register("scale")
def grad_scale(backend, step, arrays, saved, gy, gxs, gws):
    w = arrays["param.weight"].reshape(-1)
    x2, gy2 = _rows(saved.xs[0]), _rows(gy)
    if gxs[0] is not None:
        affine(gy2, w, np.zeros_like(w), _rows(gxs[0]), 0, _Z, _Z)
    if "weight" in gws:
        gws["weight"][...] = channel_sums(x2, gy2, backend.threads).reshape(gws["weight"].shape)


# ---- products, prelu, softmax: backward passes ---------------------------------------------
# (``affine`` has none: training runs batch norm as ``batchnorm`` and layer scale as ``scale``.)


@njit(**PJIT)
def gate_sums(gy2, other2, out, pixels):
    """A broadcast gate's gradient: ``out[n, ch]`` the sum over sample ``n``'s ``pixels``
    positions of ``gy * other`` (``out`` (N, 1): over the channels as well); (N*pixels, C)
    views, float64 sums, one sample per thread."""
    rows, c = gy2.shape
    width = out.shape[1]
    for n in prange(rows // pixels):
        acc = np.zeros(c, np.float64)
        for r in range(n * pixels, (n + 1) * pixels):
            for ch in range(c):
                acc[ch] += np.float64(gy2[r, ch]) * other2[r, ch]
        if width == 1:
            out[n, 0] = acc.sum()
        else:
            for ch in range(c):
                out[n, ch] = acc[ch]


def _product_into(dst, gy, operands, out_shape) -> None:
    """``dst = gy * every one of operands`` (full-shape ones elementwise, broadcast gates per
    sample and channel), ``dst`` of the output's shape."""
    src = gy
    pixels = out_shape[1] * out_shape[2] if len(out_shape) == 4 else 1
    for x in operands:
        if x.shape == tuple(out_shape):
            mul(src.reshape(-1), x.reshape(-1), dst.reshape(-1), 0, _Z, _Z)
        else:
            mul_channels(_rows(src), x.reshape(x.shape[0], -1), _rows(dst), pixels, 0, _Z, _Z)
        src = dst
    if src is gy:
        copy(gy.reshape(-1), dst.reshape(-1))


@GRADS.register("mul")
def grad_mul(backend, step, arrays, saved, gy, gxs, gws):
    """Each operand's gradient is ``gy`` times every other operand; a broadcast gate's
    (Cx1x1 or 1x1x1, as in squeeze-and-excitation) is that product summed over the positions
    it was broadcast to. The training plan fuses no activation into the product."""
    xs, shape = saved.xs, gy.shape
    pixels = shape[1] * shape[2] if gy.ndim == 4 else 1
    for i, gx in enumerate(gxs):
        if gx is None:
            continue
        others = xs[:i] + xs[i + 1 :]
        if gx.shape == shape:
            _product_into(gx, gy, others, shape)
            continue
        # a gate: some other operand has the output's shape (else the gate would have it)
        f = next(j for j, x in enumerate(others) if x.shape == shape)
        rest = others[:f] + others[f + 1 :]
        weighted = gy
        if rest:
            weighted = np.empty(shape, np.float32)
            _product_into(weighted, gy, rest, shape)
        gate_sums(_rows(weighted), _rows(others[f]), gx.reshape(gx.shape[0], -1), pixels)


@njit(**PJIT)
def prelu_backward(x2, slope, gy2, gx2, parts):
    """PReLU's input gradient ``gy`` (x > 0) or ``gy * slope`` (else, PyTorch's choice at 0),
    and in ``parts[t]`` row block ``t``'s per-channel sums of ``gy * x`` over x <= 0 (the
    slope's gradient), in float64; (rows, C) views."""
    rows, c = x2.shape
    shared = slope.size == 1
    blocks = parts.shape[0]
    for t in prange(blocks):
        acc = np.zeros(c, np.float64)
        for r in range(rows * t // blocks, rows * (t + 1) // blocks):
            for ch in range(c):
                v, g = x2[r, ch], gy2[r, ch]
                if v > 0.0:
                    gx2[r, ch] = g
                else:
                    gx2[r, ch] = g * (slope[0] if shared else slope[ch])
                    acc[ch] += np.float64(g) * v
        parts[t] = acc


@GRADS.register("prelu")
def grad_prelu(backend, step, arrays, saved, gy, gxs, gws):
    x2, gy2 = _rows(saved.xs[0]), _rows(gy)
    parts = np.empty((max(1, min(4 * backend.threads, x2.shape[0])), x2.shape[1]), np.float64)
    gx2 = _rows(gxs[0]) if gxs[0] is not None else np.empty_like(x2)
    prelu_backward(x2, arrays["w"], gy2, gx2, parts)
    if "weight" in gws:
        sums = parts.sum(axis=0)
        w = gws["weight"]
        w[...] = sums.sum() if w.size == 1 else sums.reshape(w.shape)


@njit(**PJIT)
def softmax_backward(y2, gy2, gx2):
    """Softmax's input gradient per row: ``gx = y * (gy - sum(gy * y))``."""
    rows, c = y2.shape
    for r in prange(rows):
        s = 0.0
        for ch in range(c):
            s += np.float64(gy2[r, ch]) * y2[r, ch]
        dot = np.float32(s)
        for ch in range(c):
            gx2[r, ch] = y2[r, ch] * (gy2[r, ch] - dot)


@GRADS.register("softmax", needs=("y",))
def grad_softmax(backend, step, arrays, saved, gy, gxs, gws):
    if gxs[0] is not None:
        softmax_backward(_rows(saved.y), _rows(gy), _rows(gxs[0]))
