"""cnnc: a declarative compiler and simulator for convolutional neural networks.

Embedding API (nothing here prints or exits; errors are :class:`CnncError` carrying
diagnostics)::

    import cnnc
    net = cnnc.load("specs/resnet.cnn", network="resnet50")
    net.total_params, net.total_macs, net.graph   # networkx.DiGraph
    print(net.summary())
"""

from __future__ import annotations

# Absolute imports: the repository root is this package's folder, and test runners may import
# this file directly from a checkout; `cnnc.` then resolves to the installed package.
from collections.abc import Mapping
from pathlib import Path

from cnnc.compiler.diagnostics import CnncError, DataError, Diagnostic, ResourceError, SpecError
from cnnc.compiler.network import Layer, Network
from cnnc.compiler.program import CheckResult, Program
from cnnc.compiler.source import SourceFile

__version__ = "0.1.0"
__all__ = [
    "CnncError",
    "SpecError",
    "DataError",
    "ResourceError",
    "Diagnostic",
    "Network",
    "Layer",
    "CheckResult",
    "load",
    "load_all",
    "check",
    "parse_program",
    "draw",
    "run",
    "grad",
    "train",
    "evaluate",
    "export_onnx",
    "import_onnx",
]


def _source(spec: str | Path, filename: str | None) -> SourceFile:
    if isinstance(spec, Path):
        return SourceFile.from_path(spec, display=filename)
    if not isinstance(spec, str):
        raise TypeError(f"spec must be a path or a string of .cnn source, not {type(spec)}")
    looks_like_source = "\n" in spec or "{" in spec
    if not looks_like_source:
        return SourceFile.from_path(spec, display=filename)
    return SourceFile(filename or "<string>", spec)


def parse_program(spec: str | Path, filename: str | None = None) -> Program:
    """Parse a spec (path or source text) and its imports without checking networks."""
    return Program.load(_source(spec, filename))


def check(
    spec: str | Path,
    network: str | None = None,
    strict: bool = False,
    filename: str | None = None,
    params: dict | None = None,
) -> CheckResult:
    """Check every network of a spec (or one); return networks and diagnostics, never raise
    for problems in the networks themselves (a syntax or import error still raises).
    ``params`` overrides network parameters by name, like ``--set``."""
    return parse_program(spec, filename).check(network, strict, params)


def load_all(spec: str | Path, strict: bool = False, filename: str | None = None) -> list[Network]:
    """Check a spec and return all its networks; raise :class:`SpecError` on any error."""
    result = check(spec, None, strict, filename)
    if not result.ok:
        raise SpecError(result.diagnostics)
    return result.networks


def load(
    spec: str | Path,
    network: str | None = None,
    strict: bool = False,
    filename: str | None = None,
    params: dict | None = None,
) -> Network:
    """Check a spec and return one network (by name, or the file's only network), its
    parameters set from ``params`` (name -> number) where given."""
    return network_of(parse_program(spec, filename), network, strict, params)


def network_of(
    program: Program, network: str | None = None, strict: bool = False, params: dict | None = None
) -> Network:
    """Check one network of a parsed program (by name, or its root file's only network)."""
    if network is None:
        names = program.root_networks
        if len(names) != 1:
            raise SpecError(
                Diagnostic(
                    "error",
                    f"{program.root.name} defines {len(names)} networks"
                    + (f" ({', '.join(names)}); choose one" if names else ""),
                    hint="pass network=NAME (on the command line: --network NAME)"
                    if names
                    else None,
                )
            )
        network = names[0]
    result = program.check(network, strict, params)
    if not result.ok:
        raise SpecError(result.diagnostics)
    return result.networks[0]


def draw(
    network: Network, out: str | Path | None = None, collapse: bool = False, rankdir: str = "TB"
):
    """Draw a network with Graphviz.

    Without ``out``, return the ``graphviz.Digraph`` (its ``.source`` is the DOT text). With
    ``out``, render to that file (format from its suffix: .svg .png .pdf .dot) and return its
    path.
    """
    from cnnc.compiler.draw import build, render

    if out is None:
        return build(network, collapse, rankdir)
    return render(network, out, collapse, rankdir)


