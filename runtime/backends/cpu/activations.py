"""``activate``: every fusable activation of the registry, by its code, for Numba kernels.

The codes are the registry's (``Activation.code``, named in backends/codes.py); a new
activation adds one branch here and one in the CUDA twin (backends/cuda/activations.py).
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from ..codes import (
    CLAMP,
    ELU,
    GELU,
    HARDSIGMOID,
    HARDSWISH,
    LEAKY_RELU,
    MISH,
    NONE,
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
# error_model="numpy": a float division by zero gives inf/nan instead of raising, which drops
# the zero test that kept every loop with a division (sigmoid, SiLU) from vectorising.
JIT = dict(cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy")
PJIT = dict(JIT, parallel=True)

_F0, _F1, _F3, _F6 = np.float32(0.0), np.float32(1.0), np.float32(3.0), np.float32(6.0)
_SQRT_HALF = np.float32(math.sqrt(0.5))
_TANH_GELU = np.float32(math.sqrt(2.0 / math.pi))
_SELU_ALPHA = np.float32(1.6732632423543772848170429916717)
_SELU_SCALE = np.float32(1.0507009873554804934193349852946)


@intrinsic
def _as_float32(typingctx, bits):
    """The float32 whose bit pattern is the int32 ``bits`` (a register move, vectorisable)."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


_EXP_HI, _EXP_LO = np.float32(88.0), np.float32(-87.33654)
_LOG2E = np.float32(1.44269504088896341)
_LN2_HI, _LN2_LO = np.float32(0.693359375), np.float32(-2.12194440e-4)
_P0, _P1, _P2 = np.float32(1.98756915e-4), np.float32(1.39819995e-3), np.float32(8.33345191e-3)
_P3, _P4, _P5 = np.float32(4.16657959e-2), np.float32(1.66666655e-1), np.float32(5.00000012e-1)
#: ``exp32``'s constants, for the micro-kernel's vector copy of it (microkernel._exp).
EXP32 = dict(lo=_EXP_LO, hi=_EXP_HI, log2e=_LOG2E, ln2_hi=_LN2_HI, ln2_lo=_LN2_LO,
             poly=(_P0, _P1, _P2, _P3, _P4, _P5))  # fmt: skip


