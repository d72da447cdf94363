"""Timing a training step (``cnnc bench --train``): the forward pass in training mode, a loss on
random targets, the backward pass and an SGD update with momentum in NumPy (which repacks the
weights, as training does), each layer's forward and backward time apart, as ``caffe time``
prints them.

FLOPs of the convolutions and fully connected layers: a forward pass does 2 per MAC, the
backward 4 (the input's gradient and the weight's, each as much as the forward), so a whole
step does 3 times the forward's.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from ..compiler import Network, ResourceError, error
from . import memory
from . import weights as weights_io
from .backends import backend_for
from .backprop import GradExecutor
from .data import random_inputs
from .grad_plan import build_grad_plan
from .lowering import WEIGHTED
from .session import check_batch

#: The update the step times: SGD with momentum (PyTorch's form), a rate too small to move
#: random weights far over a benchmark's few steps.
LEARNING_RATE = 1e-4
MOMENTUM = 0.9
#: Elements the update scales at a time: a temporary of a whole weight (ResNet-18's largest,
#: 9 MiB) would add to the step's peak.
UPDATE_CHUNK = 1 << 16
#: Per-layer times are the median of at most this many timed steps (each step is timed whole
#: ``repeat`` times; per-layer timing synchronises after every kernel, so it runs apart).
LAYER_REPEAT = 5


class _MomentumSgd:
    """``v = m v + g; w -= lr v`` on the learned weights, in place."""

    def __init__(self, weights: dict, keys):
        self.weights = weights
        self.velocity = {k: np.zeros_like(weights[k]) for k in keys}

    def step(self, grads: dict) -> None:
        for key, v in self.velocity.items():
            v *= MOMENTUM
            v += grads[key]
            w = self.weights[key]
            if not w.flags.c_contiguous:
                w -= LEARNING_RATE * v
                continue
            w, flat = w.reshape(-1), v.reshape(-1)
            for i in range(0, flat.size, UPDATE_CHUNK):  # lr * v a chunk at a time
                w[i : i + UPDATE_CHUNK] -= LEARNING_RATE * flat[i : i + UPDATE_CHUNK]


def random_targets(net: Network, batch: int, seed: int) -> tuple[str, dict]:
    """The loss and targets of a benchmark step: cross-entropy on random class indices where
    every output has at least two channels (classes), else mean squared error."""
    rng = np.random.default_rng(seed + 2)
    shapes = {name: layer.shape for name, layer in net.outputs.items()}
    if all(shape[0] >= 2 for shape in shapes.values()):
        targets = {n: rng.integers(0, s[0], (batch, *s[1:])) for n, s in shapes.items()}
        return "cross_entropy", targets
    targets = {n: rng.standard_normal((batch, *s)).astype(np.float32) for n, s in shapes.items()}
    return "mse", targets


def _backend(net: Network, plan, device: str, algorithm: str | None):
    backend = backend_for(device, algorithm or "direct", tune=False)
    grads = getattr(backend, "grads", None)
    if grads is None:
        raise ResourceError(
            error(f"--device {device} has no backward kernels yet", hint="train on --device cpu")
        )
    missing = {}
    for gs in plan.steps:
        if gs.kernel not in grads:
            missing.setdefault(gs.kernel, gs.layer.name)
    if missing:
        what = ", ".join(f"{kernel} (layer {layer})" for kernel, layer in missing.items())
        raise ResourceError(error(f"no backward kernel on {device} yet for {what}"))
    return backend


def bench_training(
    net: Network,
    batch: int = 1,
    repeat: int = 10,
    seed: int = 0,
    device: str = "cpu",
    algorithm: str | None = None,
) -> dict:
    """Warm up (compiles the kernels), time ``repeat`` whole steps, then each layer's forward
    and backward over a few more; ``algorithm`` defaults to the exact convolutions that
    ``cnnc.grad`` runs."""
    check_batch(batch)
    estimate = memory.training_estimate(net, batch, "sgd")
    memory.check_training_fits(estimate)  # before any buffer or input is allocated
    plan = build_grad_plan(net, train=True)
    backend = _backend(net, plan, device, algorithm)
    weights = weights_io.initialise(net, seed)
    inputs = random_inputs(net, batch, seed)
    loss, targets = random_targets(net, batch, seed)
    executor = GradExecutor(plan, backend, batch, input_grads=False)
    executor.load(weights)
    learned = [f"{gs.layer.name}.{k}" for gs in plan.steps for k in gs.params]
    sgd = _MomentumSgd(weights, learned)

    def step(forward_times=None, backward_times=None) -> float:
        """One training step; the seconds its update took (weights, statistics, repacking)."""
        executor.forward(inputs, seed, forward_times)
        executor.loss(targets, loss)
        grads, _ = executor.backward(backward_times)
        start = time.perf_counter()
        sgd.step(grads)
        weights.update(executor.running_statistics(weights))
        executor.load(weights)
        return time.perf_counter() - start

    start = time.perf_counter()
    step()
    warmup = time.perf_counter() - start
    totals, updates = [], []
    cpu = time.process_time()
    for _ in range(repeat):
        start = time.perf_counter()
        updates.append(step())
        backend.synchronize()
        totals.append(time.perf_counter() - start)
    cpu = (time.process_time() - cpu) / repeat
    n = len(plan.steps)
    forward_times, backward_times = [[] for _ in range(n)], [[] for _ in range(n)]
    for _ in range(min(repeat, LAYER_REPEAT)):
        fwd: list[float] = []
        bwd: list[float] = []
        step(fwd, bwd)
        for i in range(n):
            forward_times[i].append(fwd[i])
            backward_times[i].append(bwd[n - 1 - i])  # the backward runs the last step first
    layers = [
        _layer_row(gs.step, backend, batch, plan, fwd, bwd)
        for gs, fwd, bwd in zip(plan.steps, forward_times, backward_times)
    ]
    median = statistics.median(totals)
    info = {
        "train": True,
        "batch": batch,
        "device": device,
        "repeat": repeat,
        "loss": loss,
        "optimizer": f"sgd (momentum {MOMENTUM})",
        "median_ms": median * 1e3,
        "min_ms": min(totals) * 1e3,
        "cpu_ms": cpu * 1e3,  # the process's CPU time per timed step, every thread's
        "forward_ms": sum(x["forward_ms"] for x in layers),
        "backward_ms": sum(x["backward_ms"] for x in layers),
        "update_ms": statistics.median(updates) * 1e3,
        "gflops": 3 * 2 * net.total_macs * batch / median / 1e9,
        "warmup_s": warmup,
        "layers": layers,
        "memory": estimate,
    }
    info.update(backend.describe() if hasattr(backend, "describe") else {})
    return info


def _layer_row(step, backend, batch: int, plan, fwd: list, bwd: list) -> dict:
    forward = statistics.median(fwd)
    backward = statistics.median(bwd)
    flops = 2 * step.macs * batch if step.kernel in WEIGHTED else 0
    out = plan.values[step.output].shape
    choice_of = getattr(backend, "choice_of", lambda step: "")
    return {
        "layer": step.label,
        "op": step.kernel,
        "shape": list(out[-1:] + out[:-1]) if len(out) == 3 else list(out),
        "forward_ms": forward * 1e3,
        "backward_ms": backward * 1e3,
        "forward_gflops": flops / forward / 1e9 if flops and forward > 0 else 0.0,
        "backward_gflops": 2 * flops / backward / 1e9 if flops and backward > 0 else 0.0,
        "algorithm": choice_of(step),
    }
