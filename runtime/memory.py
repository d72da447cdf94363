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


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"
