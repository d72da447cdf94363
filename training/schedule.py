"""Learning-rate schedules, per epoch, as ``torch.optim.lr_scheduler`` computes them.

``constant``; ``step:E:G`` (``StepLR(step_size=E, gamma=G)``: the rate times G every E
epochs); ``cosine`` (``CosineAnnealingLR`` over the epochs after warm-up, to 0). A warm-up of
W epochs ramps linearly to the base rate first, as
``SequentialLR([LinearLR(start_factor=1/(W+1), total_iters=W), MAIN], milestones=[W])``:
epoch e < W runs at ``lr * (e + 1) / (W + 1)``, and the main schedule starts at epoch W as
its own epoch 0. The rate of an epoch is a function of the epoch alone (closed forms, no
running state), so a resumed run picks it up exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..compiler import UsageError, error


@dataclass(frozen=True)
class Schedule:
    kind: str  # constant, step, cosine
    lr: float
    epochs: int
    warmup: int = 0
    step_size: int = 0
    gamma: float = 1.0

    def rate(self, epoch: int) -> float:
        """The learning rate of ``epoch`` (0-based)."""
        if epoch < self.warmup:
            return self.lr * (epoch + 1) / (self.warmup + 1)
        e = epoch - self.warmup
        if self.kind == "step":
            return self.lr * self.gamma ** (e // self.step_size)
        if self.kind == "cosine":
            t_max = max(1, self.epochs - self.warmup)
            return self.lr * (1 + math.cos(math.pi * e / t_max)) / 2
        return self.lr


def parse_schedule(text: str, lr: float, epochs: int, warmup: int = 0) -> Schedule:
    """``constant``, ``step:E:G`` or ``cosine`` (``--schedule``), checked."""
    if not (lr > 0 and math.isfinite(lr)):
        raise UsageError(error(f"--lr must be a number above 0, got {lr}"))
    if warmup < 0:
        raise UsageError(error(f"--warmup must be at least 0 epochs, got {warmup}"))
    kind, *rest = text.split(":")
    if kind in ("constant", "cosine") and not rest:
        return Schedule(kind, lr, epochs, warmup)
    if kind == "step" and len(rest) == 2:
        try:
            size, gamma = int(rest[0]), float(rest[1])
        except ValueError:
            size, gamma = 0, -1.0
        if size >= 1 and 0 < gamma and math.isfinite(gamma):
            return Schedule("step", lr, epochs, warmup, size, gamma)
    raise UsageError(
        error(
            f"--schedule '{text}': use constant, cosine, or step:E:G (the rate times G every E "
            "epochs, e.g. step:10:0.1)"
        )
    )
