"""Kernel tables: each backend maps a plan step's kernel name to the function that runs it.

A backend's modules register with ``@KERNELS.register("name")`` beside the kernel itself, so
an op's CPU and CUDA kernels carry the op's name in both folders. A launcher has the signature
``launch(backend, step, arrays, ins, res, out, work)``: the step (its ``attrs``), its packed
weights on the device, the input views, the residual view (empty for none), the output view
and the scratch buffer, all in the runtime layout (NHWC, or (N, C) for vectors).
"""

from __future__ import annotations

from collections.abc import Callable


class KernelTable(dict):
    """``name -> launcher`` for one backend."""

    def __init__(self, backend: str):
        super().__init__()
        self.backend = backend

    def register(self, *names: str) -> Callable:
        def add(launch: Callable) -> Callable:
            for name in names:
                if name in self:
                    raise ValueError(f"{self.backend} kernel '{name}' is registered twice")
                self[name] = launch
            return launch

        return add
