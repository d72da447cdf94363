"""A register-blocked convolution micro-kernel, written as LLVM vector IR inside Numba.

LLVM's auto-vectoriser does not keep a GEMM's accumulators in registers when the kernel is
written as Numba loops (measured: gathers and scatters on a stack tile, 4 GFLOP/s). So the
innermost kernel is an ``@intrinsic`` that emits the loops itself: ``MR x NV`` vector
accumulators of ``LANES`` floats live in registers across every kernel tap and input channel,
each step broadcasting one input value per output pixel and multiplying it with ``NV`` vectors
of packed weights (fused multiply-add). Input pixels are read in place from an NHWC buffer
(no im2col): pixel ``i`` of a tile is at ``a + min(i, count - 1) * step`` plus the tap's
offset, so a partial tile repeats its last pixel instead of reading past the end.

The width follows the target: 16 lanes and 12 pixels where AVX-512 is available (32 vector
registers: 24 accumulators), 8 lanes and 6 pixels otherwise (16 registers: 12 accumulators).
"""

from __future__ import annotations

import os

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


def _has_avx512() -> bool:
    features = os.environ.get("NUMBA_CPU_FEATURES")
    if not features:
        import llvmlite.binding as llvm

        features = llvm.get_host_cpu_features().flatten()
    return "+avx512f" in features.split(",")


if _has_avx512():
    LANES, MR, NV = 16, 12, 2
else:
    LANES, MR, NV = 8, 6, 2
#: Output channels per packed weight panel.
NR = LANES * NV


def _accumulate(context, builder, ntaps, cin, a, step, offsets, b, count):
    """The loops over taps and input channels; returns the MR x NV accumulators (row-major)
    with the builder after the loops."""
    i64 = ir.IntType(64)
    vec = ir.VectorType(ir.FloatType(), LANES)
    fptr = ir.FloatType().as_pointer()
    fma = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vec, [vec, vec, vec]), f"llvm.fma.v{LANES}f32"
    )

    def const(v):
        return ir.Constant(i64, v)

    zeros = ir.Constant(vec, [0.0] * LANES)
    last = builder.sub(count, const(1))
    rows = []
    for i in range(MR):
        clamped = builder.select(builder.icmp_signed("<", const(i), last), const(i), last)
        rows.append(builder.add(a, builder.mul(clamped, step)))
    offsets = builder.inttoptr(offsets, i64.as_pointer())
    b = builder.inttoptr(b, fptr)

    fn = builder.function
    entry = builder.block
    t_head = fn.append_basic_block("tile.taps")
    t_body = fn.append_basic_block("tile.tap")
    k_head = fn.append_basic_block("tile.channels")
    k_body = fn.append_basic_block("tile.channel")
    t_next = fn.append_basic_block("tile.next_tap")
    done = fn.append_basic_block("tile.done")
    n_acc = MR * NV

    builder.branch(t_head)
    builder.position_at_end(t_head)
    t = builder.phi(i64)
    t_acc = [builder.phi(vec) for _ in range(n_acc)]
    t.add_incoming(const(0), entry)
    for p in t_acc:
        p.add_incoming(zeros, entry)
    builder.cbranch(builder.icmp_signed("<", t, ntaps), t_body, done)

    builder.position_at_end(t_body)
    offset = builder.load(builder.gep(offsets, [t]))
    tap_rows = [builder.add(r, offset) for r in rows]
    k_base = builder.mul(t, cin)
    builder.branch(k_head)

    builder.position_at_end(k_head)
    k = builder.phi(i64)
    k_acc = [builder.phi(vec) for _ in range(n_acc)]
    k.add_incoming(const(0), t_body)
    for p, q in zip(k_acc, t_acc):
        p.add_incoming(q, t_body)
    builder.cbranch(builder.icmp_signed("<", k, cin), k_body, t_next)

    builder.position_at_end(k_body)
    panel_row = builder.mul(builder.add(k_base, k), const(NR))
    weights = []
    for v in range(NV):
        ptr = builder.gep(b, [builder.add(panel_row, const(v * LANES))])
        weights.append(builder.load(builder.bitcast(ptr, vec.as_pointer()), align=4))
    byte = builder.mul(k, const(4))
    new = []
    for i in range(MR):
        value = builder.load(builder.inttoptr(builder.add(tap_rows[i], byte), fptr), align=4)
        for v in range(NV):
            new.append(builder.call(fma, [_splat(builder, value), weights[v], k_acc[i * NV + v]]))
    k.add_incoming(builder.add(k, const(1)), builder.block)
    for p, q in zip(k_acc, new):
        p.add_incoming(q, builder.block)
    builder.branch(k_head)

    builder.position_at_end(t_next)
    t.add_incoming(builder.add(t, const(1)), t_next)
    for p, q in zip(t_acc, k_acc):
        p.add_incoming(q, t_next)
    builder.branch(t_head)

    builder.position_at_end(done)
    return t_acc


