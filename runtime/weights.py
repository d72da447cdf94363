"""Weights: seeded initialisation, strict loading from ``.npz``, saving.

Keys are ``LAYER.weight``, ``LAYER.bias``, ``LAYER.running_mean``, ``LAYER.running_var`` in
PyTorch's layouts, so a ``state_dict`` maps onto them one to one.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ..compiler import OPS, DataError, Network, UsageError, error, write_atomically


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
    check_seed(seed)
    rng = np.random.default_rng(seed)
    out = {}
    for layer in net.layers:
        op = OPS[layer.op]
        for name, shape in (*layer.weights.items(), *layer.buffers.items()):
            rule = op.initial(name, shape, layer.args)
            if rule[0] == "const":
                value = np.full(shape, rule[1], np.float32)
            elif rule[0] == "he_normal":
                scale = math.sqrt(2.0 / rule[1])
                value = _drawn(shape, lambda n, s=scale: rng.standard_normal(n) * s)
            else:  # xavier_uniform
                limit = math.sqrt(6.0 / (rule[1] + rule[2]))
                value = _drawn(shape, lambda n, b=limit: rng.uniform(-b, b, n))
            out[f"{layer.name}.{name}"] = value
    return out


def initialise_while(net: Network, seed: int, work) -> dict[str, np.ndarray]:
    """``initialise(net, seed)`` on a worker thread while ``work()`` runs on this one; the
    same weights. NumPy's generator and its casts release the GIL while they fill an array,
    so the draws overlap Python work beside them: ResNet-18's 11.7 M draws took 0.13 s of a
    warm ``cnnc run`` on their own (2-core Zen 4), and now run while the CPU backend imports
    Numba and cnnc's kernels (about 0.3 s, Session.create). An error of either side is
    raised here, the weights' first (``work`` does not depend on them)."""
    import threading

    check_seed(seed)
    drawn: dict = {}

    def draw():
        try:
            drawn["weights"] = initialise(net, seed)
        except BaseException as exc:  # raised again on the caller's thread
            drawn["error"] = exc

    worker = threading.Thread(target=draw, name="cnnc-weights", daemon=True)
    worker.start()
    try:
        work()
    finally:
        worker.join()
        if "error" in drawn:
            raise drawn["error"]
    return drawn["weights"]


