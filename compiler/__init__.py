"""The cnnc compiler: parse, elaborate, shape-check and cost ``.cnn`` specs (no Numba here).

The names below are its public interface; the runtime imports nothing else from it.
"""

from __future__ import annotations

from .diagnostics import (
    CnncError,
    CnncWarning,
    DataError,
    Diagnostic,
    ResourceError,
    SpecError,
    UsageError,
    error,
)
from .files import write_all_atomically, write_atomically
from .network import Instance, Layer, Network
from .ops import OPS, Activation, fmt_shape
from .report import table

__all__ = [
    "OPS",
    "Activation",
    "CnncError",
    "CnncWarning",
    "DataError",
    "Diagnostic",
    "Instance",
    "Layer",
    "Network",
    "ResourceError",
    "SpecError",
    "UsageError",
    "error",
    "fmt_shape",
    "table",
    "write_all_atomically",
    "write_atomically",
]
