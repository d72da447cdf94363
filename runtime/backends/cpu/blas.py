"""Single-precision GEMM for Numba kernels: SciPy's BLAS ``sgemm`` as an external function.

The symbol is registered with llvmlite and called from an intrinsic that declares it, so
kernels that call it stay cacheable (``cache=True``), unlike kernels holding a ctypes pointer.
Explicit leading dimensions let one call write into a column block of a wider matrix, and
``beta`` lets calls accumulate. BLAS runs single-threaded: the parallelism is Numba's ``prange``
over tiles, one thread pool for the whole runtime (see PERFORMANCE-NOTES).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import ctypes  # noqa: E402
import importlib.util  # noqa: E402
from pathlib import Path  # noqa: E402

import llvmlite.binding as llvm  # noqa: E402
import numpy as np  # noqa: E402
from llvmlite import ir  # noqa: E402
from numba import njit, types  # noqa: E402
from numba.core import cgutils  # noqa: E402
from numba.extending import intrinsic  # noqa: E402

from .bounds import GEMM_A, GEMM_B, GEMM_C, SGEMM, checking, inside  # noqa: E402

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


def _sgemm_address() -> int:
    lib = _openblas()
    if lib is not None:
        for setter in ("scipy_openblas_set_num_threads", "openblas_set_num_threads"):
            if hasattr(lib, setter):
                # BLAS threads inside Numba's threads stall (measured: every conv took 8 ms,
                # 4x too slow): the parallelism is prange's, BLAS runs single-threaded
                getattr(lib, setter)(1)
                break
        if hasattr(lib, "scipy_sgemm_"):
            return ctypes.cast(lib.scipy_sgemm_, ctypes.c_void_p).value
    # another SciPy build: the address cython_blas exports (imports scipy.linalg)
    from numba.extending import get_cython_function_address

    return get_cython_function_address("scipy.linalg.cython_blas", "sgemm")


llvm.add_symbol("cnnc_sgemm", _sgemm_address())

#: OpenBLAS (0.3.x, AVX-512 cores) computes a GEMM with m*n*k up to 1e6 with its "small
#: matrix" kernels, which skip packing: 110-117 GFLOP/s on one core here for every such shape
#: tried, against 70-98 just above the limit (60x128x128: 115; 64x128x128: 82). Tilings aim
#: at or below it.
SMALL_MNK = 1_000_000


@intrinsic
def _sgemm(typingctx, m, n, k, a, lda, b, ldb, c, ldc, beta):
    """Fortran ``sgemm`` (column-major, every argument by address) for the row-major product of
    ``gemm``, its integer and scalar arguments in stack slots of the calling function: no
    array is allocated, so none can be freed while BLAS reads it. Addresses in bytes."""
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
        rows, cols, inner, ld_a, ld_b, ld_c = (
            slot(builder.trunc(v, i32)) for v in (n, m, k, lda, ldb, ldc)
        )
        # row-major C = A B is column-major C^T = B^T A^T: B first
        builder.call(fn, [trans, trans, rows, cols, inner, slot(ir.Constant(f32, 1.0)), b, ld_b,
                          a, ld_a, slot(beta), c, ld_c])  # fmt: skip
        return context.get_dummy_value()

    return sig, codegen


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
    _sgemm(m, n, k, a_at, lda, b_at, ldb, c_at, ldc, np.float32(beta))
