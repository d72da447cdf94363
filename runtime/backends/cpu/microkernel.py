"""A register-blocked convolution micro-kernel, written as LLVM vector IR inside Numba.

LLVM's auto-vectoriser does not keep a GEMM's accumulators in registers when the kernel is
written as Numba loops (measured: gathers and scatters on a stack tile, 4 GFLOP/s). So the
innermost kernel is an ``@intrinsic`` that emits the loops itself: ``MR x NV`` vector
accumulators of ``LANES`` floats live in registers across every kernel tap and input channel
(in blocks of SUM_BLOCK products, added into totals, where the sum is long), each step
broadcasting one input value per output pixel and multiplying it with ``NV`` vectors of
packed weights (fused multiply-add). Input pixels are read in place from an NHWC buffer
(no im2col): pixel ``i`` of a tile is at an address of its own (``conv_tile_out``: a table
the driver fills, so that a tile may take pixels from several rows and images) or at
``a + min(i, count - 1) * step`` (``conv_tile``), plus the tap's offset; a partial tile
repeats its last pixel instead of reading past the end.

The width follows the target: 16 lanes and 12 pixels where AVX-512 is available (32 vector
registers: 24 accumulators), 8 lanes and 6 pixels otherwise (16 registers: 12 accumulators).
"""

from __future__ import annotations

import os

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .activations import EXP32


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


def _accumulate(context, builder, ntaps, cin, rows, offsets, b, short_sums=True, n_vec=NV):
    """The loops over taps and input channels, pixel i's inputs at byte address ``rows[i]``
    plus the tap's offset, against the first ``n_vec`` vectors of each panel row; returns the
    len(rows) x n_vec sums (row-major) with the builder after the loops: of one accumulator
    each where the sum is short (and ``short_sums``), else of blocks (``_blocked_sums``).
    Small tiles take blocks only: they run a layer's last few pixels, and half the code is a
    third of a second less of a cold start."""
    i64 = ir.IntType(64)
    vec = ir.VectorType(ir.FloatType(), LANES)
    fptr = ir.FloatType().as_pointer()
    fma = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vec, [vec, vec, vec]), f"llvm.fma.v{LANES}f32"
    )

    def const(v):
        return ir.Constant(i64, v)

    offsets = builder.inttoptr(offsets, i64.as_pointer())
    b = builder.inttoptr(b, fptr)

    def enter(t):  # one tap: its pixels' addresses, its first row of weights
        offset = builder.load(builder.gep(offsets, [t]))
        return [builder.add(r, offset) for r in rows], builder.mul(t, cin)

    def channel(state, k, acc):  # one input channel: MR broadcasts times NV weight vectors
        tap_rows, k_base = state
        panel_row = builder.mul(builder.add(k_base, k), const(NR))
        weights = []
        for v in range(n_vec):
            ptr = builder.gep(b, [builder.add(panel_row, const(v * LANES))])
            weights.append(builder.load(builder.bitcast(ptr, vec.as_pointer()), align=4))
        byte = builder.mul(k, const(4))
        new = []
        for i in range(len(tap_rows)):
            value = builder.load(builder.inttoptr(builder.add(tap_rows[i], byte), fptr), align=4)
            for v in range(n_vec):
                new.append(builder.call(fma, [_splat(builder, value), weights[v],
                                              acc[i * n_vec + v]]))  # fmt: skip
        return new

    if not short_sums:
        return _blocked_sums(builder, ntaps, cin, len(rows) * n_vec, enter, channel)
    # short sums (a stem's 7x7 taps of 3 channels) in one run: blocks would round them
    # about as far, and their bookkeeping per tap of few channels cost 5% there
    fn = builder.function
    short, long_, joined = (
        fn.append_basic_block(f"sum.{part}") for part in ("short", "long", "join")
    )
    total = builder.mul(ntaps, cin)
    builder.cbranch(builder.icmp_signed("<=", total, const(2 * SUM_BLOCK)), short, long_)
    builder.position_at_end(short)
    plain = _loop_nest(builder, ntaps, cin, [_vconst(0.0)] * (len(rows) * n_vec), enter,
                       channel, "tile")  # fmt: skip
    plain_end = builder.block
    builder.branch(joined)
    builder.position_at_end(long_)
    blocked = _blocked_sums(builder, ntaps, cin, len(rows) * n_vec, enter, channel)
    blocked_end = builder.block
    builder.branch(joined)
    builder.position_at_end(joined)
    sums = []
    for one, other in zip(plain, blocked):
        phi = builder.phi(one.type)
        phi.add_incoming(one, plain_end)
        phi.add_incoming(other, blocked_end)
        sums.append(phi)
    return sums


#: Multiply-adds an accumulator takes before it is added into the tile's totals and restarts
#: from zero. One float32 accumulator rounds further from the exact sum the longer the sum:
#: against float64, a 1x1 layer of 2048 channels was 5.7e-7 off (RMS of the output) where
#: PyTorch's GEMM, which sums in K blocks, is 2.1e-7, and Inception's 7x1 of 768 channels
#: 9.0e-7 against 1.8e-7; in blocks of 256 both are 2.1e-7 and 2.2e-7. A ReLU whose input
#: sits that close to zero flips, and its gradient with it: ResNeXt's, Inception's and
#: DenseNet's gradients were up to 5 times further from float64 than PyTorch's. Blocks of
#: 128 round a little closer (1.6e-7, 1.9e-7) but cost 3% on 3x3 layers of 128 channels
#: (totals added after every tap); 256 costs nothing measurable (tests/test_runtime_blocked.py).
SUM_BLOCK = 256


