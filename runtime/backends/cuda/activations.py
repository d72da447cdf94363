"""``activate`` and its derivative ``activate_grad`` for CUDA kernels: the twins of
backends/cpu/activations.py's, same codes."""

from __future__ import annotations

import math

from numba import cuda, float32

from ..codes import (
    CLAMP,
    ELU,
    GELU,
    HARDSIGMOID,
    HARDSWISH,
    LEAKY_RELU,
    MISH,
    RELU,
    RELU6,
    SELU,
    SIGMOID,
    SILU,
    SOFTPLUS,
    TANH,
)

_SQRT_HALF = math.sqrt(0.5)
_TANH_GELU = math.sqrt(2.0 / math.pi)
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@cuda.jit(device=True, inline=True)
def _softplus(v):
    return v if v > 20.0 else float32(math.log1p(math.exp(v)))


@cuda.jit(device=True, inline=True)
def activate(v, act, alpha, beta):
    if act == RELU:
        return v if v > 0 else float32(0.0)
    if act == RELU6:
        return min(max(v, float32(0.0)), float32(6.0))
    if act == LEAKY_RELU:
        return v if v > 0 else v * alpha
    if act == SIGMOID:
        return float32(1.0) / (float32(1.0) + math.exp(-v))
    if act == TANH:
        return math.tanh(v)
    if act == SILU:
        return v / (float32(1.0) + math.exp(-v))
    if act == HARDSWISH:
        return v * min(max(v + float32(3.0), float32(0.0)), float32(6.0)) / float32(6.0)
    if act == HARDSIGMOID:
        return min(max(v + float32(3.0), float32(0.0)), float32(6.0)) / float32(6.0)
    if act == GELU:
        if alpha == 1.0:
            inner = float32(_TANH_GELU) * (v + float32(0.044715) * v * v * v)
            return float32(0.5) * v * (float32(1.0) + math.tanh(inner))
        return float32(0.5) * v * (float32(1.0) + math.erf(v * float32(_SQRT_HALF)))
    if act == ELU:
        return v if v > 0 else alpha * float32(math.expm1(v))
    if act == SOFTPLUS:
        return _softplus(v)
    if act == MISH:
        return v * math.tanh(_softplus(v))
    if act == CLAMP:
        return min(max(v, alpha), beta)
    if act == SELU:
        return float32(_SELU_SCALE) * (v if v > 0 else float32(_SELU_ALPHA) * math.expm1(v))
    return v


@cuda.jit(device=True, inline=True)
def _sigmoid(v):
    return float32(1.0) / (float32(1.0) + math.exp(-v))


@cuda.jit(device=True, inline=True)
def activate_grad(x, y, act, alpha, beta):
    """d activate(x) / dx given the input ``x`` and output ``y``: the twin of
    backends/cpu/activations.py's ``activate_grad``, branch by branch (PyTorch's choices at
    the kinks: relu's 0 at 0, clamp's 1 on its bounds)."""
    one = float32(1.0)
    zero = float32(0.0)
    if act == RELU:
        return one if x > 0 else zero
    if act == RELU6:
        return one if 0 < x < 6 else zero
    if act == LEAKY_RELU:
        return one if x > 0 else alpha
    if act == SIGMOID:
        return y * (one - y)
    if act == TANH:
        return one - y * y
    if act == SILU:
        s = _sigmoid(x)
        return s * (one + x * (one - s))
    if act == HARDSWISH:
        if x < -3:
            return zero
        return x / float32(3.0) + float32(0.5) if x <= 3 else one
    if act == HARDSIGMOID:
        return one / float32(6.0) if -3 < x < 3 else zero
    if act == GELU:
        if alpha == 1.0:
            t = math.tanh(float32(_TANH_GELU) * (x + float32(0.044715) * x * x * x))
            slope = one + float32(3.0) * float32(0.044715) * x * x
            dt = (one - t * t) * float32(_TANH_GELU) * slope
            return float32(0.5) * (one + t) + float32(0.5) * x * dt
        cdf = float32(0.5) * (one + math.erf(x * float32(_SQRT_HALF)))
        return cdf + x * float32(_INV_SQRT_2PI) * math.exp(float32(-0.5) * x * x)
    if act == ELU:
        return one if x > 0 else y + alpha
    if act == SOFTPLUS:
        return one if x > 20 else _sigmoid(x)
    if act == MISH:
        t = math.tanh(_softplus(x))
        return t + x * _sigmoid(x) * (one - t * t)
    if act == CLAMP:
        return one if alpha <= x <= beta else zero
    if act == SELU:
        return float32(_SELU_SCALE) if x > 0 else y + float32(_SELU_SCALE * _SELU_ALPHA)
    return one
