"""``cnnc export`` and ``cnnc import``: argument checks first (paths, suffixes, the onnx
package), then the work, then the files, written atomically."""

from __future__ import annotations

from pathlib import Path

from ..compiler import DataError, UsageError, error, fmt_shape
from . import require_onnx


def _check_output(path: str | None, suffix: str, flag: str):
    if path is None:
        return
    p = Path(path)
    if p.suffix != suffix:
        raise UsageError(error(f"{flag} must name a {suffix} file, got '{path}'"))
    if not (p.parent if str(p.parent) else Path(".")).is_dir():
        raise DataError(error(f"cannot write '{path}': no such directory"))


def export_command(args, load) -> int:
    """``cnnc export FILE -o OUT.onnx``: ``load`` checks the spec and returns the network."""
    _check_output(args.output, ".onnx", "-o")
    require_onnx()
    from .onnx_export import export

    net = load(args)
    model = export(net, args.output, weights=args.weights, seed=args.seed, opset=args.opset)
    from ..runtime.weights import expected

    # the weights file's values; the model's other initializers are shapes and clip bounds
    params = sum(_count(shape) for shape in expected(net).values())
    print(
        f"wrote {args.output}: network {net.name}, opset {args.opset}, "
        f"{len(model.graph.node)} nodes, {params:,} weights "
        f"({'from ' + args.weights if args.weights else f'seeded, seed {args.seed}'})"
    )
    for name, layer in net.inputs.items():
        print(f"  input  {name}: N x {fmt_shape(layer.shape)}")
    for name, layer in net.outputs.items():
        print(f"  output {name}: N x {fmt_shape(layer.shape)}")
    return 0


def _count(dims) -> int:
    n = 1
    for d in dims:
        n *= d
    return n


def import_command(args) -> int:
    """``cnnc import MODEL.onnx -o OUT.cnn --weights-out W.npz``; without -o, print the spec."""
    _check_output(args.output, ".cnn", "-o")
    _check_output(args.weights_out, ".npz", "--weights-out")
    require_onnx()
    from .onnx_import import import_file

    text, weights, net = import_file(
        args.model, args.output, args.weights_out, args.name, args.blocks
    )
    if args.output is None:
        print(text, end="")
        return 0
    print(
        f"wrote {args.output}: network {net.name}, {len(net.layers)} layers, "
        f"{net.total_params:,} params, {net.total_macs:,} MACs"
    )
    if args.weights_out:
        print(f"wrote {args.weights_out}: {len(weights)} arrays")
    return 0