def _blocked_sums(builder, ntaps, cin, n_acc, enter, step):
    """``_loop_nest`` over taps and channels, in segments of at most SUM_BLOCK channels of
    one tap; after the segment that brings the accumulators to SUM_BLOCK multiply-adds or
    more, they are added into the totals and restart from zero. The totals stay in memory
    (a stack slot whose address LLVM cannot see through, so that it does not keep them in
    registers beside the accumulators). Returns the totals plus the accumulators, with the
    builder after the loops."""
    i64 = ir.IntType(64)
    vec = ir.VectorType(ir.FloatType(), LANES)
    fn = builder.function
    with builder.goto_entry_block():
        slot = builder.alloca(vec, size=ir.Constant(i64, n_acc))
    hidden = builder.asm(ir.FunctionType(i64, [i64]), "", "=r,0",
                         [builder.ptrtoint(slot, i64)], True)  # fmt: skip
    base = builder.inttoptr(hidden, vec.as_pointer())
    totals = [builder.gep(base, [ir.Constant(i64, j)]) for j in range(n_acc)]
    for ptr in totals:
        builder.store(_vconst(0.0), ptr, align=4)
    entry = builder.block
    head, body, i_head, i_body, seg_end, flush, seg_next, done = (
        fn.append_basic_block(f"sum.{part}")
        for part in ("segment", "enter", "inner", "step", "end", "flush", "next", "done")
    )
    zero, one, block = (ir.Constant(i64, v) for v in (0, 1, SUM_BLOCK))
    zeros = [_vconst(0.0)] * n_acc
    builder.branch(head)
    builder.position_at_end(head)
    t, k0, since = (builder.phi(i64) for _ in range(3))
    accs = [builder.phi(v.type) for v in zeros]
    for p in (t, k0, since):
        p.add_incoming(zero, entry)
    for p, v in zip(accs, zeros):
        p.add_incoming(v, entry)
    builder.cbranch(builder.icmp_signed("<", t, ntaps), body, done)
    builder.position_at_end(body)
    state = enter(t)
    end = builder.add(k0, block)
    end = builder.select(builder.icmp_signed("<", end, cin), end, cin)
    entered = builder.block
    builder.branch(i_head)
    builder.position_at_end(i_head)
    k = builder.phi(i64)
    i_acc = [builder.phi(v.type) for v in zeros]
    k.add_incoming(k0, entered)
    for p, q in zip(i_acc, accs):
        p.add_incoming(q, entered)
    builder.cbranch(builder.icmp_signed("<", k, end), i_body, seg_end)
    builder.position_at_end(i_body)
    new = step(state, k, i_acc)
    k.add_incoming(builder.add(k, one), builder.block)
    for p, q in zip(i_acc, new):
        p.add_incoming(q, builder.block)
    builder.branch(i_head)
    builder.position_at_end(seg_end)
    summed = builder.add(since, builder.sub(end, k0))
    builder.cbranch(builder.icmp_signed(">=", summed, block), flush, seg_next)
    builder.position_at_end(flush)
    for ptr, acc in zip(totals, i_acc):
        builder.store(builder.fadd(builder.load(ptr, align=4), acc), ptr, align=4)
    builder.branch(seg_next)
    builder.position_at_end(seg_next)
    next_since = builder.phi(i64)
    next_since.add_incoming(zero, flush)
    next_since.add_incoming(summed, seg_end)
    next_accs = []
    for acc in i_acc:
        na = builder.phi(acc.type)
        na.add_incoming(_vconst(0.0), flush)
        na.add_incoming(acc, seg_end)
        next_accs.append(na)
    last = builder.icmp_signed(">=", end, cin)
    t.add_incoming(builder.select(last, builder.add(t, one), t), seg_next)
    k0.add_incoming(builder.select(last, zero, end), seg_next)
    since.add_incoming(next_since, seg_next)
    for p, q in zip(accs, next_accs):
        p.add_incoming(q, seg_next)
    builder.branch(head)
    builder.position_at_end(done)
    return [builder.fadd(builder.load(ptr, align=4), acc) for ptr, acc in zip(totals, accs)]


def _pixel_addresses(builder, a, step, count, pixels):
    """``a + min(i, count - 1) * step`` for a tile's pixels i: a partial tile repeats its
    last pixel instead of reading past the end."""
    i64 = ir.IntType(64)
    last = builder.sub(count, ir.Constant(i64, 1))
    found = []
    for i in range(pixels):
        index = ir.Constant(i64, i)
        clamped = builder.select(builder.icmp_signed("<", index, last), index, last)
        found.append(builder.add(a, builder.mul(clamped, step)))
    return found