def run(
    network: Network,
    inputs: dict | None = None,
    weights: dict | str | Path | None = None,
    seed: int = 0,
    batch: int = 1,
    device: str = "cpu",
    optimize: bool = True,
    algorithm: str | None = None,
    tune: bool | None = None,
) -> dict:
    """Run a checked network; return ``{output name: array}`` in NCHW (or (N, C)).

    ``inputs`` maps input names to float arrays (batch, C, H, W) or one sample (C, H, W);
    a network with one input also takes the array itself. Without it the inputs are seeded
    random data of ``batch`` samples (a positive integer; a batch that cannot fit in memory
    raises :class:`ResourceError` before allocating).
    ``weights`` is a dict or an ``.npz`` path keyed ``LAYER.weight`` etc.; without it they are
    seeded (He for conv, Xavier for fc). ``algorithm`` picks the CPU's convolutions, one of
    ``cnnc.runtime.backends.ALGORITHMS``: ``auto`` (the choice cached per layer shape by
    ``cnnc tune``/``bench``, else the micro-kernel, or BLAS for grouped layers), ``direct``
    (the same without Winograd), ``blas`` (nothing on cnnc's micro-kernel) or ``winograd``;
    the default is ``$CNNC_ALGORITHM`` or ``auto``. ``tune`` measures the layers the cache
    lacks (default ``$CNNC_TUNE``, off).
    """
    from cnnc.runtime import memory
    from cnnc.runtime.data import as_input, random_inputs
    from cnnc.runtime.session import Session, check_batch

    if inputs is None:
        batch = check_batch(batch)
        memory.check_fits(network, batch)  # before the random inputs are drawn
        inputs = random_inputs(network, batch, seed)
    else:
        inputs = _named_inputs(network, inputs)
        inputs = {
            name: as_input(x, name, network.inputs[name].shape) if name in network.inputs else x
            for name, x in inputs.items()
        }
        batch = int(next(iter(inputs.values())).shape[0]) if inputs else check_batch(batch)
    session = Session.create(
        network,
        weights,
        seed=seed,
        device=device,
        optimize=optimize,
        batch=batch,
        algorithm=algorithm,
        tune=tune,
    )
    return session.run(inputs)


def grad(
    network: Network,
    inputs,
    targets,
    weights: dict | str | Path | None = None,
    loss: str = "cross_entropy",
    train: bool = True,
    seed: int = 0,
    device: str = "cpu",
    label_smoothing: float = 0.0,
) -> tuple[float, dict]:
    """The loss of one batch and its gradients: ``(loss, grads)``.

    ``inputs`` maps input names to NCHW arrays (a bare array for a one-input network);
    ``targets`` is an array (class indices ``(N,)`` or ``(N, H, W)`` for ``cross_entropy``,
    arrays shaped like the output for ``mse`` and ``cosine``), or a dict keyed by output name
    whose losses add up. ``loss`` is the mean over the batch; ``grads`` is keyed like the
    weights (``LAYER.weight``, ``LAYER.bias``; no running statistics) plus one entry per
    network input. ``train``: batch norm uses the batch's statistics and dropout drops with
    masks drawn from ``seed``; otherwise running statistics and no dropping. Nothing given is
    changed. A network ending in ``softmax`` is differentiated through the logits before it
    for cross-entropy."""
    from cnnc.runtime import weights as weight_io
    from cnnc.runtime.backprop import gradients
    from cnnc.runtime.data import as_input
    from cnnc.runtime.session import Session

    inputs = {
        name: as_input(x, name, network.inputs[name].shape) if name in network.inputs else x
        for name, x in _named_inputs(network, inputs).items()
    }
    if weights is None:
        weights = weight_io.initialise(network, seed)
    elif not isinstance(weights, dict):
        weights = weight_io.load(network, weights)
    else:
        weights = Session.checked_weights(network, weights)
    return gradients(network, inputs, targets, weights, loss, train, seed, device, label_smoothing)


