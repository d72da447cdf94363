"""Numba's typing and lowering registries, loaded without importing ``scipy.linalg``.

A process pays once for Numba's registries before its first kernel compiles or loads from
the cache (``BaseContext.refresh``). Among them, ``numba.np.arraymath`` asks at import
whether SciPy's BLAS is there (``_HAVE_BLAS``, for ``np.dot``) by importing
``scipy.linalg.cython_blas``, and so all of ``scipy.linalg``: 0.15-0.16 s of the 0.25-0.26 s
the refresh took in a warm ``cnnc run`` of ResNet-18 (2-core Zen 4), for a module none of
cnnc's kernels calls through (cnnc's own sgemm is SciPy's OpenBLAS, found without it:
blas.py). ``load`` answers that question by finding the module's file instead: the same
answer, with SciPy's integer-width check still made, and ``scipy.linalg`` imported when a
kernel that needs it compiles (Numba's ``np.dot`` and ``np.linalg`` call ``ensure_blas``
then, the real one, restored here).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path


def load() -> None:
    """Load Numba's registries now, as the first kernel would (once per process; later calls
    cost a few microseconds). Where ``numba.np.arraymath`` is imported already (the host
    process compiled something), nothing is deferred."""
    from numba.core import registry

    context = registry.cpu_target.target_context
    if "numba.np.arraymath" in sys.modules:
        context.refresh()
        return
    from numba.np import linalg

    real = getattr(linalg, "ensure_blas", None)
    if real is None:  # another Numba: its own way
        context.refresh()
        return
    linalg.ensure_blas = _blas_without_importing
    try:
        context.refresh()
    finally:
        linalg.ensure_blas = real
        arraymath = sys.modules.get("numba.np.arraymath")
        if getattr(arraymath, "ensure_blas", None) is _blas_without_importing:
            arraymath.ensure_blas = real


def _blas_without_importing() -> None:
    """``numba.np.linalg.ensure_blas``'s answer (ImportError where SciPy's ``cython_blas``
    cannot be imported), found on disk instead of imported."""
    from numba.np import linalg

    if not scipy_blas_present():
        raise ImportError("scipy 0.16+ is required for linear algebra")
    check = getattr(linalg, "_check_lapack_int_width", None)
    if check is not None:
        check()


def scipy_blas_present() -> bool:
    """Whether ``scipy.linalg.cython_blas`` is there to import: SciPy found, and the
    extension module's file beside ``scipy/linalg/__init__.py``."""
    try:
        spec = importlib.util.find_spec("scipy")
    except (ImportError, ValueError):
        return False
    if spec is None or not spec.submodule_search_locations:
        return False
    for folder in spec.submodule_search_locations:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            if (Path(folder) / "linalg" / f"cython_blas{suffix}").is_file():
                return True
    return False
