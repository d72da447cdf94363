"""The arrays of an ``.npz`` without reading them: each member's header first, then a memory
map of its bytes in the archive.

``np.load(mmap_mode="r")`` maps a ``.npy`` but reads an ``.npz`` member whole. A member that
``np.savez`` stored uncompressed lies in the archive as a plain ``.npy``: its data starts after
the zip member's local header and the ``.npy`` header, and ``np.memmap`` maps it from there,
so a data set larger than memory trains a batch at a time. A compressed member
(``np.savez_compressed``) cannot be mapped; it is inflated whole, after checking that it fits.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ..compiler import DataError, ResourceError, error
from ..runtime.data import check_regular_file
from ..runtime.memory import available_bytes

#: The fixed part of a zip member's local header (signature to extra-field length).
LOCAL_HEADER = struct.Struct("<4s5H3I2H")
#: Of the memory free, the share a compressed member may take when inflated.
MAX_INFLATED_SHARE = 0.5


class NpzArrays:
    """``arrays[name]``: a read-only array (memory-mapped where the member is stored)."""

    def __init__(self, path: str | Path, what: str = "data"):
        self.path = Path(path)
        check_regular_file(self.path, what)
        try:
            self.zip = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise DataError(
                error(f"cannot read {what} '{self.path}': not an .npz file ({exc})")
            ) from None
        self.members = {
            info.filename[:-4]: info
            for info in self.zip.infolist()
            if info.filename.endswith(".npy")
        }
        self.headers: dict[str, tuple] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.members

    def header(self, name: str) -> tuple[tuple, np.dtype, bool, int]:
        """(shape, dtype, fortran order, offset of the data within the member)."""
        if name not in self.headers:
            info = self.members[name]
            try:
                with self.zip.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    if version == (1, 0):
                        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
                    elif version in ((2, 0), (3, 0)):
                        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
                    else:
                        raise ValueError(f".npy format {version}")
                    offset = fh.tell()
            except (OSError, ValueError, EOFError, zlib.error, zipfile.BadZipFile) as exc:
                raise DataError(
                    error(f"cannot read '{name}' of '{self.path}': not a valid array ({exc})")
                ) from None
            if dtype.hasobject:
                raise DataError(error(f"'{name}' of '{self.path}' holds Python objects"))
            self.headers[name] = (tuple(shape), dtype, fortran, offset)
        return self.headers[name]

    def array(self, name: str) -> np.ndarray:
        shape, dtype, fortran, offset = self.header(name)
        info = self.members[name]
        order = "F" if fortran else "C"
        if info.compress_type == zipfile.ZIP_STORED:
            start = self._data_start(info) + offset
            count = int(np.prod(shape, dtype=np.int64))
            if count == 0:
                return np.empty(shape, dtype, order=order)
            return np.memmap(self.path, dtype, "r", offset=start, shape=shape, order=order)
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if size > MAX_INFLATED_SHARE * available_bytes():
            raise ResourceError(
                error(
                    f"'{name}' of '{self.path}' is compressed and inflates to "
                    f"{size / 2**30:.1f} GiB, more than this machine can hold",
                    hint="save it with numpy.savez (not savez_compressed): stored arrays are "
                    "memory-mapped and read a batch at a time",
                )
            )
        try:
            with self.zip.open(info) as fh:
                return np.lib.format.read_array(fh, allow_pickle=False)
        except (OSError, ValueError, EOFError, zlib.error) as exc:
            raise DataError(error(f"cannot read '{name}' of '{self.path}': {exc}")) from None

    def _data_start(self, info: zipfile.ZipInfo) -> int:
        """Where a stored member's bytes begin: after its local header, whose name and extra
        field may differ in length from the central directory's copy."""
        with open(self.path, "rb") as fh:
            fh.seek(info.header_offset)
            fields = LOCAL_HEADER.unpack(fh.read(LOCAL_HEADER.size))
        if fields[0] != b"PK\x03\x04":
            raise DataError(error(f"'{self.path}': damaged zip member '{info.filename}'"))
        name_len, extra_len = fields[-2], fields[-1]
        return info.header_offset + LOCAL_HEADER.size + name_len + extra_len

    def close(self) -> None:
        self.zip.close()
