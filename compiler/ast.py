"""Typed syntax tree of a ``.cnn`` file. Every node knows where it came from (``pos``)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Pos:
    line: int
    column: int
    end_line: int
    end_column: int

    @property
    def width(self) -> int:
        return self.end_column - self.column if self.end_line == self.line else 1


# ---- expressions -------------------------------------------------------------------------


@dataclass
class Expr:
    pos: Pos


@dataclass
class IntLit(Expr):
    value: int


@dataclass
class FloatLit(Expr):
    value: float


@dataclass
class BoolLit(Expr):
    value: bool


@dataclass
class Name(Expr):
    name: str


@dataclass
class TupleExpr(Expr):
    items: list[Expr]


@dataclass
class BinOp(Expr):
    op: str  # '+', '-', '*', '//'
    left: Expr
    right: Expr


@dataclass
class Neg(Expr):
    operand: Expr


@dataclass
class Arg:
    key: str | None
    value: Expr
    pos: Pos


@dataclass
class Call(Expr):
    """``f(args)`` or, as a pipeline stage, ``f`` / ``f(args)`` with ``* repeat``."""

    name: str
    args: list[Arg]
    name_pos: Pos
    repeat: Expr | None = None


@dataclass
class Pipeline(Expr):
    head: Expr
    stages: list[Call]


# ---- statements and items ----------------------------------------------------------------


@dataclass
class Shape:
    dims: tuple[int, ...]
    pos: Pos


@dataclass
class Assign:
    name: str
    value: Expr
    shape: Shape | None
    pos: Pos


@dataclass
class ReturnItem:
    value: Expr
    shape: Shape | None
    pos: Pos


@dataclass
class Return:
    items: list[ReturnItem]
    pos: Pos


@dataclass
class Param:
    name: str
    default: Expr | None
    pos: Pos


@dataclass
class InputDecl:
    name: str
    shape: Shape
    pos: Pos


@dataclass
class Block:
    name: str
    params: list[Param]
    body: list
    pos: Pos
    file: str = ""


@dataclass
class Network:
    name: str
    inputs: list[InputDecl]
    body: list
    pos: Pos
    file: str = ""
    params: list[Param] = field(default_factory=list)  # numeric parameters with defaults


@dataclass
class Import:
    path: str
    pos: Pos


@dataclass
class Module:
    items: list = field(default_factory=list)
