"""cnnc's CUDA backend on a real GPU: outputs against PyTorch on the same GPU, and timings.

Run by benchmarks/gpu_check.sh on a machine with an NVIDIA GPU, PyTorch (CUDA) and
numba-cuda. For each network of the spec library: the largest relative difference between
cnnc (``device="cuda"``) and PyTorch on the GPU with the same weights (TF32 off, so that both
compute in fp32), then cnnc's and PyTorch+cuDNN's time per batch (median of whole passes,
inputs and outputs crossing the bus for both) and cnnc's slowest layers. Writes one JSON
file (``--out``), rewritten after each network so that a run cut short keeps what it found.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

# (spec file, network, torchvision model for timing or None, batches to time)
NETWORKS = [
    ("resnet.cnn", "resnet18", "resnet18", (1, 32)),
    ("resnet.cnn", "resnet50", "resnet50", (1, 32)),
    ("vgg.cnn", "vgg19", "vgg19", (1, 8)),
    ("mobilenet.cnn", "mobilenet_v2", "mobilenet_v2", (1, 32)),
    ("efficientnet.cnn", "efficientnet_b0", "efficientnet_b0", (1, 32)),
    ("densenet.cnn", "densenet121", "densenet121", (1,)),
    ("convnext.cnn", "convnext_tiny", "convnext_tiny", (1,)),
    ("regnet.cnn", "regnet_y_400mf", "regnet_y_400mf", (1,)),
    ("shufflenet.cnn", "shufflenet_v2_x1_0", "shufflenet_v2_x1_0", (1,)),
    ("googlenet.cnn", "googlenet", None, (1,)),
    ("unet.cnn", "unet", None, (1,)),
]


def _torch_ms(torch, model, x, repeat):
    """Median ms of ``model(x)`` from a host array to a host array (CUDA events inside)."""
    times = []
    with torch.no_grad():
        for i in range(repeat + 3):
            start = time.perf_counter()
            y = model(torch.from_numpy(x).cuda())
            y.cpu()
            torch.cuda.synchronize()
            if i >= 3:
                times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _relative(got, want):
    scale = max(float(np.abs(want).max()), 1e-12)
    return float(np.abs(got - want).max()) / scale


def check(file, name, tv_name, batches, repeat, torch):
    import cnnc
    import torch_reference

    net = cnnc.load(ROOT / "specs" / file, network=name)
    weights = torch_reference.random_weights(net, seed=1)
    rng = np.random.default_rng(2)
    inputs = {
        n: rng.standard_normal((2, *layer.shape)).astype(np.float32)
        for n, layer in net.inputs.items()
    }
    row = {"file": file, "network": name}
    t0 = time.perf_counter()
    got = cnnc.run(net, inputs, weights, device="cuda")
    row["first_run_s"] = time.perf_counter() - t0
    want = torch_reference.forward(torch, net, weights, inputs, device="cuda")
    cpu = cnnc.run(net, inputs, weights, device="cpu")
    row["max_rel_vs_torch_cuda"] = max(_relative(got[k], want[k]) for k in want)
    row["max_rel_vs_cnnc_cpu"] = max(_relative(got[k], cpu[k]) for k in cpu)
    del cpu
    from cnnc.runtime.session import Session

    session = Session.create(net, weights, device="cuda")
    row["timings"] = []
    for batch in batches:
        info = session.bench(batch=batch, repeat=repeat)
        entry = {"batch": batch, "cnnc_ms": info["median_ms"], "cnnc_min_ms": info["min_ms"]}
        slow = sorted(info["layers"], key=lambda layer: -layer["ms"])[:5]
        entry["cnnc_slowest_layers"] = [
            {k: layer[k] for k in ("layer", "op", "shape", "ms", "gflops")} for layer in slow
        ]
        if tv_name:
            import torchvision

            model = getattr(torchvision.models, tv_name)().eval().cuda()
            x = rng.standard_normal((batch, *next(iter(net.inputs.values())).shape))
            entry["torch_ms"] = _torch_ms(torch, model, x.astype(np.float32), repeat)
            entry["cnnc_over_torch"] = entry["cnnc_ms"] / entry["torch_ms"]
            del model
            torch.cuda.empty_cache()
        row["timings"].append(entry)
        print(json.dumps({name: entry}, default=float)[:400], flush=True)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu.json")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--only", nargs="*", help="network names to check")
    args = parser.parse_args()

    import numba
    import torch

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    smi = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    result = {
        "gpu": torch.cuda.get_device_name(0),
        "nvidia_smi": smi,
        "host_cpu": platform.processor() or platform.machine(),
        "versions": {
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "numba": numba.__version__,
        },
        "networks": [],
    }
    try:
        import numba_cuda

        result["versions"]["numba_cuda"] = numba_cuda.__version__
    except (ImportError, AttributeError):
        pass
    out = Path(args.out)
    for file, name, tv_name, batches in NETWORKS:
        if args.only and name not in args.only:
            continue
        start = time.perf_counter()
        try:
            row = check(file, name, tv_name, batches, args.repeat, torch)
        except Exception as exc:  # keep going: one network's failure is a finding too
            row = {"file": file, "network": name, "error": f"{type(exc).__name__}: {exc}"[:2000]}
        row["check_s"] = time.perf_counter() - start
        result["networks"].append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "timings"}, default=float))
        out.write_text(json.dumps(result, indent=1, default=float))


if __name__ == "__main__":
    main()
