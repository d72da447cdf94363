"""Random convolution layers for the kernel tests, and the worker that runs them in a process
of its own (``python kernel_cases.py CASES.json OUT_DIR FIRST END``; see test_kernel_shapes.py).

A case is a one-layer network (conv, grouped conv or depthwise conv, any kernel, stride,
padding and dilation the language allows, an activation) with the algorithm policy and the
thread count to run it with. The worker prints ``start I`` before case I and ``done I`` after
it, flushing each line, and saves the case's output as ``OUT_DIR/I.npy``: when the process
dies, the last case started and not done is the one that killed it.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np

#: Numba generating AVX2 code only (8-lane tiles), as on a Zen 3 without AVX-512.
AVX2 = {
    "NUMBA_CPU_NAME": "haswell",
    "NUMBA_CPU_FEATURES": "+avx,+avx2,+fma,+sse4.2,+popcnt,+f16c,+bmi,+bmi2",
}
ACTIVATIONS = ["", " | relu", " | relu6", " | silu", " | gelu", " | leaky_relu(0.1)"]
ALGORITHMS = ["auto", "direct", "blas", "winograd"]


@contextmanager
def numba_threads(n: int):
    """Numba's parallel loops on ``n`` threads (at most the pool's) inside the block."""
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    try:
        yield
    finally:
        numba.set_num_threads(before)


def random_case(rng: np.random.Generator) -> dict:
    """One layer: kernels 1-13, strides 1-4, padding 0 to the kernel, dilation 1-3, inputs up
    to 40x40; ungrouped, grouped or depthwise; one in eight a 3x3 stride-1 layer (Winograd's)."""
    kind = rng.choice(["conv", "conv", "conv", "grouped", "dwconv"])
    if rng.random() < 1 / 8:
        kh = kw = 3
        sh = sw = dh = dw = 1
    else:
        kh, kw = (int(v) for v in rng.integers(1, 14, 2))
        sh, sw = (int(v) for v in rng.integers(1, 5, 2))
        dh, dw = (int(v) for v in rng.integers(1, 4, 2))
    ph, pw = int(rng.integers(0, kh + 1)), int(rng.integers(0, kw + 1))
    h = int(rng.integers(max(1, dh * (kh - 1) + 1 - 2 * ph), 41))
    w = int(rng.integers(max(1, dw * (kw - 1) + 1 - 2 * pw), 41))
    groups = int(rng.choice([2, 3])) if kind == "grouped" else 1
    c_in = groups * int(rng.integers(1, 13 if kind == "grouped" else 41))
    c_out = groups * int(rng.integers(1, 25 if kind == "grouped" else 70))
    act = str(rng.choice(ACTIVATIONS))
    window = f"k=({kh}, {kw}), s=({sh}, {sw}), p=({ph}, {pw}), d=({dh}, {dw})"
    if kind == "dwconv":
        layer = f"dwconv({window})"
    else:
        layer = f"conv({c_out}, {window}, g={groups})"
    return {
        "spec": f"network t(x: {c_in}x{h}x{w}) {{\n  return x | {layer}{act}\n}}\n",
        "algorithm": str(rng.choice(ALGORITHMS)),
        "threads": int(rng.integers(1, 3)),
        "batch": int(rng.integers(1, 3)),
        "seed": int(rng.integers(0, 2**31)),
    }


def case_data(case: dict):
    """The case's checked network, weights and input (the same in every process)."""
    import cnnc
    import torch_reference

    net = cnnc.check(case["spec"]).networks[0]
    weights = torch_reference.random_weights(net, case["seed"])
    rng = np.random.default_rng(case["seed"])
    inputs = {
        name: rng.standard_normal((case["batch"], *layer.shape)).astype(np.float32)
        for name, layer in net.inputs.items()
    }
    return net, weights, inputs


def run_cases(cases: list, out_dir: Path, first: int, end: int) -> None:
    """Run ``cases[first:end]`` through cnnc, reporting each as described above."""
    import cnnc

    for i in range(first, end):
        case = cases[i]
        print(f"start {i}", flush=True)
        net, weights, inputs = case_data(case)
        with numba_threads(case["threads"]):
            outputs = cnnc.run(net, inputs, weights, algorithm=case["algorithm"])
        np.save(out_dir / f"{i}.npy", next(iter(outputs.values())))
        print(f"done {i}", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    cases_path, out, first, end = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    run_cases(json.loads(Path(cases_path).read_text()), out, first, end)
