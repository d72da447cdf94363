"""The CPU kernel table; every kernel module of this folder registers into it."""

from __future__ import annotations

from ..registry import KernelTable

KERNELS = KernelTable("cpu")
