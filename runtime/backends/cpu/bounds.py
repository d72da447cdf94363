"""Checked mode (``CNNC_CHECK_BOUNDS=1``): before each call of a kernel that takes raw
addresses (the micro-kernel's tiles, BLAS's sgemm), the byte ranges it will read and write
are compared with the arrays they belong to, and a range that leaves its array stops the run
with a ``BoundsError`` naming the kernel and the buffer instead of a crash or a wrong result.

Each such kernel states its extents next to it (``microkernel.*_fits``, ``blas.gemm``),
computed from the arguments it is called with. The checks run inside the Numba kernels, where
an exception would be lost (a ``prange`` loop drops it), so a failed check skips the call and
records the fault in a process-wide record, which the Python side turns into the exception
after the kernel (``raise_fault``). The record is a symbol the compiled kernels link to, so
kernels cached on disk serve both modes: unchecked, each call costs one load and one branch.
"""

from __future__ import annotations

import os

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

#: The record: [checking, claimed, site, buffer, first byte, end byte, buffer's bytes, -].
RECORD = np.zeros(8, np.int64)
_SYMBOL = "cnnc_bounds_record"
llvm.add_symbol(_SYMBOL, RECORD.ctypes.data)

#: Who checks (``site``) and what (``buffer``): codes a kernel records, names for the message.
SITES = {1: "micro-kernel tile", 2: "depthwise tile", 3: "depthwise patch copy", 4: "sgemm"}
MICRO_TILE, DEPTHWISE_TILE, DEPTHWISE_PATCH, SGEMM = 1, 2, 3, 4
BUFFERS = {
    1: "input",
    2: "tap offsets",
    3: "weights",
    4: "output offsets",
    5: "output",
    6: "residual",
    7: "bias",
    8: "A",
    9: "B",
    10: "C",
    11: "patch buffer",
    12: "input addresses",
}
INPUT, TAP_OFFSETS, WEIGHTS, ROWS, OUTPUT, RESIDUAL, BIAS, GEMM_A, GEMM_B, GEMM_C, PATCH = range(
    1, 12
)
PIXELS = 12
#: A check of the tile's own arguments (a pixel count or channel count out of range).
ARGUMENTS = 0


class BoundsError(RuntimeError):
    """A kernel was about to touch memory outside the array it was given: a bug in cnnc, found
    by the checked mode before it could crash or corrupt anything."""


def checked() -> bool:
    return bool(RECORD[0])


def set_checked(on: bool) -> None:
    """Switch the checks on or off for this process (``CNNC_CHECK_BOUNDS`` sets the start)."""
    RECORD[:] = 0
    RECORD[0] = 1 if on else 0


set_checked(os.environ.get("CNNC_CHECK_BOUNDS", "").strip() not in ("", "0"))


#: The record as Python ints: ``SLOTS[1]`` is not 0 once a fault is recorded (a test that
#: costs the unchecked path about what an attribute lookup does).
SLOTS = memoryview(RECORD)


def raise_fault(what: str = "") -> None:
    """Raise the fault a kernel recorded since the last call (nothing if none), and clear it."""
    if RECORD[1] == 0:
        return
    site, buffer, first, end, size = (int(v) for v in RECORD[2:7])
    RECORD[1:] = 0
    name = BUFFERS.get(buffer, "its arguments")
    where = f" in {what}" if what else ""
    if buffer == ARGUMENTS:
        detail = f"was called with a count out of range ({first} of at most {end})"
    else:
        detail = (
            f"would touch bytes {first}..{end} of its {name}, which holds {size} bytes"
            if end > first
            else f"was given an address outside its {name}"
        )
    raise BoundsError(
        f"{SITES.get(site, 'a kernel')}{where} {detail}: an internal error of cnnc, stopped "
        "by CNNC_CHECK_BOUNDS before it ran"
    )


@intrinsic
def _record(typingctx):
    """The record's address (the linked symbol), as a pointer Numba can index."""
    sig = types.CPointer(types.int64)()

    def codegen(context, builder, signature, args):
        module = builder.module
        held = module.globals.get(_SYMBOL)
        if held is None:
            held = ir.GlobalVariable(module, ir.ArrayType(ir.IntType(64), 8), _SYMBOL)
            held.linkage = "external"
        return builder.bitcast(held, ir.IntType(64).as_pointer())

    return sig, codegen


@intrinsic
def _claim(typingctx):
    """Whether this thread is the first to record a fault (atomically: tiles fail in several
    threads at once)."""
    sig = types.boolean()

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        module = builder.module
        held = module.globals.get(_SYMBOL)
        if held is None:
            held = ir.GlobalVariable(module, ir.ArrayType(i64, 8), _SYMBOL)
            held.linkage = "external"
        slot = builder.gep(held, [ir.Constant(ir.IntType(32), 0), ir.Constant(ir.IntType(32), 1)])
        result = builder.cmpxchg(slot, ir.Constant(i64, 0), ir.Constant(i64, 1), "monotonic",
                                 "monotonic")  # fmt: skip
        return builder.extract_value(result, 1)

    return sig, codegen


@njit(inline="always", cache=True, nogil=True)
def checking() -> bool:
    """Whether checked mode is on (one load)."""
    return _record()[0] != 0


@njit(cache=True, nogil=True)
def fault(site, buffer, first, end, size) -> bool:
    """Record a fault (the first one wins); returns False, for ``return fault(...)``."""
    if _claim():
        record = _record()
        record[2] = site
        record[3] = buffer
        record[4] = first
        record[5] = end
        record[6] = size
    return False


@njit(inline="always", cache=True, nogil=True)
def inside(site, buffer, first, end, array) -> bool:
    """Whether bytes ``first``..``end - 1`` (addresses) lie in ``array`` (C-contiguous), else
    a fault recorded relative to its start. An empty range always fits."""
    if end <= first:
        return True
    base = array.ctypes.data
    size = array.size * array.itemsize
    if first >= base and end <= base + size:
        return True
    return fault(site, buffer, first - base, end - base, size)


@njit(inline="always", cache=True, nogil=True)
def count_in(site, value, low, high) -> bool:
    """Whether a kernel's count argument ``value`` is within ``low``..``high``."""
    if low <= value <= high:
        return True
    return fault(site, ARGUMENTS, value, high, 0)
