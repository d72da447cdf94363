"""Where cnnc's compiled kernels are kept: a folder of cnnc's own, for cnnc's functions only.

Kernels compile on first use and are cached on disk in the user's cache directory
(``$XDG_CACHE_HOME/cnnc/numba/<digest>``), under a key made of a digest of this backend's
sources: Numba invalidates a cached kernel only when its own file changes, not when a
function it calls from another file does.

The folder reaches Numba through one more cache locator in Numba's list, which answers only
for functions defined in this folder: setting ``numba.config.CACHE_DIR`` instead would move
the cache of every Numba user in the host process. ``NUMBA_CACHE_DIR``, where the user sets
it, keeps its meaning for cnnc's kernels too (Numba's own locator then places them).
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

from numba.core import caching, config

HERE = Path(__file__).resolve().parent


@functools.cache
def sources_digest() -> str:
    """A digest of the kernels' sources and of everything they call."""
    digest = hashlib.sha256()
    for path in sorted(
        (
            *HERE.glob("*.py"),
            *HERE.parent.glob("*.py"),
            HERE.parents[2] / "compiler" / "ops" / "elementwise.py",
        )
    ):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def cache_root() -> Path:
    """cnnc's folder in the user's cache directory (kernels, tuning choices)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cnnc"


def kernel_cache_dir() -> Path:
    return cache_root() / "numba" / sources_digest()


def kernels_compiled() -> bool:
    """Whether this version's kernels were compiled before (Numba's on-disk index files)."""
    directory = Path(config.CACHE_DIR or kernel_cache_dir())
    try:
        return any(directory.rglob("*.nbi"))
    except OSError:
        return False


class KernelCacheLocator(caching._SourceFileBackedLocatorMixin, caching._CacheLocator):
    """Numba's cache locator for the functions of this folder: ``kernel_cache_dir()``, laid
    out as Numba lays out ``NUMBA_CACHE_DIR`` (one subfolder per source folder).

    Numba makes a locator for each cached function when it is defined (141 of cnnc's when
    the backend is imported), and each resolved its file's path and tried a temporary file
    in its folder: 15-25 ms of every start (2-core Zen 4). The folder of a file and the
    folders found writable are kept for the process instead."""

    def __init__(self, py_func, py_file):
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno
        self._cache_path = str(kernel_cache_dir() / _subpath(py_file))

    def get_cache_path(self):
        return self._cache_path

    def ensure_cache_path(self):
        if self._cache_path not in _writable:
            super().ensure_cache_path()  # OSError where it cannot be written: not kept
            _writable.add(self._cache_path)

    @classmethod
    def from_function(cls, py_func, py_file):
        """A locator for cnnc's own kernels, unless the user named a cache folder; None (the
        next locator's turn) for any other function, or where the folder cannot be written
        (Numba's defaults then still work)."""
        if config.CACHE_DIR or not _in_this_folder(py_file):
            return None
        return super().from_function(py_func, py_file)


#: Cache folders this process found writable (``KernelCacheLocator.ensure_cache_path``).
_writable: set[str] = set()


@functools.cache
def _in_this_folder(py_file: str) -> bool:
    return Path(py_file).resolve().parent == HERE


@functools.cache
def _subpath(py_file: str) -> str:
    return KernelCacheLocator.get_suitable_cache_subpath(py_file)


def install_locator() -> None:
    """Put the locator first in Numba's list, before any kernel of this folder is defined.
    It answers for no other function, so other Numba users of the process see no change."""
    impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl  # _CacheImpl in older Numba
    if KernelCacheLocator not in impl._locator_classes:
        impl._locator_classes.insert(0, KernelCacheLocator)
