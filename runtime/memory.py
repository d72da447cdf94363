"""Memory estimates: refuse a run that cannot fit before allocating anything."""

from __future__ import annotations

import os

from ..compiler import Network, ResourceError, error
from .plan import build_plan

BYTES = 4
SAFETY = 0.85


def available_bytes() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def estimate(net: Network, batch: int, plan=None) -> dict:
    """Bytes a run needs: weights (kept twice while packing), the plan's activation buffers
    for the batch, scratch space, and the inputs and outputs at the edges. Without a plan,
    one is compiled for its structure alone (no weights are touched)."""
    plan = plan or build_plan(net, None)
    weights = net.weight_memory
    activations = plan.peak_floats * batch * BYTES
    edges = sum(plan.values[v].size for v in plan.inputs.values()) + sum(
        v.size for v in (plan.values[o] for o in plan.outputs.values())
    )
    total = (
        2 * weights + activations + plan.workspace_floats(batch) * BYTES + 2 * edges * batch * BYTES
    )
    return {
        "weights": weights,
        "activations": activations,
        "total": total,
        "naive_activations": plan.naive_floats * batch * BYTES,
    }


def check_fits(net: Network, batch: int, plan=None):
    need = estimate(net, batch, plan)
    have = available_bytes()
    if need["total"] > SAFETY * have:
        raise ResourceError(
            error(
                f"this run needs about {_gib(need['total'])} (weights {_gib(need['weights'])}, "
                f"activations for batch {batch} {_gib(need['activations'])}) but only "
                f"{_gib(have)} of memory is available",
                hint="use a smaller batch size"
                if batch > 1
                else "this network is too large for this machine",
            )
        )
    return need


#: Optimizer state per learned weight, in copies of the weights: SGD's momentum buffer, Adam's
#: first and second moments.
OPTIMIZER_STATE = {"sgd": 1, "adam": 2, "adamw": 2}
#: Kernels whose packed weight is a second copy (the others, and biases, read the PyTorch
#: layout itself).
REPACKED = ("conv", "dwconv", "convt")


def training_estimate(net: Network, batch: int, optimizer: str = "sgd") -> dict:
    """Bytes a training step needs (``cnnc check --train``): the activations kept for the
    backward pass and the planned peak of activations and their gradients (grad_plan's
    schedule, with what the CPU's backward kernels read), the learned weights, their gradients,
    the optimizer's state, running statistics, packed copies of convolution weights and the
    kernels' workspace (backends/cpu/workspace.py); ``peak`` is their sum at the
    activations' peak."""
    from math import prod

    from .backends.cpu import GRADS
    from .backends.cpu.workspace import training_workspace
    from .grad_plan import build_grad_plan

    if optimizer not in OPTIMIZER_STATE:
        raise ValueError(f"unknown optimizer {optimizer!r}")
    plan = build_grad_plan(net, train=True)
    planned = plan.memory(GRADS, batch)
    buffers = sum(prod(s) for layer in net.layers for s in layer.buffers.values()) * BYTES
    packed = BYTES * sum(
        prod(gs.layer.weights["weight"]) for gs in plan.steps if gs.kernel in REPACKED
    )
    state = OPTIMIZER_STATE[optimizer] * planned["weights"]
    workspace = training_workspace(plan, batch, _threads())
    parts = dict(
        activations_kept=planned["activations_kept"],
        activations_live=planned["activations_live"],
        activations_peak=planned["activations_peak"],
        weights=planned["weights"],
        gradients=planned["gradients"],
        optimizer_state=state,
        buffers=buffers,
        packed_weights=packed,
        workspace=workspace,
    )
    peak = sum(v for k, v in parts.items() if k not in ("activations_kept", "activations_live"))
    return dict(batch=batch, optimizer=optimizer, steps=len(plan.steps), **parts, peak=peak)


def _threads() -> int:
    """The CPU backend's thread count (Numba's), without starting its threads."""
    import numba

    return numba.config.NUMBA_NUM_THREADS


def check_training_fits(estimate: dict) -> None:
    """Refuse a training step whose planned peak (``training_estimate``) cannot fit."""
    have = available_bytes()
    if estimate["peak"] > SAFETY * have:
        raise ResourceError(
            error(
                f"a training step at batch {estimate['batch']} needs about "
                f"{_gib(estimate['peak'])} but only {_gib(have)} of memory is available",
                hint="use a smaller --batch",
            )
        )


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"
