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
