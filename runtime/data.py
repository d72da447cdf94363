"""Inputs and outputs of a run: .npy and image files in, .npy/.npz out, checked shapes."""

from __future__ import annotations

import io
import os
import stat
import tempfile
import warnings
from pathlib import Path

import numpy as np

from ..compiler import (
    DataError,
    Network,
    ResourceError,
    UsageError,
    error,
    fmt_shape,
    write_atomically,
)
from .memory import available_bytes

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


IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def load_input(
    path: Path, name: str, shape: tuple, normalize: str | None = None, resize: bool = False
) -> np.ndarray:
    """Load one input as float32 (batch, *shape). Images are scaled to [0, 1], optionally
    resized to the input's H x W and normalised with ImageNet's mean and std."""
    check_regular_file(path, "input")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        x = load_image(path, name, shape, resize)
        if normalize == "imagenet":
            if shape[0] != 3:
                raise DataError(
                    error(f"--normalize imagenet needs a 3-channel input, not '{name}'")
                )
            x = (x - IMAGENET_MEAN[None, :, None, None]) / IMAGENET_STD[None, :, None, None]
        return np.ascontiguousarray(x, dtype=np.float32)
    _check_npy_start(path)
    try:  # mapped, not read: the shape is checked before the data is touched
        data = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(
            error(f"cannot read input '{path}': not a valid .npy file ({exc})")
        ) from None
    if isinstance(data, np.lib.npyio.NpzFile):
        data.close()
        raise DataError(error(f"input '{path}' is an .npz archive; give one .npy per input"))
    if data.size * 4 > MAX_INPUT_SHARE * available_bytes():
        raise ResourceError(
            error(
                f"input '{path}' holds {data.size * 4 / 2**30:.1f} GiB as float32, more than "
                "this machine can hold with the run",
                hint="split it into smaller files and run the folder: --input DIR --out DIR",
            )
        )
    return as_input(data, name, shape, f"input '{path}'")


MAX_INPUT_SHARE = 0.5


def _check_npy_start(path: Path):
    """Refuse from its first bytes a file that is not a .npy array of numbers, in cnnc's words
    (NumPy's own messages suggest ``allow_pickle=``, which cnnc does not offer)."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as fh:
            start = fh.read(6)
            if start.startswith(b"PK\x03\x04"):
                raise DataError(
                    error(f"input '{path}' is an .npz archive; give one .npy per input")
                )
            if start != b"\x93NUMPY":
                raise DataError(
                    error(
                        f"cannot read input '{path}': not a .npy file (it does not start "
                        "with NumPy's header)",
                        hint="save arrays with numpy.save(path, x)",
                    )
                )
            fh.seek(0)
            read_header = {(1, 0): fmt.read_array_header_1_0}.get(
                fmt.read_magic(fh), fmt.read_array_header_2_0
            )
            dtype = read_header(fh)[2]
    except OSError as exc:
        raise DataError(error(f"cannot read input '{path}': {exc.strerror or exc}")) from None
    except ValueError:  # a damaged header: np.load says what is wrong with it
        return
    if dtype.hasobject:
        raise DataError(
            error(
                f"input '{path}' holds Python objects (a pickled array), which cnnc does not load",
                hint="save an array of numbers: numpy.save(path, x.astype(numpy.float32))",
            )
        )


def check_regular_file(path: Path, what: str):
    """A readable regular file (a FIFO would block, a device never end)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise DataError(error(f"cannot read {what} '{path}': no such file")) from None
    except OSError as exc:
        raise DataError(error(f"cannot read {what} '{path}': {exc.strerror or exc}")) from None
    if stat.S_ISDIR(info.st_mode):
        raise DataError(error(f"cannot read {what} '{path}': it is a directory"))
    if not stat.S_ISREG(info.st_mode):
        raise DataError(error(f"cannot read {what} '{path}': not a regular file"))


def as_input(data, name: str, shape: tuple, what: str | None = None) -> np.ndarray:
    """Check one input array and return it as contiguous float32 ``(N, *shape)``.

    ``(N, *shape)`` and ``(*shape)`` (one sample) are accepted; complex, non-numeric, empty
    and non-finite data are refused with a message rather than NumPy's warnings.
    """
    what = what or f"input '{name}'"
    data = np.asarray(data)
    if np.iscomplexobj(data):
        raise DataError(error(f"{what} holds complex numbers; cnnc takes real (float) data"))
    if not (np.issubdtype(data.dtype, np.number) or data.dtype == np.bool_):
        raise DataError(error(f"{what} holds {data.dtype}, not numbers"))
    if tuple(data.shape) == shape:
        data = data[None]
    if tuple(data.shape[1:]) != shape or data.shape[0] < 1:
        raise DataError(
            error(
                f"{what} has shape {_dims(data.shape)}; '{name}' expects "
                f"(N, {', '.join(map(str, shape))}) or ({', '.join(map(str, shape))})"
            )
        )
    with np.errstate(all="ignore"):
        data = np.ascontiguousarray(data, dtype=np.float32)
    if not np.isfinite(data).all():
        raise DataError(error(f"{what} contains NaN or infinite values (as float32)"))
    return data


