"""Running a training plan: the forward pass in training (or evaluation) mode, the loss, and
the backward pass, on one backend for one batch size.

Device-neutral like executor.py: buffers come from the backend, forward steps run through
its kernel table and backward steps through its ``grads`` table (the same names). Every
activation and gradient is a view of one arena, at the offset the plan's layout gives it
(grad_layout.py): a forward value's memory is reused once its last reader, forward or
backward, has run; a gradient's once the step that produced its value has consumed it.
Gradients of a value read by several steps (residuals, concat, squeeze-and-excitation gates)
are summed as they arrive.
"""

from __future__ import annotations

import time

import numpy as np

from ..compiler import DataError, error
from .backends.registry import Saved
from .grad_plan import STOCHASTIC, GradPlan
from .losses import check_targets, loss_and_grad
from .lowering import Step, pack

#: The accumulation of one gradient into another, run by each backend's ``add`` kernel.
_SUM = Step("add", [], [], -1, attrs=dict(act=0, alpha=0.0, beta=0.0))

#: Batch norm's running statistics: PyTorch's momentum and unbiased variance.
BN_MOMENTUM = 0.1


def drop_mask(kernel: str, p: float, shape: tuple, seed: int, index: int) -> np.ndarray:
    """Dropout keeps each element (droppath each sample) with probability 1 - p, scaled by
    1 / (1 - p); drawn from ``seed`` and the step's position in the plan, so a run repeats.
    ``shape`` is the step's output in the runtime layout, batch first."""
    rng = np.random.default_rng([seed, index])
    draw_shape = (shape[0],) if kernel == "droppath" else shape
    return ((rng.random(draw_shape) >= p) / (1.0 - p)).astype(np.float32)


def drop_masks(plan: GradPlan, batch: int, seed: int) -> dict[str, np.ndarray]:
    """The masks a training pass with ``seed`` draws, per layer, NCHW (droppath: one value
    per sample, shaped to broadcast): for tests and for explaining a run."""
    masks = {}
    for index, gs in enumerate(plan.steps):
        if gs.kernel in STOCHASTIC:
            shape = (batch, *plan.values[gs.step.output].shape)
            m = drop_mask(gs.kernel, gs.step.attrs["p"], shape, seed, index)
            if gs.kernel == "droppath":
                masks[gs.layer.name] = m.reshape((batch,) + (1,) * (len(shape) - 1))
            else:
                masks[gs.layer.name] = np.ascontiguousarray(
                    m.transpose(0, 3, 1, 2) if m.ndim == 4 else m
                )
    return masks


