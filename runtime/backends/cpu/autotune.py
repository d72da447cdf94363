"""Per-machine choice of each convolution's algorithm and tiling, measured and cached.

The tiling constants of tiling.py were measured on one machine and are wrong on others (an
AVX2 Zen 3 wants other tiles than an AVX-512 Zen 4). So for every convolution shape that is
worth it, the candidates (direct convolution under its default tiling and its neighbours,
Winograd F(2x2) and F(4x4) with a few run lengths) are each timed once on the real buffers,
and the fastest is kept in the user's cache directory, keyed by CPU model, thread count,
instruction-set target, cnnc version and a digest of the kernels' sources (like cuDNN's
benchmark mode). ``cnnc tune FILE`` fills the cache ahead of time.

Each measurement is kept with when it was taken and the machine's load then: one taken on a
busy machine (other processes competing for the cores) is taken again by the next session
that measures on a quiet machine, and one older than MAX_AGE_S in any case.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .. import ALGORITHMS  # noqa: F401 (the policies, by what each runs)
from . import blocked, winograd
from .microkernel import MR, NR
from .tiling import conv_tiling

#: Layers below this many multiply-adds per image keep the default: timing them would cost
#: more than it could save.
MIN_TUNED_MACS = 20_000_000
#: Candidates run this many times after a first (compiling, page-faulting) run, best kept;
#: slow ones (over 20 ms) twice. The best of several resists a shared machine's noise.
TIMED_RUNS = 5
#: A machine is busy when its load average exceeds this many runnable tasks per usable core:
#: measurements taken then competed with other processes for the cores.
BUSY_LOAD_PER_CORE = 1.25
#: Measurements older than this are taken again (a new kernel, firmware or power profile can
#: change what is fastest).
MAX_AGE_S = 30 * 86400


@dataclass(frozen=True)
class Choice:
    """``blas`` (GEMMs through BLAS, conv.py) with (rows per tile, channel blocks);
    ``winograd`` F(m x m, 3x3) with ``a`` = m, ``b`` = tiles per work item and ``c`` =
    output-channel blocks; or ``blocked`` (cnnc's own micro-kernel, blocked.py) with ``a`` =
    tiles per work item and ``b`` = blocks of weight panels."""

    algorithm: str
    a: int
    b: int
    c: int = 1

    def label(self) -> str:
        if self.algorithm == "winograd":
            return f"winograd F{self.a} x{self.b}/{self.c}b"
        if self.algorithm == "blocked":
            return f"own {MR}x{NR} x{self.a}/{self.b}b"
        return f"blas {self.a}r/{self.b}b"


def default_choice(x_shape, out_shape, geometry: dict, threads: int, algorithm: str) -> Choice:
    """The choice without measuring: Winograd F(4x4) when forced and applicable; BLAS under
    tiling.py's policy for grouped layers and for all under the ``blas`` policy; else the
    own micro-kernel: untuned, that is the micro-kernel for ungrouped layers and BLAS for
    grouped ones. Measured on one machine (ResNet and MobileNet shapes, 2 threads,
    docs/performance.md) the micro-kernel beat the BLAS path on 20 of 21 shapes, and came
    within 10-25% of the best Winograd on stride-1 3x3 layers: a guess that measuring
    (``cnnc tune``, ``--tune``) replaces. Winograd is not a default because its kernel takes
    seconds to compile, which a first run on a fresh install should not pay."""
    if algorithm == "winograd" and winograd.applies(**_wino_args(geometry)):
        dilation = geometry["dh"], geometry["dw"]
        return Choice("winograd", 4, _tiles_per_item(x_shape[0], out_shape, 4, 32, threads,
                                                     dilation))  # fmt: skip
    if algorithm != "blas" and blocked.applies(geometry["groups"]):
        return blocked_default(x_shape, out_shape, geometry, threads)
    rows, blocks = conv_tiling(
        x_shape,
        out_shape,
        geometry["kh"],
        geometry["kw"],
        geometry["sh"],
        geometry["sw"],
        geometry["pw"],
        geometry["groups"],
        threads,
    )
    return Choice("blas", rows, blocks)


def candidates(x_shape, out_shape, geometry: dict, threads: int, algorithm: str) -> list[Choice]:
    """What to time for this layer: BLAS's default tiling and its neighbours (twice and half the
    rows, twice and half the channel blocks), the micro-kernel unless ``blas`` is forced, and
    Winograd unless ``direct`` or ``blas`` is."""
    base = default_choice(x_shape, out_shape, geometry, threads, "blas")
    ho, og = out_shape[1], out_shape[3] // geometry["groups"]
    rows, blocks = base.a, base.b
    found = [base]
    for r, b in (
        (min(ho, rows * 2), blocks),
        (max(1, rows // 2), blocks),
        (rows, blocks * 2),
        (rows, max(1, blocks // 2)),
    ):
        if og // b >= 16 and Choice("blas", r, b) not in found:
            found.append(Choice("blas", r, b))
    if algorithm in ("auto", "direct") and blocked.applies(geometry["groups"]):
        found += blocked_candidates(x_shape, out_shape, geometry, threads)
    if algorithm in ("direct", "blas") or not winograd.applies(**_wino_args(geometry)):
        return found
    if algorithm == "winograd":
        found = []
    k_out = out_shape[3]
    dilation = geometry["dh"], geometry["dw"]
    for m in (2, 4):
        total = winograd.tile_count(x_shape[0], *out_shape[1:3], m, *dilation)
        for per_item in (8, 24, 64):
            c = Choice("winograd", m, _tiles_per_item(x_shape[0], out_shape, m, per_item, threads,
                                                      dilation))  # fmt: skip
            if c not in found:
                found.append(c)
        # Few tiles, many channels (ResNet's 14x14 and 7x7 stages): all tiles in one run and
        # the output channels split instead, so that each thread streams its share of the
        # transformed weights once.
        for k_blocks in (threads, 2 * threads, 4 * threads):
            if total <= 64 and k_out // k_blocks >= 32:
                c = Choice("winograd", m, total, k_blocks)
                if c not in found:
                    found.append(c)
    return found


def blocked_default(x_shape, out_shape, geometry: dict, threads: int) -> Choice:
    """Runs of up to 16 tiles, at least two work items per thread; where the tiles are too
    few for that, the weight panels split across the threads as well."""
    tiles = blocked.tile_count(out_shape)
    panels = -(-out_shape[3] // NR)
    blocks = 1
    while tiles * blocks < 2 * threads and blocks * 2 <= panels:
        blocks *= 2
    per_item = max(1, min(16, tiles * blocks // (2 * threads)))
    return Choice("blocked", per_item, blocks)


def blocked_candidates(x_shape, out_shape, geometry: dict, threads: int) -> list[Choice]:
    """The micro-kernel with runs of 4, 16 and 64 tiles and its weight panels in one block
    or split across the threads (few tiles, many channels)."""
    tiles = blocked.tile_count(out_shape)
    panels = -(-out_shape[3] // NR)
    found = []
    for per_item in (4, 16, 64):
        for blocks in (1, threads, 2 * threads):
            if blocks > panels or (blocks > 1 and tiles > 64 * threads):
                continue
            per = max(1, min(per_item, math.ceil(tiles * blocks / (2 * threads))))
            c = Choice("blocked", per, blocks)
            if c not in found:
                found.append(c)
    return found


def _wino_args(g: dict) -> dict:
    return {k: g[k] for k in ("kh", "kw", "sh", "sw", "dh", "dw", "groups")}


def _tiles_per_item(
    n_img: int, out_shape, m: int, wanted: int, threads: int, dilation=(1, 1)
) -> int:
    """``wanted`` tiles per work item, fewer where that would leave a thread idle."""
    total = winograd.tile_count(n_img, out_shape[1], out_shape[2], m, *dilation)
    return max(1, min(wanted, math.ceil(total / threads)))


def worth_tuning(x_shape, out_shape, geometry: dict) -> bool:
    g = geometry
    macs = (
        out_shape[1] * out_shape[2] * out_shape[3] * g["kh"] * g["kw"] * x_shape[3] // g["groups"]
    )
    return macs >= MIN_TUNED_MACS


def measure(run, runs: int | None = None) -> float:
    """Seconds of the fastest of ``runs`` calls of ``run``, after one untimed call."""
    return measure_all([run], runs)[0]


def measure_all(runs_of: list, runs: int | None = None) -> list[float]:
    """Seconds of the fastest of ``runs`` calls of each of ``runs_of``, after one untimed
    call of each, the calls taken in turn (one of each, then again): a burst of another
    process's work then slows one call of every candidate, not all the calls of one. Timed
    one candidate after the other, a burst had made the tuner pick a slower tiling for
    layers of ResNet-18 (layer4's 3x3 stride-2 layer: 0.62 ms chosen on one run, 0.87 on the
    next; 2-core Zen 4 shared with other machines)."""
    slowest = 0.0
    for run in runs_of:
        t0 = time.perf_counter()
        run()
        slowest = max(slowest, time.perf_counter() - t0)
    if runs is None:
        runs = TIMED_RUNS if slowest < 0.02 else min(2, TIMED_RUNS)
    best = [math.inf] * len(runs_of)
    for _ in range(runs):
        for i, run in enumerate(runs_of):
            t0 = time.perf_counter()
            run()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def shape_key(x_shape, out_shape, geometry: dict, has_res: bool, algorithm: str) -> str:
    g = geometry
    return (
        f"{algorithm} {'x'.join(map(str, x_shape))}->{'x'.join(map(str, out_shape))} "
        f"k{g['kh']}x{g['kw']} s{g['sh']}x{g['sw']} p{g['ph']}x{g['pw']} d{g['dh']}x{g['dw']} "
        f"g{g['groups']}{' res' if has_res else ''}"
    )


def machine_key(threads: int, sources: str) -> dict:
    """What a measured choice depends on besides the layer."""
    from .... import __version__

    return {
        "cpu": cpu_model(),
        "threads": threads,
        "target": os.environ.get("NUMBA_CPU_NAME", "host")
        + os.environ.get("NUMBA_CPU_FEATURES", ""),
        "cnnc": __version__,
        "kernels": sources,
    }


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def conditions() -> dict:
    """When a measurement is taken and how loaded the machine is then (the 1-minute load
    average and the cores this process may use)."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # not on a Unix system
        load = 0.0
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return {"measured_at": int(time.time()), "load": round(load, 2), "cores": max(1, cores)}


