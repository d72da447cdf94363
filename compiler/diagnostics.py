"""Compiler-grade diagnostics: ``FILE:LINE:COL: error: MESSAGE``, the source line, a caret, a hint.

Every problem a user can cause becomes a :class:`Diagnostic`; a failed check raises
:class:`CnncError` carrying all of them, so callers (the CLI, embedding tools) decide how to show
them. Nothing here prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
        head = f"{loc.file}:{loc.line}:{loc.column}: " if loc else "cnnc: "
        lines = [f"{head}{self.severity}: {self.message}"]
        if loc and loc.source_line:
            text = loc.source_line.rstrip("\r\n").expandtabs(1)
            lines.append(f"    {text}")
            width = max(1, min(loc.width, len(text) - loc.column + 1))
            lines.append("    " + " " * (loc.column - 1) + "^" + "~" * (width - 1))
        lines.extend(f"  note: {note}" for note in self.notes)
        if self.hint:
            lines.append(f"  hint: {self.hint}")
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
        return "\n".join(d.format() for d in self.diagnostics)

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
