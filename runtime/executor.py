"""Running a plan: buffers for a batch size, the step loop, NCHW at the edges.

The loop is device-neutral; a backend (backends/cpu/, backends/cuda/) provides array
allocation, layout conversion and, through its kernel table, one launcher per kernel name.
"""

from __future__ import annotations

import time

import numpy as np

from .plan import Plan


class Executor:
    """Holds a plan's buffers for one batch size on one backend and runs it."""

    def __init__(self, plan: Plan, backend, batch: int):
        self.plan, self.backend, self.batch = plan, backend, batch
        if hasattr(backend, "check_memory"):
            backend.check_memory(
                4 * (batch * plan.peak_floats + plan.weight_floats + plan.workspace_floats(batch))
            )
        self.arrays = [
            {k: backend.to_device(v) for k, v in step.arrays.items()} for step in plan.steps
        ]
        self.slots = [backend.empty(batch * size) for size in plan.slot_sizes]
        self.work = backend.empty(max(1, plan.workspace_floats(batch)))
        self.none = backend.to_device(np.empty((0, 0, 0, 0), np.float32))
        # Each step's views, made once: slicing and reshaping them on every run cost a few
        # microseconds a step, which MobileNet's and EfficientNet's many small steps add up.
        self.bound = [
            (step, arrays, *self._step_arrays(step))
            for step, arrays in zip(plan.steps, self.arrays)
        ]
        # the plan's band chains where the backend runs them (``run_chain``): by first step
        self.chains = dict(plan.chains) if hasattr(backend, "run_chain") else {}
        self._replay = None  # the backend's replay of the last pass, where it has one

    def view(self, vid: int):
        value = self.plan.values[vid]
        buf = self.slots[self.plan.root(vid).slot]
        return buf[: self.batch * value.size].reshape((self.batch, *value.shape))

    def _step_arrays(self, step):
        ins = [self.view(v) for v in step.inputs]
        res = self.view(step.residual) if step.residual is not None else self.none
        return ins, res, self.view(step.output)

    def run(self, inputs: dict[str, np.ndarray], timings: list | None = None):
        """Run on NCHW inputs (batch, C, H, W) or (batch, N); return NCHW outputs."""
        b = self.backend
        if timings is None and self._replay is not None:
            with b.running():
                if self._replay(inputs):
                    return self._outputs()
            self._replay = None
        for name, vid in self.plan.inputs.items():
            b.nchw_to_runtime(inputs[name], self.view(vid))
        with b.running():  # the backend's process settings, for this pass only
            index = 0
            while index < len(self.bound):
                n = self.chains.get(index, 0)
                if n:  # the backend times each step of the chain itself
                    b.run_chain(self.bound[index : index + n], self.work, timings)
                    index += n
                    continue
                step, arrays, ins, res, out = self.bound[index]
                if timings is None:
                    b.run_step(step, arrays, ins, res, out, self.work)
                else:
                    b.synchronize()
                    t0 = time.perf_counter()
                    b.run_step(step, arrays, ins, res, out, self.work)
                    b.synchronize()
                    timings.append(time.perf_counter() - t0)
                index += 1
            if timings is None and hasattr(b, "replay"):
                self._replay = b.replay(self.bound, self.chains, self.work, self._inputs())
        return self._outputs()

    def _inputs(self) -> dict:
        """The plan's inputs as a replay takes them (``CpuBackend.replay``): name -> (value
        id, view, whether a kernel may read the caller's array in the view's place: not where
        the value is an output or has an alias, which read the view)."""
        kept = {*self.plan.outputs.values()}
        kept |= {v.alias for v in self.plan.values.values() if v.alias is not None}
        return {
            name: (vid, self.view(vid), vid not in kept) for name, vid in self.plan.inputs.items()
        }

    def _outputs(self) -> dict:
        b = self.backend
        return {
            name: b.runtime_to_nchw(b.to_host(self.view(vid)))
            for name, vid in self.plan.outputs.items()
        }
