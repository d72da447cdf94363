"""Replayed passes: the calls a pass through the launchers bound, run again as a list.

The executor's first pass (and any after a rebinding) goes through its loop, each step's
launcher, the step's key and the lookup of its bound call: 1.5-4 us a step, a tenth of
MobileNetV2's pass at batch 1. Every later pass runs the list this module makes of them.
"""

from __future__ import annotations

import numpy as np

from . import bands, blocked, bounds
from .elementwise import activation_pass
from .table import BOUND_ONLY, step_key


def make_replay(backend, entries, chains, work, inputs):
    """A function of the caller's NCHW inputs (by name) that runs the executor's bound
    ``entries`` (and its band ``chains``) as the last pass ran them, or None where a step
    has no bound call yet. A convolution's or depthwise step's call (``BOUND_ONLY``) is
    called directly, the rest through ``run_step`` and ``run_chain``: the executor loop,
    the launcher, the key and the lookup cost 1.5-4 us a step, MobileNetV2 0.1-0.2 ms a
    pass at batch 1. The function returns False, having run nothing, once a buffer the
    calls hold was reallocated (each is then bound again by a pass through the
    launchers), or the checked mode was switched.

    ``inputs``: name -> (value id, NHWC view, whether a kernel may read the caller's
    array instead: not where the value is also an output or another value's alias). The
    function converts each input into its view, except one whose only reader copies it
    into a padded buffer anyway (a network's first layer, ``blocked.reading_nchw``): a
    padding copy from the caller's NCHW array then takes the conversion's place."""
    bound = _bound_calls(backend, entries, chains, work)
    if bound is None:
        return None
    calls, convert, in_place = _inputs_in_place(*bound, entries, inputs)
    return _runner(backend, calls, convert, in_place)


def _bound_calls(backend, entries, chains, work):
    """(calls, the position and kernel of each bound step's call by id(step)), each call as
    (function, arguments, activation pass after it or None, label); None where a step has
    no bound call yet."""
    calls, origins, index = [], {}, 0
    while index < len(entries):
        n = chains.get(index, 0)
        if n and backend.held(bands.chain_key(entries[index : index + n])):
            calls.append((backend.run_chain, (entries[index : index + n], work), None, ""))
            index += n
            continue
        for step, arrays, ins, res, out in entries[index : index + max(n, 1)]:
            if step.kernel not in BOUND_ONLY:
                calls.append((backend.run_step, (step, arrays, ins, res, out, work), None, ""))
                continue
            call = backend.held(step_key(step, ins, res, out))
            if call is None:
                return None
            kernel, args, after = call
            origins[id(step)] = len(calls), kernel
            calls.append((_compiled(kernel, args), args, after, step.label))
        index += max(n, 1)
    return calls, origins


def _inputs_in_place(calls, origins, entries, inputs):
    """(calls, inputs converted as (name, view), inputs read in place as (name, position of
    their padding call, staging array)): ``calls`` with a padding call from the caller's
    array before each layer that reads an input in place (``make_replay``)."""
    readers: dict = {}
    for step, *_ in entries:
        for vid in {*step.inputs, step.residual}:
            readers.setdefault(vid, []).append(step)
    convert, pads = [], {}
    for name, (vid, view, may) in inputs.items():
        found = readers.get(vid, [])  # read in place only by its one reader
        at, kernel = origins.get(id(found[0]), (None, None)) if len(found) == 1 else (None, None)
        split = None
        if may and view.ndim == 4 and kernel is blocked.blocked_run and found[0].inputs == [vid]:
            shape = (view.shape[0], view.shape[3], *view.shape[1:3])
            staging = np.empty(shape, np.float32)  # for arrays the kernel cannot take
            split = blocked.reading_nchw(calls[at][1], staging)
        if split is None:
            convert.append((name, view))
            continue
        (pad, pad_args), args = split
        _, _, after, label = calls[at]
        calls[at] = (_compiled(kernel, args), args, after, label)
        pads[at] = name, staging, (pad, pad_args, None, label)
    # each such input's padding copy just before its layer, the caller's array in it
    merged, in_place = [], []
    for at, call in enumerate(calls):
        if at in pads:
            name, staging, pad_call = pads[at]
            in_place.append((name, len(merged), staging))
            merged.append(pad_call)
        merged.append(call)
    return merged, convert, in_place


def _runner(backend, calls, convert, in_place):
    """The replay itself (``make_replay``): False, running nothing, where the bindings'
    generation or the checked mode changed since ``calls`` were made."""
    generation, checked = backend.generation, bounds.SLOTS[0]

    def run(given: dict) -> bool:
        if backend.generation != generation or bounds.SLOTS[0] != checked:
            return False
        for name, view in convert:
            backend.nchw_to_runtime(given[name], view)
        for name, at, staging in in_place:
            calls[at] = _with_input(calls[at], _readable(given[name], staging))
        try:
            for kernel, args, after, label in calls:
                kernel(*args)
                if bounds.SLOTS[1]:  # checked mode stopped a kernel of this step
                    bounds.raise_fault(label)
                if after is not None:
                    activation_pass(*after)
        finally:  # the caller's arrays are not held past the pass
            for _, at, staging in in_place:
                calls[at] = _with_input(calls[at], staging)
        return True

    run.in_place = [name for name, _, _ in in_place]  # the inputs read in place (tests)
    return run


def _compiled(kernel, args):
    """What to call for ``kernel(*args)`` in a replay: where ``kernel`` is a Numba function
    (``blocked_run`` is ``blocked_kernel`` outside checked mode), its compiled code for
    exactly these arguments' types, without the dispatcher's typing of each argument (about
    0.5 us for a call of 26 arguments); else ``kernel`` itself. The arguments are the bound
    call's own objects, so their types cannot change."""
    if kernel is blocked.blocked_run and not bounds.SLOTS[0]:
        kernel = blocked.blocked_kernel
    overloads = getattr(kernel, "overloads", None)
    if overloads is None:
        return kernel
    compiled = overloads.get(tuple(kernel.typeof_pyval(a) for a in args))
    return kernel if compiled is None else compiled.entry_point


def _with_input(call: tuple, x) -> tuple:
    """A replay's ``call`` with ``x`` for its first argument."""
    kernel, args, after, label = call
    return kernel, (x, *args[1:]), after, label


def _readable(x, staging: np.ndarray) -> np.ndarray:
    """The caller's array ``x`` where a kernel compiled for ``staging``'s type can read it
    (float32, C order, writeable, the same shape), else ``staging`` holding a copy of it."""
    if (
        isinstance(x, np.ndarray)
        and x.dtype == np.float32
        and x.shape == staging.shape
        and x.flags.c_contiguous
        and x.flags.writeable
        and x.flags.aligned
    ):
        return x
    staging[...] = x
    return staging
