"""Single-precision GEMM for Numba kernels: SciPy's BLAS ``sgemm`` as an external function.

The symbol is registered with llvmlite and called from an intrinsic that declares it, so
kernels that call it stay cacheable (``cache=True``), unlike kernels holding a ctypes pointer.
Callers pass arrays and float offsets, never bare addresses: the caller's reference keeps each
array alive while BLAS reads it (a freed temporary crashed the micro-kernel driver).
Explicit leading dimensions let one call write into a column block of a wider matrix, and
``beta`` lets calls accumulate. BLAS runs single-threaded during cnnc's passes
(``single_threaded``): the parallelism is Numba's ``prange`` over tiles, one thread pool for the
whole runtime (see docs/performance.md).
"""

from __future__ import annotations

import ctypes
import importlib.util
import threading
from contextlib import contextmanager
from pathlib import Path

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from .bounds import GEMM_A, GEMM_B, GEMM_C, SGEMM, checking, inside

F4 = 4  # bytes per float32


def _openblas() -> ctypes.CDLL | None:
    """SciPy's bundled OpenBLAS (the scipy-openblas wheels), loaded without importing
    scipy.linalg (0.3 s of a warm start): its ``scipy_sgemm_`` is what cython_blas calls."""
    spec = importlib.util.find_spec("scipy")
    if spec is None or spec.origin is None:
        return None
    libs = Path(spec.origin).resolve().parent.parent / "scipy.libs"
    for lib in sorted(libs.glob("libscipy_openblas*.so*")):
        try:
            return ctypes.CDLL(str(lib))
        except OSError:
            continue
    return None


def _thread_controls(lib: ctypes.CDLL | None) -> tuple:
    """OpenBLAS's get and set of its thread count, or (None, None) where there are none."""
    for prefix in ("scipy_openblas", "openblas") if lib is not None else ():
        get, set_ = (getattr(lib, f"{prefix}_{verb}_num_threads", None) for verb in ("get", "set"))
        if get is not None and set_ is not None:
            return get, set_
    return None, None


def _sgemm_address(lib: ctypes.CDLL | None) -> int:
    if lib is not None and hasattr(lib, "scipy_sgemm_"):
        return ctypes.cast(lib.scipy_sgemm_, ctypes.c_void_p).value
    # another SciPy build: the address cython_blas exports (imports scipy.linalg)
    from numba.extending import get_cython_function_address

    return get_cython_function_address("scipy.linalg.cython_blas", "sgemm")


_LIB = _openblas()
_GET_THREADS, _SET_THREADS = _thread_controls(_LIB)
_lock = threading.Lock()
_depth = 0  # passes in progress (threads, nested calls)
_saved = 1  # the host's BLAS thread count, restored when the last pass ends


@contextmanager
def single_threaded():
    """Run the enclosed work with SciPy's OpenBLAS on one thread, then give the process its
    own setting back: BLAS threads inside Numba's threads stall (measured: every conv took
    8 ms, 4x too slow), but an application's own SciPy calls keep their threads. The count
    is process-wide while a pass runs (OpenBLAS has no per-call setting), so a SciPy call on
    another thread of the host during a cnnc pass runs on one thread too."""
    global _depth, _saved
    if _SET_THREADS is None:
        yield
        return
    with _lock:
        if _depth == 0:
            _saved = _GET_THREADS()
            if _saved != 1:
                _SET_THREADS(1)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _saved != 1:
                _SET_THREADS(_saved)


llvm.add_symbol("cnnc_sgemm", _sgemm_address(_LIB))

#: OpenBLAS (0.3.x, AVX-512 cores) computes a GEMM with m*n*k up to 1e6 with its "small
#: matrix" kernels, which skip packing: 110-117 GFLOP/s on one core here for every such shape
#: tried, against 70-98 just above the limit (60x128x128: 115; 64x128x128: 82). Tilings aim
#: at or below it.
SMALL_MNK = 1_000_000


