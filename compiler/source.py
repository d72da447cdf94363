"""Reading spec files: UTF-8 decoding with a located error, and line lookup for carets."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .diagnostics import Location, SpecError, error

MAX_SOURCE_BYTES = 4 * 1024 * 1024


@dataclass
class SourceFile:
    """The text of one spec and its display name."""

    name: str
    text: str
    path: Path | None = None

    def __post_init__(self):
        self.lines = self.text.splitlines(keepends=False) or [""]

    def location(self, line: int, column: int, width: int = 1) -> Location:
        source = self.lines[line - 1] if 0 < line <= len(self.lines) else ""
        return Location(self.name, line, column, source, width)

    @classmethod
    def from_path(cls, path: str | Path, display: str | None = None) -> SourceFile:
        path = Path(path)
        name = display or str(path)
        data = read_limited(path, name, MAX_SOURCE_BYTES, "specs", SpecError)
        return cls(name, decode_utf8(data, name), path.resolve())


def read_limited(path: Path, name: str, limit: int, what: str, exc_type) -> bytes:
    """Read a regular file of at most ``limit`` bytes. The size and the file type are checked
    before reading, and no more than ``limit + 1`` bytes are ever read, so a device
    (``/dev/zero``), a FIFO or a file that grows while read can neither hang nor fill memory."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise exc_type(error(f"cannot read '{name}': no such file")) from None
    except OSError as exc:
        raise exc_type(error(f"cannot read '{name}': {exc.strerror or exc}")) from None
    if stat.S_ISDIR(info.st_mode):
        raise exc_type(error(f"cannot read '{name}': it is a directory"))
    if not stat.S_ISREG(info.st_mode):
        raise exc_type(error(f"cannot read '{name}': not a regular file (a device or a pipe)"))
    too_big = error(f"'{name}' is over {limit:,} bytes; {what} are limited to {limit:,}")
    if info.st_size > limit:
        raise exc_type(too_big)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise exc_type(error(f"cannot read '{name}': {exc.strerror or exc}")) from None
    if len(data) > limit:
        raise exc_type(too_big)
    return data


def decode_utf8(data: bytes, name: str) -> str:
    """Decode spec bytes, pointing at the first byte that is not UTF-8."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[: exc.start]
        line = before.count(b"\n") + 1
        column = exc.start - (before.rfind(b"\n") + 1) + 1
        shown = data.split(b"\n")[line - 1].decode("utf-8", "replace")
        raise SpecError(
            error(
                f"invalid UTF-8 byte 0x{data[exc.start]:02x}; specs must be UTF-8 text",
                Location(name, line, column, shown),
                "re-save the file as UTF-8",
            )
        ) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    if "\x00" in text:
        at = text.index("\x00")
        line = text.count("\n", 0, at) + 1
        column = at - (text.rfind("\n", 0, at) + 1) + 1
        raise SpecError(
            error("NUL byte in spec; is this a binary file?", Location(name, line, column))
        )
    return text
