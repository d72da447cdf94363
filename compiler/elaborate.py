"""Elaboration: evaluate a network's statements, expand blocks, check and cost every layer.

Errors are collected, not thrown to the user one by one: a failing statement records one
diagnostic and binds a poison value that later statements pass along silently, so several
independent mistakes are reported in one run without cascades.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from difflib import get_close_matches
from math import prod

from . import ast
from .diagnostics import Diagnostic, Location
from .network import Instance, Layer, Network
from .ops import (
    ALIASES,
    OPS,
    RF,
    WORDS,
    ArgError,
    ShapeError,
    bind_args,
    fmt_shape,
    match_arguments,
)

MAX_LAYERS = 100_000
MAX_REPEAT = 10_000
MAX_DEPTH = 64
MAX_ELEMENTS = 2**31 - 1  # per tensor and sample: int32 indexing stays safe
MAX_PARAMS = 2**34
MAX_INT = 2**40


class _Poison:
    """The value of a binding whose statement failed; using it reports nothing more."""

    def __repr__(self):
        return "<error>"


POISON = _Poison()


class _Fail(Exception):
    def __init__(self, diagnostic: Diagnostic):
        self.diagnostic = diagnostic


class _Fatal(Exception):
    def __init__(self, diagnostic: Diagnostic):
        self.diagnostic = diagnostic


@dataclass
class _Frame:
    """One body being evaluated: a network's or a block instance's."""

    instance: Instance
    env: dict
    file: str
    used: set = field(default_factory=set)
    stmt_items: list = field(default_factory=list)
    call_site: Location | None = None
    block_name: str | None = None


class Elaborator:
    """Turns one network definition into a checked :class:`Network`."""

    def __init__(self, program, strict: bool = False):
        self.program = program
        self.strict = strict
        self.diagnostics: list[Diagnostic] = []
        self._seen = set()
        self.layers: list[Layer] = []
        self.instances: list[Instance] = []
        self.total_params = 0
        self.stack: list[str] = []

    # ---- diagnostics ------------------------------------------------------------------

    def loc(self, file: str, pos: ast.Pos | None) -> Location | None:
        if pos is None:
            return None
        return self.program.sources[file].location(pos.line, pos.column, pos.width)

    def fail(self, frame: _Frame, pos, message: str, hint: str | None = None):
        raise _Fail(Diagnostic("error", message, self.loc(frame.file, pos), hint))

    def report(self, diagnostic: Diagnostic, frame: _Frame | None = None):
        if frame is not None and frame.block_name and frame.call_site:
            diagnostic.notes.append(
                f"in block '{frame.block_name}' called at {frame.call_site.file}:"
                f"{frame.call_site.line}:{frame.call_site.column}"
            )
        loc = diagnostic.location
        key = (loc.file, loc.line, loc.column, diagnostic.message) if loc else diagnostic.message
        if key not in self._seen:
            self._seen.add(key)
            self.diagnostics.append(diagnostic)

    # ---- networks ---------------------------------------------------------------------

    def network(self, netdef: ast.Network, overrides: dict | None = None) -> Network | None:
        root = Instance(netdef.name, {}, None, self.loc(netdef.file, netdef.pos))
        frame = _Frame(root, {}, netdef.file)
        parameters = self.network_params(frame, netdef, overrides or {})
        inputs = {}
        for decl in netdef.inputs:
            try:
                shape = self.declared_shape(frame, decl.shape, "input")
            except _Fail as f:
                self.report(f.diagnostic)
                frame.env[decl.name] = POISON
                continue
            if decl.name in inputs:
                self.report(
                    Diagnostic(
                        "error",
                        f"input '{decl.name}' is declared twice",
                        self.loc(frame.file, decl.pos),
                    )
                )
                continue
            layer = Layer(
                "input",
                {},
                [],
                shape,
                root,
                self.loc(frame.file, decl.pos),
                label="input",
                local=decl.name,
                rf=RF.unit() if len(shape) == 3 else None,
            )
            inputs[decl.name] = layer
            frame.env[decl.name] = layer
            frame.used.add(decl.name)
        try:
            returned = self.body(frame, netdef.body, netdef.pos, is_block=False)
        except _Fatal as fatal:
            self.report(fatal.diagnostic)
            return None
        if returned is None or any(v is POISON for _, v in returned) or self.diagnostics_errors():
            return None
        outputs = {}
        for name, value in returned:
            if not isinstance(value, Layer):  # e.g. `return 3`: outputs are tensors
                self.report(
                    Diagnostic(
                        "error",
                        f"network '{netdef.name}' returns {value!r} as output '{name}'; "
                        "a network returns tensors",
                        self.loc(netdef.file, netdef.pos),
                    )
                )
                return None
            outputs[name] = value
        return Network(
            netdef.name,
            netdef.file,
            inputs,
            self.layers,
            outputs,
            self.instances,
            self.loc(netdef.file, netdef.pos),
            parameters,
        )

    def network_params(self, frame: _Frame, netdef: ast.Network, overrides: dict) -> dict:
        """Bind each network parameter to its default or its override (``--set``), checking
        that it is a number of the default's kind."""
        values = {}
        for param in netdef.params:
            try:
                default = self.eval(frame, param.default) if param.default else POISON
                if default is POISON:
                    raise _Fail(Diagnostic("error", "bad default", self.loc(frame.file, param.pos)))
                if isinstance(default, bool) or not isinstance(default, (int, float)):
                    self.fail(
                        frame,
                        param.default.pos,
                        f"network parameter '{param.name}' must default to a number, "
                        f"got {_describe(default)}",
                    )
                value = default
                if param.name in overrides:
                    value = _coerce(overrides[param.name], default)
                    if value is None:
                        self.fail(frame, param.pos, _refused(param.name, overrides, default))
            except _Fail as f:
                self.report(f.diagnostic)
                value = POISON
            frame.env[param.name] = value
            frame.used.add(param.name)
            values[param.name] = value
        return values

    def diagnostics_errors(self) -> bool:
        return any(d.severity == "error" for d in self.diagnostics)

    def declared_shape(self, frame: _Frame, shape: ast.Shape, what: str) -> tuple:
        dims = shape.dims
        if len(dims) not in (1, 3):
            hint = (
                ("add the channel count, e.g. 1x" + fmt_shape(dims))
                if len(dims) == 2
                else "shapes are CxHxW for feature maps or N for vectors; the batch is never "
                "written"
            )
            self.fail(
                frame,
                shape.pos,
                f"{what} shape {fmt_shape(dims)} has {len(dims)} "
                "dimensions; expected 3 (CxHxW) or 1 (N)",
                hint,
            )
        if min(dims) < 1:
            self.fail(frame, shape.pos, f"{what} shape {fmt_shape(dims)} has a zero dimension")
        if prod(dims) > MAX_ELEMENTS:
            self.fail(
                frame,
                shape.pos,
                f"{what} shape {fmt_shape(dims)} has {prod(dims):,} "
                f"elements per sample; the limit is {MAX_ELEMENTS:,}",
            )
        return dims

    # ---- bodies and statements --------------------------------------------------------

    def body(self, frame: _Frame, stmts: list, pos: ast.Pos, is_block: bool):
        """Run statements; return [(output name, value)] from the return statement."""
        returned = None
        for stmt in stmts:
            if returned is not None:
                self.report(
                    Diagnostic(
                        "error",
                        "statement after 'return' is never reached",
                        self.loc(frame.file, stmt.pos),
                        "'return' must be the last statement of a body",
                    ),
                    frame,
                )
                break
            if isinstance(stmt, ast.Assign):
                frame.env[stmt.name] = self.statement(frame, stmt.name, stmt.value, stmt.shape)
            else:
                if is_block and len(stmt.items) != 1:
                    self.report(
                        Diagnostic(
                            "error",
                            f"a block returns exactly one tensor, this returns {len(stmt.items)}",
                            self.loc(frame.file, stmt.pos),
                        ),
                        frame,
                    )
                    return [("out", POISON)]
                returned = []
                many = len(stmt.items) > 1
                for i, item in enumerate(stmt.items):
                    if isinstance(item.value, ast.Name):
                        name = item.value.name
                    else:
                        name = f"out{i + 1}" if many else "out"
                    value = self.statement(frame, name, item.value, item.shape)
                    if not is_block and name in (n for n, _ in returned):
                        name = f"{name}_{i + 1}"
                    returned.append((name, value))
        if returned is None:
            kind = "block" if is_block else "network"
            self.report(
                Diagnostic(
                    "error",
                    f"this {kind} has no 'return' statement",
                    self.loc(frame.file, pos),
                    "end the body with 'return EXPR'",
                ),
                frame,
            )
            return [("out", POISON)] if is_block else None
        return returned

    def statement(self, frame: _Frame, binding: str, expr: ast.Expr, shape: ast.Shape | None):
        """Evaluate one binding or returned expression, then name what it created."""
        frame.stmt_items = []
        try:
            value = self.eval(frame, expr)
            if shape is not None and value is not POISON:
                declared = self.declared_shape(frame, shape, "declared")
                actual = self.tensor_of(frame, value, expr.pos, "a shape assertion").shape
                if actual != declared:
                    self.fail(
                        frame,
                        shape.pos,
                        f"shape assertion failed: '{binding}' is {fmt_shape(actual)}, "
                        f"but {fmt_shape(declared)} was declared",
                    )
        except _Fail as f:
            self.report(f.diagnostic, frame)
            value = POISON
        finally:
            self.name_items(frame, binding)
        return value

    def name_items(self, frame: _Frame, binding: str):
        """Stable names: ``binding.op``, numbered when a statement has several of one op."""
        items = frame.stmt_items
        frame.stmt_items = []
        counts: dict[str, int] = {}
        for item in items:
            kind = item.op if isinstance(item, Layer) else item.block
            counts[kind] = counts.get(kind, 0) + 1
        seen: dict[str, int] = {}
        for item in items:
            kind = item.op if isinstance(item, Layer) else item.block
            seen[kind] = seen.get(kind, 0) + 1
            local = f"{binding}.{kind}" + (str(seen[kind]) if counts[kind] > 1 else "")
            unique, n = local, 1
            while unique in frame.used:
                n += 1
                unique = f"{local}_{n}"
            frame.used.add(unique)
            item.local = unique

    # ---- expressions ------------------------------------------------------------------

    def eval(self, frame: _Frame, expr: ast.Expr):
        if isinstance(expr, (ast.IntLit, ast.FloatLit, ast.BoolLit)):
            return expr.value
        if isinstance(expr, ast.Name):
            return self.lookup(frame, expr)
        if isinstance(expr, ast.TupleExpr):
            items = tuple(self.eval(frame, e) for e in expr.items)
            return POISON if POISON in items else items
        if isinstance(expr, ast.Neg):
            v = self.number(frame, self.eval(frame, expr.operand), expr.operand.pos)
            return v if v is POISON else -v
        if isinstance(expr, ast.BinOp):
            return self.arith(frame, expr)
        if isinstance(expr, ast.Call):
            return self.call(frame, expr, None)
        if isinstance(expr, ast.Pipeline):
            value = self.eval(frame, expr.head)
            for stage in expr.stages:
                times = 1 if stage.repeat is None else self.repeat_count(frame, stage.repeat)
                if times is POISON:
                    return POISON
                for _ in range(times):
                    value = self.call(frame, stage, value)
            return value
        raise AssertionError(f"unknown expression {expr!r}")

    def lookup(self, frame: _Frame, expr: ast.Name):
        name = expr.name
        if name in frame.env:
            return frame.env[name]
        if name in WORDS:
            return name
        if name in OPS or name in self.program.blocks:
            self.fail(
                frame,
                expr.pos,
                f"'{name}' is an op, not a value",
                f"apply it to a tensor: x | {name}"
                + ("(...)" if name in OPS and OPS[name].args else ""),
            )
        close = get_close_matches(name, list(frame.env) + list(WORDS), n=1)
        kind = "tensor or parameter" if frame.env else "name"
        self.fail(
            frame,
            expr.pos,
            f"unknown {kind} '{name}'",
            f"did you mean '{close[0]}'?"
            if close
            else "names must be bound ('name = ...') before they are used",
        )

    def number(self, frame, value, pos):
        if value is POISON:
            return POISON
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            what = "a tensor" if isinstance(value, Layer) else repr(value)
            hint = "use add(a, b) to sum tensors" if isinstance(value, Layer) else None
            self.fail(frame, pos, f"arithmetic needs numbers, got {what}", hint)
        return value

    def arith(self, frame: _Frame, expr: ast.BinOp):
        left = self.number(frame, self.eval(frame, expr.left), expr.left.pos)
        right = self.number(frame, self.eval(frame, expr.right), expr.right.pos)
        if POISON in (left, right):
            return POISON
        if expr.op == "//":
            if not (isinstance(left, int) and isinstance(right, int)):
                self.fail(frame, expr.pos, "'//' is integer division; both sides must be integers")
            if right == 0:
                self.fail(frame, expr.right.pos, "division by zero")
            result = left // right
        elif expr.op == "+":
            result = left + right
        elif expr.op == "-":
            result = left - right
        else:
            result = left * right
        if abs(result) > MAX_INT:
            self.fail(frame, expr.pos, f"number {result:.3g} is absurdly large")
        return result

    def repeat_count(self, frame: _Frame, expr: ast.Expr) -> int:
        n = self.eval(frame, expr)
        if n is POISON:  # its cause is reported already: a --set value, a failed binding
            return POISON
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            self.fail(
                frame,
                expr.pos,
                f"repeat count must be a non-negative integer, got {n!r}",
                "'* 0' skips the stage",
            )
        if n > MAX_REPEAT:
            self.fail(frame, expr.pos, f"repeat count {n:,} is absurd (limit {MAX_REPEAT:,})")
        return n

    def tensor_of(self, frame: _Frame, value, pos, what: str) -> Layer:
        if isinstance(value, Layer):
            return value
        self.fail(frame, pos, f"{what} needs a tensor, got {_describe(value)}")

    # ---- calls ------------------------------------------------------------------------

    def call(self, frame: _Frame, call: ast.Call, piped):
        name = call.name
        positional, keywords, arg_pos = [], {}, {}
        if piped is not None:
            positional.append(piped)
            arg_pos[0] = call.name_pos
        for arg in call.args:
            value = self.eval(frame, arg.value)
            if arg.key is None:
                if keywords:
                    self.fail(frame, arg.pos, "positional argument after a keyword argument")
                arg_pos[len(positional)] = arg.value.pos
                positional.append(value)
            else:
                if arg.key in keywords:
                    self.fail(frame, arg.pos, f"argument '{arg.key}' given twice")
                arg_pos[arg.key] = arg.pos
                keywords[arg.key] = value
        if POISON in positional or POISON in keywords.values():
            return POISON
        if name in OPS:
            return self.apply_op(frame, call, OPS[name], positional, keywords, arg_pos)
        if name in self.program.blocks:
            return self.expand(
                frame, call, self.program.blocks[name], positional, keywords, arg_pos
            )
        if name in self.program.networks:
            return self.expand(
                frame, call, self.program.networks[name], positional, keywords, arg_pos
            )
        if name in frame.env:
            self.fail(
                frame,
                call.name_pos,
                f"'{name}' is a {_describe(frame.env[name])}, not an op or block",
            )
        candidates = list(OPS) + list(self.program.blocks)
        guess = ALIASES.get(name.lower()) or next(
            iter(get_close_matches(name, candidates, n=1)), None
        )
        self.fail(
            frame,
            call.name_pos,
            f"unknown op or block '{name}'",
            f"did you mean '{guess}'?" if guess else "built-in ops: " + ", ".join(sorted(OPS)),
        )

    def apply_op(self, frame, call, op, positional, keywords, arg_pos):
        arity = op.arity
        if arity is None:
            tensors, rest = positional, []
            if keywords:
                key = next(iter(keywords))
                self.fail(frame, arg_pos[key], f"{op.name} takes only tensors, got '{key}='")
        else:
            count = arity
            while (
                count < arity + op.optional_tensors
                and count < len(positional)
                and isinstance(positional[count], Layer)
            ):
                count += 1
            tensors, rest = positional[:count], positional[count:]
        if not tensors or len(tensors) < (arity or 1):
            need = f"{arity} tensors" if arity and arity > 1 else "a tensor"
            self.fail(
                frame,
                call.name_pos,
                f"{op.name} needs {need} as input",
                f"pipe one in: x | {op.name}" if arity == 1 else None,
            )
        for index, value in enumerate(tensors):
            if not isinstance(value, Layer):
                self.fail(
                    frame,
                    arg_pos.get(index, call.pos),
                    f"{op.name} needs a tensor as input {index + 1}, got {_describe(value)}",
                    f"write {op.name}(64, ...) after a '|': x | {op.name}(...)"
                    if index == 0 and op.args
                    else None,
                )
        shapes = [t.shape for t in tensors]
        try:
            args = bind_args(op, rest, keywords)
            args = op.resolve(shapes, args)
            shape = op.check(shapes, args, self.strict)
        except ArgError as exc:
            where = arg_pos.get(exc.arg, call.name_pos) if exc.arg else call.name_pos
            if exc.arg in [a.name for a in op.args] and exc.arg not in keywords:
                index = [a.name for a in op.args].index(exc.arg) + len(tensors)
                where = arg_pos.get(index, where)
            message = str(exc)
            self.fail(
                frame,
                where,
                message if message.startswith(op.name) else f"{op.name}: {message}",
                exc.hint,
            )
        except ShapeError as exc:
            message = str(exc)
            if not message.startswith(op.name):
                message = f"{op.name}: {message}"
            if not all(fmt_shape(s) in message for s in shapes):
                message += " (input " + ", ".join(fmt_shape(s) for s in shapes) + ")"
            self.fail(frame, call.name_pos, message, exc.hint)
        if min(shape) < 1 or prod(shape) > MAX_ELEMENTS:
            self.fail(
                frame,
                call.name_pos,
                f"{op.name} output {fmt_shape(shape)} is absurd "
                f"({prod(shape):,} elements per sample; limit {MAX_ELEMENTS:,})",
            )
        rfs = [t.rf for t in tensors]
        layer = Layer(
            op.name,
            args,
            list(tensors),
            shape,
            frame.instance,
            self.loc(frame.file, call.pos),
            label=op.label(args),
            weights=op.weights(shapes, args),
            buffers=op.buffers(shapes, args),
            macs=op.macs(shapes, shape, args),
            rf=None if any(r is None for r in rfs) else op.rf(rfs, shapes, args),
        )
        self.total_params += layer.params
        if self.total_params > MAX_PARAMS:
            raise _Fatal(
                Diagnostic(
                    "error", f"network has more than {MAX_PARAMS:,} parameters", layer.location
                )
            )
        self.layers.append(layer)
        if len(self.layers) > MAX_LAYERS:
            raise _Fatal(
                Diagnostic(
                    "error",
                    f"network expands to more than {MAX_LAYERS:,} layers",
                    layer.location,
                    "check the repeat counts ('* N') of this network",
                )
            )
        frame.stmt_items.append(layer)
        return layer

    def expand(self, frame, call, definition, positional, keywords, arg_pos):
        """Expand a block (or a single-output network used as a block) in place."""
        is_net = isinstance(definition, ast.Network)
        name = definition.name
        if name in self.stack:
            chain = " -> ".join(self.stack[self.stack.index(name) :] + [name])
            self.fail(
                frame,
                call.name_pos,
                f"block '{name}' calls itself ({chain}); blocks cannot recurse",
            )
        if len(self.stack) >= MAX_DEPTH:
            self.fail(frame, call.name_pos, f"blocks nested more than {MAX_DEPTH} deep")
        params = (
            [ast.Param(d.name, None, d.pos) for d in definition.inputs] + definition.params
            if is_net
            else definition.params
        )
        try:
            values = match_arguments(
                f"'{name}'", [p.name for p in params], positional, keywords, noun="parameter"
            )
        except ArgError as exc:
            self.fail(frame, arg_pos.get(exc.arg, call.pos), str(exc), exc.hint)
        call_loc = self.loc(frame.file, call.name_pos)
        instance = Instance(name, {}, frame.instance, call_loc)
        inner = _Frame(instance, {}, definition.file, call_site=call_loc, block_name=name)
        for param in params:
            if param.name in values:
                inner.env[param.name] = values[param.name]
            elif param.default is not None:
                inner.env[param.name] = self.eval(inner, param.default)
            else:
                self.fail(frame, call.pos, f"'{name}' is missing its argument '{param.name}'")
        if is_net:
            for decl in definition.inputs:
                value = inner.env[decl.name]
                tensor = self.tensor_of(
                    frame, value, call.pos, f"input '{decl.name}' of network '{name}'"
                )
                if tensor.shape != decl.shape.dims:
                    self.fail(
                        frame,
                        call.pos,
                        f"network '{name}' expects {decl.name}: "
                        f"{fmt_shape(decl.shape.dims)}, got {fmt_shape(tensor.shape)}",
                    )
        instance.args = {k: v for k, v in inner.env.items() if not isinstance(v, Layer)}
        inner.used.update(inner.env)
        frame.stmt_items.append(instance)
        self.instances.append(instance)
        self.stack.append(name)
        try:
            returned = self.body(inner, definition.body, definition.pos, is_block=not is_net)
        finally:
            self.stack.pop()
        if returned is None:
            return POISON
        if len(returned) != 1:
            self.fail(
                frame,
                call.pos,
                f"network '{name}' has {len(returned)} outputs; only a "
                "single-output network can be used as a block",
            )
        return returned[0][1]


def _refused(name: str, overrides: dict, default) -> str:
    """Why ``--set NAME=VALUE`` cannot be used: too large, or not of the default's kind."""
    text = str(overrides[name]).strip()
    shown = text if len(text) <= 24 else f"{text[:20]}...({len(text)} characters)"
    if isinstance(default, int) and re.fullmatch(r"[+-]?\d+", text):
        return (
            f"network parameter {name}={shown}: too large; '{name}' is an integer up to {MAX_INT:,}"
        )
    kind = "an integer" if isinstance(default, int) else "a number"
    return f"network parameter {name}={shown}: '{name}' is {kind} (default {default})"


def _coerce(value, default):
    """``value`` (a number, or its text from ``--set``) as the default's kind, or None."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if value != value or value in (float("inf"), float("-inf")):
        return None
    if isinstance(default, int):
        return value if isinstance(value, int) and abs(value) <= MAX_INT else None
    return float(value)


def _describe(value) -> str:
    if isinstance(value, Layer):
        return f"tensor of shape {fmt_shape(value.shape)}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"the word '{value}'"
    if isinstance(value, tuple):
        return f"the tuple {value}"
    return f"the number {value}"
