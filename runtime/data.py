"""Inputs and outputs of a run: .npy and image files in, .npy/.npz out, checked shapes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..compiler import DataError, Network, error, fmt_shape, write_atomically

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def parse_input_args(net: Network, specs: list[str]) -> dict[str, Path]:
    """``PATH`` (networks with one input) or ``NAME=PATH`` per input."""
    names = list(net.inputs)
    paths: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if sep and name in names:
            pass
        elif len(names) == 1 and not (sep and name.isidentifier() and not Path(spec).exists()):
            name, path = names[0], spec
        else:
            raise DataError(
                error(
                    f"--input '{spec}': say which input it is, as NAME=PATH "
                    f"(inputs: {', '.join(names)})"
                )
            )
        if name in paths:
            raise DataError(error(f"input '{name}' given twice"))
        paths[name] = Path(path)
    if paths and len(paths) != len(names):
        missing = [n for n in names if n not in paths]
        raise DataError(
            error(
                f"no --input for {', '.join(missing)}",
                hint="give every input, or none for seeded random data",
            )
        )
    return paths


def load_input(path: Path, name: str, shape: tuple) -> np.ndarray:
    """Load one input as float32 (batch, *shape)."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return _load_image(path, name, shape)
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(error(f"cannot read input '{path}': no such file")) from None
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(
            error(f"cannot read input '{path}': not a valid .npy file ({exc})")
        ) from None
    if isinstance(data, np.lib.npyio.NpzFile):
        raise DataError(error(f"input '{path}' is an .npz archive; give one .npy per input"))
    if not (np.issubdtype(data.dtype, np.number) or data.dtype == np.bool_):
        raise DataError(error(f"input '{path}' holds {data.dtype}, not numbers"))
    if tuple(data.shape) == shape:
        data = data[None]
    if tuple(data.shape[1:]) != shape or data.shape[0] < 1:
        raise DataError(
            error(
                f"input '{path}' has shape {_dims(data.shape)}; '{name}' expects "
                f"(N, {', '.join(map(str, shape))}) or ({', '.join(map(str, shape))})"
            )
        )
    data = np.ascontiguousarray(data, dtype=np.float32)
    if not np.isfinite(data).all():
        raise DataError(error(f"input '{path}' contains NaN or infinite values"))
    return data


def _load_image(path: Path, name: str, shape: tuple) -> np.ndarray:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise DataError(error("reading images needs Pillow", hint="pip install pillow")) from None
    if len(shape) != 3 or shape[0] not in (1, 3):
        raise DataError(
            error(f"an image can feed only a 1- or 3-channel input; '{name}' is {fmt_shape(shape)}")
        )
    try:
        with Image.open(path) as img:
            img = img.convert("L" if shape[0] == 1 else "RGB")
            pixels = np.asarray(img, dtype=np.float32) / 255.0
    except FileNotFoundError:
        raise DataError(error(f"cannot read image '{path}': no such file")) from None
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(error(f"cannot read image '{path}': {exc}")) from None
    h, w = pixels.shape[:2]
    if (h, w) != shape[1:]:
        raise DataError(
            error(
                f"image '{path}' is {w}x{h} pixels (width x height); '{name}' expects "
                f"{shape[2]}x{shape[1]}",
                hint="resize the image to the network's input size",
            )
        )
    chw = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    return np.ascontiguousarray(chw[None], dtype=np.float32)


def random_inputs(net: Network, batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed + 1)
    return {
        name: rng.standard_normal((batch, *layer.shape)).astype(np.float32)
        for name, layer in net.inputs.items()
    }


def save_outputs(outputs: dict[str, np.ndarray], path: Path):
    """``.npy`` for one output, ``.npz`` keyed by output name; written atomically."""
    buffer = io.BytesIO()
    suffix = path.suffix.lower()
    if suffix == ".npy":
        if len(outputs) != 1:
            raise DataError(
                error(
                    f"the network has {len(outputs)} outputs; save them as .npz",
                    hint=f"--out {path.with_suffix('.npz')}",
                )
            )
        np.save(buffer, next(iter(outputs.values())))
    elif suffix == ".npz":
        np.savez(buffer, **outputs)
    else:
        raise DataError(error(f"--out '{path}': use a .npy or .npz file"))
    write_atomically(path, buffer.getvalue())


def _dims(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"
