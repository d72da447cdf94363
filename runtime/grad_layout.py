"""Where a training step's buffers live: one arena per executor, each forward value and each
gradient at an offset found from their lifetimes, so that the memory a step takes is the
arena's size, planned before anything is allocated (``cnnc check --train`` prints it).

Lifetimes are on the clock of ``GradPlan.lifetimes``: step ``i``'s forward runs at ``i``, the
loss at ``n``, step ``i``'s backward at ``2n - i``. A buffer is taken at the start of its
first clock and free after its last, so two buffers may share memory only if their clocks do
not meet:

- a forward value, from the step that writes it to its last reader (forward or a backward
  that keeps it); the outputs (and logits) to the end, for the caller;
- the gradient of a value, from the first backward (or the loss) that writes it to the
  backward of the step that produced the value, which consumes it (the caller's, for an
  input whose gradient is returned);
- a gradient that arrives when the value already has one (a value read by several steps) is
  written to a buffer of its own for that one clock, then added into the other; as is one
  that no weight needs (a step writes all its inputs' gradients or none) and is dropped.

Offsets are placed greedily, largest buffer first, each into the best-fitting gap among the
buffers whose lifetimes meet its own (TensorFlow Lite's "greedy by size"): within a few
percent of the most floats live at once, the bound of any placement.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Offsets are multiples of this many floats per sample (64-byte lines at any batch size).
ALIGN = 16


@dataclass
class Layout:
    """Offsets of a training step's buffers, in floats per sample (times the batch: floats)."""

    values: dict[int, int]  # root value -> its forward buffer
    grads: dict[int, int]  # root value -> its gradient
    temps: dict[tuple, int]  # (step, input position) or ("loss", output) -> a one-clock gradient
    size: int  # floats per sample of the whole arena
    peak: int  # the most floats per sample live at one clock (a lower bound of ``size``)
    #: every buffer as (kind, key, floats, offset, first clock, last clock), kind "value",
    #: "grad" or "temp" keyed as above
    spans: list[tuple]


def plan_layout(plan, table, leads: set[int]) -> Layout:
    """The layout of ``plan``'s buffers with the backward kernels of ``table``, the values in
    ``leads`` (roots) getting gradients (see GradExecutor.leads_to_weights)."""
    n = len(plan.steps)
    life = plan.lifetimes(table)
    produced, until = life["produced"], life["until"]
    spans: list[tuple] = []  # (kind, key, floats, first clock, last clock)
    kept = {plan.root(v) for v in (*plan.outputs.values(), *plan.logits.values())}
    for vid, start in produced.items():
        last = 2 * n + 1 if vid in kept else max(until.get(vid, start), start)
        spans.append(("value", vid, plan.values[vid].size, start, last))
    seeds = set()
    for name, vid in plan.outputs.items():
        for v in {vid, plan.logits.get(name, vid)}:
            seeds.add(plan.root(v))
            spans.append(("temp", ("loss", name, v), plan.values[v].size, n, n))
    first: dict[int, int] = {r: n for r in seeds}
    end: dict[int, int] = {}
    for vid in plan.inputs.values():
        end[vid] = 2 * n + 1  # returned to the caller
    for i in range(n - 1, -1, -1):
        gs = plan.steps[i]
        out = plan.root(gs.step.output)
        end[out] = 2 * n - i
        if not any(plan.root(v) in leads for v in gs.step.inputs):
            continue  # it writes no input's gradient (if it runs at all: for its weights)
        back = 2 * n - i
        for j, vid in enumerate(gs.step.inputs):
            r = plan.root(vid)
            if r in leads and r not in first:
                first[r] = back  # written into the value's own gradient
            else:
                spans.append(("temp", (i, j), plan.values[vid].size, back, back))
    for r, start in first.items():
        if r in leads or r in seeds:
            spans.append(("grad", r, plan.values[r].size, start, max(start, end.get(r, start))))
    offsets, size = _place([(f, s, e) for _, _, f, s, e in spans])
    placed = {"value": {}, "grad": {}, "temp": {}}
    for (kind, key, *_), at in zip(spans, offsets):
        placed[kind][key] = at
    where = [(kind, key, f, at, s, e) for (kind, key, f, s, e), at in zip(spans, offsets)]
    return Layout(
        placed["value"], placed["grad"], placed["temp"], size, _peak(spans, 2 * n + 2), where
    )


def _align(floats: int) -> int:
    return -(-max(1, floats) // ALIGN) * ALIGN


def _place(spans: list[tuple[int, int, int]]) -> tuple[list[int], int]:
    """Offsets for ``(floats, first, last)`` spans, largest first, each in the smallest gap
    that fits among the placed spans whose clocks meet its own (else above them)."""
    count = len(spans)
    offsets = [0] * count
    starts, ends = np.empty(count, np.int64), np.empty(count, np.int64)
    lows, highs = np.empty(count, np.int64), np.empty(count, np.int64)
    order = sorted(range(count), key=lambda i: (-spans[i][0], spans[i][1], i))
    size = 0
    for done, i in enumerate(order):
        floats, first, last = spans[i]
        need = _align(floats)
        meet = (starts[:done] <= last) & (ends[:done] >= first)
        busy = sorted(zip(lows[:done][meet].tolist(), highs[:done][meet].tolist()))
        at, best, gap_at = 0, None, None
        for lo, hi in busy:
            if lo - at >= need and (best is None or lo - at < best):
                best, gap_at = lo - at, at
            at = max(at, hi)
        at = gap_at if gap_at is not None else at
        offsets[i] = at
        starts[done], ends[done], lows[done], highs[done] = first, last, at, at + need
        size = max(size, at + need)
    return offsets, size


def _peak(spans, clocks: int) -> int:
    live = np.zeros(clocks + 3, np.int64)
    for _, _, floats, first, last in spans:
        live[first + 1] += _align(floats)
        live[last + 2] -= _align(floats)
    return int(np.cumsum(live).max(initial=0))
