"""Weights: seeded initialisation, strict loading from ``.npz``, saving.

Keys are ``LAYER.weight``, ``LAYER.bias``, ``LAYER.running_mean``, ``LAYER.running_var`` in
PyTorch's layouts, so a ``state_dict`` maps onto them one to one.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np

from ..compiler import OPS, DataError, Network, error, write_atomically


def expected(net: Network) -> dict[str, tuple]:
    """Every key the network needs, with its shape."""
    keys = {}
    for layer in net.layers:
        for name, shape in (*layer.weights.items(), *layer.buffers.items()):
            keys[f"{layer.name}.{name}"] = tuple(shape)
    return keys


def initialise(net: Network, seed: int = 0) -> dict[str, np.ndarray]:
    """Each weight as its op's registry entry says it starts (``Op.initial``): He-normal over
    the fan-in for convolutions, Xavier-uniform for fc, zero biases, batch norm the identity."""
    rng = np.random.default_rng(seed)
    out = {}
    for layer in net.layers:
        op = OPS[layer.op]
        for name, shape in (*layer.weights.items(), *layer.buffers.items()):
            rule = op.initial(name, shape, layer.args)
            if rule[0] == "const":
                value = np.full(shape, rule[1], np.float32)
            elif rule[0] == "he_normal":
                value = rng.standard_normal(shape) * math.sqrt(2.0 / rule[1])
            else:  # xavier_uniform
                limit = math.sqrt(6.0 / (rule[1] + rule[2]))
                value = rng.uniform(-limit, limit, shape)
            out[f"{layer.name}.{name}"] = value.astype(np.float32)
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
        raise DataError(
            error(f"cannot read weights '{path}': not a valid .npz file ({exc})")
        ) from None
    want = expected(net)
    problems = []
    for key, shape in want.items():
        if key not in arrays:
            problems.append(error(f"{path}: missing key '{key}' (expected shape {_fmt(shape)})"))
        elif tuple(arrays[key].shape) != shape:
            problems.append(
                error(
                    f"{path}: key '{key}' has shape {_fmt(arrays[key].shape)}, "
                    f"expected {_fmt(shape)}"
                )
            )
        elif not np.issubdtype(arrays[key].dtype, np.number):
            problems.append(error(f"{path}: key '{key}' holds {arrays[key].dtype}, not numbers"))
    for key in arrays:
        if key not in want:
            problems.append(
                error(
                    f"{path}: unexpected key '{key}'",
                    hint="keys are LAYER.weight, LAYER.bias, LAYER.running_mean, "
                    "LAYER.running_var; `cnnc check --json` lists layers",
                )
            )
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
