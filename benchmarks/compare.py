"""cnnc against PyTorch and ONNX Runtime on the CPU, in the same run on the same machine.

Every measurement runs in a process of its own (Numba's, PyTorch's and ONNX Runtime's thread
pools disturb each other in one process), all with the same number of threads, on the same
network and batch. PyTorch runs the torchvision model under ``torch.inference_mode``; ONNX
Runtime runs that model exported by ``torch.onnx`` (CPU provider, all graph optimisations,
``threads`` intra-op threads, one inter-op thread); cnnc runs the matching zoo spec. Rounds
are interleaved (cnnc, PyTorch, ORT, cnnc, ...) and the best median of each is kept: the
machines are shared and noisy. Peak RSS is each process's high-water mark after its runs.
cnnc's layer choices are measured first, in a process of their own (what ``cnnc tune`` does);
the timed cnnc processes then run as ``cnnc run`` does, reading the cached choices.

    pip install -e ".[test,bench]"
    python benchmarks/compare.py                      # the standard table
    python benchmarks/compare.py --quick --networks resnet18
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: (label, spec file, network = torchvision name, batch, repeats per round). The input size is
#: the spec's own (``input_size``): 224 for the classifiers, 520 for DeepLabV3.
ROWS = [
    ("ResNet-18", "resnet.cnn", "resnet18", 1, 20),
    ("ResNet-18", "resnet.cnn", "resnet18", 8, 5),
    ("ResNet-50", "resnet.cnn", "resnet50", 1, 10),
    ("VGG-19", "vgg.cnn", "vgg19", 1, 4),
    ("MobileNetV2", "mobilenet.cnn", "mobilenet_v2", 1, 30),
    ("MobileNetV2", "mobilenet.cnn", "mobilenet_v2", 8, 8),
    ("EfficientNet-B0", "efficientnet.cnn", "efficientnet_b0", 1, 20),
    ("MobileNetV3-Large", "mobilenet.cnn", "mobilenet_v3_large", 32, 4),
    ("DeepLabV3-ResNet50", "segmentation.cnn", "deeplabv3_resnet50", 1, 3),
]

#: Shared by the children: time ``run`` after warm-up and print median, RSS and CPU time.
TIMER = r"""
import json, resource, statistics, time
def report(run, repeat, extra=None, flops=0):
    for _ in range(2):
        run()
    times, cpu = [], time.process_time()
    for _ in range(repeat):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    cpu = (time.process_time() - cpu) / repeat
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    median = statistics.median(times)
    print(json.dumps({{"median_ms": median * 1e3, "cpu_ms": cpu * 1e3, "rss_mib": rss,
                      "gflops_at_median": flops / median / 1e9, **(extra or {{}})}}))
"""

CNNC_CHILD = (
    TIMER
    + r"""
import numpy as np, cnnc
from cnnc.runtime.session import Session
net = cnnc.load({spec!r}, network={name!r})
session = Session.create(net, seed=0, batch={batch}, algorithm={algorithm!r}, tune={tune})
x = {{n: np.random.default_rng(0).standard_normal(({batch}, *l.shape)).astype(np.float32)
     for n, l in net.inputs.items()}}
session.run(x)
info = {{**session.describe(), "peak_gflops": session._executor({batch}).backend.peak_gflops()}}
report(lambda: session.run(x), {repeat}, info, 2 * net.total_macs * {batch})
"""
)

TORCH_CHILD = (
    TIMER
    + r"""
import sys, torch
sys.path.insert(0, {tests!r})
import zoo
torch.set_num_threads({threads})
torch.set_num_interop_threads(1)
model = zoo.torchvision_model({name!r})
x = torch.randn({batch}, 3, {size}, {size})
with torch.inference_mode():
    report(lambda: model(x), {repeat})
"""
)

EXPORT_CHILD = r"""
import sys, torch
sys.path.insert(0, {tests!r})
import zoo
model = zoo.torchvision_model({name!r})
x = torch.randn(1, 3, {size}, {size})
torch.onnx.export(model, (x,), {path!r}, input_names=["x"], output_names=["y"],
                  dynamic_axes={{"x": {{0: "n"}}, "y": {{0: "n"}}}}, dynamo=False)
print("{{}}")
"""

ORT_CHILD = (
    TIMER
    + r"""
