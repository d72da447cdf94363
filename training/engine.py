"""The gradient engine as the training loop uses it: one training and one evaluation plan of
a network, their executors per batch size on one backend, and one step or one prediction.

Weights live in one dict of float32 arrays in PyTorch's layouts; an executor packs them when
they have changed (before every training step, once per evaluation pass).
"""

from __future__ import annotations

import fnmatch

import numpy as np

from ..compiler import ResourceError, UsageError, error
from ..runtime.backprop import GradExecutor
from ..runtime.grad_plan import build_grad_plan
from ..runtime.memory import SAFETY, available_bytes


def frozen_layers(net, patterns) -> set[str]:
    """Layers with weights whose names match any glob of ``--freeze``; a pattern that matches
    none is a usage error naming a few layer names."""
    weighted = [layer.name for layer in net.layers if layer.weights]
    frozen: set[str] = set()
    for pattern in patterns:
        hit = [name for name in weighted if fnmatch.fnmatchcase(name, pattern)]
        if not hit:
            shown = ", ".join(weighted[:6]) + (" ..." if len(weighted) > 6 else "")
            raise UsageError(
                error(
                    f"--freeze '{pattern}' matches no layer with weights (layers: {shown})",
                    hint="`cnnc check FILE` lists the layer names; globs like 'stem.*' work",
                )
            )
        frozen.update(hit)
    if weighted and frozen == set(weighted):
        raise UsageError(error("--freeze matches every layer with weights: nothing would train"))
    return frozen


class Engine:
    """Training and evaluation executors of ``net`` on one backend."""

    def __init__(
        self, net, device: str = "cpu", frozen: set[str] = frozenset(), training: bool = True
    ):
        from ..runtime.backends import backend_for

        self.net, self.frozen = net, set(frozen)
        frozen_norms = {
            layer.name for layer in net.layers if layer.name in self.frozen and layer.op == "bn"
        }
        self.backend = backend_for(device, "direct", tune=False)
        if not hasattr(self.backend, "grads"):
            raise ResourceError(
                error(
                    f"--device {device} has no backward kernels in this version of cnnc",
                    hint="train on the CPU (--device cpu, the default)",
                )
            )
        self.plans = {
            True: build_grad_plan(net, True, eval_layers=frozen_norms),
            False: build_grad_plan(net, False),
        }
        if training:
            self._check_backward(device)
        self.input = next(iter(net.inputs))
        self.output = next(iter(net.outputs))
        self.executors: dict[tuple[bool, int], GradExecutor] = {}
        self.loaded: dict[tuple[bool, int], int] = {}
        self.version = 0  # bumped whenever the weights change

    def _check_backward(self, device: str) -> None:
        """Every step of the training plan has a backward kernel on this backend."""
        missing = [
            (gs.layer.name, gs.kernel)
            for gs in self.plans[True].steps
            if gs.kernel not in self.backend.grads
        ]
        if missing:
            names = ", ".join(f"{layer} ({kernel})" for layer, kernel in missing[:5])
            raise ResourceError(
                error(
                    f"these layers have no backward pass on {device} yet: {names}"
                    + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
                )
            )

    def check_fits(self, batch: int) -> None:
        """Refuse a batch whose training step cannot fit in memory, before allocating."""
        plan = self.plans[True]
        need = plan.memory(self.backend.grads, batch)
        total = (
            need["activations_peak"] + 3 * need["weights"] + 2 * need["gradients"]
        )  # weights held, packed and in the optimizer's state
        have = available_bytes()
        if total > SAFETY * have:
            raise ResourceError(
                error(
                    f"a training step of batch {batch} needs about {total / 2**30:.2f} GiB but "
                    f"only {have / 2**30:.2f} GiB of memory is available",
                    hint="use a smaller --batch",
                )
            )

    def executor(self, batch: int, train: bool) -> GradExecutor:
        key = (train, batch)
        if key not in self.executors:
            if len(self.executors) >= 4:  # a full batch and a last partial one, each mode
                for old in [k for k in self.executors if k[0] == train and k[1] != batch][:1]:
                    del self.executors[old]
                    self.loaded.pop(old, None)
            # no input gradients: training reads none, and steps that lead only to the
            # input (a stem's data gradient) then do not run (check_fits plans the same)
            ex = GradExecutor(self.plans[train], self.backend, batch, input_grads=False)
            ex.frozen = set(self.frozen)
            self.executors[key] = ex
        ex = self.executors[key]
        return ex

    def _loaded(self, batch: int, train: bool, weights: dict) -> GradExecutor:
        ex = self.executor(batch, train)
        if self.loaded.get((train, batch)) != self.version:
            ex.load(weights)
            self.loaded[(train, batch)] = self.version
        return ex

    def changed(self) -> None:
        self.version += 1

    def logits(self, ex: GradExecutor) -> np.ndarray:
        """The tensor the loss reads (before a final softmax), NCHW on the host."""
        plan = ex.plan
        vid = plan.logits[self.output]
        return self.backend.runtime_to_nchw(self.backend.to_host(ex.view(vid)))

    def outputs(self, ex: GradExecutor) -> np.ndarray:
        return ex.outputs()[self.output]

    def step(self, weights: dict, x: np.ndarray, y: np.ndarray, loss: str, seed: int):
        """Forward in training mode, loss, backward: ``(loss, weight gradients, logits)``;
        the gradients are None when the loss is not finite. The executor keeps the batch
        norms' statistics of this pass (``running_statistics``)."""
        ex = self._loaded(len(x), True, weights)
        with np.errstate(over="ignore", invalid="ignore"):  # non-finite values are checked
            ex.forward({self.input: x}, seed)
            value = ex.loss({self.output: y}, loss)
        logits = self.logits(ex)
        if not np.isfinite(value):
            return value, None, logits
        with np.errstate(over="ignore", invalid="ignore"):
            grads, _ = ex.backward()
        return value, grads, logits

    def running_statistics(self, batch: int, weights: dict) -> dict:
        return self.executors[(True, batch)].running_statistics(weights)

    def predict(self, weights: dict, x: np.ndarray):
        """Evaluation-mode forward pass; returns the executor holding its values."""
        ex = self._loaded(len(x), False, weights)
        with np.errstate(over="ignore", invalid="ignore"):
            ex.forward({self.input: x}, 0)
        return ex
