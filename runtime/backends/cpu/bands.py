"""Inverted-residual chains in bands of rows: a 1x1 expansion, the depthwise convolution
after it and (where nothing sits between them) the 1x1 projection after that, run band by
band of rows (plan._band_chains finds the chains), so that the expansion's wide output is
read back by the depthwise step while it is still in L2, and the depthwise output by the
projection.

Run one step after the other, the expansion's output (MobileNetV2's 112x112x96: 4.8 MB)
has left L2 by the time the depthwise step reads it, and is written back to memory whole.
Here the expansion writes a band's rows into one buffer of L2's size, reused band after
band, and the depthwise step reads them from it. Bands are sized from the L2 cache's size
(sysfs) and the row's width; a chain whose expansion output fits in the threads' L2 runs as
before. The kernels are the usual ones: a band of rows of an NHWC image is a contiguous
slice, which the 1x1 kernels take as their input and output; the depthwise kernel runs a
range of output rows of the whole image (so its padding stays right). Batch > 1 runs
image by image, each in bands.

What it gains (2-core Zen 4, 1 MiB L2 per core, one thread, CPU time, best of interleaved
runs against the code before, on a machine shared with another process): MobileNetV2
batch 1 8.87 -> 8.67 ms (one process, 60 rounds; its 112x112x96 expansion 0.63 -> 0.49 ms,
its depthwise steps little changed), batch 8 75.1-78.6 -> 68.0 ms, MobileNetV3-Large batch
32 257-262 -> 233-240 ms, EfficientNet-B0 batch 1 14.52 -> 14.46 (its squeeze-and-excitation
blocks band only expansion -> depthwise). Each band is two or three kernel calls, each a
parallel region (an empty depthwise call: 2.3 us on one thread, 0.8 of them Numba's
dispatch): bands of a quarter of L2 ran slower than none at batch 1, and two threads with
one core busy elsewhere pay far more per region (MobileNetV2 batch 8, 2 threads, shared
machine: 110 -> 165 ms). On two threads bands lost on some networks even on a quiet
machine, so whether a chain runs in bands is measured per machine where the backend tunes
and kept in the tuning cache (``_bands_pay``); untuned, bands run on one thread only.
"""

from __future__ import annotations

from time import perf_counter

from . import bounds, conv, depthwise
from .caches import l2_cache_bytes
from .elementwise import run_call

#: The share of the L2 caches of the threads that a band's expansion rows may take: the
#: rest holds the band's input rows, its depthwise and projection rows and the weights.
BAND_SHARE = 0.5


