"""``activate`` for CUDA kernels: the twin of backends/cpu/activations.py, same codes."""

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
