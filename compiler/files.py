"""Writing files so that a failure never leaves a partial or clobbered output behind."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .diagnostics import ResourceError, error


def write_atomically(path: Path, data: bytes):
    """Write to a temporary file beside ``path``, then rename it into place."""
    directory = path.parent if str(path.parent) else Path(".")
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
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise ResourceError(error(f"cannot write '{path}': {exc.strerror or exc}")) from None
