"""``activate``: every fusable activation of the registry, by its code, for Numba kernels.

The codes are the registry's (``Activation.code``, named in backends/codes.py); a new
activation adds one branch here and one in the CUDA twin (backends/cuda/activations.py).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

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

# No 'nnan'/'ninf': max pooling starts from -inf and clamp takes infinite bounds.
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
JIT = dict(cache=True, nogil=True, fastmath=FASTMATH)
PJIT = dict(JIT, parallel=True)

_F0, _F1, _F3, _F6 = np.float32(0.0), np.float32(1.0), np.float32(3.0), np.float32(6.0)
_SQRT_HALF = np.float32(math.sqrt(0.5))
_TANH_GELU = np.float32(math.sqrt(2.0 / math.pi))
_SELU_ALPHA = np.float32(1.6732632423543772848170429916717)
_SELU_SCALE = np.float32(1.0507009873554804934193349852946)


@njit(inline="always", **JIT)
def _softplus(v):
    """PyTorch's softplus: the identity above 20, where exp would lose everything."""
    return v if v > 20.0 else np.float32(math.log1p(math.exp(v)))


@njit(inline="always", **JIT)
def activate(v, act, alpha, beta):
    """``v`` through activation ``act`` with its scalars (leaky slope, elu alpha, clamp
    bounds ``alpha``..``beta``, gelu's tanh form when ``alpha`` is 1)."""
    if act == RELU:
        return v if v > 0.0 else _F0
    if act == RELU6:
        return min(max(v, _F0), _F6)
    if act == LEAKY_RELU:
        return v if v > 0.0 else v * alpha
    if act == SIGMOID:
        return _F1 / (_F1 + np.exp(-v))
    if act == TANH:
        return np.tanh(v)
    if act == SILU:
        return v / (_F1 + np.exp(-v))
    if act == HARDSWISH:
        return v * min(max(v + _F3, _F0), _F6) / _F6
    if act == HARDSIGMOID:
        return min(max(v + _F3, _F0), _F6) / _F6
    if act == GELU:
        if alpha == 1.0:
            inner = _TANH_GELU * (v + np.float32(0.044715) * v * v * v)
            return np.float32(0.5) * v * (_F1 + np.tanh(inner))
        return np.float32(0.5) * v * (_F1 + np.float32(math.erf(v * _SQRT_HALF)))
    if act == ELU:
        return v if v > 0.0 else alpha * np.float32(math.expm1(v))
    if act == SOFTPLUS:
        return _softplus(v)
    if act == MISH:
        return v * np.tanh(_softplus(v))
    if act == CLAMP:
        return min(max(v, alpha), beta)
    if act == SELU:
        return _SELU_SCALE * (v if v > 0.0 else _SELU_ALPHA * np.float32(math.expm1(v)))
    return v
