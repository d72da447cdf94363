"""Where a training step stopped being finite: one pass over the same batch with the same
weights, checking every layer's output in forward order, the loss, then every gradient in
backward order, to name the first layer at fault.

The executor runs unchanged on a backend wrapped so that each forward step and each backward
kernel is checked as it returns; the normal path pays nothing for it.
"""

from __future__ import annotations

import numpy as np

from ..runtime.backprop import GradExecutor


class _Watch:
    """A backend that checks what each step wrote and records the first non-finite value."""

    def __init__(self, backend, plan):
        self._backend = backend
        self.layer_of = {id(gs.step): gs.layer.name for gs in plan.steps}
        self.found: str | None = None
        self.grads = _WatchedGrads(backend.grads, self)

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def finite(self, array) -> bool:
        return bool(np.isfinite(self._backend.to_host(array)).all())

    def run_step(self, step, arrays, ins, res, out, work):
        self._backend.run_step(step, arrays, ins, res, out, work)
        layer = self.layer_of.get(id(step))
        if self.found is None and layer is not None and not self.finite(out):
            self.found = f"the output of layer '{layer}' (forward pass)"


class _WatchedGrads:
    def __init__(self, table, watch: _Watch):
        self.table, self.watch = table, watch
        self.needs, self.needs_of = table.needs, table.needs_of

    def __contains__(self, kernel) -> bool:
        return kernel in self.table

    def __getitem__(self, kernel):
        launch, watch = self.table[kernel], self.watch

        def checked(backend, step, arrays, saved, gy, gxs, gws):
            launch(watch._backend, step, arrays, saved, gy, gxs, gws)
            if watch.found is not None:
                return
            layer = watch.layer_of.get(id(step), step.layers[0] if step.layers else "?")
            for key, g in gws.items():
                if not watch.finite(g):
                    watch.found = f"the gradient of layer '{layer}'s {key} (backward pass)"
                    return
            for g in gxs:
                if g is not None and not watch.finite(g):
                    watch.found = f"the gradient of layer '{layer}'s input (backward pass)"
                    return

        return checked


def first_non_finite(engine, weights: dict, x, y, loss: str, seed: int) -> str:
    """Describe the first weight, layer output, loss or gradient that is NaN or infinite."""
    with np.errstate(all="ignore"):
        return _first_non_finite(engine, weights, x, y, loss, seed)


def _first_non_finite(engine, weights: dict, x, y, loss: str, seed: int) -> str:
    bad = [k for k, w in weights.items() if not np.isfinite(w).all()]
    if bad:
        return f"the weights '{bad[0]}'" + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "")
    plan = engine.plans[True]
    watch = _Watch(engine.backend, plan)
    ex = GradExecutor(plan, watch, len(x), input_grads=False)  # as the step it repeats
    ex.frozen = set(engine.frozen)
    ex.load(weights)
    ex.forward({engine.input: x}, seed)
    if watch.found:
        return watch.found
    value = ex.loss({engine.output: y}, loss)
    if not np.isfinite(value):
        return f"the loss ({value}), from finite outputs"
    ex.backward()
    return watch.found or "no layer when run again (the step is not reproducible)"
