"""Losses and their gradients with respect to the network's output, as PyTorch defines them
(mean reduction). Computed on the host in float64 and returned as float32: outputs are small
next to the activations, and the sums of a loss want the precision.

Cross-entropy takes the logits (a network ending in ``softmax`` gives the tensor before it),
through a log-sum-exp, never the log of a probability.
"""

from __future__ import annotations

import numpy as np

from ..compiler import DataError, error

LOSSES = ("cross_entropy", "mse", "cosine")


def check_loss(name: str) -> str:
    if name not in LOSSES:
        raise DataError(error(f"unknown loss '{name}' (choose {', '.join(LOSSES)})"))
    return name


def check_targets(loss: str, out_shape: tuple, target, what: str = "targets") -> np.ndarray:
    """``target`` as the array the loss reads, or a DataError saying what is wrong with it
    (shape, dtype, range, non-finite values) in the network's terms. ``out_shape`` is the
    output's NCHW shape, batch first."""
    target = np.asarray(target)
    n = out_shape[0]
    if loss == "cross_entropy":
        classes = out_shape[1]
        want = (n, *out_shape[2:])
        if classes < 2:
            raise DataError(
                error(
                    f"cross_entropy needs an output of at least two classes, but the output "
                    f"has {classes} channel",
                    hint="use --loss mse for a single output value",
                )
            )
        if target.dtype.kind == "f":
            if target.size and not np.all(np.isfinite(target)):
                raise DataError(error(f"{what} hold NaN or infinite values"))
            if target.size and not np.array_equal(target, np.round(target)):
                raise DataError(
                    error(
                        f"cross_entropy {what} are class indices, but these are fractional "
                        f"floats (dtype {target.dtype})",
                        hint="give integer class indices, or use --loss mse for float targets",
                    )
                )
        elif target.dtype.kind not in "iub":
            raise DataError(error(f"{what} of dtype {target.dtype} are not class indices"))
        if target.shape != want:
            raise DataError(
                error(
                    f"{what} have shape {target.shape}, but cross_entropy on an output of "
                    f"shape {tuple(out_shape)} takes class indices of shape {want}"
                )
            )
        if target.size:
            lo, hi = int(target.min()), int(target.max())
            if lo < 0 or hi >= classes:
                bad = lo if lo < 0 else hi
                raise DataError(
                    error(
                        f"{what} hold the class index {bad}, outside 0..{classes - 1} "
                        f"(the output has {classes} classes)"
                    )
                )
        return target.astype(np.int64)
    if target.dtype.kind not in "fiu":
        raise DataError(error(f"{what} of dtype {target.dtype} are not numbers"))
    if target.shape != tuple(out_shape):
        raise DataError(
            error(
                f"{what} have shape {target.shape}, but {loss} compares them with an output "
                f"of shape {tuple(out_shape)}"
            )
        )
    target = target.astype(np.float64)
    if not np.all(np.isfinite(target)):
        raise DataError(error(f"{what} hold NaN or infinite values"))
    return target


def loss_and_grad(
    loss: str, out: np.ndarray, target: np.ndarray, label_smoothing: float = 0.0
) -> tuple[float, np.ndarray]:
    """(mean loss, d loss / d out) for an NCHW (or (N, C)) output ``out``."""
    x = out.astype(np.float64)
    if loss == "cross_entropy":
        value, grad = _cross_entropy(x, target, label_smoothing)
    elif loss == "mse":
        diff = x - target
        value, grad = float(np.mean(diff * diff)), 2.0 * diff / diff.size
    else:
        value, grad = _cosine(x, target)
    return value, grad.astype(np.float32)


def _cross_entropy(x, target, smoothing):
    """Softmax over axis 1 (per pixel for N x C x H x W), averaged over samples and pixels."""
    classes = x.shape[1]
    shifted = x - x.max(axis=1, keepdims=True)
    log_sum = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    log_p = shifted - log_sum
    picked = np.take_along_axis(log_p, np.expand_dims(target, 1), axis=1)
    count = target.size
    nll = -picked.sum() / count
    value = (1.0 - smoothing) * nll + smoothing * (-log_p.sum() / classes / count)
    want = np.full_like(x, smoothing / classes)
    np.put_along_axis(
        want,
        np.expand_dims(target, 1),
        np.take_along_axis(want, np.expand_dims(target, 1), axis=1) + (1.0 - smoothing),
        axis=1,
    )
    return float(value), (np.exp(log_p) - want) / count


def _cosine(x, target, eps=1e-8):
    """``1 - cos(out, target)`` per sample (flattened), averaged; PyTorch's eps on each norm."""
    n = x.shape[0]
    a, b = x.reshape(n, -1), target.reshape(n, -1)
    na = np.maximum(np.linalg.norm(a, axis=1, keepdims=True), eps)
    nb = np.maximum(np.linalg.norm(b, axis=1, keepdims=True), eps)
    cos = (a * b).sum(axis=1, keepdims=True) / (na * nb)
    grad = -(b / (na * nb) - cos * a / (na * na)) / n
    return float(np.mean(1.0 - cos)), grad.reshape(x.shape)
