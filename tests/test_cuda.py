"""The CUDA backend without a GPU: kernels under the simulator, and compiled for sm_90."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cnnc.compiler.ops import OPS
from conftest import require, run_counts

HERE = Path(__file__).resolve().parent


def test_cuda_kernels_match_torch_under_the_simulator():
    """tests/cuda_sim: forward kernels against PyTorch's outputs, backward kernels against
    torch.autograd."""
    require("numba.cuda")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", CNNC_CUDA_TILE="4")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(HERE / "cuda_sim")],
        env=env,
        capture_output=True,
        text=True,
        timeout=2700,
    )
    tail = result.stdout[-6000:] + result.stderr[-3000:]
    assert result.returncode == 0, tail
    counts = run_counts(result.stdout)
    # none skipped; the heavier cases are deselected (marked slow), as in the main run
    assert set(counts) <= {"passed", "deselected"} and counts["passed"] >= len(OPS), tail


def test_backward_kernels_read_what_the_cpus_read():
    """A backward kernel's ``needs`` decide what the training plan keeps: the same on both
    backends, so that the plan's memory does not depend on the device."""
    require("numba.cuda")
    from cnnc.runtime.backends.cpu import GRADS as CPU
    from cnnc.runtime.backends.cuda import GRADS

    for name in set(CPU) & set(GRADS):
        assert GRADS.needs[name] == CPU.needs[name], name


ARRAYS = {
    "x",
    "w",
    "bias",
    "res",
    "out",
    "cols",
    "scale",
    "shift",
    "a",
    "b",
    "gate",
    "slope",
    "weight",
    # backward kernels
    "y",
    "gy",
    "gx",
    "gw",
    "src",
    "dst",
    "mask",
    "other",
    "center",
    "mean_in",
    "var",
    "mean",
    "rstd",
    "sum_gy",
    "sum_gy_xhat",
    "xhat",
    "raw",
    "packed",
}
FLOAT32 = {"alpha", "beta", "sy", "sx", "count"}
FLAGS = {"has_res", "has_bias", "bilinear", "count_pad", "is_max", "shared", "train"}


def _signature(kernel_name, fn):
    """Argument types as the launchers pass them, from the argument names."""
    from numba import types

    special = {
        "stats": types.Array(types.float64, 1, "C"),
        "sums": types.Array(types.float64, 1, "C"),
        "index": types.Array(types.int32, 1, "C"),
        "eps": types.float64,
        "factor": types.float64,
    }
    if kernel_name in ("lrn", "lrn_grad"):
        special["k"] = types.float32
    if kernel_name == "gemm":
        special["c"] = types.Array(types.float32, 1, "C")
    sig = []
    for name in fn.__code__.co_varnames[: fn.__code__.co_argcount]:
        if name in special:
            sig.append(special[name])
        elif name in ARRAYS:
            sig.append(types.Array(types.float32, 1, "C"))
        elif name in FLOAT32:
            sig.append(types.float32)
        elif name in FLAGS:
            sig.append(types.boolean)
        else:
            sig.append(types.int64)
    return tuple(sig)


def _kernels():
    """Every @cuda.jit kernel of the CUDA backend, as 'module.name'."""
    found = []
    for module in ("conv", "pool", "elementwise", "norm", "layout", "reduce"):  # indexing: device
        source = (HERE.parent / "runtime" / "backends" / "cuda" / f"{module}.py").read_text()
        found += [
            f"{module}.{name}" for name in re.findall(r"^@cuda\.jit\ndef (\w+)", source, re.M)
        ]
    return found


KERNELS = _kernels()


@pytest.mark.parametrize("name", KERNELS)
def test_kernel_compiles_for_a_real_gpu(name):
    """The simulator accepts untyped Python; compiling to PTX for sm_90 does not."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        pytest.skip("compile_ptx needs the real CUDA target")
    cuda = require("numba.cuda")
    import importlib

    module, function = name.split(".")
    kernel = getattr(importlib.import_module(f"cnnc.runtime.backends.cuda.{module}"), function)
    try:
        ptx, _ = cuda.compile_ptx(kernel.py_func, _signature(function, kernel.py_func), cc=(9, 0))
    except Exception as exc:  # NVVM missing is an install problem, not a kernel problem
        if "NVVM" in str(exc) or "libnvvm" in str(exc):
            if os.environ.get("CNNC_REQUIRE_REFERENCES"):
                pytest.fail(f"CUDA's NVVM is required in CI: {exc}")
            pytest.skip(f"NVVM not installed: {exc}")
        raise
    assert ".entry" in ptx and "sm_90" in ptx


def test_kernels_compile_under_a_numpy_without_row_stack():
    """NumPy 2.5 removed ``np.row_stack``, which numba-cuda 0.30 registers an overload of on
    its first compile: cnnc lends the alias for that moment only (in a process of its own:
    NumPy as 2.5 has it, before anything compiled)."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        pytest.skip("compile_ptx needs the real CUDA target")
    require("numba.cuda")
    script = f"""
import sys
import numpy as np
if "row_stack" in vars(np):
    del np.row_stack
    np.__all__.remove("row_stack")
from numba import cuda
from cnnc.runtime.backends.cuda import conv
sys.path.insert(0, {str(HERE)!r})
from test_cuda import _signature
try:
    ptx, _ = cuda.compile_ptx(conv.conv.py_func, _signature("conv", conv.conv.py_func), cc=(9, 0))
except Exception as exc:
    if "NVVM" in str(exc) or "libnvvm" in str(exc):
        print("no NVVM:", exc)
        sys.exit(3)
    raise
assert ".entry" in ptx and not hasattr(np, "row_stack")
"""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    if out.returncode == 3:
        if os.environ.get("CNNC_REQUIRE_REFERENCES"):
            pytest.fail(f"CUDA's NVVM is required in CI: {out.stdout}")
        pytest.skip(out.stdout)
    assert out.returncode == 0, out.stderr[-3000:]


@pytest.mark.parametrize("kernel", ["conv", "gemm"])
def test_gemm_kernels_use_shared_memory_tiles(kernel):
    source = (HERE.parent / "runtime" / "backends" / "cuda" / "conv.py").read_text()
    body = source[source.index(f"def {kernel}(") :]
    body = body[: body.index("\n@cuda.jit")]
    assert "cuda.shared.array" in body and "cuda.local.array" in body
    assert "_multiply_tiles(a_tile, b_tile, acc" in body
