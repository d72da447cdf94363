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


class GradTable(KernelTable):
    """``name -> backward launcher`` for one backend, keyed like the forward kernels.

    A backward launcher has the signature ``grad(backend, step, arrays, saved, gy, gxs, gws)``:
    the forward step and its packed weights, ``saved`` (a :class:`Saved`: the forward inputs
    and output it declared it needs), the output's gradient ``gy``, and the buffers it writes:
    ``gxs`` one per forward input (``None`` where no gradient is wanted) and ``gws`` one per
    learned weight, in PyTorch's layout, keyed as the layer's weights (``weight``, ``bias``).
    Buffers arrive uninitialised: a launcher writes every element of each one it is given.
    ``needs`` says which forward tensors the backward reads (``"x"``: the inputs, ``"y"``: the
    output), so the planner keeps only those alive until it runs: a tuple, or a function of
    the step that returns one (an activation's depends on which it is)."""

    def __init__(self, backend: str):
        super().__init__(backend)
        self.needs: dict[str, tuple[str, ...]] = {}

    def needs_of(self, step) -> tuple[str, ...]:
        """What the backward of ``step`` reads of its forward pass (``("x",)`` where the
        kernel has no backward here)."""
        needs = self.needs.get(step.kernel, ("x",))
        return needs(step) if callable(needs) else needs

    def register(self, *names: str, needs: tuple[str, ...] | Callable = ("x",)) -> Callable:
        add = super().register(*names)

        def add_with_needs(launch: Callable) -> Callable:
            for name in names:
                self.needs[name] = needs
            return add(launch)

        return add_with_needs


class Saved:
    """What a backward launcher reads of its forward step: ``xs`` (inputs, or ``None`` each
    where not kept) and ``y`` (the output, or ``None``), in the runtime layout."""

    __slots__ = ("xs", "y")

    def __init__(self, xs, y):
        self.xs, self.y = xs, y
