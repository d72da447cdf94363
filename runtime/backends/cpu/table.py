"""The CPU kernel tables; every kernel module of this folder registers into them: forward
kernels in ``KERNELS``, their backward passes under the same names in ``GRADS``."""

from __future__ import annotations

from ..registry import GradTable, KernelTable

KERNELS = KernelTable("cpu")
GRADS = GradTable("cpu backward")

#: Kernels whose launcher does nothing but run the call bound under ``step_key``
#: (``CpuBackend.bound_call``): later passes run that call directly (``CpuBackend.replay``).
BOUND_ONLY: set[str] = set()


def step_key(step, ins, res, out) -> tuple:
    """The key of a step's bound call: the step and the buffers it was bound to."""
    return (id(step), id(ins[0]), id(res), id(out))