class GradExecutor:
    """A training plan's buffers and packed weights on one backend, for one batch size."""

    def __init__(self, plan: GradPlan, backend, batch: int, input_grads: bool = True):
        self.plan, self.backend, self.batch = plan, backend, batch
        #: whether the backward returns the inputs' gradients (``cnnc.grad``); training wants
        #: none, and then no step computes a gradient that leads only to an input
        self.input_grads = input_grads
        self.needs = plan.needs(backend.grads)
        self.layout = None  # the arena's layout, for the frozen layers it was made for
        self._layout_frozen = None
        self.arena = None
        # arrays the lowering left on weightless steps (a channel gather's index); weighted
        # steps get theirs from ``load``
        self.arrays: list[dict] = [
            {k: backend.to_device(v) for k, v in gs.step.arrays.items()} for gs in plan.steps
        ]
        self.work = backend.empty(max(1, plan.workspace_floats(batch)))
        self.none = backend.to_device(np.empty((0, 0, 0, 0), np.float32))
        self.values: dict[int, object] = {}  # root value -> flat buffer
        self.grads: dict[int, object] = {}  # root value -> flat gradient buffer
        #: layers whose weights get no gradient, from the next forward pass on
        self.frozen: set[str] = set()

    # ---- weights -----------------------------------------------------------------------

    def load(self, weights: dict[str, np.ndarray]) -> None:
        """Pack ``weights`` (PyTorch layouts, host) for the kernels; the raw forms stay in
        each step's arrays as ``param.KEY`` for the backward kernels."""
        b = self.backend
        if hasattr(b, "forget_bindings"):
            b.forget_bindings()  # bound calls hold the packed forms of the old weights
        for gs, arrays in zip(self.plan.steps, self.arrays):
            names = (*gs.params, *gs.buffers)
            if not names:
                continue
            raw = {
                k: np.ascontiguousarray(weights[f"{gs.layer.name}.{k}"], np.float32) for k in names
            }
            arrays.clear()  # the old packed forms go before the new ones are made
            gs.step.raw, gs.step.arrays = dict(raw), {}
            pack(gs.step)
            arrays.update({k: b.to_device(v) for k, v in gs.step.arrays.items()})
            arrays.update({f"param.{k}": b.to_device(v).reshape(v.shape) for k, v in raw.items()})
            gs.step.arrays = {}

    # ---- views -------------------------------------------------------------------------

    def _view(self, flat, vid: int):
        shape = self.plan.values[vid].shape
        return flat[: self.batch * self.plan.values[vid].size].reshape((self.batch, *shape))

    def view(self, vid: int):
        return self._view(self.values[self.plan.root(vid)], vid)

    def _at(self, offset: int, vid: int):
        """The arena's floats for value ``vid``'s shape at ``offset`` (floats per sample)."""
        start = offset * self.batch
        return self.arena[start : start + self.batch * self.plan.values[vid].size]

    def _arrange(self) -> None:
        """The layout for the layers frozen now, and an arena that holds it (kept, and
        grown where a new layout needs more)."""
        frozen = frozenset(self.frozen)
        if self.layout is not None and frozen == self._layout_frozen:
            return
        self.layout = self.plan.layout(self.backend.grads, self.input_grads, frozen)
        self._layout_frozen = frozen
        floats = max(1, self.layout.size * self.batch)
        if self.arena is None or self.arena.size < floats:
            self.arena = None  # the old one goes first
            self.arena = self.backend.empty(floats)

    # ---- forward -----------------------------------------------------------------------

    def forward(self, inputs: dict[str, np.ndarray], seed: int = 0, timings=None) -> None:
        """Run the forward pass on NCHW ``inputs``, keeping what the backward will read;
        ``timings`` (a list) gets each step's seconds, as Executor.run's."""
        with self.backend.running():  # the backend's process settings, for this pass only
            self._forward(inputs, seed, timings)

    def _forward(self, inputs, seed, timings) -> None:
        b, plan = self.backend, self.plan
        self.values.clear()
        self.grads.clear()
        self._arrange()
        if hasattr(b, "forget_bindings"):  # they hold the last pass's views: a fresh set each
            b.forget_bindings()
        for name, vid in plan.inputs.items():
            self.values[vid] = self._at(self.layout.values[vid], vid)
            b.nchw_to_runtime(np.asarray(inputs[name], np.float32), self.view(vid))
        for i, gs in enumerate(plan.steps):
            step, arrays = gs.step, self.arrays[i]
            if step.kernel in STOCHASTIC:
                arrays["mask"] = b.to_device(self._mask(gs, i, seed))
            if step.kernel == "batchnorm":
                c = plan.values[step.output].shape[-1]
                arrays.setdefault("mean", b.empty(c))
                arrays.setdefault("rstd", b.empty(c))
            ins = [self.view(v) for v in step.inputs]
            out = self.values[step.output] = self._at(self.layout.values[step.output], step.output)
            start = self._clock(timings)
            b.run_step(step, arrays, ins, self.none, self._view(out, step.output), self.work)
            self._lap(timings, start)

    def _mask(self, gs, index: int, seed: int) -> np.ndarray:
        shape = (self.batch, *self.plan.values[gs.step.output].shape)
        return drop_mask(gs.step.kernel, gs.step.attrs["p"], shape, seed, index)

    def outputs(self) -> dict[str, np.ndarray]:
        b = self.backend
        return {
            name: b.runtime_to_nchw(b.to_host(self.view(vid)))
            for name, vid in self.plan.outputs.items()
        }

    def batch_statistics(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per batch-norm layer, (mean, biased variance) of its last training forward pass."""
        stats = {}
        for gs, arrays in zip(self.plan.steps, self.arrays):
            if gs.kernel == "batchnorm" and gs.step.attrs["train"] and "rstd" in arrays:
                rstd = self.backend.to_host(arrays["rstd"]).astype(np.float64)
                var = 1.0 / (rstd * rstd) - gs.step.attrs["eps"]
                stats[gs.layer.name] = (self.backend.to_host(arrays["mean"]), var)
        return stats

    def running_statistics(self, weights: dict) -> dict[str, np.ndarray]:
        """The running mean and variance batch norm holds after the last training pass
        (PyTorch's update: momentum 0.1, unbiased variance), keyed as the weights."""
        updated = {}
        for gs in self.plan.steps:
            if gs.kernel != "batchnorm" or not gs.step.attrs["train"]:
                continue
            mean, var = self.batch_statistics()[gs.layer.name]
            shape = self.plan.values[gs.step.inputs[0]].shape
            count = self.batch * int(np.prod(shape[:-1]))
            unbiased = var * count / max(1, count - 1)
            key = gs.layer.name
            m = BN_MOMENTUM
            updated[f"{key}.running_mean"] = (
                (1 - m) * weights[f"{key}.running_mean"] + m * mean
            ).astype(np.float32)
            updated[f"{key}.running_var"] = (
                (1 - m) * weights[f"{key}.running_var"] + m * unbiased
            ).astype(np.float32)
        return updated

    # ---- loss --------------------------------------------------------------------------

    def loss(self, targets: dict[str, np.ndarray], loss: str, label_smoothing: float = 0.0):
        """The summed loss of every output; seeds the gradients of the outputs (of the logits
        before a final softmax, for cross-entropy)."""
        b, total = self.backend, 0.0
        for name, vid in self.plan.outputs.items():
            vid = self.plan.logits[name] if loss == "cross_entropy" else vid
            out = b.runtime_to_nchw(b.to_host(self.view(vid)))
            target = check_targets(loss, out.shape, targets[name], f"targets of '{name}'")
            value, grad = loss_and_grad(loss, out, target, label_smoothing)
            total += value
            flat = self._gradient(vid, ("loss", name, vid))
            b.nchw_to_runtime(grad, self._view(flat, vid))
            self._accumulate(vid, flat)
        return total

    # ---- backward ----------------------------------------------------------------------

    def backward(self, timings=None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Gradients of the weights (PyTorch layouts, keyed ``LAYER.KEY``) and of the inputs
        (NCHW, keyed by input name; none without ``input_grads``), after :meth:`loss`;
        ``timings`` (a list) gets each step's seconds in the order they run, the last
        step's first."""
        with self.backend.running():  # the backend's process settings (one BLAS thread)
            return self._backward(timings)

    def _backward(self, timings):
        b, plan = self.backend, self.plan
        n = len(plan.steps)
        weight_grads: dict[str, np.ndarray] = {}
        leads = self.leads_to_weights()
        frozen = self._layout_frozen  # as in the forward pass, which laid out the buffers
        for i in range(n - 1, -1, -1):
            start = self._clock(timings)
            gs = plan.steps[i]
            step = gs.step
            gy = self.grads.pop(step.output, None)
            wanted = () if gs.layer.name in frozen else gs.params
            into = any(plan.root(v) in leads for v in step.inputs)
            if gy is None or not (wanted or into):  # no gradient reaches it, or none is asked
                for k in wanted:
                    weight_grads[f"{gs.layer.name}.{k}"] = np.zeros(gs.layer.weights[k], np.float32)
                self._lap(timings, start)
                continue
            x_needed, y_needed = self.needs[i]
            saved = Saved(
                [self.view(v) for v in step.inputs] if x_needed else None,
                self.view(step.output) if y_needed else None,
            )
            # the kernels write every input's gradient they are given, or with weights, none
            gx_flat = [
                self._gradient(v, (i, j), claimed=step.inputs[:j]) if into else None
                for j, v in enumerate(step.inputs)
            ]
            gxs = [f if f is None else self._view(f, v) for f, v in zip(gx_flat, step.inputs)]
            gws = {k: b.empty(int(np.prod(gs.layer.weights[k]))) for k in wanted}
            gws = {k: g.reshape(gs.layer.weights[k]) for k, g in gws.items()}
            b.grads[step.kernel](
                b, step, self.arrays[i], saved, self._view(gy, step.output), gxs, gws
            )
            for vid, flat in zip(step.inputs, gx_flat):
                if flat is not None and plan.root(vid) in leads:
                    self._accumulate(vid, flat)
            for k, g in gws.items():
                weight_grads[f"{gs.layer.name}.{k}"] = np.asarray(b.to_host(g)).reshape(
                    gs.layer.weights[k]
                )
            self._lap(timings, start)
        input_grads = {}
        for name, vid in plan.inputs.items() if self.input_grads else ():
            flat = self.grads.pop(vid, None)
            shape = (self.batch, *plan.network.inputs[name].shape)
            if flat is None:
                input_grads[name] = np.zeros(shape, np.float32)
            else:
                input_grads[name] = b.runtime_to_nchw(b.to_host(self._view(flat, vid)))
        self.grads.clear()
        return weight_grads, input_grads

    def leads_to_weights(self) -> set[int]:
        """The values (roots) whose gradient the backward needs (GradPlan.leads_to_weights),
        with the layers frozen at the last forward pass."""
        return self.plan.leads_to_weights(self.input_grads, self._layout_frozen)

    def _gradient(self, vid: int, key: tuple, claimed=()):
        """The buffer a gradient of ``vid`` is written to: the value's own gradient where it
        has none yet (and no other input of the same step ``claimed`` it), else the one-clock
        buffer the layout gives ``key``, summed into it or dropped."""
        root = self.plan.root(vid)
        own = self.layout.grads.get(root)
        if own is not None and root not in self.grads:
            if all(self.plan.root(v) != root for v in claimed):
                return self._at(own, root)
        return self._at(self.layout.temps[key], vid)

    def _clock(self, timings) -> float:
        if timings is None:
            return 0.0
        self.backend.synchronize()
        return time.perf_counter()

    def _lap(self, timings, start: float) -> None:
        if timings is not None:
            self.backend.synchronize()
            timings.append(time.perf_counter() - start)

    def _accumulate(self, vid: int, flat) -> None:
        root = self.plan.root(vid)
        held = self.grads.get(root)
        if held is None:
            self.grads[root] = flat
            return
        size = self.batch * self.plan.values[root].size
        b = self.backend
        b.run_step(_SUM, {}, [held[:size], flat[:size]], self.none, held[:size], self.work)


def as_targets(net, targets) -> dict[str, np.ndarray]:
    """``targets`` as a dict keyed by output name (an array alone for one output)."""
    if isinstance(targets, dict):
        missing = [n for n in net.outputs if n not in targets]
        extra = [n for n in targets if n not in net.outputs]
        if missing or extra:
            raise DataError(
                error(
                    f"targets do not match the network's outputs: missing {missing}, "
                    f"unexpected {extra} (outputs: {', '.join(net.outputs)})"
                )
            )
        return targets
    if len(net.outputs) != 1:
        raise DataError(
            error(
                f"the network has {len(net.outputs)} outputs: give targets as a dict keyed by "
                f"output name ({', '.join(net.outputs)})"
            )
        )
    return {next(iter(net.outputs)): targets}


def gradients(
    net,
    inputs: dict[str, np.ndarray],
    targets,
    weights: dict[str, np.ndarray],
    loss: str = "cross_entropy",
    train: bool = True,
    seed: int = 0,
    device: str = "cpu",
    label_smoothing: float = 0.0,
):
    """``(mean loss, gradients)`` of one batch: see ``cnnc.grad``."""
    from .backends import backend_for
    from .grad_plan import build_grad_plan
    from .losses import check_loss

    check_loss(loss)
    if not 0.0 <= label_smoothing < 1.0:
        raise DataError(error(f"label_smoothing must be in [0, 1), got {label_smoothing}"))
    targets = as_targets(net, targets)
    batch = _batch_of(net, inputs)
    for name, x in inputs.items():
        if not np.all(np.isfinite(x)):
            raise DataError(error(f"input '{name}' holds NaN or infinite values"))
    plan = build_grad_plan(net, train)
    backend = backend_for(device, "direct", tune=False)
    executor = GradExecutor(plan, backend, batch)
    executor.load(weights)
    executor.forward(inputs, seed)
    value = executor.loss(targets, loss, label_smoothing)
    weight_grads, input_grads = executor.backward()
    return value, {**weight_grads, **input_grads}


def _batch_of(net, inputs) -> int:
    from .session import _batch_of as batch_of

    return batch_of(net, inputs)
