"""Single-precision GEMM for Numba kernels: SciPy's BLAS ``sgemm`` as an external function.

The symbol is registered with llvmlite and declared as a ``numba.types.ExternalFunction``, so
kernels that call it stay cacheable (``cache=True``), unlike kernels holding a ctypes pointer.
Explicit leading dimensions let one call write into a column block of a wider matrix, and
``beta`` lets calls accumulate. BLAS runs single-threaded: the parallelism is Numba's ``prange``
over tiles, one thread pool for the whole runtime (see PERFORMANCE-NOTES).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import llvmlite.binding as llvm  # noqa: E402
import numpy as np  # noqa: E402
from numba import njit, types  # noqa: E402
from numba.extending import get_cython_function_address  # noqa: E402

llvm.add_symbol("cnnc_sgemm", get_cython_function_address("scipy.linalg.cython_blas", "sgemm"))
_sgemm = types.ExternalFunction("cnnc_sgemm", types.void(*([types.intp] * 13)))


@njit(cache=True, nogil=True)
def gemm(m, n, k, a, lda, b, ldb, c, ldc, beta):
    """Row-major ``C[m, n] = A[m, k] @ B[k, n] + beta * C``; a, b, c are addresses (bytes).

    Row-major C = A B is column-major C^T = B^T A^T, hence B is passed first.
    """
    ints = np.empty(6, np.int32)
    ints[0] = n
    ints[1] = m
    ints[2] = k
    ints[3] = ldb
    ints[4] = lda
    ints[5] = ldc
    scalars = np.empty(2, np.float32)
    scalars[0] = 1.0
    scalars[1] = beta
    trans = np.empty(1, np.uint8)
    trans[0] = 78  # 'N'
    base = ints.ctypes.data
    _sgemm(trans.ctypes.data, trans.ctypes.data, base, base + 4, base + 8,
           scalars.ctypes.data, b, base + 12, a, base + 16, scalars.ctypes.data + 4, c,
           base + 20)
