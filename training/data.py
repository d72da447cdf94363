"""Training data: ``.npz`` arrays (memory-mapped), folders of class folders of images, and
scikit-learn's bundled ``digits``; each a :class:`Dataset` read a batch at a time.

A dataset knows its sample shape and, where it has one, its number of classes; it hands out
float32 NCHW images and targets for any list of indices. Nothing is read whole that need not
be: an ``.npz`` member is mapped, an image is decoded when its batch is wanted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..compiler import DataError, UsageError, error, fmt_shape
from ..runtime.data import IMAGE_SUFFIXES

#: The split of ``digits``: scikit-learn's train_test_split with this seed and share.
DIGITS_SEED, DIGITS_VAL = 0, 0.2
MAX_FILES = 10_000_000


class Dataset:
    """What a training loop reads: ``len``, ``sample_shape``, ``classes`` (or None) and a
    batch of ``(images, targets)`` for a list of indices."""

    name: str
    sample_shape: tuple
    classes: int | None = None

    def __len__(self) -> int:
        raise NotImplementedError

    def images(self, indices: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def targets(self, indices: np.ndarray | None = None) -> np.ndarray:
        raise NotImplementedError

    def batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.images(indices), self.targets(indices)


class ArrayData(Dataset):
    """``x`` (N x C x H x W, float or uint8 scaled to [0, 1]) and ``y``, mapped or in memory."""

    def __init__(self, x, y, name: str, classes: int | None = None):
        self.name, self.classes = name, classes
        if x.ndim not in (2, 4):
            raise DataError(
                error(
                    f"'x' of {name} has shape {fmt_shape(x.shape)}; give N x C x H x W images "
                    "(or N x F vectors)"
                )
            )
        if x.dtype != np.uint8 and x.dtype.kind != "f":
            raise DataError(
                error(
                    f"'x' of {name} holds {x.dtype}; give float images, or uint8 "
                    "(scaled from 0..255 to [0, 1])"
                )
            )
        if y.ndim < 1 or len(y) != len(x):
            raise DataError(
                error(
                    f"{name} holds {len(x)} images in 'x' but 'y' has shape "
                    f"{fmt_shape(y.shape)}: one target per image"
                )
            )
        if len(x) == 0:
            raise DataError(error(f"{name} holds no samples"))
        if y.dtype.kind not in "iubf":
            raise DataError(error(f"'y' of {name} holds {y.dtype}, not numbers"))
        self.x, self.y = x, y
        self.sample_shape = tuple(int(d) for d in x.shape[1:])

    def __len__(self) -> int:
        return len(self.x)

    def images(self, indices) -> np.ndarray:
        raw = self.x[np.asarray(indices)]
        if raw.dtype == np.uint8:
            out = raw.astype(np.float32) * np.float32(1 / 255)
        else:
            with np.errstate(all="ignore"):
                out = np.ascontiguousarray(raw, dtype=np.float32)
            if not np.isfinite(out).all():
                bad = int(np.asarray(indices)[~np.isfinite(out.reshape(len(out), -1)).all(1)][0])
                raise DataError(error(f"image {bad} of {self.name} holds NaN or infinite values"))
        return out

    def targets(self, indices=None) -> np.ndarray:
        return np.asarray(self.y if indices is None else self.y[np.asarray(indices)])


class ImageFolder(Dataset):
    """``DIR/CLASS/*.png|jpg``, classes numbered in sorted order (torchvision's ImageFolder),
    each image converted to the input's channels and resized to its H x W when decoded."""

    def __init__(self, root: Path, shape: tuple):
        from ..runtime.data import load_image  # noqa: F401 (Pillow is checked when decoding)

        self.root, self.name = Path(root), f"image folder '{root}'"
        if len(shape) != 3 or shape[0] not in (1, 3):
            raise DataError(
                error(f"an image folder feeds a 1- or 3-channel input, not {fmt_shape(shape)}")
            )
        self.sample_shape = tuple(shape)
        folders = sorted(p for p in self.root.iterdir() if p.is_dir())
        if len(folders) < 2:
            raise DataError(
                error(
                    f"{self.name} has {len(folders)} class folder"
                    f"{'' if len(folders) == 1 else 's'}; training a classifier needs at "
                    "least two (DIR/CLASS/*.png)",
                    hint="put each class's images in a folder of its own under DIR",
                )
            )
        self.class_names = [p.name for p in folders]
        self.classes = len(folders)
        self.files: list[Path] = []
        labels = []
        for label, folder in enumerate(folders):
            found = sorted(
                p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
            )
            if not found:
                raise DataError(
                    error(
                        f"class folder '{folder}' holds no images ({', '.join(IMAGE_SUFFIXES)})",
                        hint="remove the folder or add its images",
                    )
                )
            self.files.extend(found)
            labels.extend([label] * len(found))
            if len(self.files) > MAX_FILES:
                raise DataError(error(f"{self.name} holds over {MAX_FILES:,} images"))
        self.labels = np.asarray(labels, np.int64)
        self._check_headers()

    def _check_headers(self) -> None:
        """Open every image's header (no decoding): a file that is not an image is named now,
        not an hour into training."""
        try:
            from PIL import Image, UnidentifiedImageError
        except ImportError:
            raise DataError(
                error("image folders need Pillow", hint="pip install 'cnnc[images]'")
            ) from None
        bad = []
        for path in self.files:
            try:
                with Image.open(path) as img:
                    img.size  # noqa: B018 (the header is parsed on open)
            except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
                bad.append(error(f"cannot read image '{path}': {_why(exc)}"))
                if len(bad) >= 20:
                    break
        if bad:
            raise DataError(bad)

    def __len__(self) -> int:
        return len(self.files)

    def images(self, indices) -> np.ndarray:
        from ..runtime.data import load_image

        out = np.empty((len(indices), *self.sample_shape), np.float32)
        for row, i in enumerate(np.asarray(indices)):
            out[row] = load_image(self.files[int(i)], "x", self.sample_shape, resize=True)[0]
        return out

    def targets(self, indices=None) -> np.ndarray:
        return self.labels if indices is None else self.labels[np.asarray(indices)]


def _why(exc) -> str:
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        return "not an image format Pillow can decode"
    return str(exc) or type(exc).__name__


class Subset(Dataset):
    """Some samples of another dataset (a validation split)."""

    def __init__(self, base: Dataset, indices: np.ndarray, name: str):
        self.base, self.indices, self.name = base, np.asarray(indices), name
        self.sample_shape, self.classes = base.sample_shape, base.classes

    def __len__(self) -> int:
        return len(self.indices)

    def images(self, indices) -> np.ndarray:
        return self.base.images(self.indices[np.asarray(indices)])

    def targets(self, indices=None) -> np.ndarray:
        idx = self.indices if indices is None else self.indices[np.asarray(indices)]
        return self.base.targets(idx)


def digits(part: str) -> ArrayData:
    """scikit-learn's 8x8 digits (1,797 images, bundled, no download), 0..16 scaled to
    [0, 1]; ``part`` is ``train`` (80%) or ``val`` (20%), split with a fixed seed."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise DataError(
            error(
                "the digits data set comes with scikit-learn, which is not installed",
                hint="pip install 'cnnc[train]'",
            )
        ) from None
    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None]
    y = bunch.target.astype(np.int64)
    x_train, x_val, y_train, y_val = train_test_split(
        x, y, test_size=DIGITS_VAL, random_state=DIGITS_SEED
    )
    if part == "train":
        return ArrayData(x_train, y_train, "digits (training part)", classes=10)
    return ArrayData(x_val, y_val, "digits (validation part)", classes=10)


def open_data(spec, input_shape: tuple, part: str = "train", option: str = "--data") -> Dataset:
    """A dataset from what the user gave: ``digits``, an ``.npz`` path, a folder of class
    folders, an ``(x, y)`` pair of arrays, or a :class:`Dataset`."""
    if isinstance(spec, Dataset):
        return spec
    if isinstance(spec, tuple) and len(spec) == 2:
        return ArrayData(np.asarray(spec[0]), np.asarray(spec[1]), "the data given")
    text = str(spec)
    if text == "digits":
        return digits(part)
    path = Path(text)
    if path.is_dir():
        return ImageFolder(path, input_shape)
    if path.suffix.lower() == ".npz" or path.is_file():
        return npz_data(path)
    if not path.exists():
        raise DataError(
            error(
                f"{option} '{text}': no such file or folder",
                hint="give an .npz with x and y, a folder of class folders, or digits",
            )
        )
    raise DataError(error(f"{option} '{text}': not an .npz file, a folder, or digits"))


def npz_data(path: Path) -> ArrayData:
    from .npz import NpzArrays

    arrays = NpzArrays(path)
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        found = ", ".join(sorted(arrays.members)) or "nothing"
        raise DataError(
            error(
                f"'{path}' has no {' or '.join(repr(k) for k in missing)} array (it holds {found})",
                hint="save it as numpy.savez(path, x=images, y=labels)",
            )
        )
    return ArrayData(arrays.array("x"), arrays.array("y"), f"'{path}'")


def split(data: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """``--val-split F``: a seeded random share F of the samples for validation."""
    if not 0 < fraction < 1:
        raise UsageError(
            error(f"--val-split must be a fraction between 0 and 1 (exclusive), got {fraction}")
        )
    n = len(data)
    n_val = int(round(n * fraction))
    if n_val < 1 or n_val >= n:
        raise DataError(
            error(
                f"--val-split {fraction} of {n} samples leaves {n - n_val} to train on and "
                f"{n_val} to validate"
            )
        )
    order = np.random.default_rng([seed, 0x5E1]).permutation(n)
    return (
        Subset(data, np.sort(order[n_val:]), data.name),
        Subset(data, np.sort(order[:n_val]), f"{data.name} (validation split)"),
    )


def check_against(data: Dataset, net, loss: str) -> None:
    """The data fits the network: sample shape, and targets (class indices in range, or
    float targets shaped like the output) checked on every label up front."""
    from ..runtime.losses import check_targets

    (name, layer), (_, out) = next(iter(net.inputs.items())), next(iter(net.outputs.items()))
    if tuple(data.sample_shape) != tuple(layer.shape):
        raise DataError(
            error(
                f"{data.name} holds samples of shape {fmt_shape(data.sample_shape)}, but "
                f"network '{net.name}' takes {name}: {fmt_shape(layer.shape)}"
            )
        )
    classes = out.shape[0] if loss == "cross_entropy" else None
    if classes is not None and data.classes is not None and data.classes > classes:
        raise DataError(
            error(
                f"{data.name} has {data.classes} classes, but network '{net.name}' outputs "
                f"{classes} (its last layer: {fmt_shape(out.shape)})",
                hint=f"end the network with fc({data.classes})",
            )
        )
    y = data.targets() if loss == "cross_entropy" else data.targets(np.arange(0))
    if loss == "cross_entropy" and y.dtype.kind == "f" and y.ndim == len(out.shape) + 1:
        raise DataError(
            error(
                f"'y' of {data.name} holds float targets shaped like the output; "
                "cross_entropy takes class indices",
                hint="use --loss mse (or cosine) for float targets",
            )
        )
    if loss == "cross_entropy":
        check_targets(loss, (len(y), *out.shape), y, f"the targets of {data.name}")
    elif tuple(y.shape[1:]) != tuple(out.shape):  # values are checked a batch at a time
        raise DataError(
            error(
                f"'y' of {data.name} has shape {fmt_shape(y.shape)}, but {loss} compares it "
                f"with the output of shape (N, {', '.join(map(str, out.shape))})"
            )
        )