def _loop_nest(builder, outer, inner, accs, enter, step, name):
    """Two counted loops, ``o < outer`` around ``i < inner``, carrying the vectors ``accs``
    in registers (phis, never memory). ``enter(o)`` runs once per outer iteration and
    returns what ``step(state, i, accs)`` needs, which returns the next accumulators.
    Returns the final ones, with the builder after the loops."""
    i64 = ir.IntType(64)
    fn = builder.function
    entry = builder.block
    o_head, o_body, i_head, i_body, o_next, done = (
        fn.append_basic_block(f"{name}.{part}")
        for part in ("outer", "enter", "inner", "step", "next", "done")
    )
    builder.branch(o_head)
    builder.position_at_end(o_head)
    o = builder.phi(i64)
    o_acc = [builder.phi(v.type) for v in accs]
    o.add_incoming(ir.Constant(i64, 0), entry)
    for p, v in zip(o_acc, accs):
        p.add_incoming(v, entry)
    builder.cbranch(builder.icmp_signed("<", o, outer), o_body, done)
    builder.position_at_end(o_body)
    state = enter(o)
    entered = builder.block
    builder.branch(i_head)
    builder.position_at_end(i_head)
    i = builder.phi(i64)
    i_acc = [builder.phi(v.type) for v in accs]
    i.add_incoming(ir.Constant(i64, 0), entered)
    for p, q in zip(i_acc, o_acc):
        p.add_incoming(q, entered)
    builder.cbranch(builder.icmp_signed("<", i, inner), i_body, o_next)
    builder.position_at_end(i_body)
    new = step(state, i, i_acc)
    i.add_incoming(builder.add(i, ir.Constant(i64, 1)), builder.block)
    for p, q in zip(i_acc, new):
        p.add_incoming(q, builder.block)
    builder.branch(i_head)
    builder.position_at_end(o_next)
    o.add_incoming(builder.add(o, ir.Constant(i64, 1)), o_next)
    for p, q in zip(o_acc, i_acc):
        p.add_incoming(q, o_next)
    builder.branch(o_head)
    builder.position_at_end(done)
    return o_acc


def _splat(builder, value):
    """``value`` in every lane of a vector."""
    vec = ir.VectorType(value.type, LANES)
    undef = ir.Constant(vec, ir.Undefined)
    first = builder.insert_element(undef, value, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(
        first, undef, ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES)
    )


def _conv_tile(pixels):
    """``conv_tile`` for tiles of ``pixels`` pixels."""

    def conv_tile(typingctx, ntaps, cin, a, step, offsets, b, c, ldc, count):
        sig = types.void(*([types.intp] * 9))

        def codegen(context, builder, signature, args):
            ntaps, cin, a, step, offsets, b, c, ldc, count = args
            rows = _pixel_addresses(builder, a, step, count, pixels)
            acc = _accumulate(context, builder, ntaps, cin, rows, offsets, b, pixels == MR)
            i64 = ir.IntType(64)
            vec = ir.VectorType(ir.FloatType(), LANES)
            for i in range(pixels):
                row = builder.inttoptr(builder.add(c, builder.mul(ir.Constant(i64, i), ldc)),
                                       ir.FloatType().as_pointer())  # fmt: skip
                for v in range(NV):
                    ptr = builder.gep(row, [ir.Constant(i64, v * LANES)])
                    builder.store(acc[i * NV + v], builder.bitcast(ptr, vec.as_pointer()),
                                  align=4)  # fmt: skip
            return context.get_dummy_value()

        return sig, codegen

    conv_tile.__doc__ = f"""``c[i, j] = sum over taps t, channels k of x(i, t, k) *
    b[t * cin + k, j]`` for the tile's {pixels} pixels and NR channels, where x(i, t, k) is
    the float at byte address ``a + min(i, count - 1) * step + offsets[t] + 4 k``. ``b`` is
    one packed panel (ntaps * cin rows of NR floats); row i of the {pixels} x NR result goes
    to ``c + i * ldc`` (every row, whatever ``count``). Addresses and ``step``, ``ldc`` are in
    bytes."""
    return intrinsic(conv_tile)


#: Pixels of the small tiles (``conv_tile_small``, ``conv_tile_out_small``): a third of MR.
#: They take what is left after the full tiles, where a full tile would mostly repeat its
#: last pixel: a 7x7 map at batch 1 is 4 tiles of 12 and 1 pixel (60 pixels' work for 49),
#: 14x14 and 28x28 maps and Winograd's 4x4 tiles of a 14x14 map leave 4.
MR_SMALL = MR // 3

conv_tile = _conv_tile(MR)
conv_tile_small = _conv_tile(MR_SMALL)


#: Activations ``conv_tile_out`` applies after the clamp (its ``post`` argument).
POST_NONE, POST_SILU, POST_SIGMOID, POST_HARDSWISH, POST_HARDSIGMOID, POST_LEAKY = range(6)


def _conv_tile_out(n_pixels, n_vec=NV):
    """``conv_tile_out`` for tiles of ``n_pixels`` pixels by ``n_vec`` vectors of channels."""

    def conv_tile_out(typingctx, ntaps, cin, pixels, offsets, b, rows, out, res, bias, nk, lo,
                      hi, post, slope):  # fmt: skip
        sig = types.void(*([types.intp] * 10), types.float32, types.float32, types.intp,
                         types.float32)  # fmt: skip

        def codegen(context, builder, signature, args):
            ntaps, cin, pixels, offsets, b, rows, out, res, bias, nk, lo, hi, post, slope = args
            i64 = ir.IntType(64)
            table = builder.inttoptr(pixels, i64.as_pointer())
            pixel_at = [builder.load(builder.gep(table, [ir.Constant(i64, i)]))
                        for i in range(n_pixels)]  # fmt: skip
            acc = _accumulate(context, builder, ntaps, cin, pixel_at, offsets, b,
                              n_pixels != MR_SMALL, n_vec)  # fmt: skip
            _epilogue(builder, acc, n_vec, rows, out, res, bias, nk, lo, hi)
            _post_activation(builder, n_vec, rows, out, nk, post, slope, n_pixels)
            return context.get_dummy_value()

        return sig, codegen

    conv_tile_out.__doc__ = CONV_TILE_OUT_DOC.replace("MR", str(n_pixels))
    return intrinsic(conv_tile_out)


