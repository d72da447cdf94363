"""The training plan: a network's forward steps unfused, each with the backward kernel of the
same name, what that backward keeps of the forward pass, and the memory this costs.

It is derived from the same lowering as the inference plan (lowering.py), with the changes
training needs: batch norm normalises with the batch's statistics (kernel ``batchnorm``),
layer scale keeps its own weight (``scale``), dropout and droppath drop (``dropout``,
``droppath``) instead of being aliases, and nothing is fused: every step's backward reads
the tensors it needs, which a fused epilogue would have overwritten. Weights are not held
here: the executor packs them from the canonical PyTorch-layout dict each time they change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod

from ..compiler import Layer, Network
from .lowering import Step, lower
from .plan import runtime_shape

#: Ops whose training step differs from their inference lowering, and the kernel it runs.
TRAINING_KERNELS = {"bn": "batchnorm", "scale": "scale"}
#: Ops that drop at random in training and are the identity otherwise.
STOCHASTIC = ("dropout", "droppath")


@dataclass
class GradValue:
    """A tensor of the training plan, per sample in the runtime layout."""

    id: int
    shape: tuple
    alias: int | None = None  # the same data as another value (identity, flatten of 1x1)

    @property
    def size(self) -> int:
        return prod(self.shape)


@dataclass
class GradStep:
    step: Step  # the forward step: kernel, attributes, input and output values
    layer: Layer
    params: tuple[str, ...]  # learned weights, by key suffix (``weight``, ``bias``)
    buffers: tuple[str, ...]  # running statistics

    @property
    def kernel(self) -> str:
        return self.step.kernel


@dataclass
class GradPlan:
    network: Network
    steps: list[GradStep]
    values: dict[int, GradValue]
    inputs: dict[str, int]
    outputs: dict[str, int]
    #: where each output's loss is taken: the output itself, or the logits before a final
    #: softmax (cross-entropy on log-softmax, never the log of a probability)
    logits: dict[str, int] = field(default_factory=dict)
    train: bool = True

    def root(self, vid: int) -> int:
        while self.values[vid].alias is not None:
            vid = self.values[vid].alias
        return vid

    def needs(self, table) -> list[tuple[bool, bool]]:
        """Per step, whether its backward reads its inputs and its output (``table``: a
        backend's GradTable)."""
        return [("x" in n, "y" in n) for n in (table.needs_of(s.step) for s in self.steps)]

    def lifetimes(self, table) -> dict:
        """When each tensor of a training step lives, on a clock where step ``i``'s forward
        runs at ``i``, the loss at ``n`` and step ``i``'s backward at ``2n - i``: for each
        value (by root) ``produced`` and ``until`` (its last forward read, or the backward that
        needs it), and for each gradient ``grad_from`` (the first backward that writes it)
        and ``grad_to`` (the backward that consumes it)."""
        n = len(self.steps)
        needs = self.needs(table)
        produced, until, grad_from, grad_to = {}, {}, {}, {}
        for vid in self.inputs.values():
            produced[vid] = -1
        for i, gs in enumerate(self.steps):
            produced[self.root(gs.step.output)] = i
        for name, vid in self.outputs.items():
            for v in (vid, self.logits.get(name, vid)):
                until[self.root(v)] = n
                grad_from.setdefault(self.root(v), n)
        for i, gs in enumerate(self.steps):
            back = 2 * n - i
            x_needed, y_needed = needs[i]
            for vid in gs.step.inputs:
                r = self.root(vid)
                until[r] = max(until.get(r, -1), back if x_needed else i)
                grad_from[r] = min(grad_from.get(r, back), back)
            out = self.root(gs.step.output)
            if y_needed:
                until[out] = max(until.get(out, -1), back)
            grad_to[out] = back
        for vid in self.inputs.values():
            grad_to[vid] = 2 * n + 1  # returned to the caller
        return {"produced": produced, "until": until, "grad_from": grad_from, "grad_to": grad_to}

    def leads_to_weights(self, input_grads: bool, frozen=frozenset()) -> set[int]:
        """The values (roots) whose gradient a backward pass needs: those that a learned
        weight not in a ``frozen`` layer produced (directly or through other steps), and the
        inputs where their gradients are asked for (``input_grads``)."""
        leads = {self.root(v) for v in self.inputs.values()} if input_grads else set()
        for gs in self.steps:
            learned = gs.params and gs.layer.name not in frozen
            if learned or any(self.root(v) in leads for v in gs.step.inputs):
                leads.add(self.root(gs.step.output))
        return leads

    def layout(self, table, input_grads: bool = False, frozen=frozenset()):
        """Where each buffer of a step lives in the executor's arena (grad_layout.Layout)."""
        from .grad_layout import plan_layout

        return plan_layout(self, table, self.leads_to_weights(input_grads, frozen))

    def memory(self, table, batch: int, input_grads: bool = False) -> dict:
        """Bytes a training step holds, for ``cnnc check --train``: the activations the
        backward keeps, and the arena of activations and their gradients that the executor
        allocates (``layout``: its ``size``, and the most that is live at once), for
        ``batch`` samples; the learned weights and their gradients apart."""
        n = len(self.steps)
        until = self.lifetimes(table)["until"]
        produced = {self.root(v) for v in self.inputs.values()}
        produced |= {self.root(gs.step.output) for gs in self.steps}
        kept = sum(self.values[r].size for r, end in until.items() if end > n and r in produced)
        layout = self.layout(table, input_grads)
        weights = sum(prod(s) for gs in self.steps for s in _shapes(gs, gs.params))
        return {
            "activations_kept": 4 * kept * batch,
            "activations_peak": 4 * layout.size * batch,
            "activations_live": 4 * layout.peak * batch,
            "weights": 4 * weights,
            "gradients": 4 * weights,
        }

    def workspace_floats(self, batch: int) -> int:
        """Scratch of the forward kernels (transposed convolutions' column buffers)."""
        need = 0
        for gs in self.steps:
            if gs.kernel == "convt":
                x = self.values[gs.step.inputs[0]].shape
                a = gs.step.attrs
                out = self.values[gs.step.output].shape
                need = max(need, batch * x[0] * x[1] * a["kh"] * a["kw"] * out[2])
        return need


def _shapes(gs: GradStep, names) -> list[tuple]:
    return [gs.layer.weights[k] for k in names]


def build_grad_plan(net: Network, train: bool = True, eval_layers=frozenset()) -> GradPlan:
    """The unfused training plan of ``net`` (``train``: batch statistics and dropping).
    Layers named in ``eval_layers`` are lowered as in evaluation even when training: the
    batch norms of frozen layers normalise with their running statistics."""
    values: dict[int, GradValue] = {}
    of_layer: dict[int, int] = {}

    def new_value(shape, alias=None) -> int:
        vid = len(values)
        values[vid] = GradValue(vid, runtime_shape(shape), alias)
        return vid

    inputs = {name: new_value(layer.shape) for name, layer in net.inputs.items()}
    for name, layer in net.inputs.items():
        of_layer[id(layer)] = inputs[name]
    steps: list[GradStep] = []
    for layer in net.layers:
        ins = [of_layer[id(i)] for i in layer.inputs]
        step = _lower_for_training(layer, ins, train and layer.name not in eval_layers)
        if step is None:
            of_layer[id(layer)] = new_value(layer.shape, alias=ins[0])
            continue
        step.output = of_layer[id(layer)] = new_value(layer.shape)
        steps.append(GradStep(step, layer, tuple(layer.weights), tuple(layer.buffers)))
    outputs = {name: of_layer[id(layer)] for name, layer in net.outputs.items()}
    logits = {}
    for name, layer in net.outputs.items():
        logits[name] = of_layer[id(layer.inputs[0])] if layer.op == "softmax" else outputs[name]
    return GradPlan(net, steps, values, inputs, outputs, logits, train)


def _lower_for_training(layer: Layer, ins: list[int], train: bool) -> Step | None:
    if layer.op in STOCHASTIC:
        if not train or layer.args["p"] == 0:
            return None
        return Step(layer.op, [layer.name], list(ins), -1, attrs={"p": layer.args["p"]})
    step = lower(layer, ins, None)
    if step is None:
        return None
    if layer.op in TRAINING_KERNELS:
        step.kernel = TRAINING_KERNELS[layer.op]
        step.attrs = dict(layer.args, train=train)
    return step
