"""``cnnc tune``: measure every convolution's algorithm ahead of time, with a progress bar.

The measuring itself is the CPU backend's (backends/cpu/autotune.py). ``cnnc run`` measures
nothing unless asked (``--tune``, ``CNNC_TUNE=1``): it takes the choices cached here or by
``cnnc bench``, else autotune.default_choice.
"""

from __future__ import annotations

import sys

from .data import random_inputs
from .session import Session


class ProgressBar:
    """``tuning [#####-----] 5/10 layer`` on one line of a terminal; plain lines otherwise."""

    def __init__(self, total: int, out=None, width: int = 24):
        out = out or sys.stderr  # looked up now: a stream bound at import may be closed since
        self.total, self.done, self.out, self.width = max(total, 1), 0, out, width
        self.tty = hasattr(out, "isatty") and out.isatty()

    def step(self, label: str):
        self.done += 1
        filled = self.width * min(self.done, self.total) // self.total
        bar = "#" * filled + "-" * (self.width - filled)
        line = f"tuning [{bar}] {self.done}/{self.total} {label}"
        if self.tty:
            print(f"\r\033[K{line}", end="", file=self.out, flush=True)
        else:
            print(line, file=self.out, flush=True)

    def close(self):
        if self.tty and self.done:
            print(file=self.out, flush=True)


def tune(session: Session, batch: int, force: bool = False, out=None) -> list[dict]:
    """Measure the convolutions of ``session``'s plan at ``batch`` (again where ``force``);
    return one row per convolution step with its choice."""
    executor = session._executor(batch)
    backend = executor.backend
    if not hasattr(backend, "tune_cache"):
        return []
    convs = [s for s in session.plan.steps if s.kernel == "conv"]
    bar = ProgressBar(len(backend.pending_tuning(session.plan, batch, force)), out)
    tunes = backend.tune
    backend.tune, backend.retune, backend.on_tune = True, force, bar.step
    try:
        executor.run(random_inputs(session.network, batch, 0))
    finally:
        backend.tune, backend.retune, backend.on_tune = tunes, False, None
        bar.close()
    return [
        {
            "layer": s.label,
            "shape": list(session.plan.values[s.output].shape),
            "choice": backend.choice_of(s),
        }
        for s in convs
    ]