def _splat(builder, value):
    """``value`` in every lane of a vector."""
    vec = ir.VectorType(value.type, LANES)
    undef = ir.Constant(vec, ir.Undefined)
    first = builder.insert_element(undef, value, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(
        first, undef, ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES)
    )


@intrinsic
def conv_tile(typingctx, ntaps, cin, a, step, offsets, b, c, ldc, count):
    """``c[i, j] = sum over taps t, channels k of x(i, t, k) * b[t * cin + k, j]`` for the
    tile's MR pixels and NR channels, where x(i, t, k) is the float at byte address
    ``a + min(i, count - 1) * step + offsets[t] + 4 k``. ``b`` is one packed panel
    (ntaps * cin rows of NR floats); row i of the MR x NR result goes to ``c + i * ldc``.
    Addresses and ``step``, ``ldc`` are in bytes."""
    sig = types.void(*([types.intp] * 9))

    def codegen(context, builder, signature, args):
        ntaps, cin, a, step, offsets, b, c, ldc, count = args
        acc = _accumulate(context, builder, ntaps, cin, a, step, offsets, b, count)
        i64 = ir.IntType(64)
        vec = ir.VectorType(ir.FloatType(), LANES)
        for i in range(MR):
            row = builder.inttoptr(builder.add(c, builder.mul(ir.Constant(i64, i), ldc)),
                                   ir.FloatType().as_pointer())  # fmt: skip
            for v in range(NV):
                ptr = builder.gep(row, [ir.Constant(i64, v * LANES)])
                builder.store(acc[i * NV + v], builder.bitcast(ptr, vec.as_pointer()), align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def conv_tile_out(typingctx, ntaps, cin, a, step, offsets, b, count, rows, out, res, bias, nk,
                  lo, hi):  # fmt: skip
    """``conv_tile``'s sums, with the epilogue done in registers: tile row i goes to the
    float at index ``rows[i]`` of ``out`` (skipped where it is negative) as
    ``min(max(sum + bias (+ res at the same index), lo), hi)``, channels 0..nk-1 only
    (masked loads and stores where ``nk`` < NR). ``res`` is 0 for no residual; ``rows``,
    ``out``, ``res`` and ``bias`` are addresses. Writing from registers saves the round
    trip through a scratch tile and a loop per pixel, which cost four times the
    multiply-adds on a 16->96 1x1 layer."""
    sig = types.void(*([types.intp] * 12), types.float32, types.float32)

    def codegen(context, builder, signature, args):
        ntaps, cin, a, step, offsets, b, count, rows, out, res, bias, nk, lo, hi = args
        acc = _accumulate(context, builder, ntaps, cin, a, step, offsets, b, count)
        _epilogue(builder, acc, rows, out, res, bias, nk, lo, hi)
        return context.get_dummy_value()

    return sig, codegen


def _epilogue(builder, acc, rows, out, res, bias, nk, lo, hi):
    """Four copies of the store, by full or partial panel and with or without a residual,
    so that no test is left inside them."""
    i32, i64 = ir.IntType(32), ir.IntType(64)
    vec = ir.VectorType(ir.FloatType(), LANES)
    vptr = vec.as_pointer()
    mask_t = ir.VectorType(ir.IntType(1), LANES)
    masked_load = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vec, [vptr, i32, mask_t, vec]),
        f"llvm.masked.load.v{LANES}f32.p0",
    )  # fmt: skip
    masked_store = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [vec, vptr, i32, mask_t]),
        f"llvm.masked.store.v{LANES}f32.p0",
    )  # fmt: skip
    zeros = ir.Constant(vec, [0.0] * LANES)
    lo, hi = _splat(builder, lo), _splat(builder, hi)
    row_at = builder.inttoptr(rows, i64.as_pointer())
    offsets = [builder.load(builder.gep(row_at, [ir.Constant(i64, i)])) for i in range(MR)]
    lanes = ir.VectorType(i64, LANES)
    nk_splat = _splat(builder, nk)
    masks = [
        builder.icmp_signed("<", ir.Constant(lanes, [v * LANES + j for j in range(LANES)]),
                            nk_splat)
        for v in range(NV)
    ]  # fmt: skip

    def at(base, offset, v):
        byte = builder.add(base, builder.mul(builder.add(offset, ir.Constant(i64, v * LANES)),
                                             ir.Constant(i64, 4)))  # fmt: skip
        return builder.inttoptr(byte, vptr)

    def load(ptr, v, masked):
        if masked:
            return builder.call(masked_load, [ptr, ir.Constant(i32, 4), masks[v], zeros])
        return builder.load(ptr, align=4)

    def store(value, ptr, v, masked):
        if masked:
            builder.call(masked_store, [value, ptr, ir.Constant(i32, 4), masks[v]])
        else:
            builder.store(value, ptr, align=4)

    fn = builder.function
    exit_block = fn.append_basic_block("tile.stored")
    full = builder.icmp_signed("==", nk, ir.Constant(i64, NR))
    with_res = builder.icmp_signed("!=", res, ir.Constant(i64, 0))
    variants = {}
    for masked in (False, True):
        for residual in (False, True):
            variants[masked, residual] = fn.append_basic_block("tile.store")
    pick_full = fn.append_basic_block("tile.full")
    pick_part = fn.append_basic_block("tile.partial")
    builder.cbranch(full, pick_full, pick_part)
    for block, masked in ((pick_full, False), (pick_part, True)):
        builder.position_at_end(block)
        builder.cbranch(with_res, variants[masked, True], variants[masked, False])
    for (masked, residual), block in variants.items():
        builder.position_at_end(block)
        biases = [load(at(bias, ir.Constant(i64, 0), v), v, masked) for v in range(NV)]
        for i in range(MR):
            keep = fn.append_basic_block("tile.row")
            after = fn.append_basic_block("tile.next_row")
            builder.cbranch(builder.icmp_signed(">=", offsets[i], ir.Constant(i64, 0)), keep,
                            after)  # fmt: skip
            builder.position_at_end(keep)
            for v in range(NV):
                value = builder.fadd(acc[i * NV + v], biases[v])
                if residual:
                    value = builder.fadd(value, load(at(res, offsets[i], v), v, masked))
                value = builder.select(builder.fcmp_ordered("<", value, lo), lo, value)
                value = builder.select(builder.fcmp_ordered(">", value, hi), hi, value)
                store(value, at(out, offsets[i], v), v, masked)
            builder.branch(after)
            builder.position_at_end(after)
        builder.branch(exit_block)
    builder.position_at_end(exit_block)


