"""Initial weights for fine-tuning: ``--weights INIT.npz --partial`` loads every key whose
name and shape match the network and leaves the rest as freshly initialised."""

from __future__ import annotations

import numpy as np

from ..compiler import DataError, error, fmt_shape
from ..runtime.weights import expected
from .npz import NpzArrays


def load_partial(net, path, fresh: dict) -> tuple[dict, str]:
    """``(weights, note)``: ``fresh`` with every matching key of ``path`` loaded; the note
    lists the layers left fresh and the keys of the file not used."""
    arrays = NpzArrays(path, "weights")
    want = expected(net)
    weights = dict(fresh)
    left: dict[str, list[str]] = {}
    used = set()
    try:
        for key, shape in want.items():
            layer, _, part = key.rpartition(".")
            if key not in arrays:
                left.setdefault(layer, []).append(f"{part} not in the file")
                continue
            have, dtype, _, _ = arrays.header(key)
            if tuple(have) != tuple(shape) or dtype.kind not in "fiu":
                left.setdefault(layer, []).append(
                    f"{part} {fmt_shape(have)} in the file, {fmt_shape(shape)} here"
                )
                continue
            weights[key] = np.array(arrays.array(key), np.float32)
            used.add(key)
    finally:
        arrays.close()
    if not used:
        raise DataError(
            error(
                f"--weights '{path}' --partial: no key matches network '{net.name}' by name "
                "and shape",
                hint="`cnnc check FILE --json` lists the layer names the keys are built from",
            )
        )
    bad = [k for k in used if not np.isfinite(weights[k]).all()]
    if bad:
        raise DataError(error(f"--weights '{path}': '{bad[0]}' holds NaN or infinite values"))
    unused = sorted(set(arrays.members) - set(want))  # mismatched shapes are listed above
    note = f"loaded {len(used)} of {len(want)} weights from {path}"
    if left:
        note += "; left freshly initialised: " + "; ".join(
            f"{layer} ({'; '.join(why)})" for layer, why in left.items()
        )
    if unused:
        note += f"; not used from the file: {', '.join(unused[:8])}" + (
            " ..." if len(unused) > 8 else ""
        )
    return weights, note
