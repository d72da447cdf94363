"""Loading a spec and its imports, then checking its networks.

A :class:`Program` knows every file it read (for carets), every block and network visible
from the root file, and which networks the root file itself defines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from difflib import get_close_matches
from pathlib import Path

from . import ast
from .diagnostics import Diagnostic, SpecError, error
from .elaborate import Elaborator
from .network import Network
from .ops import OPS
from .parser import parse
from .source import SourceFile

MAX_IMPORT_DEPTH = 32


@dataclass
class CheckResult:
    """Networks that checked cleanly, and every diagnostic (errors and warnings)."""

    networks: list[Network]
    diagnostics: list[Diagnostic]

    @property
    def ok(self) -> bool:
        return not any(d.severity == "error" for d in self.diagnostics)

    def to_json(self) -> dict:
        return {
            "networks": [n.to_json() for n in self.networks],
            "diagnostics": [d.to_json() for d in self.diagnostics],
        }


@dataclass
class Program:
    root: SourceFile
    sources: dict[str, SourceFile] = field(default_factory=dict)
    blocks: dict[str, ast.Block] = field(default_factory=dict)
    networks: dict[str, ast.Network] = field(default_factory=dict)
    root_networks: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, src: SourceFile, base_dir: Path | None = None) -> Program:
        """Parse ``src`` and everything it imports; raise :class:`SpecError` on problems."""
        program = cls(src)
        loader = _Loader(program, base_dir or (src.path.parent if src.path else Path.cwd()))
        loader.load(src, [], is_root=True)
        if loader.diagnostics:
            raise SpecError(loader.diagnostics)
        return program

    def check(
        self, network: str | None = None, strict: bool = False, params: dict | None = None
    ) -> CheckResult:
        """Elaborate the root file's networks (or one by name), collecting diagnostics.

        ``params`` overrides network parameters by name (numbers, or their text as given to
        ``--set``); a name that none of the checked networks declares is an error.
        """
        names = self.root_networks
        if network is not None:
            if network not in self.networks:
                close = get_close_matches(network, list(self.networks), n=1)
                available = ", ".join(self.networks) or "none"
                raise SpecError(
                    error(
                        f"no network named '{network}' in {self.root.name} (networks: {available})",
                        hint=f"did you mean '{close[0]}'?" if close else None,
                    )
                )
            names = [network]
        params = dict(params or {})
        self.check_param_names([self.networks[n] for n in names], params)
        networks, diagnostics = [], []
        for name in names:
            elaborator = Elaborator(self, strict)
            net = elaborator.network(self.networks[name], params)
            diagnostics.extend(elaborator.diagnostics)
            if net is not None:
                networks.append(net)
        return CheckResult(networks, diagnostics)

    def check_param_names(self, netdefs: list[ast.Network], params: dict):
        declared = {p.name for d in netdefs for p in d.params}
        unknown = [name for name in params if name not in declared]
        if not unknown:
            return
        problems = []
        for name in unknown:
            netdef = netdefs[0] if netdefs else None
            loc = None
            if netdef is not None:
                src = self.sources[netdef.file]
                loc = src.location(netdef.pos.line, netdef.pos.column, len(netdef.name) + 8)
            close = get_close_matches(name, sorted(declared), n=1)
            which = f"network '{netdef.name}'" if len(netdefs) == 1 else "no checked network"
            hint = f"did you mean '{close[0]}'? " if close else ""
            hint += (
                f"parameters: {', '.join(sorted(declared))}"
                if declared
                else "declare one after the inputs: network net(x: 3x32x32, width=64)"
            )
            problems.append(error(f"{which} has no parameter '{name}'", loc, hint))
        raise SpecError(problems)


class _Loader:
    def __init__(self, program: Program, base_dir: Path):
        self.program = program
        self.base_dir = base_dir
        self.loaded: dict[str, SourceFile] = {}
        self.diagnostics: list[Diagnostic] = []
        self.defined_at: dict[str, str] = {}

    def load(self, src: SourceFile, stack: list[str], is_root: bool = False):
        key = str(src.path) if src.path else src.name
        self.loaded[key] = src
        self.program.sources[src.name] = src
        try:
            module = parse(src)
        except SpecError as exc:
            self.diagnostics.extend(exc.diagnostics)
            return
        here = src.path.parent if src.path else self.base_dir
        for item in module.items:
            if isinstance(item, ast.Import):
                self.import_file(src, item, here, stack + [key])
            else:
                self.define(src, item, is_root)

    def import_file(self, src: SourceFile, item: ast.Import, here: Path, stack: list[str]):
        loc = src.location(item.pos.line, item.pos.column, item.pos.width)
        target = (here / item.path).resolve()
        key = str(target)
        if key in stack:
            cycle = [Path(p).name for p in stack[stack.index(key) :]] + [target.name]
            self.diagnostics.append(
                error(
                    "import cycle: " + " -> ".join(cycle),
                    loc,
                    "move the shared blocks into a file both import",
                )
            )
            return
        if key in self.loaded:
            return  # importing twice is harmless
        if len(stack) > MAX_IMPORT_DEPTH:
            self.diagnostics.append(error(f"imports nested more than {MAX_IMPORT_DEPTH} deep", loc))
            return
        try:
            display = str(Path(src.name).parent / item.path) if src.path else item.path
            imported = SourceFile.from_path(target, display=display)
        except SpecError as exc:
            for d in exc.diagnostics:
                self.diagnostics.append(
                    error(
                        f"in import: {d.message}",
                        loc,
                        "import paths are relative to the importing file",
                    )
                )
            return
        self.load(imported, stack)

    def define(self, src: SourceFile, item, is_root: bool):
        loc = src.location(item.pos.line, item.pos.column, len(item.name) + 8)
        kind = "block" if isinstance(item, ast.Block) else "network"
        if item.name in OPS:
            self.diagnostics.append(
                error(f"{kind} name '{item.name}' is a built-in op", loc, "choose another name")
            )
            return
        if item.name in self.defined_at:
            self.diagnostics.append(
                error(
                    f"'{item.name}' is already defined at {self.defined_at[item.name]}",
                    loc,
                    "names of networks and blocks are unique across a file and its imports",
                )
            )
            return
        self.defined_at[item.name] = f"{src.name}:{item.pos.line}:{item.pos.column}"
        params = (
            [p.name for p in item.params]
            if isinstance(item, ast.Block)
            else [d.name for d in item.inputs] + [p.name for p in item.params]
        )
        if isinstance(item, ast.Network):
            self.check_network_params(src, item)
        dupes = {p for p in params if params.count(p) > 1}
        if dupes:
            self.diagnostics.append(
                error(f"{kind} '{item.name}' declares '{sorted(dupes)[0]}' twice", loc)
            )
        if isinstance(item, ast.Block):
            if not item.params:
                self.diagnostics.append(
                    error(
                        f"block '{item.name}' needs a first parameter for the tensor it is "
                        "applied to",
                        loc,
                        f"block {item.name}(x) {{ ... }}",
                    )
                )
            self.program.blocks[item.name] = item
        else:
            self.program.networks[item.name] = item
            if is_root:
                self.program.root_networks.append(item.name)

    def check_network_params(self, src: SourceFile, item: ast.Network):
        """Network parameters come after the inputs and each has a default."""
        last_input = max(((d.pos.line, d.pos.column) for d in item.inputs), default=(0, 0))
        for param in item.params:
            loc = src.location(param.pos.line, param.pos.column, len(param.name))
            if param.default is None:
                self.diagnostics.append(
                    error(
                        f"network parameter '{param.name}' needs a default value",
                        loc,
                        f"write '{param.name}=64'; inputs are written 'NAME: SHAPE'",
                    )
                )
            elif (param.pos.line, param.pos.column) < last_input:
                self.diagnostics.append(
                    error(
                        f"network parameter '{param.name}' comes before an input",
                        loc,
                        "declare the inputs first: network net(x: 3x32x32, width=64)",
                    )
                )