@intrinsic
def fma_chains(typingctx, iterations):
    """``iterations`` rounds of MR x NV independent vector multiply-adds (the micro-kernel's
    accumulators, with nothing to load): the FMA throughput the micro-kernel can reach.
    Returns one lane of their sum, so that the work cannot be optimised away."""
    sig = types.float32(types.intp)

    def codegen(context, builder, signature, args):
        (n,) = args
        i64, f32 = ir.IntType(64), ir.FloatType()
        vec = ir.VectorType(f32, LANES)
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vec, [vec, vec, vec]), f"llvm.fma.v{LANES}f32"
        )
        scale = ir.Constant(vec, [0.9999999] * LANES)
        shift = ir.Constant(vec, [1e-7] * LANES)
        entry = builder.block
        head = builder.append_basic_block("chains.head")
        body = builder.append_basic_block("chains.body")
        done = builder.append_basic_block("chains.done")
        builder.branch(head)
        builder.position_at_end(head)
        i = builder.phi(i64)
        i.add_incoming(ir.Constant(i64, 0), entry)
        accs = []
        for j in range(MR * NV):
            p = builder.phi(vec)
            p.add_incoming(ir.Constant(vec, [j * 1e-3] * LANES), entry)
            accs.append(p)
        builder.cbranch(builder.icmp_signed("<", i, n), body, done)
        builder.position_at_end(body)
        new = [builder.call(fma, [p, scale, shift]) for p in accs]
        i.add_incoming(builder.add(i, ir.Constant(i64, 1)), body)
        for p, q in zip(accs, new):
            p.add_incoming(q, body)
        builder.branch(head)
        builder.position_at_end(done)
        total = accs[0]
        for p in accs[1:]:
            total = builder.fadd(total, p)
        return builder.extract_element(total, ir.Constant(ir.IntType(32), 0))

    return sig, codegen
