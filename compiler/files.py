"""Writing files so that a failure never leaves a partial or clobbered output behind."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .diagnostics import ResourceError, error


def write_atomically(path: Path, data: bytes):
    """Write to a temporary file beside ``path``, then rename it into place."""
    write_all_atomically({path: data})


def write_all_atomically(files: dict[Path, bytes]):
    """Write several files as one: each is staged in a temporary file beside its target, and
    only when all are staged are they renamed into place. A failure while staging (a full
    disk, a folder that cannot be written) replaces nothing and leaves no temporary."""
    staged: list[tuple[str, Path]] = []
    try:
        for path, data in files.items():
            staged.append((_stage(Path(path), data), Path(path)))
        for tmp, path in staged:
            try:
                os.replace(tmp, path)
            except OSError as exc:
                raise ResourceError(
                    error(f"cannot write '{path}': {exc.strerror or exc}")
                ) from None
    finally:
        for tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)  # a no-op for those renamed into place


def _stage(path: Path, data: bytes) -> str:
    """``data`` in a new temporary file beside ``path``, with a regular file's permissions."""
    directory = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise ResourceError(error(f"cannot write '{path}': it is a directory"))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    except OSError as exc:
        raise ResourceError(error(f"cannot write '{path}': {exc.strerror or exc}")) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise ResourceError(error(f"cannot write '{path}': {exc.strerror or exc}")) from None
    return tmp