CONV_TILE_OUT_DOC = """``conv_tile``'s sums, pixel i's inputs at the byte address at index i of the
    int64 table at ``pixels`` (plus the tap's offset): MR pixels from anywhere in the input, so
    that tiles run over the real output pixels, across rows and images, where one run of
    equally spaced pixels would cross a row's padding or stop at its end (a 7x7 map: 5
    tiles of 12 pixels instead of 6 or 7). The epilogue is done in registers: tile row i
    (of MR) goes to the float at index ``rows[i]`` of ``out`` (skipped where it is negative) as
    ``min(max(sum + bias (+ res at the same index), lo), hi)``, channels 0..nk-1 only
    (masked loads and stores where ``nk`` < NR), then through activation ``post`` (POST_*;
    ``slope`` is leaky ReLU's). ``res`` is 0 for no residual; ``rows``, ``out``, ``res`` and
    ``bias`` are addresses. Writing from registers saves the round trip through a scratch
    tile and a loop per pixel, which cost four times the multiply-adds on a 16->96 1x1
    layer; the activations as vector code here spare the driver the Numba code of every
    activation, which was 2.7 s of a cold start."""

conv_tile_out = _conv_tile_out(MR)
conv_tile_out_small = _conv_tile_out(MR_SMALL)
#: Twice the pixels by one vector of channels (the first of each panel row): a layer's last
#: panel where it holds LANES channels or fewer (16, 40, 80, 112 with AVX-512), which a
#: full tile ran at half its multiply-adds (the second vector's lanes all past ``nk``).
NARROW_MR = 2 * MR
conv_tile_out_narrow = _conv_tile_out(NARROW_MR, 1)


def _masked_ops(builder):
    """LLVM's masked vector load and store, declared in this module."""
    i32 = ir.IntType(32)
    vec = ir.VectorType(ir.FloatType(), LANES)
    mask_t = ir.VectorType(ir.IntType(1), LANES)
    load = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vec, [vec.as_pointer(), i32, mask_t, vec]),
        f"llvm.masked.load.v{LANES}f32.p0",
    )  # fmt: skip
    store = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [vec, vec.as_pointer(), i32, mask_t]),
        f"llvm.masked.store.v{LANES}f32.p0",
    )  # fmt: skip
    return load, store


def _lane_masks(builder, nk, n_vec=NV):
    """Per vector of a panel of ``n_vec`` vectors, the lanes below channel ``nk``. Compared
    as 32-bit lanes (``nk`` clamped to the panel's channels first, so that nothing is lost):
    with AVX2, a mask of 64-bit lanes took eight instructions (two compares, packs and
    shuffles) where this takes one, and LLVM made it again before each masked load of a loop
    rather than hold it in one of the 16 registers."""
    i32, i64 = ir.IntType(32), ir.IntType(64)
    total = ir.Constant(i64, n_vec * LANES)
    nk = builder.trunc(builder.select(builder.icmp_signed("<", nk, total), nk, total), i32)
    lanes = ir.VectorType(i32, LANES)
    nk_splat = _splat(builder, nk)
    return [
        builder.icmp_signed("<", ir.Constant(lanes, [v * LANES + j for j in range(LANES)]),
                            nk_splat)
        for v in range(n_vec)
    ]  # fmt: skip


def _vconst(value):
    return ir.Constant(ir.VectorType(ir.FloatType(), LANES), [value] * LANES)


def _exp(builder, v):
    """``exp`` of a vector: activations.exp32's Cephes polynomial, lane by lane."""
    vec = v.type
    floor = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vec, [vec]), f"llvm.floor.v{LANES}f32"
    )
    k = EXP32

    def c(x):
        return _vconst(float(x))

    v = builder.select(builder.fcmp_ordered("<", v, c(k["lo"])), c(k["lo"]), v)
    v = builder.select(builder.fcmp_ordered(">", v, c(k["hi"])), c(k["hi"]), v)
    n = builder.call(floor, [builder.fadd(builder.fmul(v, c(k["log2e"])), c(0.5))])
    r = builder.fsub(v, builder.fmul(n, c(k["ln2_hi"])))
    r = builder.fsub(r, builder.fmul(n, c(k["ln2_lo"])))
    p = c(k["poly"][0])
    for coefficient in k["poly"][1:]:
        p = builder.fadd(builder.fmul(p, r), c(coefficient))
    p = builder.fadd(builder.fadd(builder.fmul(builder.fmul(p, r), r), r), c(1.0))
    ints = ir.VectorType(ir.IntType(32), LANES)
    biased = builder.add(builder.fptosi(n, ints), ir.Constant(ints, [127] * LANES))
    scale = builder.bitcast(builder.shl(biased, ir.Constant(ints, [23] * LANES)), vec)
    return builder.fmul(p, scale)


