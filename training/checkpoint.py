"""Checkpoints: after every epoch, one file ``DIR/checkpoint.npz`` holding the weights, the
optimizer's state, and (as JSON) the epoch, the seed, the settings and the history.

One file, written to a temporary name and renamed into place: a run killed while writing
leaves the previous checkpoint whole. Every random choice of a run derives from its seed and
the epoch (loader.py, the dropout masks), so the seed is the random state a resume needs.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np

from ..compiler import DataError, ResourceError, UsageError, error, write_atomically
from ..runtime.data import check_writable_dir

FILE = "checkpoint.npz"
FORMAT = 1


def prepare(directory: str | Path, fresh: bool = True) -> Path:
    """Create the folder if needed and prove it writable, before any training is done. A new
    run (``fresh``) refuses a folder that holds another run's checkpoint."""
    directory = Path(directory)
    if fresh and (directory / FILE).exists():
        raise UsageError(
            error(
                f"--checkpoint '{directory}' already holds a checkpoint",
                hint=f"continue it with --resume {directory}, or choose another folder",
            )
        )
    if directory.exists() and not directory.is_dir():
        raise ResourceError(error(f"--checkpoint '{directory}' is a file, not a folder"))
    if not directory.exists():
        parent = directory.parent if str(directory.parent) else Path(".")
        check_writable_dir(parent, f"the checkpoint folder '{directory}'")
        try:
            directory.mkdir()
        except OSError as exc:
            raise ResourceError(
                error(f"cannot create the checkpoint folder '{directory}': {exc.strerror or exc}")
            ) from None
    check_writable_dir(directory, f"checkpoints into '{directory}'")
    return directory


def save(directory: Path, state: dict, weights: dict, optimizer: dict) -> Path:
    """Write one checkpoint atomically; ``state`` is JSON-able (network, epoch, settings,
    history), ``optimizer`` is ``Optimizer.state()``."""
    meta = dict(state, format=FORMAT, optimizer_steps=optimizer["steps"])
    arrays = {f"weights/{k}": v for k, v in weights.items()}
    arrays.update({f"optimizer/{k}": v for k, v in optimizer["arrays"].items()})
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path = directory / FILE
    write_atomically(path, buffer.getvalue())
    return path


def load(directory: str | Path, net) -> tuple[dict, dict, dict]:
    """``(state, weights, optimizer state)`` of the checkpoint in ``directory``, refused with
    a DataError when it is missing, damaged, or of another network."""
    directory = Path(directory)
    path = directory / FILE
    if not directory.is_dir():
        raise DataError(error(f"--resume '{directory}': no such checkpoint folder"))
    if not path.is_file():
        raise DataError(
            error(
                f"--resume '{directory}': no checkpoint in it (no {FILE})",
                hint="give the folder a run wrote with --checkpoint DIR",
            )
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(archive["meta"].tobytes().decode())
            weights, arrays = {}, {}
            for key in archive.files:
                if key.startswith("weights/"):
                    weights[key[len("weights/") :]] = np.array(archive[key], np.float32)
                elif key.startswith("optimizer/"):
                    arrays[key[len("optimizer/") :]] = np.array(archive[key], np.float32)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(
            error(f"--resume '{directory}': the checkpoint is damaged ({exc})")
        ) from None
    if meta.get("format") != FORMAT:
        raise DataError(error(f"--resume '{directory}': not a checkpoint of this cnnc version"))
    if meta.get("network") != net.name:
        raise DataError(
            error(
                f"--resume '{directory}' holds a checkpoint of network '{meta.get('network')}', "
                f"not of '{net.name}'"
            )
        )
    from ..runtime.weights import expected

    want = expected(net)
    wrong = [
        k
        for k in sorted(set(want) | set(weights))
        if k not in weights or k not in want or tuple(weights[k].shape) != want[k]
    ]
    if wrong:
        raise DataError(
            error(
                f"--resume '{directory}' holds network '{net.name}' with other layers or "
                f"shapes than this spec ({', '.join(wrong[:4])}"
                + (" ..." if len(wrong) > 4 else "")
                + ")",
                hint="the spec changed since the checkpoint; start a new run",
            )
        )
    return meta, weights, {"steps": meta["optimizer_steps"], "arrays": arrays}