def check_seed(seed) -> int:
    """NumPy's generators take non-negative integers only; say so in cnnc's words."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UsageError(error(f"the seed must be a non-negative integer, got {seed!r}"))
    return int(seed)


#: Values drawn per call of the generator: bounds the float64 draws that become float32.
CHUNK = 1 << 20


def _drawn(shape, draw) -> np.ndarray:
    """``draw(size).astype(float32)`` reshaped, drawn a chunk at a time: the same values (the
    generator's stream does not depend on how it is cut), without a float64 copy of the whole
    array (VGG's fc6: 822 MB on top of its 411 MB)."""
    out = np.empty(shape, np.float32)
    flat = out.reshape(-1)
    for start in range(0, flat.size, CHUNK):
        flat[start : start + CHUNK] = draw(min(CHUNK, flat.size - start))
    return out


def load(net: Network, path: str | Path) -> dict[str, np.ndarray]:
    """Load weights strictly: a missing, extra or mis-shaped key is an error naming it.

    Keys, shapes and dtypes are read from the archive's headers before any array is inflated,
    so an archive that does not fit the network costs nothing to refuse (a small compressed
    file may unpack to gigabytes).
    """
    path = Path(path)
    want = expected(net)
    from .data import check_regular_file

    check_regular_file(path, "weights")
    try:
        with zipfile.ZipFile(path) as archive:
            members = _members(archive, path, want)
            weights = {key: _read(archive, info, path) for key, info in members.items()}
    except zipfile.BadZipFile as exc:
        raise DataError(_not_npz(path, exc)) from None
    except (OSError, ValueError, EOFError, zlib.error) as exc:
        raise DataError(
            error(f"cannot read weights '{path}': not a valid .npz file ({exc})")
        ) from None
    check_variances(net, weights, f"{path}: ")
    return weights


def check_variances(net: Network, weights: dict, where: str = "") -> None:
    """Refuse batch-norm variances that make ``sqrt(running_var + eps)`` NaN or infinite,
    naming the key: NumPy would only warn, without it, and every output be NaN."""
    problems = []
    for layer in net.layers:
        key = f"{layer.name}.running_var"
        if "running_var" not in layer.buffers or key not in weights:
            continue
        var = np.asarray(weights[key], np.float32).reshape(-1)
        bad = np.flatnonzero(var + np.float32(layer.args["eps"]) <= 0)
        if bad.size:
            problems.append(
                error(
                    f"{where}key '{key}' holds {bad.size} negative variance"
                    f"{'s' if bad.size > 1 else ''} (first {var[bad[0]]:g}, channel {bad[0]})",
                    hint="a variance is never negative; batch norm divides by "
                    "sqrt(running_var + eps)",
                )
            )
    if problems:
        raise DataError(problems)


def _not_npz(path: Path, exc) -> object:
    try:
        with open(path, "rb") as fh:
            is_npy = fh.read(6) == b"\x93NUMPY"
    except OSError:
        is_npy = False
    if is_npy:
        return error(
            f"weights '{path}' is a single .npy array; weights are an .npz archive of "
            "arrays keyed LAYER.weight, LAYER.bias, ...",
            hint="save them with numpy.savez(path, **{'conv1.weight': w, ...})",
        )
    return error(f"cannot read weights '{path}': not a valid .npz file ({exc})")


#: Keys named per kind of mismatch; the rest are counted (a wrong network gives hundreds).
MAX_LISTED = 5
KEYS_HINT = (
    "keys are LAYER.weight, LAYER.bias, LAYER.running_mean, LAYER.running_var; "
    "`cnnc check --json` lists layers"
)


def _members(archive: zipfile.ZipFile, path: Path, want: dict) -> dict:
    """Map each needed key to its archive member, checking names and declared shapes."""
    wrong, found, unexpected = [], {}, []
    for info in archive.infolist():
        key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
        if key not in want:
            unexpected.append(key)
            continue
        shape, dtype = _header(archive, info, path)
        if tuple(shape) != want[key]:
            wrong.append(
                error(f"{path}: key '{key}' has shape {_fmt(shape)}, expected {_fmt(want[key])}")
            )
        elif not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
            wrong.append(error(f"{path}: key '{key}' holds {dtype}, not real numbers"))
        found[key] = info
    missing = [key for key in want if key not in found]
    problems = _key_problems(path, want, missing, unexpected)
    problems += _listed(wrong, f"{path}: and {{}} more keys of the wrong shape or type")
    if problems:
        raise DataError(problems)
    return {key: found[key] for key in want}


def _key_problems(path: Path, want: dict, missing: list, unexpected: list) -> list:
    """Missing and unexpected keys: those that differ only in case as one error with a hint,
    the others named (a few) and counted."""
    problems = []
    by_lower = {key.lower(): key for key in missing}
    cased = [(key, by_lower[key.lower()]) for key in unexpected if key.lower() in by_lower]
    if cased:
        given, meant = cased[0]
        problems.append(
            error(
                f"{path}: {len(cased)} key{'s' if len(cased) > 1 else ''} differ"
                f"{'' if len(cased) > 1 else 's'} from the network's only in case",
                hint=f"keys are case-sensitive: did you mean '{meant}' for '{given}'?",
            )
        )
        missing = [key for key in missing if key not in {m for _, m in cased}]
        unexpected = [key for key in unexpected if key not in {g for g, _ in cased}]
    problems += _listed(
        [
            error(f"{path}: missing key '{key}' (expected shape {_fmt(want[key])})")
            for key in missing
        ],
        f"{path}: and {{}} more missing keys",
    )
    extra = _listed(
        [error(f"{path}: unexpected key '{key}'") for key in unexpected],
        f"{path}: and {{}} more unexpected keys",
    )
    if extra:
        extra[-1].hint = KEYS_HINT
    return problems + extra


def _listed(diagnostics: list, more: str) -> list:
    """The first MAX_LISTED diagnostics, and one saying how many more there are."""
    if len(diagnostics) <= MAX_LISTED:
        return diagnostics
    return diagnostics[:MAX_LISTED] + [error(more.format(len(diagnostics) - MAX_LISTED))]


def _header(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path):
    """(shape, dtype) from one member's .npy header; only the header is inflated."""
    with archive.open(info) as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise ValueError(f"member '{info.filename}' uses .npy format {version}")
    return shape, dtype


def _read(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> np.ndarray:
    with archive.open(info) as fh:
        array = np.lib.format.read_array(fh, allow_pickle=False)
    return np.ascontiguousarray(array, dtype=np.float32)


def non_finite(weights: dict[str, np.ndarray]) -> list[str]:
    """Keys whose arrays hold NaN or infinite values."""
    return [k for k, w in weights.items() if not np.isfinite(w).all()]


def save(weights: dict[str, np.ndarray], path: str | Path):
    write_atomically(Path(path), to_bytes(weights))


def to_bytes(weights: dict[str, np.ndarray]) -> bytes:
    """The ``.npz`` archive's bytes (to write with other files as one)."""
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **weights)
    return buffer.getvalue()


def _fmt(shape) -> str:
    return str(tuple(int(d) for d in shape))
