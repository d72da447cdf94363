"""Single-precision GEMM for Numba kernels: SciPy's BLAS ``sgemm`` as an external function.

The symbol is registered with llvmlite and declared as a ``numba.types.ExternalFunction``, so
kernels that call it stay cacheable (``cache=True``), unlike kernels holding a ctypes pointer.
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
from numba import njit, types


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
    _sgemm(
        trans.ctypes.data,
        trans.ctypes.data,
        base,
        base + 4,
        base + 8,
        scalars.ctypes.data,
        b,
        base + 12,
        a,
        base + 16,
        scalars.ctypes.data + 4,
        c,
        base + 20,
    )


@njit(cache=True, nogil=True)
def gemm_tn(m, n, k, a, lda, b, ldb, c, ldc, beta):
    """Row-major ``C[m, n] = A[k, m]^T @ B[k, n] + beta * C`` (addresses in bytes): the
    weight gradients' ``columns^T @ gy``. Column-major that is ``C^T = B^T A``, so B goes
    first untransposed and A second transposed."""
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
    trans = np.empty(2, np.uint8)
    trans[0] = 78  # 'N'
    trans[1] = 84  # 'T'
    base = ints.ctypes.data
    _sgemm(
        trans.ctypes.data,
        trans.ctypes.data + 1,
        base,
        base + 4,
        base + 8,
        scalars.ctypes.data,
        b,
        base + 12,
        a,
        base + 16,
        scalars.ctypes.data + 4,
        c,
        base + 20,
    )
