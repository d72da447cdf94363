"""One training step (forward, backward, SGD update) of cnnc against PyTorch on the CPU, in the
same run on the same machine.

Each measurement runs in a process of its own with the same number of threads; rounds are
interleaved and the best median of each side is kept. PyTorch trains the torchvision model
(ResNet-18, MobileNetV2) or, for the CIFAR ResNet-20 that torchvision lacks, the spec's network
built from PyTorch's functions (tests/torch_reference.py), with ``torch.optim.SGD`` (momentum
0.9) on cross-entropy against random classes; cnnc runs ``cnnc bench --train``'s step. Peak RSS
is each process's high-water mark; cnnc's row also gives its planned peak (``cnnc check
--train``) against the growth of its RSS over the timed steps: from after a warm-up at batch 1
(which loads the kernels; what it freed given back with malloc_trim) to the high-water mark of
the run at the row's batch (reset through /proc/self/clear_refs). CPU time per step (the
process's, all threads) is given beside the wall-clock median: on a shared machine it varies
less.

    pip install -e ".[test]"
    python benchmarks/train_compare.py
    python benchmarks/train_compare.py --quick --networks cifar_resnet
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from compare import TIMER, child, cpu_model, vector_width

ROOT = Path(__file__).resolve().parent.parent
#: (label, spec file, network, batch, steps per round, torchvision model or None)
ROWS = [
    ("ResNet-18", "resnet.cnn", "resnet18", 8, 4, "resnet18"),
    ("MobileNetV2", "mobilenet.cnn", "mobilenet_v2", 8, 4, "mobilenet_v2"),
    ("CIFAR ResNet-20", "cifar_resnet.cnn", "cifar_resnet", 64, 8, None),
]

CNNC_CHILD = (
    TIMER
    + r"""
import ctypes, gc, resource
import cnnc
from cnnc.runtime.train_bench import bench_training

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024

net = cnnc.load({spec!r}, network={name!r})
bench_training(net, batch=1, repeat=1)  # loads (or compiles) the kernels the step runs
gc.collect()
ctypes.CDLL(None).malloc_trim(0)  # what the warm-up freed goes back to the system
open("/proc/self/clear_refs", "w").write("5")  # the high-water mark starts again here
before = status("VmRSS")
info = bench_training(net, batch={batch}, repeat={repeat})
print(json.dumps({{"median_ms": info["median_ms"], "cpu_ms": info["cpu_ms"],
                  "forward_ms": info["forward_ms"], "backward_ms": info["backward_ms"],
                  "update_ms": info["update_ms"],
                  "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rss_growth_mib": status("VmHWM") - before,
                  "planned_mib": info["memory"]["peak"] / 2**20}}))
"""
)

TORCH_CHILD = (
    TIMER
    + r"""
import sys, numpy as np, torch
sys.path.insert(0, {tests!r})
torch.set_num_threads({threads})
torch.set_num_interop_threads(1)
import zoo, torch_reference, cnnc
torch.manual_seed(0)
if {model!r}:
    model = zoo.torchvision_model({model!r}).train()
    params = list(model.parameters())
    forward = model
else:
    net = cnnc.load({spec!r}, network={name!r})
    weights = {{k: torch.from_numpy(v).requires_grad_(not k.endswith(("_mean", "_var")))
               for k, v in torch_reference.random_weights(net).items()}}
    params = [v for v in weights.values() if v.requires_grad]
    F = torch.nn.functional
    def forward(x):
        values = {{"x": x}}
        for layer in net.layers:
            w = lambda key, layer=layer: weights.get(f"{{layer.name}}.{{key}}")
            xs = [values[i.name] for i in layer.inputs]
            values[layer.name] = torch_reference.TRAINING[layer.op](F, xs, layer.args, w)
        return values[next(iter(net.outputs.values())).name]
optimizer = torch.optim.SGD(params, lr=1e-4, momentum=0.9)
x = torch.randn({batch}, 3, {size}, {size})
y = torch.randint(0, {classes}, ({batch},))
def step():
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(forward(x), y).backward()
    optimizer.step()
report(step, {repeat})
"""
)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds per row")
    parser.add_argument("--quick", action="store_true", help="one round")
    parser.add_argument("--networks", help="comma-separated network names (default: all rows)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT.parent))
    import cnnc

    rounds = 1 if args.quick else args.rounds
    wanted = set(args.networks.split(",")) if args.networks else None
    print(f"machine: {cpu_model()}, {vector_width()}, {os.cpu_count()} cores; ", end="")
    print(f"{args.threads} threads each, {rounds} interleaved rounds, best median", flush=True)
    rows = []
    for label, file, name, batch, repeat, model in ROWS:
        if wanted and name not in wanted:
            continue
        spec = ROOT / "specs" / file
        net = cnnc.load(str(spec), network=name)
        fields = dict(
            spec=str(spec),
            name=name,
            batch=batch,
            repeat=repeat,
            threads=args.threads,
            tests=str(ROOT / "tests"),
            size=net.inputs["x"].shape[-1],
            classes=next(iter(net.outputs.values())).shape[0],
            model=model,
        )
        got = {"cnnc": [], "torch": []}
        for _ in range(rounds):
            got["cnnc"].append(child(CNNC_CHILD.format(**fields), args.threads))
            got["torch"].append(child(TORCH_CHILD.format(**fields), args.threads))
        best = {k: min(v, key=lambda r: r["median_ms"]) for k, v in got.items()}
        rows.append(dict(label=label, network=name, batch=batch, **best))
        c, t = best["cnnc"]["median_ms"], best["torch"]["median_ms"]
        print(
            f"{label:16s} batch {batch}: cnnc {c:8.1f} ms  torch {t:8.1f} ms  cnnc/torch "
            f"{c / t:5.2f}x  CPU ms {best['cnnc']['cpu_ms']:.0f}/{best['torch']['cpu_ms']:.0f}  "
            f"RSS MiB {best['cnnc']['rss_mib']:.0f}/{best['torch']['rss_mib']:.0f}",
            flush=True,
        )
    print(
        "\n| network | batch | cnnc step ms (fwd / bwd / update) | PyTorch step ms | cnnc/PyTorch "
        "| CPU ms per step cnnc / PyTorch | peak RSS MiB cnnc / PyTorch "
        "| cnnc planned peak / RSS growth MiB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        c, t = r["cnnc"], r["torch"]
        print(
            f"| {r['label']} | {r['batch']} | {c['median_ms']:.1f} ({c['forward_ms']:.0f} / "
            f"{c['backward_ms']:.0f} / {c['update_ms']:.0f}) | {t['median_ms']:.1f} | "
            f"{c['median_ms'] / t['median_ms']:.2f}x | {c['cpu_ms']:.0f} / {t['cpu_ms']:.0f} | "
            f"{c['rss_mib']:.0f} / {t['rss_mib']:.0f} | "
            f"{c['planned_mib']:.0f} / {c['rss_growth_mib']:.0f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