def band_rows(width: int, channels: int, threads: int) -> int:
    """Expansion rows per band: BAND_SHARE of the threads' L2 caches, at least one."""
    return max(1, int(BAND_SHARE * l2_cache_bytes() * threads) // (width * channels * 4))


def chain_key(entries) -> tuple:
    """The key of a chain's bound calls (``CpuBackend.bound_call``)."""
    return ("bands", *(id(e[0]) for e in entries), id(entries[0][2][0]), id(entries[-1][4]))


def run_chain(backend, entries, work, timings=None) -> None:
    """Run a chain's steps (the executor's bound entries: step, arrays, inputs, residual,
    output) in bands, or one after the other where one band holds them (``bind_chain``);
    ``timings`` (a list) gets each step's seconds, its bands' summed."""
    calls = backend.bound_call(chain_key(entries), lambda: bind_chain(backend, entries, work))
    if calls is None:
        for step, arrays, ins, res, out in entries:
            t0 = perf_counter()
            backend.run_step(step, arrays, ins, res, out, work)
            if timings is not None:
                timings.append(perf_counter() - t0)
        return
    seconds = [0.0] * len(entries)
    for which, call in calls:
        t0 = perf_counter()
        run_call(call)
        if timings is not None:
            seconds[which] += perf_counter() - t0
        if bounds.SLOTS[1]:  # checked mode stopped a kernel of this step (bounds.py)
            bounds.raise_fault(entries[which][0].label)
    if timings is not None:
        timings.extend(seconds)


def bind_chain(backend, entries, work=None) -> list | None:
    """The chain's calls in the order they run, each with its step's position in the chain
    (0 expansion, 1 depthwise, 2 projection), or None where it runs as plain steps: one band
    holds the expansion's output, or a step's activation is a pass after its kernel.

    A band is a few whole images where one image's rows fit in a band (``_image_groups``),
    else rows of one image (``_row_bands``). The expansion's rows go to a buffer of a
    band's rows (``band_wide``), which the
    depthwise step reads; the rows the next band reads again (the kernel's overlap) move to
    its front. The expansion's output is then never written whole: a band's rows stay in
    L2, and the widest tensor of the block never goes back to memory. The depthwise rows go
    to the step's output, where the projection reads them (see depthwise.dwconv: a buffer
    of their own made its tiles slower)."""
    (expand, e_arrays, (x,), e_res, wide), (dw, d_arrays, _, d_res, mid) = entries[:2]
    n_img, h, width, _ = x.shape
    c_wide = mid.shape[3]
    a = dw.attrs
    # bands where the expansion's output of the batch cannot stay in the threads' L2: at
    # batch 1 its larger layers, at batch 32 every one (a few images at a time where a band
    # holds them, else each image in bands of rows)
    fits = n_img * h * width * c_wide * 4 <= l2_cache_bytes() * backend.threads
    if fits or backend.algorithm == "blas" or a["mult"] != 1:
        return None
    rows = band_rows(width, c_wide, backend.threads)
    e_choice = conv._choose(backend, expand, e_arrays, x, e_res, wide)
    project = None
    if len(entries) > 2:
        step, p_arrays, _, p_res, p_out = entries[2]
        project = (step, p_arrays, conv._choose(backend, step, p_arrays, mid, p_res, p_out))
    steps = ((expand, e_arrays, e_choice, x, e_res), (dw, d_arrays, d_res, mid), project)
    if rows >= h:  # whole images, as many as a band holds
        calls, label = _image_groups(backend, steps, min(n_img, rows // h), entries)
    else:
        calls, label = _row_bands(backend, steps, rows, entries)
    if any(call[2] is not None or call[0] is depthwise.dwconv_mult for _, call in calls):
        return None
    if not _bands_pay(backend, entries, calls, work):
        return None
    # labelled only now: measuring the steps one by one (``_bands_pay``) labels them too
    for step, arrays, choice in [(expand, e_arrays, e_choice), *([project] if project else [])]:
        conv._keep_only(step, arrays, conv._form(choice))  # one form of the weights kept,
        backend.chosen[id(step)] = choice.label() + " in bands"  # as conv._bind keeps it
    backend.chosen[id(dw)] = label
    return calls


def _bands_pay(backend, entries, calls, work) -> bool:
    """Whether this chain runs faster in bands than step after step on this machine: measured
    where the backend tunes (``cnnc tune``, ``--tune``) and kept in the tuning cache beside
    the convolutions' choices; else what was measured before; else bands on one thread only.

    On one thread bands paid on every network measured (above). On two threads they did not
    always: the expansion's and the depthwise step's work are split between the threads
    differently, so a band's rows are often written into one core's L2 and read from the
    other's, and each band's calls are parallel regions. 2-core Zen 4, two threads, the
    quietest of interleaved runs, bands against none: MobileNetV2 batch 1 4.85-4.99 against
    4.66-4.88 ms, batch 8 35.3-35.5 against 37.4-38.2 ms, MobileNetV3-Large batch 32
    143-147 against 136-141 ms, EfficientNet-B0 batch 1 7.97-8.24 against 8.21-8.30 ms."""
    from . import autotune

    (_, _, (x,), _, _), (dw, *_, mid) = entries[:2]
    _, _, _, res, out = entries[-1]  # the projection's residual, where the chain has one
    a = dw.attrs
    name = "bands:" + ",".join(
        map(str, (*x.shape, *mid.shape, *out.shape, len(entries), res.size > 0,
                  a["kh"], a["kw"], a["sh"], a["sw"], a["ph"], a["pw"], a["dh"], a["dw"]))
    )  # fmt: skip
    cache = backend.tune_cache()
    kept = cache.get_measurement(name)
    if kept is not None and not backend.retune:
        if not (backend.tune and autotune.looks_off(kept)):
            return bool(kept["value"])
    if not backend.tune:
        return backend.threads == 1
    taken = autotune.conditions()

    def banded():
        for _, call in calls:
            run_call(call)

    def stepwise():  # the chain's inputs stay live across it, so it may run again
        for step, arrays, ins, res, out in entries:
            backend.run_step(step, arrays, ins, res, out, work)

    in_bands, step_by_step = autotune.measure_all([banded, stepwise])
    pays = in_bands < step_by_step
    cache.put_measurement(name, pays, taken)
    return pays


def _image_groups(backend, steps, per_band, entries) -> tuple:
    """The calls of whole images ``per_band`` at a time, the expansion's output in a buffer
    of that many images."""
    (expand, e_arrays, e_choice, x, e_res), (dw, d_arrays, d_res, mid), project = steps
    n_img, h, width, _ = x.shape
    c_wide = mid.shape[3]
    held = backend.buffer("band_wide", per_band * h * width * c_wide)
    held = held.reshape(per_band, h, width, c_wide)
    calls = []
    for n0 in range(0, n_img, per_band):
        images = slice(n0, min(n_img, n0 + per_band))
        wide = held[: images.stop - n0]
        calls.append((0, _conv(backend, e_choice, expand, e_arrays, x[images], e_res, wide)))
        calls.append((1, depthwise.dwconv_call(backend, dw.attrs, d_arrays, wide, d_res,
                                               mid[images])))  # fmt: skip
        if project is not None:
            step, p_arrays, p_choice = project
            _, _, _, res, out = entries[2]
            res = res[images] if res.size else res
            calls.append((2, _conv(backend, p_choice, step, p_arrays, mid[images], res,
                                   out[images])))  # fmt: skip
    return calls, f"bands of {per_band} images"


def _row_bands(backend, steps, rows, entries) -> tuple:
    """The calls of each image in bands of about ``rows`` expansion rows."""
    (expand, e_arrays, e_choice, x, e_res), (dw, d_arrays, d_res, mid), project = steps
    n_img, h, width, _ = x.shape
    _, ho, _, c_wide = mid.shape
    a = dw.attrs
    sh, ph, kh, dh = a["sh"], a["ph"], a["kh"], a["dh"]
    per_band = max(1, rows // sh)
    cap = (per_band - 1) * sh + (kh - 1) * dh + 1  # input rows a band reads at most
    wide_rows = backend.buffer("band_wide", cap * width * c_wide).reshape(1, cap, width, c_wide)
    calls = []
    for n in range(n_img):
        held = done = 0  # ``wide_rows`` holds image rows ``held .. done - 1``
        for o0 in range(0, ho, per_band):
            o1 = min(ho, o0 + per_band)
            hi = min(h, (o1 - 1) * sh - ph + (kh - 1) * dh + 1)  # rows this band reads
            lo = min(hi, max(0, o0 * sh - ph))
            if lo >= done:  # nothing held is read again
                held = done = lo
            elif lo > held:  # move the rows read again to the front
                calls.append((1, (_move_rows, (wide_rows, lo - held, done - lo), None)))
                held = lo
            if hi > done:
                into = wide_rows[:, done - held : hi - held]
                call = _conv(
                    backend, e_choice, expand, e_arrays, x[n : n + 1, done:hi], e_res, into
                )
                calls.append((0, call))
                done = hi
            held_rows = wide_rows[:, : done - held]
            band = (h, held, o0, o1)
            call = depthwise.dwconv_call(
                backend, a, d_arrays, held_rows, d_res, mid[n : n + 1], band
            )
            calls.append((1, call))
            if project is not None:
                step, p_arrays, p_choice = project
                _, _, _, p_res, p_out = entries[2]
                rows_of = (slice(n, n + 1), slice(o0, o1))
                res = p_res[rows_of] if p_res.size else p_res
                call = _conv(backend, p_choice, step, p_arrays, mid[rows_of], res, p_out[rows_of])
                calls.append((2, call))
    return calls, f"{-(-ho // per_band)} bands"


def _move_rows(buffer, first, count):
    """Rows ``first .. first + count - 1`` of ``buffer`` (1, rows, W, C) to its front."""
    buffer[:, :count] = buffer[:, first : first + count]


def _conv(backend, choice, step, arrays, x, res, out):
    """The call of the 1x1 convolution ``step`` by ``choice`` on these rows."""
    return conv._bind_choice(backend, choice, arrays, x, res, out, step.attrs)
