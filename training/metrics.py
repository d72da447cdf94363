"""Loss, accuracy (top-1, top-5) and a confusion matrix, summed a batch at a time."""

from __future__ import annotations

import numpy as np

#: A confusion matrix is kept (and printed) up to this many classes.
MAX_CONFUSION = 20


class Tally:
    """Sums over an epoch or an evaluation. Accuracy exists for cross-entropy only (class
    indices); for a per-pixel output, each pixel counts as a sample."""

    def __init__(self, loss: str, classes: int, detail: bool = False):
        self.classify = loss == "cross_entropy"
        self.classes = classes
        self.detail = detail and self.classify
        self.loss_sum = 0.0
        self.samples = 0
        self.scored = self.correct = self.correct5 = 0
        self.confusion = (
            np.zeros((classes, classes), np.int64)
            if self.detail and classes <= MAX_CONFUSION
            else None
        )

    def add(self, loss_value: float, n: int, logits: np.ndarray, targets: np.ndarray) -> None:
        self.loss_sum += float(loss_value) * n
        self.samples += n
        if not self.classify:
            return
        scores = np.moveaxis(logits, 1, -1).reshape(-1, logits.shape[1])
        labels = np.asarray(targets).reshape(-1).astype(np.int64)
        top = scores.argmax(axis=1)
        self.scored += len(labels)
        self.correct += int((top == labels).sum())
        if self.detail and self.classes > 5:
            top5 = np.argpartition(-scores, 4, axis=1)[:, :5]
            self.correct5 += int((top5 == labels[:, None]).any(axis=1).sum())
        if self.confusion is not None:
            np.add.at(self.confusion, (labels, top), 1)

    @property
    def loss(self) -> float:
        return self.loss_sum / max(1, self.samples)

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.scored if self.classify and self.scored else None

    def result(self) -> dict:
        out = {"loss": self.loss, "accuracy": self.accuracy, "samples": self.samples}
        if self.detail and self.classes > 5:
            out["top5"] = self.correct5 / max(1, self.scored)
        if self.confusion is not None:
            out["confusion"] = self.confusion.tolist()
        return out