@njit(inline="always", **JIT)
def exp32(v):
    """``exp`` in float32 (Cephes' expf: about 1 ulp) built from arithmetic and a bit cast,
    so that loops of sigmoid and SiLU vectorise: without SVML, LLVM calls libm's ``expf``
    once per element (EfficientNet-B0's SiLU epilogues cost more than its 1x1 GEMMs)."""
    v = min(max(v, _EXP_LO), _EXP_HI)
    n = np.float32(np.floor(v * _LOG2E + np.float32(0.5)))
    r = v - n * _LN2_HI - n * _LN2_LO
    p = ((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5
    p = p * r * r + r + _F1
    return p * _as_float32(np.int32(n + np.float32(127.0)) << 23)


@njit(inline="always", **JIT)
def sigmoid(v):
    return _F1 / (_F1 + exp32(-v))


@njit(inline="always", **JIT)
def silu(v):
    return v / (_F1 + exp32(-v))


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
        return sigmoid(v)
    if act == TANH:
        return np.tanh(v)
    if act == SILU:
        return silu(v)
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


_INF = np.float32(np.inf)


def clamp_bounds(act: int, alpha, beta) -> tuple:
    """(lo, hi, rest): the activations that are a clamp (none, relu, relu6, clamp) as its
    float32 bounds, for kernels that clamp in their epilogue and leave out the code of every
    other activation (each one compiled into a kernel costs its cold start); ``rest`` is
    another activation's code, for a pass after the kernel (``elementwise.act``), else NONE."""
    if act == RELU:
        return _F0, _INF, NONE
    if act == RELU6:
        return _F0, _F6, NONE
    if act == CLAMP:
        return np.float32(alpha), np.float32(beta), NONE
    return -_INF, _INF, act


@njit(inline="always", **JIT)
def activate_run(d, n, act, alpha, beta):
    """``d[:n] = activate(d[:n])`` in place (see ``activate_at``)."""
    activate_at(d, 0, n, act, alpha, beta)


@njit(inline="always", **JIT)
def activate_at(d, o, n, act, alpha, beta):
    """``d[o:o+n] = activate(d[o:o+n])`` in place, the common activations in branch-free
    loops of their own (they vectorise; the loop around ``activate``'s chain of tests does
    not). An offset into the whole array, not a view of it: in a parallel loop each view
    is an atomic increment and decrement of the array's shared reference count, a cache
    line the threads then pass back and forth. The offset and the loop's counter are both
    unsigned, which spares the index Numba's test for negative indices (with it, SiLU's loop
    did not vectorise: 10x slower; with a signed counter, unsigned plus signed is signed, and
    a bias add took 1.1 ns an element instead of 0.12)."""
    if act == NONE:
        return
    u, count = np.uintp(o), np.uintp(n)
    if act == RELU:
        for j in range(count):
            d[u + j] = d[u + j] if d[u + j] > 0.0 else _F0
    elif act == RELU6:
        for j in range(count):
            d[u + j] = min(max(d[u + j], _F0), _F6)
    elif act == SILU:
        for j in range(count):
            d[u + j] = silu(d[u + j])
    elif act == SIGMOID:
        for j in range(count):
            d[u + j] = sigmoid(d[u + j])
    elif act == HARDSWISH:
        for j in range(count):
            v = d[u + j]
            d[u + j] = v * min(max(v + _F3, _F0), _F6) / _F6
    else:
        for j in range(count):
            d[u + j] = activate(d[u + j], act, alpha, beta)


@njit(**JIT)
def epilogue_run(d, s, b, r, has_res, n, act, alpha, beta):
    """``d[:n] = act(s + b (+ r))`` on views (see ``epilogue_at``)."""
    epilogue_at(d, 0, s, 0, b, 0, r, 0, has_res, n, act, alpha, beta)


@njit(inline="always", **JIT)
def epilogue_at(d, do, s, so, b, bo, r, ro, has_res, n, act, alpha, beta):
    """``d[do:do+n] = act(s[so:] + b[bo:] (+ r[ro:]))``: a convolution's fused epilogue on
    one output pixel or row, on whole flat arrays at offsets (no views: see
    ``activate_at``), the branches outside the loops so that these vectorise (the branchy
    form cost 1.3 ms on ResNet's stem, as much as its GEMM). ``r`` is read only where
    ``has_res``."""
    do, so, bo, ro = np.uintp(do), np.uintp(so), np.uintp(bo), np.uintp(ro)
    count = np.uintp(n)
    if has_res:
        for j in range(count):
            d[do + j] = s[so + j] + b[bo + j] + r[ro + j]
    else:
        for j in range(count):
            d[do + j] = s[so + j] + b[bo + j]
    activate_at(d, do, n, act, alpha, beta)


_GELU_KAPPA = np.float32(0.044715)
_INV_SQRT_2PI = np.float32(1.0 / math.sqrt(2.0 * math.pi))


@njit(inline="always", **JIT)
def activate_grad(x, y, act, alpha, beta):
    """d activate(x) / dx for activation ``act``, given its input ``x`` and output ``y``, with
    PyTorch's choices at the kinks (relu's 0 at 0, clamp's 1 on its bounds)."""
    if act == RELU:
        return _F1 if x > 0.0 else _F0
    if act == RELU6:
        return _F1 if 0.0 < x < 6.0 else _F0
    if act == LEAKY_RELU:
        return _F1 if x > 0.0 else alpha
    if act == SIGMOID:
        return y * (_F1 - y)
    if act == TANH:
        return _F1 - y * y
    if act == SILU:
        s = sigmoid(x)
        return s * (_F1 + x * (_F1 - s))
    if act == HARDSWISH:
        if x < -3.0:
            return _F0
        return x / _F3 + np.float32(0.5) if x <= 3.0 else _F1
    if act == HARDSIGMOID:
        return _F1 / _F6 if -3.0 < x < 3.0 else _F0
    if act == GELU:
        if alpha == 1.0:
            t = np.tanh(_TANH_GELU * (x + _GELU_KAPPA * x * x * x))
            dt = (_F1 - t * t) * _TANH_GELU * (_F1 + _F3 * _GELU_KAPPA * x * x)
            return np.float32(0.5) * (_F1 + t) + np.float32(0.5) * x * dt
        cdf = np.float32(0.5) * (_F1 + np.float32(math.erf(x * _SQRT_HALF)))
        return cdf + x * _INV_SQRT_2PI * np.float32(math.exp(-0.5 * x * x))
    if act == ELU:
        return _F1 if x > 0.0 else y + alpha
    if act == SOFTPLUS:
        return _F1 if x > 20.0 else sigmoid(x)
    if act == MISH:
        t = np.tanh(_softplus(x))
        return t + x * sigmoid(x) * (_F1 - t * t)
    if act == CLAMP:
        return _F1 if alpha <= x <= beta else _F0
    if act == SELU:
        return _SELU_SCALE if x > 0.0 else y + _SELU_SCALE * _SELU_ALPHA
    return _F1
