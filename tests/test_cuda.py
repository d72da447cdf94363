"""The CUDA backend without a GPU: kernels under the simulator, and compiled for sm_90."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require

HERE = Path(__file__).resolve().parent


def test_cuda_kernels_match_cpu_under_the_simulator():
    require("numba.cuda")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", CNNC_CUDA_TILE="4")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(HERE / "cuda_sim")],
        env=env, capture_output=True, text=True, timeout=1500)
    tail = result.stdout[-6000:] + result.stderr[-3000:]
    assert result.returncode == 0, tail
    assert " passed" in result.stdout and "skipped" not in result.stdout.splitlines()[-1], tail


def _signature(kernel_name, fn):
    from numba import types
    arr = types.Array(types.float32, 1, "C")
    arrays = {"gemm": {"a", "b", "c", "bias", "res"}, "add": {"a", "b", "out"}}.get(
        kernel_name, {"x", "w", "bias", "res", "out", "cols", "scale", "shift"})
    floats = {"alpha", "beta"} | ({"k"} if kernel_name == "lrn" else set())
    flags = {"has_res", "has_bias", "bilinear", "count_pad", "is_max"}
    names = fn.__code__.co_varnames[:fn.__code__.co_argcount]
    sig = []
    for name in names:
        if name in arrays:
            sig.append(arr)
        elif name in floats:
            sig.append(types.float32)
        elif name in flags:
            sig.append(types.boolean)
        else:
            sig.append(types.int64)
    return tuple(sig)


KERNELS = ["conv", "gemm", "convt_gather", "dwconv", "maxpool", "avgpool", "global_pool",
           "affine", "act", "add", "softmax", "lrn", "upsample", "concat", "crop", "flatten"]


@pytest.mark.parametrize("name", KERNELS)
def test_kernel_compiles_for_a_real_gpu(name):
    """The simulator accepts untyped Python; compiling to PTX for sm_90 does not."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        pytest.skip("compile_ptx needs the real CUDA target")
    cuda = require("numba.cuda")
    from cnnc.runtime import cuda as kernels
    kernel = getattr(kernels, name)
    try:
        ptx, _ = cuda.compile_ptx(kernel.py_func, _signature(name, kernel.py_func), cc=(9, 0))
    except Exception as exc:  # NVVM missing is an install problem, not a kernel problem
        if "NVVM" in str(exc) or "libnvvm" in str(exc):
            if os.environ.get("CNNC_REQUIRE_REFERENCES"):
                pytest.fail(f"CUDA's NVVM is required in CI: {exc}")
            pytest.skip(f"NVVM not installed: {exc}")
        raise
    assert ".entry" in ptx and "sm_90" in ptx


@pytest.mark.parametrize("kernel", ["conv", "gemm"])
def test_gemm_kernels_use_shared_memory_tiles(kernel):
    source = (HERE.parent / "runtime" / "cuda.py").read_text()
    body = source[source.index(f"def {kernel}("):]
    body = body[:body.index("\n@cuda.jit")]
    assert "cuda.shared.array" in body and "cuda.local.array" in body
    assert "_multiply_tiles(a_tile, b_tile, acc" in body
