"""cnnc is a library: importing it and running a network leave the host process as they found
it (environment, Numba's cache folder, NumPy's namespace, BLAS's thread count), while cnnc's
own kernels still cache in cnnc's folder and its BLAS calls still run on one thread."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np

import cnnc
from cnnc.runtime.backends.cpu import CpuBackend, blas

# A host application: its own SciPy BLAS on two threads, its own cached Numba function; then
# cnnc imported and run on the CPU (a grouped convolution takes the BLAS path), and its CUDA
# backend imported under a NumPy without `row_stack` (as NumPy 2.5, which removed it).
HOST = r"""
import ctypes, json, os, sys, tempfile
from pathlib import Path

import numba
import numpy as np
import scipy.linalg
from numba.core import config

libs = Path(scipy.__file__).resolve().parent.parent / "scipy.libs"
blas = ctypes.CDLL(str(sorted(libs.glob("libscipy_openblas*.so*"))[0]))
blas.scipy_openblas_set_num_threads(2)

own = Path(tempfile.mkdtemp()) / "host_code.py"
own.write_text("from numba import njit\n@njit(cache=True)\ndef twice(x):\n    return 2 * x\n")
sys.path.insert(0, str(own.parent))
import host_code


def state():
    return {
        "environ": dict(os.environ),
        "numba_cache_dir": config.CACHE_DIR,
        "row_stack": hasattr(np, "row_stack"),
        "blas_threads": blas.scipy_openblas_get_num_threads(),
    }


before = state()
import cnnc
from cnnc.runtime.backends.cpu import conv, kernel_cache

moments = {"import": (before, state())}
net = cnnc.load("network t(x: 4x9x9) { return x | conv(8, k=3, g=2) | relu | gap }")
cnnc.run(net, {"x": np.ones((2, 4, 9, 9), np.float32)})
moments["run"] = (before, state())
if sys.argv[1] == "cuda":  # as under NumPy 2.5, which numba-cuda 0.30 fails without help on
    if "row_stack" in vars(np):
        del np.row_stack
        np.__all__.remove("row_stack")
    without = state()
    import cnnc.runtime.backends.cuda
    moments["cuda"] = (without, state())
host_code.twice(1)
print(json.dumps({
    "moments": moments,
    "host_cache": host_code.twice._cache.cache_path,
    "cnnc_cache": conv.conv._cache.cache_path,
    "cnnc_folder": str(kernel_cache.kernel_cache_dir()),
}))
"""

UNSET = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "OPENBLAS_NUM_THREADS", "NUMBA_CACHE_DIR")


def test_import_and_run_leave_the_host_process_unchanged(tmp_path):
    cuda = importlib.util.find_spec("numba_cuda") is not None  # the CUDA part is optional
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    out = subprocess.run(
        [sys.executable, "-c", HOST, "cuda" if cuda else "cpu"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.splitlines()[-1])
    assert set(found["moments"]) == {"import", "run", *(["cuda"] if cuda else [])}
    for moment, (before, after) in found["moments"].items():
        assert before["blas_threads"] == 2 and before["numba_cache_dir"] == ""
        added = set(after["environ"]) - set(before["environ"])
        changed = {k for k in before["environ"] if after["environ"].get(k) != before["environ"][k]}
        assert not added and not changed, (moment, added, changed)
        assert after == before, moment
    # cnnc's kernels in cnnc's folder, the host's function beside its own source
    assert found["cnnc_cache"].startswith(found["cnnc_folder"])
    assert found["host_cache"].endswith("__pycache__")
    assert not found["host_cache"].startswith(found["cnnc_folder"])


def test_numba_cache_dir_of_the_user_holds_cnnc_kernels_too(tmp_path):
    """A user's NUMBA_CACHE_DIR keeps its meaning: every cached function goes there (only
    imported here: nothing is compiled into the folder)."""
    script = (
        "from numba.core import config; from cnnc.runtime.backends.cpu import conv; "
        "print(conv.conv._cache.cache_path); print(config.CACHE_DIR)"
    )
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "users-own")}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    path, folder = out.stdout.split()
    assert folder == env["NUMBA_CACHE_DIR"] and path.startswith(folder)


def test_blas_runs_on_one_thread_during_a_pass_only(monkeypatch):
    """The BLAS thread count is one inside each pass (BLAS threads inside Numba's stall), the
    host's own before and after it, also with passes nested."""
    assert blas._SET_THREADS is not None, "SciPy's OpenBLAS without its thread controls"
    previous = blas._GET_THREADS()
    blas._SET_THREADS(2)
    try:
        seen = []
        run_step = CpuBackend.run_step

        def recording(self, *args):
            seen.append(blas._GET_THREADS())
            return run_step(self, *args)

        monkeypatch.setattr(CpuBackend, "run_step", recording)
        net = cnnc.load("network t(x: 4x6x6) { return x | conv(6, k=3, g=2) | relu }")
        cnnc.run(net, {"x": np.ones((1, 4, 6, 6), np.float32)})
        assert seen and set(seen) == {1}
        assert blas._GET_THREADS() == 2
        with blas.single_threaded():
            with blas.single_threaded():
                assert blas._GET_THREADS() == 1
            assert blas._GET_THREADS() == 1
        assert blas._GET_THREADS() == 2
    finally:
        blas._SET_THREADS(previous)
