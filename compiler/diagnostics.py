"""Compiler-grade diagnostics: ``FILE:LINE:COL: error: MESSAGE``, the source line, a caret, a hint.

Every problem a user can cause becomes a :class:`Diagnostic`; a failed check raises
:class:`CnncError` carrying all of them, so callers (the CLI, embedding tools) decide how to show
them. Nothing here prints.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field

#: At most this many diagnostics are shown as text (all stay in ``CnncError.diagnostics`` and
#: in ``cnnc check --json``); the rest are counted.
MAX_SHOWN = 20
#: A quoted source line is cut to about this many characters around the caret.
MAX_LINE = 120
#: A message, hint or note is cut to this many characters.
MAX_TEXT = 500
#: Characters never written to a terminal as they are: controls (escape sequences retitle
#: the window or recolour it), format characters (bidirectional overrides reorder what is
#: shown), line and paragraph separators, surrogates.
_HIDDEN = {"Cc", "Cf", "Zl", "Zp", "Cs"}


def printable(text: str) -> str:
    """``text`` with every control or format character escaped (``\\x1b``, ``\\u202e``)."""
    if text.isprintable():
        return text
    return "".join(
        ch.encode("unicode_escape").decode("ascii") if unicodedata.category(ch) in _HIDDEN else ch
        for ch in text
    )


def clip(text: str, limit: int = MAX_TEXT) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit:,} more characters)"


def format_diagnostics(diagnostics: list, limit: int = MAX_SHOWN) -> str:
    """The first ``limit`` diagnostics as text, then how many more there are."""
    shown = [d.format() for d in diagnostics[:limit]]
    if len(diagnostics) > limit:
        more = len(diagnostics) - limit
        errors = sum(1 for d in diagnostics if d.severity == "error")
        shown.append(
            f"cnnc: {more:,} more diagnostic{'s' if more != 1 else ''} not shown "
            f"({errors:,} errors in all; --json lists every one)"
        )
    return "\n".join(shown)


@dataclass(frozen=True)
class Location:
    """A position in a source file (1-based line and column)."""

    file: str
    line: int
    column: int
    source_line: str = ""
    width: int = 1


@dataclass
class Diagnostic:
    """One error or warning, with where it happened and how to fix it."""

    severity: str
    message: str
    location: Location | None = None
    hint: str | None = None
    notes: list[str] = field(default_factory=list)

    def format(self) -> str:
        """Render as a compiler would: header, source line, caret, hint."""
        loc = self.location
        head = f"{clip(printable(loc.file))}:{loc.line}:{loc.column}: " if loc else "cnnc: "
        lines = [f"{head}{self.severity}: {clip(printable(self.message))}"]
        if loc and loc.source_line:
            lines.extend(_quote(loc.source_line, loc.column, loc.width))
        lines.extend(f"  note: {clip(printable(note))}" for note in self.notes)
        if self.hint:
            lines.append(f"  hint: {clip(printable(self.hint))}")
        return "\n".join(lines)

    def to_json(self) -> dict:
        loc = self.location
        return {
            "severity": self.severity,
            "file": loc.file if loc else None,
            "line": loc.line if loc else None,
            "column": loc.column if loc else None,
            "message": self.message + (f" (hint: {self.hint})" if self.hint else ""),
        }


def _quote(source_line: str, column: int, width: int) -> list[str]:
    """The source line, escaped and cut to a window around the caret, and the caret line
    under it: ``column`` and ``width`` count characters of the raw line."""
    raw = source_line.rstrip("\r\n")
    column = max(1, min(column, len(raw) + 1))
    width = max(1, min(width, len(raw) - column + 1))
    before = printable(raw[: column - 1].expandtabs(1))
    marked = printable(raw[column - 1 : column - 1 + width].expandtabs(1)) or " "
    after = printable(raw[column - 1 + width :].expandtabs(1))
    # a window of MAX_LINE characters: up to a third before the caret, the rest after it
    keep_before = min(len(before), max(MAX_LINE // 3, MAX_LINE - len(marked) - len(after)))
    left = "..." if keep_before < len(before) else ""
    before = before[len(before) - keep_before :]
    marked_shown = marked[: max(1, MAX_LINE - keep_before)]
    room = max(0, MAX_LINE - keep_before - len(marked_shown))
    right = "..." if room < len(after) or len(marked_shown) < len(marked) else ""
    after = after[:room]
    text = f"{left}{before}{marked_shown}{after}{right}"
    caret = " " * (len(left) + len(before)) + "^" + "~" * (len(marked_shown) - 1)
    return [f"    {text.rstrip()}", f"    {caret}"]


class CnncError(Exception):
    """Raised when a spec, a data file or a request cannot be honoured.

    ``diagnostics`` holds every problem found (several independent ones per run).
    """

    def __init__(self, diagnostics: list[Diagnostic] | Diagnostic | str):
        if isinstance(diagnostics, str):
            diagnostics = Diagnostic("error", diagnostics)
        if isinstance(diagnostics, Diagnostic):
            diagnostics = [diagnostics]
        self.diagnostics = list(diagnostics)
        super().__init__(self.format())

    def format(self) -> str:
        return format_diagnostics(self.diagnostics)

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]


class SpecError(CnncError):
    """A problem in a ``.cnn`` spec (syntax, names, types, shapes)."""


class DataError(CnncError):
    """A problem in a data file: weights, inputs, outputs."""


class ResourceError(CnncError):
    """A request the machine cannot honour (memory, missing device or binary)."""


class UsageError(CnncError):
    """The command was used wrongly (exit status 2)."""


class CnncWarning(UserWarning):
    """Something a run can go on with but the user should know (e.g. NaN weights)."""


def error(message: str, location: Location | None = None, hint: str | None = None) -> Diagnostic:
    return Diagnostic("error", message, location, hint)
