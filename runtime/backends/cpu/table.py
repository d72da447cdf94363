"""The CPU kernel tables; every kernel module of this folder registers into them: forward
kernels in ``KERNELS``, their backward passes under the same names in ``GRADS``."""

from __future__ import annotations

from ..registry import GradTable, KernelTable

KERNELS = KernelTable("cpu")
GRADS = GradTable("cpu backward")