def _activation(builder, kind, v, slope):
    """Activation ``kind`` (POST_*) of vector ``v``."""
    one, zero = _vconst(1.0), _vconst(0.0)
    if kind in (POST_SILU, POST_SIGMOID):
        denominator = builder.fadd(one, _exp(builder, builder.fsub(zero, v)))
        return builder.fdiv(v if kind == POST_SILU else one, denominator)
    if kind in (POST_HARDSWISH, POST_HARDSIGMOID):
        u = builder.fadd(v, _vconst(3.0))
        u = builder.select(builder.fcmp_ordered("<", u, zero), zero, u)
        u = builder.select(builder.fcmp_ordered(">", u, _vconst(6.0)), _vconst(6.0), u)
        if kind == POST_HARDSWISH:
            u = builder.fmul(v, u)
        return builder.fdiv(u, _vconst(6.0))
    # leaky ReLU
    return builder.select(builder.fcmp_ordered(">", v, zero), v, builder.fmul(v, slope))


def _post_activation(builder, n_vec, rows, out, nk, post, slope, n_rows=MR):
    """Activation ``post`` over the ``n_rows`` rows of ``n_vec`` vectors just stored (a loop
    over rows, one copy of each activation's code; the rows are in L1). Rows of full panels
    (``nk`` all their channels) load and store plainly, others masked: AVX2's masked store
    is microcoded on AMD's cores, and with it SiLU after MobileNet-sized depthwise tiles
    (56x56x144, Zen 4, one thread) added 140% to the layer with AVX2 code against 70% with
    AVX-512 code."""
    i32, i64 = ir.IntType(32), ir.IntType(64)
    vec = ir.VectorType(ir.FloatType(), LANES)
    masked_load, masked_store = _masked_ops(builder)
    masks = _lane_masks(builder, nk, n_vec)
    full = builder.icmp_signed("==", nk, ir.Constant(i64, n_vec * LANES))
    slope = _splat(builder, slope)
    row_at = builder.inttoptr(rows, i64.as_pointer())
    fn = builder.function
    done = fn.append_basic_block("post.done")
    cases = {kind: fn.append_basic_block("post.kind") for kind in range(1, 6)}
    switch = builder.switch(post, done)
    for kind, block in cases.items():
        switch.add_case(ir.Constant(i64, kind), block)

    def split():  # (block for a full panel, block for a partial one, the block after both)
        whole, part, joined = (fn.append_basic_block(f"post.{name}")
                               for name in ("whole", "part", "joined"))  # fmt: skip
        builder.cbranch(full, whole, part)
        return whole, part, joined

    def load(ptr, mask):
        whole, part, joined = split()
        builder.position_at_end(whole)
        plain = builder.load(ptr, align=4)
        builder.branch(joined)
        builder.position_at_end(part)
        masked = builder.call(masked_load, [ptr, ir.Constant(i32, 4), mask, _vconst(0.0)])
        builder.branch(joined)
        builder.position_at_end(joined)
        value = builder.phi(vec)
        value.add_incoming(plain, whole)
        value.add_incoming(masked, part)
        return value

    def store(value, ptr, mask):
        whole, part, joined = split()
        builder.position_at_end(whole)
        builder.store(value, ptr, align=4)
        builder.branch(joined)
        builder.position_at_end(part)
        builder.call(masked_store, [value, ptr, ir.Constant(i32, 4), mask])
        builder.branch(joined)
        builder.position_at_end(joined)

    for kind, block in cases.items():
        builder.position_at_end(block)
        head = fn.append_basic_block("post.row")
        body = fn.append_basic_block("post.kept")
        step = fn.append_basic_block("post.next")
        builder.branch(head)
        builder.position_at_end(head)
        i = builder.phi(i64)
        i.add_incoming(ir.Constant(i64, 0), block)
        builder.cbranch(builder.icmp_signed("<", i, ir.Constant(i64, n_rows)), step, done)
        builder.position_at_end(step)
        offset = builder.load(builder.gep(row_at, [i]))
        following = builder.add(i, ir.Constant(i64, 1))
        builder.cbranch(builder.icmp_signed(">=", offset, ir.Constant(i64, 0)), body, head)
        i.add_incoming(following, step)
        builder.position_at_end(body)
        for v in range(n_vec):
            byte = builder.mul(builder.add(offset, ir.Constant(i64, v * LANES)),
                               ir.Constant(i64, 4))  # fmt: skip
            ptr = builder.inttoptr(builder.add(out, byte), vec.as_pointer())
            value = _activation(builder, kind, load(ptr, masks[v]), slope)
            store(value, ptr, masks[v])
        i.add_incoming(following, builder.block)
        builder.branch(head)
    builder.position_at_end(done)


