"""A CIFAR-style image folder of generated shapes, to try ``cnnc train`` on images without a
download: 32x32 RGB PNGs of circles, squares, triangles and crosses in random colours, sizes
and places on noisy backgrounds, in ``OUT/train/CLASS/`` and ``OUT/val/CLASS/``.

    python examples/make_shapes.py shapes --train 300 --val 60
    cnnc train specs/cifar_resnet.cnn --set width=8 --set n=1 --data shapes/train \\
        --val shapes/val --epochs 8 --augment flip,crop=4
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "cross", "square", "triangle")
SIZE = 32


def draw(kind: str, rng: np.random.Generator) -> Image.Image:
    background = rng.integers(0, 120, 3)
    noise = rng.normal(0, 18, (SIZE, SIZE, 3))
    pixels = np.clip(background + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels)
    pen = ImageDraw.Draw(img)
    colour = tuple(int(c) for c in rng.integers(130, 256, 3))
    r = int(rng.integers(6, 13))
    cx, cy = (int(v) for v in rng.integers(r + 1, SIZE - r - 1, 2))
    box = (cx - r, cy - r, cx + r, cy + r)
    if kind == "circle":
        pen.ellipse(box, fill=colour)
    elif kind == "square":
        pen.rectangle(box, fill=colour)
    elif kind == "triangle":
        pen.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    else:
        w = max(2, r // 3)
        pen.rectangle((cx - r, cy - w, cx + r, cy + w), fill=colour)
        pen.rectangle((cx - w, cy - r, cx + w, cy + r), fill=colour)
    return img


def make(out: Path, train: int, val: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for part, count in (("train", train), ("val", val)):
        for kind in CLASSES:
            folder = out / part / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                draw(kind, rng).save(folder / f"{i:04d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=300, help="images per class to train on")
    parser.add_argument("--val", type=int, default=60, help="images per class to validate on")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    make(args.out, args.train, args.val, args.seed)
    total = len(CLASSES) * (args.train + args.val)
    print(f"wrote {total} images of {len(CLASSES)} classes into {args.out}/train and /val")


if __name__ == "__main__":
    main()
