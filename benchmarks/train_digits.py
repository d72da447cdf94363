"""cnnc against PyTorch training the same network with the same recipe: specs/digits.cnn on
scikit-learn's digits, 15 epochs of batch 32, SGD with momentum 0.9, lr 0.05, cosine schedule,
validation after every epoch; each with the same number of threads, each in a process of its
own (Numba's and PyTorch's thread pools disturb each other in one process).

cnnc is timed on its second run in its process (the first compiles or loads the kernels), as
``cnnc train`` run a second time on a machine would be; PyTorch likewise after one warm-up
run. Both print the validation accuracy reached, so the comparison is of equal work. Rounds
alternate between the two and the fastest of each is kept.

    pip install -e ".[test,train]"
    python benchmarks/train_digits.py              # 2 threads each
    python benchmarks/train_digits.py --threads 4 --epochs 5
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CNNC = r"""
import json, sys, time
import cnnc
epochs = int(sys.argv[1])
net = cnnc.load(sys.argv[2])
recipe = dict(epochs=epochs, batch=32, lr=0.05, momentum=0.9, schedule="cosine", seed=0)
cnnc.train(net, "digits", epochs=1, batch=32, lr=0.05)  # compiles (or loads) the kernels
t0 = time.perf_counter()
history, _ = cnnc.train(net, "digits", **recipe)
print(json.dumps({"seconds": time.perf_counter() - t0, "accuracy": history[-1]["val_accuracy"]}))
"""

TORCH = r"""
import json, sys, time
import numpy as np, torch
from torch import nn
from cnnc.training.data import digits
torch.set_num_threads(int(sys.argv[2]))
epochs = int(sys.argv[1])
train, val = digits("train"), digits("val")
x = torch.from_numpy(train.images(np.arange(len(train))))
y = torch.from_numpy(train.targets())
vx = torch.from_numpy(val.images(np.arange(len(val))))
vy = torch.from_numpy(val.targets())

def run(epochs):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x), generator=g).split(32):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        sched.step()
        model.eval()
        with torch.no_grad():
            correct = sum(int((model(vx[i:i + 32]).argmax(1) == vy[i:i + 32]).sum())
                          for i in range(0, len(vx), 32))
    return correct / len(vx)

run(1)
t0 = time.perf_counter()
accuracy = run(epochs)
print(json.dumps({"seconds": time.perf_counter() - t0, "accuracy": accuracy}))
"""


def child(code: str, args: list[str], threads: int) -> dict:
    env = dict(
        os.environ,
        NUMBA_NUM_THREADS=str(threads),
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        CNNC_ALGORITHM="direct",
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        sys.exit(f"benchmark child failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument(
        "--rounds", type=int, default=2, help="alternate rounds; the fastest of each is kept"
    )
    args = parser.parse_args()
    spec = str(ROOT / "specs" / "digits.cnn")
    runs = {"cnnc": [], "torch": []}
    for _ in range(args.rounds):  # interleaved: the machines are shared and noisy
        runs["cnnc"].append(child(CNNC, [str(args.epochs), spec], args.threads))
        runs["torch"].append(child(TORCH, [str(args.epochs), str(args.threads)], args.threads))
    ours = min(runs["cnnc"], key=lambda r: r["seconds"])
    theirs = min(runs["torch"], key=lambda r: r["seconds"])
    print(f"digits recipe: {args.epochs} epochs, batch 32, SGD momentum, {args.threads} threads")
    print(f"cnnc     {ours['seconds']:7.2f} s   validation accuracy {100 * ours['accuracy']:.2f}%")
    print(
        f"PyTorch  {theirs['seconds']:7.2f} s   validation accuracy {100 * theirs['accuracy']:.2f}%"
    )
    print(
        f"ratio    {ours['seconds'] / theirs['seconds']:.2f} (cnnc / PyTorch; below 1: cnnc faster)"
    )


if __name__ == "__main__":
    main()
