"""Elementwise kernels on the CPU (Numba): activations, batch norm's affine form, sums and
products, softmax and the normalisations. Flat or (rows, C) views of NHWC data."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .activations import PJIT, activate, activate_at
from .bounds import SLOTS, raise_fault
from .table import KERNELS


@njit(**PJIT)
def affine(x2, scale, shift, out2, act, alpha, beta):
    """Per-channel ``x * scale + shift`` then activation: inference batch norm. (rows, C)."""
    rows, c = x2.shape
    for r in prange(rows):
        for ch in range(c):
            out2[r, ch] = activate(x2[r, ch] * scale[ch] + shift[ch], act, alpha, beta)


@njit(**PJIT)
def act(x1, out1, code, alpha, beta):
    """Elementwise activation on flat arrays."""
    for i in prange(x1.size):
        out1[i] = activate(x1[i], code, alpha, beta)


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
