"""``import cnnc`` stays cheap (the issue's budget: under 0.2 s): the heavy libraries load
only when the work that needs them starts. Checked by what a fresh process has imported, not
by a clock, so that a busy machine cannot fail it and a slow import cannot hide in noise."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import SPECS

#: Imported by none of: ``import cnnc``, the command line's module, loading a network.
HEAVY = ("numba", "llvmlite", "numpy", "scipy", "networkx", "dask", "onnx", "torch")

PROBE = r"""
import json, sys
import cnnc, cnnc.cli
before_load = sorted({m.split(".")[0] for m in sys.modules})
cnnc.load(sys.argv[1], network="resnet18")
after_load = sorted({m.split(".")[0] for m in sys.modules})
print(json.dumps({"import": before_load, "load": after_load}))
"""


def _imported(tmp_path) -> dict:
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path))
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(SPECS / "resnet.cnn")],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_and_load_leave_the_heavy_libraries_unloaded(tmp_path):
    got = _imported(tmp_path)
    for moment in ("import", "load"):
        loaded = sorted(set(HEAVY) & set(got[moment]))
        assert not loaded, f"{moment}: {loaded} imported"


#: The CPU backend started in a fresh process (Numba's registries loaded, as for a first
#: kernel), then a Numba function of the host's own that calls ``np.dot`` through SciPy's BLAS.
BACKEND_PROBE = r"""
import json, sys
import numpy as np
from numba import njit
from cnnc.runtime.backends.cpu import CpuBackend, registries

CpuBackend()
started = {m: m in sys.modules for m in ("numba.np.arraymath", "scipy.linalg")}
import numba.np.arraymath as arraymath, numba.np.linalg as linalg

@njit
def dot(a, b):
    return np.dot(a, b)

x = np.arange(4.0)
print(json.dumps({
    "started": started, "have_blas": arraymath._HAVE_BLAS,
    "present": registries.scipy_blas_present(),
    "restored": arraymath.ensure_blas is linalg.ensure_blas is linalg.__dict__["ensure_blas"]
    and linalg.ensure_blas.__module__ == "numba.np.linalg",
    "dot": dot(x, x), "scipy.linalg after dot": "scipy.linalg" in sys.modules,
}))
"""


def test_the_cpu_backend_loads_numba_without_scipy_linalg(tmp_path):
    """Numba's registries load when the CPU backend starts, without ``scipy.linalg`` (0.15 s
    of a warm run: registries.py), and leave Numba as it would have been: BLAS found, its own
    ``ensure_blas`` back in place, and a host's ``np.dot`` compiling through SciPy's BLAS."""
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path))
    out = subprocess.run(
        [sys.executable, "-c", BACKEND_PROBE], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["started"] == {"numba.np.arraymath": True, "scipy.linalg": False}
    assert got["present"] and got["have_blas"] and got["restored"]
    assert got["dot"] == 14.0 and got["scipy.linalg after dot"]