def _named_inputs(network: Network, inputs) -> dict:
    """``inputs`` as a dict by input name: a mapping as it is, a bare array for the network's
    only input."""
    if isinstance(inputs, Mapping):
        return dict(inputs)
    names = list(network.inputs)
    if len(names) != 1:
        raise DataError(
            Diagnostic(
                "error",
                f"network '{network.name}' has {len(names)} inputs ({', '.join(names)}); "
                "pass inputs as a dict of arrays by name",
                hint=f"cnnc.run(net, {{{', '.join(f'{n!r}: ...' for n in names)}}})",
            )
        )
    return {names[0]: inputs}


def train(network: Network, data=None, val=None, val_split: float | None = None, **options):
    """Train a checked network; return ``(history, weights)``.

    ``data`` (and ``val``) is an ``.npz`` path (``x``: N x C x H x W float or uint8, ``y``:
    class indices or float targets), a folder of class folders of images, ``"digits"``, or an
    ``(x, y)`` pair of arrays; ``val_split`` holds out a seeded share instead of ``val``.
    ``options`` are the flags of ``cnnc train`` by their Python names: ``epochs``, ``batch``,
    ``loss``, ``optimizer`` (sgd, adam, adamw), ``lr``, ``momentum``, ``nesterov``,
    ``weight_decay``, ``schedule`` (constant, step:E:G, cosine), ``warmup``, ``augment``
    ("flip,crop=4"), ``freeze`` (globs), ``seed``, ``weights`` (dict or ``.npz`` path) with
    ``partial``, ``checkpoint`` and ``resume`` (folders), ``device``, and ``on_epoch`` (called
    with each epoch's history entry). ``history`` is a list of per-epoch dicts (``epoch``,
    ``loss``, ``accuracy``, ``val_loss``, ``val_accuracy``, ``lr``, ``seconds``); ``weights``
    is keyed like ``cnnc run``'s. A ``KeyboardInterrupt`` stops it (the last checkpoint
    stays); a loss that is not finite raises :class:`CnncError` naming the layer."""
    from cnnc.training.loop import train as run_training

    return run_training(network, data, val, val_split, **options)


def evaluate(
    network: Network,
    weights,
    data,
    loss: str = "cross_entropy",
    batch: int = 32,
    device: str = "cpu",
) -> dict:
    """Evaluate trained ``weights`` (dict or ``.npz`` path) on ``data`` (as for :func:`train`;
    ``"digits"`` is its validation part): ``{"loss", "accuracy", "samples", "classes"}``, plus
    ``"top5"`` with more than five classes and ``"confusion"`` (rows: true class, columns:
    predicted) up to 20 classes. Accuracy is None for the ``mse`` and ``cosine`` losses."""
    from cnnc.training.loop import evaluate as run_evaluation

    return run_evaluation(network, weights, data, loss, batch, device)


def export_onnx(
    network: Network,
    out: str | Path | None = None,
    weights: dict | str | Path | None = None,
    seed: int = 0,
    opset: int = 17,
):
    """Export a checked network as an ONNX model (needs the ``onnx`` extra).

    Returns the ``onnx.ModelProto`` (checked by ``onnx.checker``, full check); with ``out``,
    also writes it there atomically. ``weights`` as in :func:`run`; without it they are seeded.
    """
    from cnnc.interchange.onnx_export import build_model, export

    if out is not None:
        return export(network, out, weights, seed, opset)
    if weights is None or not isinstance(weights, dict):
        from cnnc.runtime import weights as weight_io

        weights = (
            weight_io.initialise(network, seed)
            if weights is None
            else weight_io.load(network, weights)
        )
    return build_model(network, weights, opset)


def import_onnx(model, name: str | None = None, blocks: bool = False):
    """Translate an ONNX model (path or ``onnx.ModelProto``) into cnnc.

    Returns ``(spec_text, weights, network)``: the ``.cnn`` source, its weights keyed
    ``LAYER.weight`` etc., and the checked :class:`Network`. An ONNX op with no ``.cnn``
    equivalent raises :class:`DataError` listing every such op type at once. With ``blocks``,
    structures that repeat (residual units) are written as ``block``s called once each.
    """
    from cnnc.interchange.onnx_import import import_model, read_model

    if isinstance(model, (str, Path)):
        if name is None:
            name = Path(model).stem
        model = read_model(model)
    return import_model(model, name, blocks=blocks)