import numpy as np, onnxruntime as ort
options = ort.SessionOptions()
options.intra_op_num_threads = {threads}
options.inter_op_num_threads = 1
options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
session = ort.InferenceSession({path!r}, options, providers=["CPUExecutionProvider"])
x = np.random.default_rng(0).standard_normal(({batch}, 3, {size}, {size})).astype(np.float32)
report(lambda: session.run(None, {{"x": x}}), {repeat})
"""
)


#: Numba's code for AVX2 only on a machine with AVX-512: the CPU name alone keeps the host's
#: features, so both are needed (docs/performance.md). For cnnc's processes with ``--avx2``.
AVX2 = {
    "NUMBA_CPU_NAME": "haswell",
    "NUMBA_CPU_FEATURES": "+avx,+avx2,+fma,+sse4.2,+popcnt,+f16c,+bmi,+bmi2",
}


def child(code: str, threads: int, extra_env: dict | None = None) -> dict:
    """Run one measuring process; its last line of output is a JSON object."""
    env = dict(
        os.environ,
        NUMBA_NUM_THREADS=str(threads),
        OMP_NUM_THREADS=str(threads),
        **(extra_env or {}),
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    if out.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def input_size(spec: Path, name: str) -> int:
    sys.path.insert(0, str(ROOT.parent))
    import cnnc

    net = cnnc.load(str(spec), network=name)
    return next(iter(net.inputs.values())).shape[-1]


def cpu_model() -> str:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def vector_width() -> str:
    flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "")
    return "AVX-512 (16 lanes)" if " avx512f" in flags else "AVX2 (8 lanes)"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per row")
    parser.add_argument("--quick", action="store_true", help="one round, fewer repeats")
    parser.add_argument("--networks", help="comma-separated network names (default: all rows)")
    parser.add_argument("--batches", help="comma-separated batch sizes (default: all rows)")
    parser.add_argument("--algorithm", default="auto", help="cnnc's --algorithm (auto, direct)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument(
        "--avx2",
        action="store_true",
        help="cnnc's kernels generated for AVX2 only (PyTorch and ONNX Runtime keep their code)",
    )
    args = parser.parse_args()
    cnnc_env = AVX2 if args.avx2 else None
    rounds = 1 if args.quick else args.rounds
    wanted = set(args.networks.split(",")) if args.networks else None
    batches = {int(b) for b in args.batches.split(",")} if args.batches else None
    tests = str(ROOT / "tests")
    isa = "cnnc on AVX2 (8 lanes) only, " if args.avx2 else ""
    print(f"machine: {cpu_model()}, {vector_width()}, {isa}{os.cpu_count()} cores; ", end="")
    print(f"{args.threads} threads each, {rounds} interleaved rounds, best median", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, file, name, batch, repeat in ROWS:
            if (wanted and name not in wanted) or (batches and batch not in batches):
                continue
            repeat = max(2, repeat // 3) if args.quick else repeat
            spec = ROOT / "specs" / file
            size = input_size(spec, name)
            onnx_path = str(Path(tmp) / f"{name}.onnx")
            if not Path(onnx_path).exists():
                child(EXPORT_CHILD.format(tests=tests, name=name, size=size, path=onnx_path), 1)
            fields = dict(
                spec=str(spec),
                name=name,
                batch=batch,
                repeat=repeat,
                threads=args.threads,
                tests=tests,
                size=size,
                path=onnx_path,
                algorithm=args.algorithm,
            )
            got = {"cnnc": [], "torch": [], "ort": []}
            tuning = dict(fields, repeat=1, tune=True)  # the layer choices, measured once
            child(CNNC_CHILD.format(**tuning), args.threads, cnnc_env)
            for _ in range(rounds):
                cnnc_child = CNNC_CHILD.format(**fields, tune=False)
                got["cnnc"].append(child(cnnc_child, args.threads, cnnc_env))
                got["torch"].append(child(TORCH_CHILD.format(**fields), args.threads))
                got["ort"].append(child(ORT_CHILD.format(**fields), args.threads))
            best = {k: min(v, key=lambda r: r["median_ms"]) for k, v in got.items()}
            row = dict(label=label, network=name, batch=batch, **best)
            rows.append(row)
            c, t, o = (best[k]["median_ms"] for k in ("cnnc", "torch", "ort"))
            print(
                f"{label:16s} batch {batch}: cnnc {c:8.2f} ms  torch {t:8.2f} ms  "
                f"ort {o:8.2f} ms  cnnc/torch {c / t:5.2f}x  cnnc/ort {c / o:5.2f}x  "
                f"RSS MiB {best['cnnc']['rss_mib']:.0f}/{best['torch']['rss_mib']:.0f}/"
                f"{best['ort']['rss_mib']:.0f}",
                flush=True,
            )
    print(
        "\n| network | batch | cnnc ms | PyTorch ms | ONNX Runtime ms | cnnc/PyTorch | cnnc/ORT "
        "| cnnc GFLOP/s (share of peak) | peak RSS MiB cnnc / PyTorch / ORT |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        c, t, o = (r[k]["median_ms"] for k in ("cnnc", "torch", "ort"))
        gflops = r["cnnc"].get("gflops_at_median", 0.0)
        peak = r["cnnc"].get("peak_gflops") or 0.0
        share = f"{gflops:.0f} ({100 * gflops / peak:.0f}%)" if peak else f"{gflops:.0f}"
        print(
            f"| {r['label']} | {r['batch']} | {c:.2f} | {t:.2f} | {o:.2f} | {c / t:.2f}x | "
            f"{c / o:.2f}x | {share} | {r['cnnc']['rss_mib']:.0f} / {r['torch']['rss_mib']:.0f} "
            f"/ {r['ort']['rss_mib']:.0f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