def _epilogue(builder, acc, n_vec, rows, out, res, bias, nk, lo, hi):
    """``acc`` (rows of ``n_vec`` vectors) plus bias (and residual), clamped, to the rows
    at ``rows``. Four copies of the store, by full or partial panel and with or without a
    residual, so that no test is left inside them."""
    i32, i64 = ir.IntType(32), ir.IntType(64)
    vec = ir.VectorType(ir.FloatType(), LANES)
    vptr = vec.as_pointer()
    masked_load, masked_store = _masked_ops(builder)
    zeros = ir.Constant(vec, [0.0] * LANES)
    lo, hi = _splat(builder, lo), _splat(builder, hi)
    row_at = builder.inttoptr(rows, i64.as_pointer())
    n_rows = len(acc) // n_vec
    offsets = [builder.load(builder.gep(row_at, [ir.Constant(i64, i)])) for i in range(n_rows)]
    masks = _lane_masks(builder, nk, n_vec)

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
    full = builder.icmp_signed("==", nk, ir.Constant(i64, n_vec * LANES))
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
        biases = [load(at(bias, ir.Constant(i64, 0), v), v, masked) for v in range(n_vec)]
        for i in range(n_rows):
            keep = fn.append_basic_block("tile.row")
            after = fn.append_basic_block("tile.next_row")
            builder.cbranch(builder.icmp_signed(">=", offsets[i], ir.Constant(i64, 0)), keep,
                            after)  # fmt: skip
            builder.position_at_end(keep)
            for v in range(n_vec):
                value = builder.fadd(acc[i * n_vec + v], biases[v])
                if residual:
                    value = builder.fadd(value, load(at(res, offsets[i], v), v, masked))
                value = builder.select(builder.fcmp_ordered("<", value, lo), lo, value)
                value = builder.select(builder.fcmp_ordered(">", value, hi), hi, value)
                store(value, at(out, offsets[i], v), v, masked)
            builder.branch(after)
            builder.position_at_end(after)
        builder.branch(exit_block)
    builder.position_at_end(exit_block)


#: Pixels of ``dw_tile_small``: the one or two border columns of a row.
DW_SMALL = 4
#: Channel vectors of a depthwise tile, and its channels: NV vectors, as in the micro-kernel's
#: tile, so that MR x DW_NV accumulators take the registers that tile's take (12 of 16 with
#: AVX2, 24 of 32 with AVX-512). With one vector per tile an 8-lane tile did a quarter of a
#: 16-lane tile's work for the same work around it (its pixels' addresses, the epilogue, each
#: border column's patch). Eight depthwise shapes of MobileNetV2 and EfficientNet-B0 (Zen 4,
#: one thread) with both this and ``_dw_sums``' plain loads: 1739 -> 1385 us with AVX2 code,
#: 1317 -> 1158 us with AVX-512 code (docs/performance.md, "Depthwise and activations with
#: AVX2 code").
DW_NV = NV
DW_CH = DW_NV * LANES


def _dw_tile(pixels):
    """``dw_tile_out`` for tiles of ``pixels`` output pixels."""

    def dw_tile(typingctx, kh, kw, a, step, col_step, row_step, w, w_tap, count, rows, out, res,
                bias, nk, lo, hi, post, slope):  # fmt: skip
        return _dw_signature, lambda context, builder, sig, args: _dw_codegen(
            context, builder, args, pixels
        )

    return intrinsic(dw_tile)


_dw_signature = types.void(*([types.intp] * 14), types.float32, types.float32, types.intp,
                           types.float32)  # fmt: skip


def _dw_sums(builder, nk, loop):
    """``loop(load)``'s accumulators, ``load(address, v)`` giving vector v (LANES floats from
    ``address + v * LANES * 4``) of the DW_CH channels at ``address``: plain loads where
    ``nk`` is DW_CH, else loads masked to the first ``nk`` channels (two copies of the loop,
    one taken per call). With AVX2 a masked load holds its mask in one of the 16 registers
    and cannot be an operand of the multiply-add, as a plain load can. Full channel blocks
    are the common case (MobileNet's and EfficientNet's channels are multiples of 16 or 8);
    on eight of their shapes (Zen 4, one thread, two-vector tiles) masked loads only took
    1528 us with AVX2 code against 1385 us with this, 1329 against 1158 us with AVX-512 code
    (where two vectors of masked loads spilled on 5x5 stride-2 tiles)."""
    i32, i64 = ir.IntType(32), ir.IntType(64)
    vec = ir.VectorType(ir.FloatType(), LANES)
    masked_load, _ = _masked_ops(builder)
    masks = _lane_masks(builder, nk, DW_NV)
    zeros = _vconst(0.0)

    def at(address, v):
        shifted = builder.add(address, ir.Constant(i64, v * LANES * 4)) if v else address
        return builder.inttoptr(shifted, vec.as_pointer())

    def plain(address, v):
        return builder.load(at(address, v), align=4)

    def masked(address, v):
        return builder.call(masked_load, [at(address, v), ir.Constant(i32, 4), masks[v], zeros])

    fn = builder.function
    full, partial, joined = (fn.append_basic_block(f"dw.{part}")
                             for part in ("full", "partial", "join"))  # fmt: skip
    builder.cbranch(builder.icmp_signed("==", nk, ir.Constant(i64, DW_CH)), full, partial)
    ends = []
    for block, load in ((full, plain), (partial, masked)):
        builder.position_at_end(block)
        ends.append((loop(load), builder.block))
        builder.branch(joined)
    builder.position_at_end(joined)
    sums = []
    for j in range(len(ends[0][0])):
        phi = builder.phi(vec)
        for accs, end in ends:
            phi.add_incoming(accs[j], end)
        sums.append(phi)
    return sums


