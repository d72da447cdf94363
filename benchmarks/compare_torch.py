"""cnnc vs PyTorch on the CPU, in the same run on the same machine.

Each measurement runs in its own process (Numba's and PyTorch's thread pools disturb each
other in one process), both with the same number of threads, same network, same batch.
PyTorch runs the network built op by op from the checked cnnc graph (tests/torch_reference.py)
in NCHW, under ``torch.inference_mode``.

    python benchmarks/compare_torch.py                 # the standard table
    python benchmarks/compare_torch.py --quick         # fewer repeats
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NETWORKS = [
    ("lenet5.cnn", "lenet5"),
    ("resnet.cnn", "resnet18"),
    ("resnet.cnn", "resnet50"),
    ("vgg.cnn", "vgg_d"),
]
TORCH_CHILD = r"""
import json, statistics, sys, time
import numpy as np, torch
sys.path.insert(0, {tests!r})
import cnnc, torch_reference
torch.set_num_threads({threads})
net = cnnc.load({spec!r}, network={name!r})
weights = torch_reference.random_weights(net)
x = {{n: np.random.default_rng(0).standard_normal(({batch}, *l.shape)).astype(np.float32)
     for n, l in net.inputs.items()}}
with torch.inference_mode():
    for _ in range(2):
        torch_reference.forward(torch, net, weights, x)
    times = []
    for _ in range({repeat}):
        t0 = time.perf_counter()
        torch_reference.forward(torch, net, weights, x)
        times.append(time.perf_counter() - t0)
print(json.dumps({{"median_ms": statistics.median(times) * 1e3}}))
"""


def cnnc_ms(spec, name, batch, repeat, threads):
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "cnnc",
            "bench",
            str(spec),
            "--network",
            name,
            "--batch",
            str(batch),
            "--repeat",
            str(repeat),
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(out.stdout)


def torch_ms(spec, name, batch, repeat, threads):
    code = TORCH_CHILD.format(
        tests=str(ROOT / "tests"),
        threads=threads,
        spec=str(spec),
        name=name,
        batch=batch,
        repeat=repeat,
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds per config")
    parser.add_argument("--networks", default=",".join(n for _, n in NETWORKS))
    args = parser.parse_args()
    wanted = args.networks.split(",")
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in open("/proc/cpuinfo")
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    print(f"machine: {cpu}, {os.cpu_count()} cores; {args.threads} threads each")
    rows = []
    for file, name in NETWORKS:
        if name not in wanted:
            continue
        for batch in (int(b) for b in args.batches.split(",")):
            repeat = 3 if args.quick else (10 if name in ("lenet5", "resnet18") else 6)
            if name == "lenet5":
                repeat *= 50
            # Interleaved rounds, best median of each: the machines are shared and noisy.
            spec = ROOT / "specs" / file
            ours, theirs = [], []
            for _ in range(args.rounds):
                ours.append(cnnc_ms(spec, name, batch, repeat, args.threads))
                theirs.append(torch_ms(spec, name, batch, repeat, args.threads))
            mine = min(o["median_ms"] for o in ours)
            ref = min(t["median_ms"] for t in theirs)
            rows.append((name, batch, mine, ref, mine / ref))
            print(
                f"{name:10s} batch {batch:2d}  cnnc {mine:9.3f} ms  torch {ref:9.3f} ms  "
                f"ratio {mine / ref:5.2f}x  ({ours[0].get('threading_layer')})",
                flush=True,
            )
    print("\n| network | batch | cnnc ms | PyTorch ms | cnnc / PyTorch |\n|---|---|---|---|---|")
    for name, batch, ours, theirs, ratio in rows:
        print(f"| {name} | {batch} | {ours:.2f} | {theirs:.2f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
