"""Cold start: ``import cnnc``, then a first and a second ``cnnc run`` on an empty cache.

Every step runs in a fresh process with ``$XDG_CACHE_HOME`` pointed at an empty temporary
folder, so that both of cnnc's caches start empty: compiled kernels
(``<cache>/cnnc/numba/<digest>``, runtime/backends/cpu/kernel_cache.py) and tuning choices
(``<cache>/cnnc/tune``). ``NUMBA_CACHE_DIR`` is removed from the children's environment (it
would move the kernels elsewhere). The first run compiles the kernels the network needs and
the second loads them from the folder the first filled. Each row gives the wall time from
starting the process to its end, as ``time cnnc run ...`` counts it (the command runs as
the command line runs it, and ends as it does: cli._exit_now), then to the end of the
command (before the interpreter's exit; the figure this script gave before), the command's
CPU time (all threads), the Numba functions compiled (cnnc's own kernels, then Numba's
internal implementations they needed) and the kernels loaded from the disk cache, with the
time those loads took.

    python benchmarks/cold_start.py                       # ResNet-18, the issue's figure
    python benchmarks/cold_start.py --repeat 3 --json cold.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Runs the command line in-process and writes what happened to the file named in argv[1]:
#: counting hooks on Numba's compile event and on its disk cache's loads, nothing else.
DRIVER = r"""
import json, resource, sys, time
from numba.core import caching, ccallback, event

compiled, loaded = [], []


class Compiles(event.Listener):
    def on_start(self, ev):
        pass

    def on_end(self, ev):
        f = ev.data["dispatcher"].py_func
        compiled.append(f"{f.__module__}.{f.__qualname__}")


event.register("numba:compile", Compiles())
_uncached = ccallback.CFunc._compile_uncached


def compile_uncached(self):  # C functions (cfunc) compile outside the dispatchers' event
    f = self._pyfunc
    compiled.append(f"{f.__module__}.{f.__qualname__}")
    return _uncached(self)


ccallback.CFunc._compile_uncached = compile_uncached
_load = caching.Cache.load_overload


def load_overload(self, sig, target_context):
    t0 = time.perf_counter()
    target_context.refresh()  # Numba's typing registries, loaded once: timed apart
    t1 = time.perf_counter()
    found = _load(self, sig, target_context)
    if found is not None:
        name = getattr(getattr(self, "_py_func", None), "__qualname__", self._name)
        loaded.append([name, time.perf_counter() - t1, t1 - t0])
    return found


caching.Cache.load_overload = load_overload
from cnnc import cli

code = cli.main(sys.argv[2:])
end = time.time()
usage = resource.getrusage(resource.RUSAGE_SELF)
own = [name for name in compiled if name.startswith("cnnc.")]
Path = __import__("pathlib").Path
Path(sys.argv[1]).write_text(json.dumps({
    "code": code, "end": end, "cpu_s": usage.ru_utime + usage.ru_stime,
    "compiled_kernels": len(own), "compiled_numba_internals": len(compiled) - len(own),
    "compiled": own, "loaded_kernels": len(loaded),
    "load_s": sum(t for _, t, _ in loaded), "registries_s": sum(r for _, _, r in loaded),
    "loaded": loaded,
}))
ending = getattr(cli, "_exit_now", None)  # the command line's end (versions that have it)
if ending is not None:
    ending(code)
"""


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


def instruction_set() -> str:
    try:
        flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "")
    except OSError:
        return "unknown"
    return "AVX-512" if " avx512f" in flags else "AVX2" if " avx2" in flags else "SSE"


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def child_env(cache: str) -> dict:
    """The caller's environment with both caches in ``cache`` and Python's bytecode caches
    on (an installed package has its ``.pyc`` files; ``PYTHONDONTWRITEBYTECODE`` would
    compile cnnc's sources in every process: 0.1-0.2 s)."""
    env = dict(os.environ, XDG_CACHE_HOME=cache)
    for name in (
        "NUMBA_CACHE_DIR",
        "CNNC_TUNE",
        "CNNC_ALGORITHM",
        "CNNC_CHECK_BOUNDS",
        "PYTHONDONTWRITEBYTECODE",
    ):
        env.pop(name, None)
    return env


def compile_bytecode(env: dict) -> None:
    """cnnc's ``.pyc`` files, as an install writes them (no kernel is compiled)."""
    import cnnc

    package = Path(cnnc.__file__).resolve().parent
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "-x", r"/(tests|benchmarks|examples)/",
         str(package)],
        env=env, capture_output=True, check=False,
    )  # fmt: skip