def _sgemm_for(trans_a: int):
    """``_sgemm`` with A untransposed (``'N'``, 78) or transposed (``'T'``, 84)."""

    @intrinsic
    def _sgemm(typingctx, m, n, k, a, lda, b, ldb, c, ldc, beta):
        """Fortran ``sgemm`` (column-major, every argument by address) for the row-major
        product of ``gemm``, its integer and scalar arguments in stack slots of the calling
        function: no array is allocated, so none can be freed while BLAS reads it. Addresses
        in bytes."""
        sig = types.void(*([types.intp] * 9), types.float32)

        def codegen(context, builder, signature, args):
            m, n, k, a, lda, b, ldb, c, ldc, beta = args
            i8, i32, i64, f32 = ir.IntType(8), ir.IntType(32), ir.IntType(64), ir.FloatType()
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [i64] * 13), "cnnc_sgemm"
            )

            def slot(value):  # an alloca in the entry block, filled here: its address
                held = cgutils.alloca_once(builder, value.type)
                builder.store(value, held)
                return builder.ptrtoint(held, i64)

            trans = slot(ir.Constant(i8, 78))  # 'N'
            trans_a_slot = slot(ir.Constant(i8, trans_a))
            rows, cols, inner, ld_a, ld_b, ld_c = (
                slot(builder.trunc(v, i32)) for v in (n, m, k, lda, ldb, ldc)
            )
            # row-major C = A B is column-major C^T = B^T A^T: B first
            one = slot(ir.Constant(f32, 1.0))
            args = [trans, trans_a_slot, rows, cols, inner, one, b, ld_b, a, ld_a, slot(beta), c]
            builder.call(fn, [*args, ld_c])
            return context.get_dummy_value()

        return sig, codegen

    return _sgemm


_sgemm_nn = _sgemm_for(78)  # 'N'
_sgemm_tn = _sgemm_for(84)  # 'T'


@njit(cache=True, nogil=True)
def gemm(m, n, k, a, a0, lda, b, b0, ldb, c, c0, ldc, beta):
    """Row-major ``C[m, n] = A[m, k] @ B[k, n] + beta * C``, where A starts at float ``a0`` of
    the float32 array ``a`` with rows ``lda`` floats apart, and so on for B and C (arrays,
    not addresses: the caller's reference keeps each alive while BLAS runs). Reads floats
    ``a0 .. a0 + (m - 1) lda + k`` of ``a`` and ``b0 .. b0 + (k - 1) ldb + n`` of ``b``,
    writes ``c0 .. c0 + (m - 1) ldc + n`` of ``c``; checked mode (bounds.py) verifies that."""
    a_at = a.ctypes.data + a0 * F4
    b_at = b.ctypes.data + b0 * F4
    c_at = c.ctypes.data + c0 * F4
    if checking() and not (
        inside(SGEMM, GEMM_A, a_at, a_at + ((m - 1) * lda + k) * F4, a)
        and inside(SGEMM, GEMM_B, b_at, b_at + ((k - 1) * ldb + n) * F4, b)
        and inside(SGEMM, GEMM_C, c_at, c_at + ((m - 1) * ldc + n) * F4, c)
    ):
        return
    _sgemm_nn(m, n, k, a_at, lda, b_at, ldb, c_at, ldc, np.float32(beta))


@njit(cache=True, nogil=True)
def gemm_tn(m, n, k, a, a0, lda, b, b0, ldb, c, c0, ldc, beta):
    """Row-major ``C[m, n] = A[k, m]^T @ B[k, n] + beta * C`` (the weight gradients'
    ``columns^T @ gy``), arrays and float offsets as ``gemm``'s. Reads floats
    ``a0 .. a0 + (k - 1) lda + m`` of ``a`` and ``b0 .. b0 + (k - 1) ldb + n`` of ``b``, writes
    ``c0 .. c0 + (m - 1) ldc + n`` of ``c``. Column-major that is ``C^T = B^T A``: B first,
    untransposed, A second, transposed."""
    a_at = a.ctypes.data + a0 * F4
    b_at = b.ctypes.data + b0 * F4
    c_at = c.ctypes.data + c0 * F4
    if checking() and not (
        inside(SGEMM, GEMM_A, a_at, a_at + ((k - 1) * lda + m) * F4, a)
        and inside(SGEMM, GEMM_B, b_at, b_at + ((k - 1) * ldb + n) * F4, b)
        and inside(SGEMM, GEMM_C, c_at, c_at + ((m - 1) * ldc + n) * F4, c)
    ):
        return
    _sgemm_tn(m, n, k, a_at, lda, b_at, ldb, c_at, ldc, np.float32(beta))
