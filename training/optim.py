"""Optimizers as ``torch.optim`` defines them: SGD (momentum, Nesterov, weight decay), Adam and
AdamW, on a dict of float32 NumPy arrays updated in place.

Each follows the single-tensor code path of its PyTorch class step by step, in float32, so five
steps from the same weights and gradients agree with ``torch.optim`` to rounding. A key with no
gradient (a frozen layer) is left alone, its state untouched, as PyTorch skips a parameter
whose ``.grad`` is None. The state is plain arrays and numbers, so a checkpoint saves it as is.
"""

from __future__ import annotations

import math

import numpy as np

from ..compiler import UsageError, error

OPTIMIZERS = ("sgd", "adam", "adamw")

#: PyTorch's default weight decay per optimizer (AdamW decays by default, the others do not).
DEFAULT_WEIGHT_DECAY = {"sgd": 0.0, "adam": 0.0, "adamw": 0.01}
#: The default learning rate per optimizer (Keras's and ``torch.optim.Adam``'s).
DEFAULT_LR = {"sgd": 0.01, "adam": 0.001, "adamw": 0.001}


class Optimizer:
    """``step(weights, grads, lr)`` updates ``weights`` in place; ``state`` is what a
    checkpoint keeps (arrays keyed ``KIND.KEY``, and the step count)."""

    name = ""

    def __init__(self):
        self.arrays: dict[str, np.ndarray] = {}
        self.steps = 0

    def state(self) -> dict:
        return {"steps": self.steps, "arrays": self.arrays}

    def restore(self, state: dict) -> None:
        self.steps = int(state["steps"])
        self.arrays = {k: np.array(v, np.float32) for k, v in state["arrays"].items()}

    def step(self, weights: dict, grads: dict, lr: float) -> None:
        self.steps += 1
        for key, g in grads.items():
            if key in weights:
                self._update(key, weights[key], np.asarray(g, np.float32), np.float32(lr))

    def _update(self, key: str, p: np.ndarray, g: np.ndarray, lr) -> None:
        raise NotImplementedError


class SGD(Optimizer):
    """``torch.optim.SGD`` with dampening 0: decay added to the gradient, the momentum buffer
    starting as the first gradient, Nesterov's look-ahead ``g + momentum * buf``."""

    name = "sgd"

    def __init__(self, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0):
        super().__init__()
        if nesterov and momentum <= 0:
            raise UsageError(error("--nesterov needs a momentum above 0 (--momentum 0.9)"))
        self.momentum = np.float32(momentum)
        self.nesterov = nesterov
        self.weight_decay = np.float32(weight_decay)

    def _update(self, key, p, g, lr):
        if self.weight_decay:
            g = g + self.weight_decay * p
        if self.momentum:
            buf = self.arrays.get(f"momentum.{key}")
            if buf is None:
                buf = self.arrays[f"momentum.{key}"] = g.copy()
            else:
                buf *= self.momentum
                buf += g
            g = g + self.momentum * buf if self.nesterov else buf
        p -= lr * g


class Adam(Optimizer):
    """``torch.optim.Adam`` (``decoupled=False``: decay joins the gradient) and AdamW
    (``decoupled=True``: the weights shrink by ``lr * decay`` first)."""

    def __init__(
        self,
        weight_decay: float = 0.0,
        decoupled: bool = False,
        betas: tuple = (0.9, 0.999),
        eps: float = 1e-8,
    ):
        super().__init__()
        self.name = "adamw" if decoupled else "adam"
        self.weight_decay = np.float32(weight_decay)
        self.decoupled = decoupled
        self.beta1, self.beta2 = betas
        self.eps = np.float32(eps)

    def _update(self, key, p, g, lr):
        if self.weight_decay:
            if self.decoupled:
                p *= np.float32(1.0 - float(lr) * float(self.weight_decay))
            else:
                g = g + self.weight_decay * p
        m = self.arrays.get(f"exp_avg.{key}")
        if m is None:
            m = self.arrays[f"exp_avg.{key}"] = np.zeros_like(p)
            self.arrays[f"exp_avg_sq.{key}"] = np.zeros_like(p)
        v = self.arrays[f"exp_avg_sq.{key}"]
        b1, b2 = np.float32(self.beta1), np.float32(self.beta2)
        m += (g - m) * (np.float32(1.0) - b1)  # torch: exp_avg.lerp_(grad, 1 - beta1)
        v *= b2
        v += (np.float32(1.0) - b2) * g * g
        t = self.steps
        # the corrections are Python floats in PyTorch too (the step is a CPU tensor)
        correction1 = 1.0 - self.beta1**t
        correction2_sqrt = math.sqrt(1.0 - self.beta2**t)
        step_size = np.float32(float(lr) / correction1)
        denom = np.sqrt(v) / np.float32(correction2_sqrt) + self.eps
        p -= step_size * (m / denom)


def make_optimizer(
    name: str, momentum: float = 0.0, nesterov: bool = False, weight_decay: float | None = None
) -> Optimizer:
    if name not in OPTIMIZERS:
        raise UsageError(error(f"unknown optimizer '{name}' (choose {', '.join(OPTIMIZERS)})"))
    decay = DEFAULT_WEIGHT_DECAY[name] if weight_decay is None else weight_decay
    if decay < 0 or not math.isfinite(decay):
        raise UsageError(error(f"--weight-decay must be a number >= 0, got {decay}"))
    if not 0 <= momentum < 1 or not math.isfinite(momentum):
        raise UsageError(error(f"--momentum must be in [0, 1), got {momentum}"))
    if name == "sgd":
        return SGD(momentum, nesterov, decay)
    if momentum or nesterov:
        raise UsageError(error(f"--momentum and --nesterov are SGD's; {name} takes neither"))
    return Adam(decay, decoupled=name == "adamw")
