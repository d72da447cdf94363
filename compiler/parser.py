"""Parsing ``.cnn`` text into the typed AST of :mod:`cnnc.compiler.ast`.

Three steps, each with one job: Lark's LALR parser (grammar in ``grammar/cnn.lark``) with a
small post-lexer for line continuation, a Transformer that builds dataclasses, and a
translation of Lark's exceptions into located diagnostics with a hint.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from . import ast
from .diagnostics import SpecError, error
from .source import SourceFile

GRAMMAR = Path(__file__).resolve().parent.parent / "grammar" / "cnn.lark"
MAX_NESTING = 100


class _TooDeep(Exception):
    def __init__(self, token):
        self.token = token


class LineJoiner:
    """Post-lexer: a line break separates statements, except inside brackets or before a line
    that starts with ``|`` (pipeline continuation) or ``:`` (a shape assertion).

    Consecutive breaks (blank lines, comment-only lines) become one ``_NL`` token.
    """

    always_accept = ("_NL",)

    def process(self, stream):
        depth = 0
        pending = None
        for tok in stream:
            if tok.type == "_NL":
                if depth == 0 and pending is None:
                    pending = tok
                continue
            if pending is not None:
                if tok.type not in ("VBAR", "COLON"):
                    yield pending
                pending = None
            if tok.type == "LPAR":
                depth += 1
                if depth > MAX_NESTING:
                    raise _TooDeep(tok)
            elif tok.type == "RPAR":
                depth = max(0, depth - 1)
            yield tok
        if pending is not None:
            yield pending


@lru_cache(maxsize=1)
def _lark() -> Lark:
    return Lark(
        GRAMMAR.read_text(encoding="utf-8"),
        parser="lalr",
        lexer="basic",
        postlex=LineJoiner(),
        propagate_positions=True,
        maybe_placeholders=True,
        cache=True,
    )


def _pos(meta) -> ast.Pos:
    return ast.Pos(meta.line, meta.column, meta.end_line, meta.end_column)


def _tok_pos(tok: Token) -> ast.Pos:
    return ast.Pos(tok.line, tok.column, tok.end_line, tok.end_column)


@v_args(meta=True)
class _ToAst(Transformer):
    """Builds dataclasses bottom-up; no semantic checks here (they run on the AST)."""

    def start(self, meta, items):
        return ast.Module([i for i in items if i is not None])

    def import_stmt(self, meta, c):
        return ast.Import(c[0][1:-1], _pos(meta))

    def network_def(self, meta, c):
        name, *rest = c
        body = rest.pop()
        inputs = [i for i in rest if isinstance(i, ast.InputDecl)]
        params = [p for p in rest if isinstance(p, ast.Param)]
        return ast.Network(str(name), inputs, body, _pos(meta), params=params)

    def input_decl(self, meta, c):
        return ast.InputDecl(str(c[0]), c[1], _pos(meta))

    def block_def(self, meta, c):
        name, *rest = c
        body = rest.pop()
        return ast.Block(str(name), [p for p in rest if p is not None], body, _pos(meta))

    def param(self, meta, c):
        return ast.Param(str(c[0]), c[1], _pos(meta))

    def body(self, meta, c):
        return [s for s in c if s is not None]

    def assign(self, meta, c):
        return ast.Assign(str(c[0]), c[1], c[2], _pos(meta))

    def return_stmt(self, meta, c):
        return ast.Return(list(c), _pos(meta))

    def ret_item(self, meta, c):
        return ast.ReturnItem(c[0], c[1], _pos(meta))

    def shape(self, meta, c):
        tok = c[0]
        dims = tuple(int(d) for d in str(tok).split("x"))
        return ast.Shape(dims, _pos(meta))

    def pipeline(self, meta, c):
        return ast.Pipeline(_pos(meta), c[0], list(c[1:]))

    def stage(self, meta, c):
        name, args, repeat = c
        return ast.Call(_pos(meta), str(name), args or [], _tok_pos(name), repeat)

    def call(self, meta, c):
        name, args = c
        return ast.Call(_pos(meta), str(name), args or [], _tok_pos(name))

    def args(self, meta, c):
        return list(c)

    def pos_arg(self, meta, c):
        return ast.Arg(None, c[0], _pos(meta))

    def kw_arg(self, meta, c):
        return ast.Arg(str(c[0]), c[1], _pos(meta))

    def tuple(self, meta, c):
        return ast.TupleExpr(_pos(meta), [x for x in c if x is not None])

    def _binop(op):  # noqa: N805 - a small factory used in the class body
        def build(self, meta, c):
            return ast.BinOp(_pos(meta), op, c[0], c[1])

        return build

    add, sub, mul, floordiv = _binop("+"), _binop("-"), _binop("*"), _binop("//")

    def neg(self, meta, c):
        return ast.Neg(_pos(meta), c[0])

    def int_lit(self, meta, c):
        return ast.IntLit(_pos(meta), int(c[0]))

    def float_lit(self, meta, c):
        return ast.FloatLit(_pos(meta), float(c[0]))

    def true_lit(self, meta, c):
        return ast.BoolLit(_pos(meta), True)

    def false_lit(self, meta, c):
        return ast.BoolLit(_pos(meta), False)

    def name(self, meta, c):
        return ast.Name(_pos(meta), str(c[0]))


_READABLE = {
    "NAME": "a name",
    "INT": "an integer",
    "FLOAT": "a number",
    "DIMS": "a shape like 3x32x32",
    "STRING": 'a "quoted path"',
    "_NL": "end of line",
    "$END": "end of file",
    "LPAR": "'('",
    "RPAR": "')'",
    "LBRACE": "'{'",
    "RBRACE": "'}'",
    "COMMA": "','",
    "COLON": "':'",
    "EQUAL": "'='",
    "VBAR": "'|'",
    "STAR": "'*'",
    "PLUS": "'+'",
    "MINUS": "'-'",
    "SLASH": "'/'",
    "__ANON_0": "'//'",
    "RETURN": "'return'",
    "IMPORT": "'import'",
    "BLOCK": "'block'",
    "NETWORK": "'network'",
    "TRUE": "'true'",
    "FALSE": "'false'",
}


def _readable(names) -> str:
    shown = sorted({_READABLE.get(n, n.lower()) for n in names})
    if len(shown) > 6:
        shown = shown[:6] + ["..."]
    return ", ".join(shown)


def _describe(tok: Token) -> str:
    if tok.type == "$END":
        return "end of file"
    if tok.type == "_NL":
        return "end of line"
    return f"'{tok}'"


def _unclosed_paren(text: str, end: int) -> tuple[int, int] | None:
    """(line, column) of the last '(' still open at offset ``end``, skipping comments."""
    stack, line, col, i = [], 1, 1, 0
    while i < min(end, len(text)):
        ch = text[i]
        if ch == "#":
            while i < len(text) and text[i] != "\n":
                i += 1
            continue
        if ch == "(":
            stack.append((line, col))
        elif ch == ")" and stack:
            stack.pop()
        if ch == "\n":
            line, col = line + 1, 1
        else:
            col += 1
        i += 1
    return stack[-1] if stack else None


def _syntax_hint(exc: UnexpectedInput, src: SourceFile) -> str | None:
    """A hint for the mistakes people actually make."""
    expected = set(getattr(exc, "expected", ()) or ())
    offset = getattr(exc, "pos_in_stream", None)
    if isinstance(exc, UnexpectedToken) and exc.token.type != "$END":
        offset = exc.token.start_pos
    if offset is not None and "RPAR" in expected:
        opened = _unclosed_paren(src.text, offset)
        line = getattr(exc, "line", None)
        if opened and line and opened[0] < line:
            return f"the '(' at line {opened[0]}, column {opened[1]} is never closed"
    if isinstance(exc, UnexpectedCharacters):
        ch = src.text[exc.pos_in_stream] if exc.pos_in_stream < len(src.text) else ""
        if ch == ";":
            return "statements end at the end of the line; no ';' is needed"
        if ch == "[":
            return "tuples use parentheses: k=(3, 5)"
        if ch == "/":
            return "integer division is written '//'"
        if ch == '"':
            return "strings appear only after 'import'"
        return None
    tok = exc.token
    if tok.type == "NAME" and str(tok) == "x" and "VBAR" not in expected:
        return "write shapes without spaces: 3x224x224"
    if tok.type in ("NAME", "INT", "FLOAT") and "VBAR" in expected:
        return "separate pipeline stages with '|': x | conv(64, k=3) | relu"
    if tok.type in ("INT", "DIMS") and "LPAR" in expected:
        return "arguments go in parentheses: conv(64, k=3)"
    if tok.type == "DIMS":
        return "kernel, stride and padding pairs are tuples: k=(3, 5)"
    if tok.type == "$END" and "RBRACE" in expected:
        return "a '{' is never closed"
    if tok.type == "$END" and "RPAR" in expected:
        return "a '(' is never closed"
    if tok.type == "RBRACE" and "RPAR" in expected:
        return "a '(' is never closed before this '}'"
    if tok.type == "EQUAL":
        return "a binding is 'NAME = EXPR', one per line; keyword arguments go inside a call"
    if tok.type == "NAME" and str(tok) in ("def", "layer", "model", "fn", "function"):
        return "items are 'network NAME(...) { ... }' and 'block NAME(...) { ... }'"
    if "_NL" in expected and tok.type not in ("_NL", "$END"):
        return "put each statement on a line of its own"
    return None


def _syntax_error(exc: UnexpectedInput, src: SourceFile) -> SpecError:
    line = getattr(exc, "line", None) or len(src.lines)
    column = getattr(exc, "column", None) or 1
    if line < 1:
        line = len(src.lines)
        column = len(src.lines[-1]) + 1
    if isinstance(exc, UnexpectedCharacters):
        ch = src.text[exc.pos_in_stream] if exc.pos_in_stream < len(src.text) else "?"
        message = f"unexpected character {ch!r}"
    else:
        tok = exc.token
        if tok.type == "$END":
            line, column = len(src.lines), len(src.lines[-1]) + 1
        elif tok.type == "_NL":
            # point at the end of the line where the statement stopped
            line, column = tok.line, max(1, tok.column)
        message = f"syntax error: unexpected {_describe(tok)}"
        if exc.expected:
            message += f"; expected {_readable(exc.expected)}"
    width = 1
    if isinstance(exc, UnexpectedToken) and exc.token.type not in ("$END", "_NL"):
        width = len(str(exc.token))
    return SpecError(error(message, src.location(line, column, width), _syntax_hint(exc, src)))


def parse(src: SourceFile) -> ast.Module:
    """Parse one source file; raise :class:`SpecError` with a located diagnostic on failure."""
    try:
        tree = _lark().parse(src.text)
    except _TooDeep as deep:
        raise SpecError(
            error(
                f"brackets nested more than {MAX_NESTING} deep",
                src.location(deep.token.line, deep.token.column),
            )
        ) from None
    except (UnexpectedToken, UnexpectedCharacters, UnexpectedEOF) as exc:
        raise _syntax_error(exc, src) from None
    try:
        module = _ToAst().transform(tree)
    except RecursionError:
        raise SpecError(error("expression nested too deeply", src.location(1, 1))) from None
    for item in module.items:
        if isinstance(item, (ast.Block, ast.Network)):
            item.file = src.name
    return module