#: A folder run resizes each image to its input. Decoding is bounded by the input's size: an
#: image over this many pixels per input pixel (and over MIN_DECODE_PIXELS) is decoded at a
#: reduced scale where the format can (JPEG: 1/2 to 1/8), else refused, rather than decoded
#: whole to be shrunk (a 13000x13000 PNG for a 64x64 input: gigabytes, seconds).
DECODE_PIXELS_PER_INPUT_PIXEL = 64
MIN_DECODE_PIXELS = 4096 * 4096


def decode_limit(shape: tuple) -> int:
    """The most pixels decoded for an input of ``shape`` (C, H, W)."""
    return max(MIN_DECODE_PIXELS, DECODE_PIXELS_PER_INPUT_PIXEL * shape[1] * shape[2])


def load_image(path: Path, name: str, shape: tuple, resize: bool = False) -> np.ndarray:
    """An image as float32 (1, C, H, W) in [0, 1]. Its size is read from the header first
    (``Image.open`` decodes nothing): one of the wrong size, or too large to resize, is
    refused before any pixel is decoded."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise DataError(
            error("reading images needs Pillow", hint="pip install 'cnnc[images]'")
        ) from None
    if len(shape) != 3 or shape[0] not in (1, 3):
        raise DataError(
            error(f"an image can feed only a 1- or 3-channel input; '{name}' is {fmt_shape(shape)}")
        )
    mode, want = ("L" if shape[0] == 1 else "RGB"), (shape[2], shape[1])
    try:
        with warnings.catch_warnings():  # Pillow's bomb warning: the limit below is lower
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(path)
        with opened as img:
            if img.size != want:
                _check_image_size(img, path, name, shape, resize, mode)
            img = img.convert(mode)
            if img.size != want:
                img = img.resize(want, Image.Resampling.BILINEAR)
            pixels = np.asarray(img, dtype=np.float32) / 255.0
    except FileNotFoundError:
        raise DataError(error(f"cannot read image '{path}': no such file")) from None
    except UnidentifiedImageError:
        raise DataError(
            error(f"cannot read image '{path}': not an image format Pillow can decode")
        ) from None
    except Image.DecompressionBombError as exc:
        raise DataError(
            error(
                f"cannot read image '{path}': too large to decode safely ({exc})",
                hint=f"shrink it to about {want[0]}x{want[1]} pixels first",
            )
        ) from None
    except (OSError, ValueError) as exc:
        raise DataError(error(f"cannot read image '{path}': {exc}")) from None
    chw = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    return np.ascontiguousarray(chw[None], dtype=np.float32)


def _check_image_size(img, path: Path, name: str, shape: tuple, resize: bool, mode: str):
    """Refuse, from the header alone, an image of the wrong size (single runs) or one too
    large to resize (folder runs); a large JPEG is decoded at a reduced scale instead."""
    w, h = img.size
    if not resize:
        raise DataError(
            error(
                f"image '{path}' is {w}x{h} pixels (width x height); '{name}' expects "
                f"{shape[2]}x{shape[1]}",
                hint="resize the image to the network's input size",
            )
        )
    limit = decode_limit(shape)
    if w * h > limit:
        img.draft(mode, (shape[2], shape[1]))  # JPEG: the smallest scale still as large
        if img.size[0] * img.size[1] > limit:
            raise DataError(
                error(
                    f"image '{path}' is {w}x{h} pixels, more than cnnc decodes to resize for "
                    f"a {shape[2]}x{shape[1]} input ({limit:,} pixels)",
                    hint=f"shrink it to about {shape[2]}x{shape[1]} pixels first",
                )
            )


def random_inputs(net: Network, batch: int, seed: int) -> dict[str, np.ndarray]:
    from .weights import check_seed

    rng = np.random.default_rng(check_seed(seed) + 1)
    return {
        name: rng.standard_normal((batch, *layer.shape)).astype(np.float32)
        for name, layer in net.inputs.items()
    }


OUTPUT_SUFFIXES = (".npy", ".npz")


def check_output_path(path: Path, option: str, suffixes=OUTPUT_SUFFIXES, avoid=()):
    """Refuse an output path before any work is done: a wrong suffix or a directory is a
    usage error (exit 2); a missing or unwritable folder, a resource error. ``avoid`` holds
    files this output must not replace (the weights or inputs being read)."""
    if path.suffix.lower() not in suffixes:
        raise UsageError(error(f"{option} '{path}': use a {' or '.join(suffixes)} file"))
    if path.is_dir():
        raise UsageError(error(f"{option} '{path}' is a directory; give a file name"))
    check_writable_dir(path.parent if str(path.parent) else Path("."), f"{option} '{path}'")
    for other in avoid:
        if other is not None and _same_file(path, Path(other)):
            raise UsageError(
                error(f"{option} '{path}' is also read by this run; it would be replaced")
            )


def check_writable_dir(directory: Path, what: str):
    if not directory.is_dir():
        raise ResourceError(error(f"cannot write {what}: no such directory '{directory}'"))
    try:  # a real probe: permission bits say nothing for root or on read-only mounts
        fd, probe = tempfile.mkstemp(prefix=".cnnc-probe-", dir=directory)
    except OSError as exc:
        raise ResourceError(
            error(f"cannot write {what}: '{directory}': {exc.strerror or exc}")
        ) from None
    os.close(fd)
    os.unlink(probe)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and a.samefile(b) or a.resolve() == b.resolve()
    except OSError:
        return False


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
        raise UsageError(error(f"--out '{path}': use a .npy or .npz file"))
    write_atomically(path, buffer.getvalue())


def _dims(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"
