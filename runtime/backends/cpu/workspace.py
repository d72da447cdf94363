"""The memory the CPU kernels of a training step take beside the plan's arena: the backend's
kept buffers (per-thread scratch, a padded copy of a convolution's input, a weight
gradient's partial sums and im2col chunk), each as large as the largest layer that uses it,
and the largest buffer a backward kernel allocates for one layer and frees (the flipped
weights of a stride-1 data gradient, NumPy partial sums). ``cnnc check --train`` adds it to
its planned peak; the choices mirror those the kernels make without tuning
(autotune.default_choice, weight_grad.weight_grad_tiling, data_grad.columns_tiling).
"""

from __future__ import annotations

import math

from .autotune import default_choice
from .blocked import SCRATCH_FLOATS, padded_shape
from .data_grad import columns_tiling
from .depthwise import DW_WEIGHT_PARTS, dw_scratch_floats, layer_flat_pixels
from .tiling import conv_scratch_floats
from .weight_grad import weight_grad_tiling

F4 = 4  # bytes per float32
GEOMETRY = ("kh", "kw", "sh", "sw", "ph", "pw", "dh", "dw")


class _Kept:
    """The backend's kept buffers: per-thread scratch rows and named buffers, each the
    largest asked for (CpuBackend.scratch, CpuBackend.buffer)."""

    def __init__(self, threads: int):
        self.threads = threads
        self.scratch = 1
        self.named: dict[str, int] = {}
        self.transient = 0  # floats of the largest buffer a kernel allocates and frees

    def row(self, floats: int) -> None:
        self.scratch = max(self.scratch, floats)

    def buffer(self, name: str, floats: int) -> None:
        self.named[name] = max(self.named.get(name, 0), floats)

    def passing(self, floats: int) -> None:
        self.transient = max(self.transient, floats)

    def floats(self) -> int:
        return self.threads * self.scratch + sum(self.named.values()) + self.transient


def training_workspace(plan, batch: int, threads: int, input_grads: bool = False) -> int:
    """Bytes of the kernels' workspace for a training step of ``plan`` (grad_plan.GradPlan)
    at ``batch`` on ``threads`` threads."""
    kept = _Kept(threads)
    leads = plan.leads_to_weights(input_grads)
    for gs in plan.steps:
        step = gs.step
        x = (batch, *plan.values[step.inputs[0]].shape) if step.inputs else None
        out = (batch, *plan.values[step.output].shape)
        if step.kernel == "conv" and len(x) == 4:
            a = step.attrs
            geometry = tuple(a[k] for k in GEOMETRY)
            _forward_conv(kept, x, out, a, geometry)
            if "weight" in gs.params:
                tiling = weight_grad_tiling(x, out, geometry, a["groups"], threads)
                _weight_grad(kept, tiling, threads)
            if plan.root(step.inputs[0]) in leads:
                _data_grad(kept, x, out, a, geometry, threads)
        elif step.kernel == "dwconv":
            a = step.attrs
            flat = layer_flat_pixels(a, x, out)
            kept.row(dw_scratch_floats(a["kh"], a["kw"], a["sw"], a["dw"], flat))
            c = out[3]
            kept.passing(2 * DW_WEIGHT_PARTS * a["kh"] * a["kw"] * c)  # float64 partials
    return F4 * (kept.floats() + plan.workspace_floats(batch))


def _forward_conv(kept: _Kept, x, out, a: dict, geometry: tuple) -> None:
    """What ``conv.launch_conv`` takes for a layer run from ``x`` to ``out``."""
    if x[1] == x[2] == out[1] == out[2] == 1:  # a vector through a 1x1: no scratch
        return
    named = dict(zip(GEOMETRY, geometry), groups=a["groups"])
    choice = default_choice(x, out, named, kept.threads, "direct")
    kh, kw, sh, sw, ph, pw, dh, dw = geometry
    if choice.algorithm == "blocked":
        kept.row(SCRATCH_FLOATS)
        shape = padded_shape(x, ph, pw, kw, dw)
        if shape is not None:
            kept.buffer("padded", math.prod(shape))
    else:
        rows, blocks = choice.a, choice.b
        kept.row(conv_scratch_floats(rows, blocks, x, out, *geometry, a["groups"]))


def _weight_grad(kept: _Kept, tiling, threads: int) -> None:
    copies = 1 if tiling.by_blocks else threads
    kept.buffer("grad.acc", copies * tiling.grad_floats)
    kept.buffer("grad.sum", 2 * copies * tiling.grad_floats if tiling.flushes else 0)
    if tiling.by_blocks:
        kept.buffer("grad.col", tiling.scratch)
    else:
        kept.row(tiling.scratch)


def _data_grad(kept: _Kept, x, out, a: dict, geometry: tuple, threads: int) -> None:
    kh, kw, sh, sw, ph, pw, dh, dw = geometry
    groups = a["groups"]
    cg, og = x[3] // groups, out[3] // groups
    flip_ph, flip_pw = dh * (kh - 1) - ph, dw * (kw - 1) - pw
    weights = out[3] * cg * kh * kw
    if sh != 1 or sw != 1 or flip_ph < 0 or flip_pw < 0:
        k = kh * kw * cg
        kept.row(columns_tiling(out, k) * out[2] * k)
        kept.passing(weights)  # the weights reordered for the GEMM
        return
    # a forward convolution from gy to gx with the flipped weights, packed for the call
    flipped = (kh, kw, 1, 1, flip_ph, flip_pw, dh, dw)
    _forward_conv(kept, out, x, dict(groups=groups), flipped)
    kept.passing(2 * weights + groups * og)  # the flipped weights and their packed form