def load_per_core(entry: dict) -> float:
    try:
        return float(entry.get("load", 0.0)) / max(1, int(entry.get("cores", 1)))
    except (TypeError, ValueError):
        return math.inf


def is_busy(entry: dict) -> bool:
    return load_per_core(entry) > BUSY_LOAD_PER_CORE


def looks_off(entry: dict, now: dict | None = None) -> bool:
    """Whether a cached measurement should be taken again: it does not say when it was
    taken (an older cache), it is older than MAX_AGE_S (or dated in the future), or it was
    taken on a busy machine that is quiet now (at most half the load per core, and not busy)."""
    now = now or conditions()
    when = entry.get("measured_at")
    if isinstance(when, bool) or not isinstance(when, (int, float)):
        return True
    if not 0 <= now["measured_at"] - when <= MAX_AGE_S:
        return True
    quieter = load_per_core(now) <= 0.5 * load_per_core(entry)
    return is_busy(entry) and not is_busy(now) and quieter


class TuneCache:
    """Measured choices of one machine key, in ``<cache>/cnnc/tune/<digest>.json``."""

    def __init__(self, directory: Path, key: dict):
        import hashlib

        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        self.path = directory / f"{digest}.json"
        self.key = key
        self.entries: dict = {}
        try:
            data = json.loads(self.path.read_text())
            if data.get("key") == key:
                self.entries = data.get("choices", {})
        except (OSError, ValueError, AttributeError):
            pass  # none yet, or unreadable: measure again

    def get(self, shape: str, measuring: bool = False) -> Choice | None:
        """The cached choice for ``shape``; where ``measuring`` (a session that may measure),
        None also for a measurement that looks off, so that it is taken again."""
        entry = self.entries.get(shape)
        if not isinstance(entry, dict) or (measuring and looks_off(entry)):
            return None
        try:
            return Choice(
                str(entry["algorithm"]), int(entry["a"]), int(entry["b"]), int(entry.get("c", 1))
            )
        except (KeyError, TypeError, ValueError):
            return None

    def put(self, shape: str, choice: Choice, ms: float, taken: dict | None = None):
        """Keep ``choice`` for ``shape`` with the conditions it was measured in (``taken``,
        from :func:`conditions` before measuring; now where not given)."""
        self.entries[shape] = {**asdict(choice), "ms": round(ms, 4), **(taken or conditions())}
        self.save()

    def get_measurement(self, name: str) -> dict | None:
        """A measured value of the machine (``value``, ``measured_at``, ``load``, ``cores``);
        an older cache's bare number comes without its conditions."""
        entry = self.entries.get(f"machine:{name}")
        if isinstance(entry, (int, float)) and not isinstance(entry, bool):
            return {"value": entry}
        return entry if isinstance(entry, dict) and "value" in entry else None

    def put_measurement(self, name: str, value, taken: dict | None = None):
        self.entries[f"machine:{name}"] = {"value": value, **(taken or conditions())}
        self.save()

    def busy_shapes(self, shapes) -> list[str]:
        """Those of ``shapes`` whose cached choice was measured on a busy machine."""
        entries = [(s, self.entries.get(s)) for s in shapes]
        return [s for s, entry in entries if isinstance(entry, dict) and is_busy(entry)]

    def save(self):
        """Write atomically (a temporary file renamed): concurrent processes never see half a
        file; a cache that cannot be written only costs measuring again next time."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"key": self.key, "choices": self.entries}, indent=1))
            os.replace(tmp, self.path)
        except OSError:
            pass