def _dw_codegen(context, builder, args, pixels):
    """A depthwise convolution's ``pixels`` output pixels x DW_CH channels (DW_NV vectors),
    with ``conv_tile_out``'s epilogue (``rows``, ``out``, ``res``, ``bias``, ``nk``, ``lo``,
    ``hi``, ``post``, ``slope`` as there, DW_NV vectors per row). Pixel i, tap (ky, kx) reads
    the DW_CH floats at ``a + min(i, count - 1) * step + ky * row_step + kx * col_step`` and
    multiplies them with those at ``w + (ky * kw + kx) * w_tap``: strides and dilations are
    the caller's, so the same code reads the input in place or a zero-padded patch of it.
    Loads are masked to ``nk`` channels where it is short of DW_CH (``_dw_sums``). Addresses
    and steps in bytes."""
    kh, kw, a, step, col_step, row_step, w, w_tap, count, rows, out, res, bias, nk = args[:14]
    lo, hi, post, slope = args[14:]
    vec = ir.VectorType(ir.FloatType(), LANES)
    fma = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vec, [vec, vec, vec]), f"llvm.fma.v{LANES}f32"
    )
    pixel_at = _pixel_addresses(builder, a, step, count, pixels)

    def enter(ky):  # one kernel row: its input row's offset, its first tap
        return builder.mul(ky, row_step), builder.mul(ky, kw)

    def tap(state, kx, acc, load):  # one tap: its weights times every pixel's input
        row_offset, tap_base = state
        at = builder.add(w, builder.mul(builder.add(tap_base, kx), w_tap))
        weights = [load(at, v) for v in range(DW_NV)]
        offset = builder.add(row_offset, builder.mul(kx, col_step))
        new = []
        for i in range(pixels):
            address = builder.add(pixel_at[i], offset)
            for v in range(DW_NV):
                new.append(builder.call(fma, [load(address, v), weights[v], acc[i * DW_NV + v]]))
        return new

    def loop(load):  # every tap, through ``load``
        zeros = [_vconst(0.0)] * (pixels * DW_NV)
        return _loop_nest(builder, kh, kw, zeros, enter, lambda *at: tap(*at, load), "dw")

    y_acc = _dw_sums(builder, nk, loop)
    _epilogue(builder, y_acc, DW_NV, rows, out, res, bias, nk, lo, hi)
    _post_activation(builder, DW_NV, rows, out, nk, post, slope, pixels)
    return context.get_dummy_value()


#: A depthwise tile of MR pixels (``_dw_codegen``), and a small one for border columns.
dw_tile_out = _dw_tile(MR)
dw_tile_small = _dw_tile(DW_SMALL)


def _dw_slide_codegen(context, builder, args, kw, sw, dw):
    """A tile of MR pixels whose kernel width ``kw``, stride ``sw`` and dilation ``dw`` are
    known here: per kernel row, each input column the tile reads is loaded once and
    multiplied into every pixel that reads it with the row's ``kw`` weight vectors, which
    stay in registers. A 3x3 stride-1 tile of 12 pixels then loads 17 vectors per kernel row
    instead of 39, and holds no address per pixel (those spilled to the stack: a load of an
    address before each load of an input).

    Pixel i reads input column ``col0 + i * sw + kx * dw`` at ``a + i * step + kx * col_step``
    (plus ``ky * row_step``), as ``dw_tile_out`` does, except that the first and last
    DW_EDGE columns of the tile's span read the DW_CH zeros at ``zero`` instead where they
    lie outside the image's width (``0 .. width - 1``): a row's first and last tiles then
    read the image in place, with no padded copy. The caller sees that no other column is
    outside (extents.dw_slide_fits). A test per column cost a third of the tile's time
    (56x56x144: 154 -> 209 us), a test on four columns little."""
    kh, _, a, step, col_step, row_step, w, w_tap, count, rows, out, res, bias, nk = args[:14]
    lo, hi, post, slope, col0, width, zero = args[14:]
    i64 = ir.IntType(64)
    vec = ir.VectorType(ir.FloatType(), LANES)
    fma = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vec, [vec, vec, vec]), f"llvm.fma.v{LANES}f32"
    )
    # input column j = i * sw + kx * dw: its first (pixel, tap), and every pixel that reads it
    readers: dict[int, list] = {}
    for i in range(MR):
        for kx in range(kw):
            readers.setdefault(i * sw + kx * dw, []).append((i, kx))
    span = max(readers) + 1
    inside = {j: builder.icmp_unsigned("<", builder.add(col0, ir.Constant(i64, j)), width)
              for j in readers if j < DW_EDGE or j >= span - DW_EDGE}  # fmt: skip

    def enter(ky, load):  # one kernel row: its input row's address, its kw x DW_NV weights
        row = builder.add(a, builder.mul(ky, row_step))
        first = builder.mul(ky, ir.Constant(i64, kw))
        taps = []
        for kx in range(kw):
            at = builder.add(w, builder.mul(builder.add(first, ir.Constant(i64, kx)), w_tap))
            taps.append([load(at, v) for v in range(DW_NV)])
        return row, taps

    def kernel_row(state, _, acc, load):
        row, taps = state
        acc = list(acc)
        for j in sorted(readers):
            i0, kx0 = readers[j][0]
            offset = builder.add(builder.mul(ir.Constant(i64, i0), step),
                                 builder.mul(ir.Constant(i64, kx0), col_step))  # fmt: skip
            address = builder.add(row, offset)
            if j in inside:
                address = builder.select(inside[j], address, zero)
            for v in range(DW_NV):
                value = load(address, v)
                for i, kx in readers[j]:
                    k = i * DW_NV + v
                    acc[k] = builder.call(fma, [value, taps[kx][v], acc[k]])
        return acc

    def loop(load):  # every kernel row, through ``load``
        zeros = [_vconst(0.0)] * (MR * DW_NV)
        return _loop_nest(builder, kh, ir.Constant(i64, 1), zeros, lambda ky: enter(ky, load),
                          lambda *at: kernel_row(*at, load), "dws")  # fmt: skip

    y_acc = _dw_sums(builder, nk, loop)
    _epilogue(builder, y_acc, DW_NV, rows, out, res, bias, nk, lo, hi)
    _post_activation(builder, DW_NV, rows, out, nk, post, slope, MR)
    return context.get_dummy_value()


