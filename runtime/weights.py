"""Weights: seeded initialisation, strict loading from ``.npz``, saving.

Keys are ``LAYER.weight``, ``LAYER.bias``, ``LAYER.running_mean``, ``LAYER.running_var`` in
PyTorch's layouts, so a ``state_dict`` maps onto them one to one.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np

from ..compiler.diagnostics import DataError, error
from ..compiler.files import write_atomically
from ..compiler.network import Network


def expected(net: Network) -> dict[str, tuple]:
    """Every key the network needs, with its shape."""
    keys = {}
    for layer in net.layers:
        for name, shape in (*layer.weights.items(), *layer.buffers.items()):
            keys[f"{layer.name}.{name}"] = tuple(shape)
    return keys


def initialise(net: Network, seed: int = 0) -> dict[str, np.ndarray]:
    """He (normal, fan-in) for conv and convt, Xavier (uniform) for fc, zero biases; batch
    norm starts as the identity (weight 1, bias 0, mean 0, variance 1)."""
    rng = np.random.default_rng(seed)
    out = {}
    for layer in net.layers:
        for name, shape in (*layer.weights.items(), *layer.buffers.items()):
            key = f"{layer.name}.{name}"
            if layer.op == "bn":
                fill = 1.0 if name in ("weight", "running_var") else 0.0
                out[key] = np.full(shape, fill, np.float32)
            elif name == "bias":
                out[key] = np.zeros(shape, np.float32)
            elif layer.op == "fc":
                limit = math.sqrt(6.0 / (shape[0] + shape[1]))
                out[key] = rng.uniform(-limit, limit, shape).astype(np.float32)
            else:
                fan_in = shape[1] * shape[2] * shape[3]
                out[key] = (rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)).astype(
                    np.float32)
    return out


def load(net: Network, path: str | Path) -> dict[str, np.ndarray]:
    """Load weights strictly: a missing, extra or mis-shaped key is an error naming it."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise DataError(error(f"cannot read weights '{path}': no such file")) from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(error(f"cannot read weights '{path}': not a valid .npz file ({exc})"))\
            from None
    want = expected(net)
    problems = []
    for key, shape in want.items():
        if key not in arrays:
            problems.append(error(f"{path}: missing key '{key}' (expected shape "
                                  f"{_fmt(shape)})"))
        elif tuple(arrays[key].shape) != shape:
            problems.append(error(f"{path}: key '{key}' has shape {_fmt(arrays[key].shape)}, "
                                  f"expected {_fmt(shape)}"))
        elif not np.issubdtype(arrays[key].dtype, np.number):
            problems.append(error(f"{path}: key '{key}' holds {arrays[key].dtype}, not numbers"))
    for key in arrays:
        if key not in want:
            problems.append(error(f"{path}: unexpected key '{key}'",
                                  hint="keys are LAYER.weight, LAYER.bias, LAYER.running_mean, "
                                       "LAYER.running_var; `cnnc check --json` lists layers"))
    if problems:
        raise DataError(problems)
    return {k: np.ascontiguousarray(arrays[k], dtype=np.float32) for k in want}


def save(weights: dict[str, np.ndarray], path: str | Path):
    import io
    buffer = io.BytesIO()
    np.savez(buffer, **weights)
    write_atomically(Path(path), buffer.getvalue())


def _fmt(shape) -> str:
    return str(tuple(int(d) for d in shape))