def timed_import(env: dict) -> dict:
    """``import cnnc`` in a fresh interpreter (its wall and CPU time, startup included), and
    whether it imported Numba."""
    code = (
        "import resource, sys, time, json; import cnnc; u = resource.getrusage(0); "
        "print(json.dumps({'end': time.time(), 'cpu_s': u.ru_utime + u.ru_stime, "
        "'numba': 'numba' in sys.modules}))"
    )
    start = time.time()
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    return {"wall_s": got["end"] - start, "cpu_s": got["cpu_s"], "imports_numba": got["numba"]}


def timed_run(env: dict, command: list, report: Path) -> dict:
    """One ``cnnc`` command in a fresh process under DRIVER: ``wall_s`` until the process
    ended (as ``time cnnc ...`` counts, the interpreter's exit included), ``command_s`` until
    the command returned."""
    start = time.time()
    out = subprocess.run(
        [sys.executable, "-c", DRIVER, str(report), *command],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0 or not report.exists():
        raise SystemExit(f"cold_start: the run failed:\n{out.stderr[-3000:]}")
    got = json.loads(report.read_text())
    report.unlink()
    if got["code"] != 0:
        raise SystemExit(f"cold_start: cnnc exited with {got['code']}:\n{out.stderr[-3000:]}")
    return {"wall_s": time.time() - start, "command_s": got.pop("end") - start, **got}


def one_round(command: list) -> dict:
    """import, first run, second run, with caches that start empty."""
    with tempfile.TemporaryDirectory(prefix="cnnc-cold-") as cache:
        env = child_env(cache)
        compile_bytecode(env)
        report = Path(cache) / "report.json"
        return {
            "import": timed_import(env),
            "first run": timed_run(env, command, report),
            "second run": timed_run(env, command, report),
        }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(ROOT / "specs" / "resnet.cnn"))
    parser.add_argument("--network", default="resnet18")
    parser.add_argument("--repeat", type=int, default=1, help="rounds, each on empty caches")
    parser.add_argument("--json", help="also write the rounds to this JSON file")
    parser.add_argument("--verbose", action="store_true", help="list the kernels compiled")
    args = parser.parse_args()
    command = ["run", args.spec, "--network", args.network]
    print(f"machine: {cpu_model()}, {instruction_set()}, {os.cpu_count()} cores")
    print(f"command: cnnc {' '.join(command)}")
    rounds = []
    for _ in range(args.repeat):
        before = load_average()
        result = one_round(command)
        result["load_average"] = [before, load_average()]
        rounds.append(result)
        print(f"\nload average before / after: {before} / {load_average()}")
        print(
            f"{'step':12s} {'wall s':>7s} {'command':>7s} {'CPU s':>7s} {'compiled':>9s} "
            f"{'loaded':>7s}"
        )
        for step, r in result.items():
            if step == "load_average":
                continue
            compiled = (
                f"{r['compiled_kernels']}+{r['compiled_numba_internals']}"
                if "compiled" in r
                else "-"
            )
            loaded = (
                f"{r['loaded_kernels']} ({r['load_s']:.2f} s + {r['registries_s']:.2f} s)"
                if "loaded" in r
                else "-"
            )
            until = f"{r['command_s']:7.2f}" if "command_s" in r else f"{'-':>7s}"
            print(
                f"{step:12s} {r['wall_s']:7.2f} {until} {r['cpu_s']:7.2f} {compiled:>9s} {loaded}"
            )
        print("compiled: cnnc's kernels + Numba's internal implementations they needed")
        print("loaded: kernels from the disk cache (their load time + Numba's registries)")
        if args.verbose:
            for step in ("first run", "second run"):
                print(f"{step}: compiled {result[step]['compiled']}")
                loads = [(n, round(t, 3)) for n, t, _ in result[step]["loaded"]]
                print(f"{step}: loaded {loads}")
        if result["import"]["imports_numba"]:
            print("note: `import cnnc` imported Numba")
    if args.json:
        meta = {"cpu": cpu_model(), "instruction_set": instruction_set(), "command": command}
        Path(args.json).write_text(json.dumps({**meta, "rounds": rounds}, indent=2))


if __name__ == "__main__":
    main()