#: Columns at each end of a ``dw_slide_*`` tile's span that may lie outside the image (a
#: padding of up to 2: 3x3 and 5x5 windows padded to keep the size). None with AVX2 code:
#: with 16 registers the tests spilled, and a tile of 6 pixels has a test on half its
#: columns (MobileNetV2's depthwise steps, Zen 4, one thread: 2.06 ms with the border columns
#: from a padded copy, 2.54 ms with the tests); its rows run the border columns as small
#: tiles from a padded copy, as before (depthwise._dw_items).
DW_EDGE = 2 if LANES == 16 else 0
_dw_slide_signature = types.void(*_dw_signature.args, types.intp, types.intp, types.intp)


def _dw_slide_tile(kw, sw, dw):
    """``_dw_slide_codegen`` for one kernel width, stride and dilation: ``dw_tile_out``'s
    arguments (the ``kw`` argument ignored, ``count`` unused: the rows past it are -1) and
    then ``col0``, ``width`` and ``zero``."""

    def dw_slide(typingctx, kh, kw_, a, step, col_step, row_step, w, w_tap, count, rows, out,
                 res, bias, nk, lo, hi, post, slope, col0, width, zero):  # fmt: skip
        return _dw_slide_signature, lambda context, builder, sig, args: _dw_slide_codegen(
            context, builder, args, kw, sw, dw
        )

    return intrinsic(dw_slide)


#: Full depthwise tiles for the common windows (3x3 and 5x5, stride 1 or 2, no dilation).
dw_slide_3s1 = _dw_slide_tile(3, 1, 1)
dw_slide_3s2 = _dw_slide_tile(3, 2, 1)
dw_slide_5s1 = _dw_slide_tile(5, 1, 1)
dw_slide_5s2 = _dw_slide_tile(5, 2, 1)


@intrinsic
def copy_lanes(typingctx, dst, src, nk):
    """The DW_CH floats at address ``dst`` = the first ``nk`` at ``src`` (masked loads:
    nothing past them is read), zeros after them; ``src`` 0 for zeros only. A depthwise
    tile's channels of one pixel: the depthwise border patches, which scalar loops filled
    slower than their tile's multiply-adds took."""
    sig = types.void(types.intp, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        dst, src, nk = args
        i32, i64 = ir.IntType(32), ir.IntType(64)
        vec = ir.VectorType(ir.FloatType(), LANES)
        masked_load, _ = _masked_ops(builder)
        zero = builder.icmp_signed("==", src, ir.Constant(i64, 0))
        safe = builder.select(zero, dst, src)  # an address that can be read; masked off below
        for v, mask in enumerate(_lane_masks(builder, nk, DW_NV)):
            mask = builder.select(zero, ir.Constant(mask.type, [0] * LANES), mask)
            offset = ir.Constant(i64, v * LANES * 4)
            value = builder.call(
                masked_load,
                [builder.inttoptr(builder.add(safe, offset), vec.as_pointer()),
                 ir.Constant(i32, 4), mask, _vconst(0.0)],
            )  # fmt: skip
            builder.store(value, builder.inttoptr(builder.add(dst, offset), vec.as_pointer()),
                          align=4)  # fmt: skip
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def prefetch_lines(typingctx, start, end):
    """Hint the cache lines of bytes ``start`` .. ``end - 1`` into L2 (``prefetcht1``, one
    per 64 bytes): a depthwise run's output pixels before its tiles store into them. A hint
    reads nothing and cannot fault, whatever the address."""
    sig = types.void(types.intp, types.intp)

    def codegen(context, builder, signature, args):
        start, end = args
        i8p = ir.IntType(8).as_pointer()
        i32, i64 = ir.IntType(32), ir.IntType(64)
        hint = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0"
        )
        flags = [ir.Constant(i32, 0), ir.Constant(i32, 2), ir.Constant(i32, 1)]  # read, L2, data
        lines = cgutils.for_range_slice(builder, start, end, ir.Constant(i64, 64), intp=i64)
        with lines as (address, _):
            builder.call(hint, [builder.inttoptr(address, i8p), *flags])
        return context.get_dummy_value()

    return sig, codegen


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
