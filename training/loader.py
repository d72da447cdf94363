"""Batches of an epoch: a seeded shuffle, seeded augmentation, and the next batch read (decoded,
augmented) in a background thread while the current one trains.

Every random choice is drawn from the run's seed and the epoch (and the batch), never from a
stream carried between epochs: a run resumed after epoch k sees the same batches as one that
never stopped.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..compiler import UsageError, error
from .data import Dataset


class Augment:
    """``flip`` (left-right, each image with probability 1/2) and ``crop=P`` (pad P zeros on
    each side, then a random crop back to the input's size), as torchvision's
    RandomHorizontalFlip and RandomCrop(padding=P)."""

    def __init__(self, flip: bool = False, crop: int = 0):
        self.flip, self.crop = flip, crop

    @classmethod
    def parse(cls, text: str | None) -> Augment:
        flip, crop = False, 0
        for part in filter(None, (p.strip() for p in (text or "").split(","))):
            key, sep, value = part.partition("=")
            if key == "flip" and not sep:
                flip = True
            elif key == "crop" and sep and value.isdigit() and int(value) >= 1:
                crop = int(value)
            else:
                raise UsageError(
                    error(
                        f"--augment '{text}': give flip and/or crop=P (pad P pixels, then "
                        "crop back at random), e.g. --augment flip,crop=4"
                    )
                )
        return cls(flip, crop)

    def __bool__(self) -> bool:
        return self.flip or self.crop > 0

    def text(self) -> str | None:
        parts = (["flip"] if self.flip else []) + ([f"crop={self.crop}"] if self.crop else [])
        return ",".join(parts) or None

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if x.ndim != 4:
            raise UsageError(error("--augment needs image inputs (C x H x W)"))
        n, _, h, w = x.shape
        if self.crop:
            p = self.crop
            padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
            top = rng.integers(0, 2 * p + 1, n)
            left = rng.integers(0, 2 * p + 1, n)
            x = np.stack(
                [padded[i, :, t : t + h, s : s + w] for i, (t, s) in enumerate(zip(top, left))]
            )
        if self.flip:
            flips = rng.random(n) < 0.5
            x = x.copy() if not self.crop else x
            x[flips] = x[flips, :, :, ::-1]
        return np.ascontiguousarray(x, dtype=np.float32)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled order of ``n`` samples in ``epoch``."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def batches(
    data: Dataset,
    order: np.ndarray,
    batch: int,
    augment: Augment | None = None,
    seed: int = 0,
    epoch: int = 0,
):
    """Yield ``(images, targets)`` per batch of ``order``; the next batch is prepared in a
    background thread meanwhile (image decoding releases the GIL)."""
    chunks = [order[i : i + batch] for i in range(0, len(order), batch)]

    def load(index: int):
        idx = chunks[index]
        x, y = data.batch(idx)
        if augment:
            x = augment(x, np.random.default_rng([seed, epoch, index, 0xA0]))
        return x, y

    if not chunks:
        return
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cnnc-batches")
    try:
        pending = pool.submit(load, 0)
        for index in range(len(chunks)):
            ready = pending.result()
            if index + 1 < len(chunks):
                pending = pool.submit(load, index + 1)
            yield ready
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
