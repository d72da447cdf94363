"""The torchvision zoo as cnnc sees it: which spec holds each model, its input size, its costs
counted from torchvision, and torchvision's weights mapped onto the spec's layers.

``python tests/zoo.py`` rewrites ``tests/data/torchvision_costs.json`` from torchvision itself
(models built without weights; parameters counted, MACs of Conv2d/ConvTranspose2d/Linear
counted by forward hooks at the spec's input size, torchvision's own convention).
``python tests/zoo.py check NAME...`` compares specs with torchvision (costs, and outputs
through tests/torch_reference.py); ``python tests/zoo.py table`` prints the README's table.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
COSTS = HERE / "data" / "torchvision_costs.json"

_EFFICIENTNET_SIZE = {
    "b0": 224,
    "b1": 240,
    "b2": 260,
    "b3": 300,
    "b4": 380,
    "b5": 456,
    "b6": 528,
    "b7": 600,
    "v2_s": 384,
    "v2_m": 480,
    "v2_l": 480,
}
_REGNETS = ["400mf", "800mf", "1_6gf", "3_2gf", "8gf", "16gf", "32gf"]

#: (spec file, torchvision function name = network name, input H=W), one per model.
ZOO = [
    ("alexnet.cnn", "alexnet", 224),
    ("googlenet.cnn", "googlenet", 224),
    ("inception.cnn", "inception_v3", 299),
    ("squeezenet.cnn", "squeezenet1_0", 224),
    ("squeezenet.cnn", "squeezenet1_1", 224),
    *[("vgg.cnn", f"vgg{d}{bn}", 224) for d in (11, 13, 16, 19) for bn in ("", "_bn")],
    *[("resnet.cnn", f"resnet{d}", 224) for d in (18, 34, 50, 101, 152)],
    *[
        ("resnet.cnn", n, 224)
        for n in (
            "resnext50_32x4d",
            "resnext101_32x8d",
            "resnext101_64x4d",
            "wide_resnet50_2",
            "wide_resnet101_2",
        )
    ],
    *[("densenet.cnn", f"densenet{d}", 224) for d in (121, 161, 169, 201)],
    ("mobilenet.cnn", "mobilenet_v2", 224),
    ("mobilenet.cnn", "mobilenet_v3_small", 224),
    ("mobilenet.cnn", "mobilenet_v3_large", 224),
    *[("mnasnet.cnn", f"mnasnet{w}", 224) for w in ("0_5", "0_75", "1_0", "1_3")],
    *[("shufflenet.cnn", f"shufflenet_v2_{w}", 224) for w in ("x0_5", "x1_0", "x1_5", "x2_0")],
    *[("efficientnet.cnn", f"efficientnet_{v}", s) for v, s in _EFFICIENTNET_SIZE.items()],
    *[("regnet.cnn", f"regnet_x_{s}", 224) for s in _REGNETS],
    *[("regnet.cnn", f"regnet_y_{s}", 224) for s in (*_REGNETS, "128gf")],
    *[("convnext.cnn", f"convnext_{s}", 224) for s in ("tiny", "small", "base", "large")],
    ("segmentation.cnn", "fcn_resnet50", 520),
    ("segmentation.cnn", "fcn_resnet101", 520),
    ("segmentation.cnn", "deeplabv3_resnet50", 520),
    ("segmentation.cnn", "deeplabv3_resnet101", 520),
    ("mobilenet_segmentation.cnn", "deeplabv3_mobilenet_v3_large", 520),
    ("mobilenet_segmentation.cnn", "lraspp_mobilenet_v3_large", 520),
]

SEGMENTATION = {name for file, name, _ in ZOO if "segmentation" in file}


def import_torchvision():
    """torchvision, importable beside the CPU build of torch.

    PyPI's torchvision wheel is built against CUDA torch; beside the CPU wheel its C extension
    (detection ops: nms, roi_align) cannot load, and 0.28's import then fails on two unguarded
    fake-kernel registrations for ops it never defined. Defining those two schemas lets the
    pure-Python model definitions, all that is used here, import."""
    import torch

    try:
        import torchvision
    except RuntimeError as exc:
        if "torchvision::nms" not in str(exc):
            raise
        for name in [m for m in sys.modules if m.startswith("torchvision")]:
            del sys.modules[name]
        lib = torch.library.Library("torchvision", "DEF")  # noqa: TOR901
        for op in ("nms", "qnms"):
            lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _KEEP.append(lib)
        import torchvision
    return torchvision


_KEEP: list = []  # the Library object must outlive the import


def torchvision_model(name: str):
    """The torchvision model, no weights, eval mode, without auxiliary heads."""
    torchvision = import_torchvision()

    kwargs = {"weights": None}
    if name in ("googlenet", "inception_v3"):
        kwargs.update(aux_logits=False, init_weights=False)
    if name in SEGMENTATION:
        kwargs.update(weights_backbone=None)
        if not name.startswith("lraspp"):
            kwargs.update(aux_loss=False)
        builder = getattr(torchvision.models.segmentation, name)
    else:
        builder = getattr(torchvision.models, name)
    return builder(**kwargs).eval()


def count_costs(model, size: int) -> tuple[int, int]:
    """(parameters, MACs of Conv2d, ConvTranspose2d and Linear) for one 3 x size x size input."""
    import torch

    macs = 0

    def hook(module, inputs, output):
        nonlocal macs
        if isinstance(module, torch.nn.ConvTranspose2d):
            x = inputs[0]
            kh, kw = module.kernel_size
            macs += x[0].numel() * module.out_channels // module.groups * kh * kw
        elif isinstance(module, torch.nn.Conv2d):
            kh, kw = module.kernel_size
            macs += output[0].numel() * module.in_channels // module.groups * kh * kw
        else:
            macs += output[0].numel() * module.in_features

    kinds = (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kinds)]
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    for h in handles:
        h.remove()
    return sum(p.numel() for p in model.parameters()), macs


def state_in_forward_order(model, x) -> list[tuple[str, np.ndarray]]:
    """Every parameter and buffer of ``model`` (``num_batches_tracked`` aside), ordered by the
    first use of its owning module's tensors in a forward pass, each module's own tensors in
    ``state_dict`` order. This is the order of a spec written in forward order, even where a
    module registers a parameter before its children but uses it after them (layer scale)."""
    import torch
    from torch.overrides import TorchFunctionMode

    owner_of, keys_of = {}, {}
    for mname, module in model.named_modules():
        own = [
            (n, t)
            for n, t in (
                *module.named_parameters(recurse=False),
                *module.named_buffers(recurse=False),
            )
            if not n.endswith("num_batches_tracked")
        ]
        order = list(module.state_dict(keep_vars=True).keys())
        own.sort(key=lambda item: order.index(item[0]) if item[0] in order else len(order))
        keys_of[mname] = [(f"{mname}.{n}" if mname else n, t) for n, t in own]
        for _, t in own:
            owner_of[id(t)] = mname
    seen: list[str] = []

    class Recorder(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            for value in (*args, *(kwargs or {}).values()):
                for t in value if isinstance(value, (list, tuple)) else (value,):
                    owner = owner_of.get(id(t))
                    if owner is not None and owner not in seen:
                        seen.append(owner)
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), Recorder():
        model(x)
    return [(k, t.detach().numpy()) for owner in seen for k, t in keys_of[owner]]


def weight_names(net, model, size: int) -> dict[str, str]:
    """The spec's weight keys onto torchvision's tensor names, in forward order; a Linear
    applied per pixel (ConvNeXt) fills a 1x1 conv's weight. Raises ValueError naming the
    first mismatch."""
    import torch

    from cnnc.runtime.weights import expected

    theirs = state_in_forward_order(model, torch.zeros(1, 3, size, size))
    ours = list(expected(net).items())
    if len(theirs) != len(ours):
        raise ValueError(f"{net.name}: torchvision has {len(theirs)} tensors, the spec {len(ours)}")
    names = {}
    for (key, shape), (tkey, tensor) in zip(ours, theirs):
        if (
            tensor.size != int(np.prod(shape))
            or tensor.squeeze().shape != np.empty(shape).squeeze().shape
        ):
            raise ValueError(
                f"{net.name}: {key} {shape} does not match torchvision's {tkey} "
                f"{tuple(tensor.shape)}"
            )
        names[key] = tkey
    return names


def map_weights(net, model, size: int) -> dict[str, np.ndarray]:
    """torchvision's tensors onto the spec's weight keys (``weight_names``)."""
    from cnnc.runtime.weights import expected

    state = model.state_dict()
    shapes = expected(net)
    return {
        key: np.ascontiguousarray(state[tkey].detach().numpy().reshape(shapes[key]), np.float32)
        for key, tkey in weight_names(net, model, size).items()
    }


def randomise(model, seed: int = 0):
    """Give batch-norm statistics and every 1-D parameter (norm weights, biases, layer scales)
    random values, so that a wrong mapping or a skipped op shows in the outputs."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in (*model.named_parameters(), *model.named_buffers()):
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var") or (
                t.squeeze().dim() <= 1 and "weight" in name and "fc" not in name
            ):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.squeeze().dim() <= 1:
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
    return model


def network_of(name: str):
    import cnnc

    file = next(f for f, n, _ in ZOO if n == name)
    return cnnc.load(HERE.parent / "specs" / file, network=name)


def reference_outputs(name: str, batch: int = 1, seed: int = 0):
    """(net, weights, input, torchvision's output) for one zoo model with random weights."""
    import torch

    size = next(s for _, n, s in ZOO if n == name)
    net = network_of(name)
    model = randomise(torchvision_model(name), seed)
    weights = map_weights(net, model, size)
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        y = model(x)
    y = y["out"] if isinstance(y, dict) else y
    return net, weights, x.numpy(), y.numpy()


def reference_gradients(
    name: str, batch: int = 2, seed: int = 0, train: bool | None = None, nudge: int = 0
):
    """(net, weights, input, targets, train, loss, grads32, grads64) for one zoo model with
    random weights and a cross-entropy loss on random classes (per pixel for segmentation):
    torchvision's autograd in float32 and in float64, gradients keyed as the spec's weights
    plus ``x``. By default networks that drop at random (dropout, stochastic depth) are
    differentiated in evaluation mode, the rest in training mode (batch statistics).
    ``nudge``: the input moved that many float32 ulps up (which ReLUs float32 flips is
    chance; this shows how far that chance goes)."""
    import torch

    size = next(s for _, n, s in ZOO if n == name)
    net = network_of(name)
    torch.manual_seed(seed)  # torchvision's own initialisation draws from the global generator
    model = randomise(torchvision_model(name), seed)
    names = weight_names(net, model, size)
    weights = map_weights(net, model, size)
    if train is None:
        train = not any(layer.op in ("dropout", "droppath") for layer in net.layers)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, size, size, generator=g)
    for _ in range(nudge):
        x = torch.nextafter(x, torch.tensor(float("inf")))
    results = []
    for dtype in (torch.float32, torch.float64):
        model = model.to(dtype).train(train)
        xd = x.to(dtype).clone().requires_grad_(True)
        y = model(xd)
        y = y["out"] if isinstance(y, dict) else y
        if dtype == torch.float32:
            targets = torch.randint(0, y.shape[1], (batch, *y.shape[2:]), generator=g)
        model.zero_grad()
        loss = torch.nn.functional.cross_entropy(y, targets)
        loss.backward()
        params = dict(model.named_parameters())
        grads = {
            key: np.ascontiguousarray(params[tkey].grad.numpy().reshape(weights[key].shape))
            for key, tkey in names.items()
            if tkey in params
        }
        grads["x"] = xd.grad.numpy()
        results.append((float(loss.detach()), grads))
    (loss, grads32), (_, grads64) = results
    return net, weights, x.numpy(), targets.numpy(), train, loss, grads32, grads64


def relative_error(got, want) -> float:
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


def check(names):
    """Costs against the table and outputs of the spec, run op by op in PyTorch
    (tests/torch_reference.py), against torchvision's model: the spec itself is checked,
    independently of cnnc's kernels."""
    import torch

    import torch_reference

    table = json.loads(COSTS.read_text())
    for name in names:
        net = network_of(name)
        want = table[name]
        costs = (net.total_params, net.total_macs)
        ok = costs == (want["params"], want["macs"])
        print(
            f"{name}: params {costs[0]:,} (torchvision {want['params']:,}), MACs "
            f"{costs[1]:,} (torchvision {want['macs']:,}) {'OK' if ok else 'MISMATCH'}"
        )
        net, weights, x, y = reference_outputs(name)
        out = torch_reference.forward(torch, net, weights, {next(iter(net.inputs)): x})
        err = relative_error(next(iter(out.values())), y)
        print(f"  output vs torchvision: relative error {err:.2e} {'OK' if err < 1e-4 else 'BAD'}")


def markdown_table():
    """The README's table: each zoo network's input, params and GMACs as cnnc computes them,
    marked where they equal torchvision's (the committed table)."""
    table = json.loads(COSTS.read_text())
    print("| file | network | input | params | GMACs | = torchvision |")
    print("|---|---|---|---|---|---|")
    for file, name, size in ZOO:
        net = network_of(name)
        same = (net.total_params, net.total_macs) == (table[name]["params"], table[name]["macs"])
        print(
            f"| `{file}` | {name} | {size}x{size} | {net.total_params:,} | "
            f"{net.total_macs / 1e9:.2f} | {'yes' if same else 'NO'} |"
        )


def main():
    if sys.argv[1:2] == ["check"]:
        sys.path.insert(0, str(HERE))
        check(sys.argv[2:])
        return
    if sys.argv[1:2] == ["table"]:
        markdown_table()
        return
    table = {}
    for file, name, size in ZOO:
        params, macs = count_costs(torchvision_model(name), size)
        table[name] = {"file": file, "input": size, "params": params, "macs": macs}
        print(f"{name:32} {size:4} {params:>13,} {macs:>17,}", file=sys.stderr)
    COSTS.write_text(json.dumps(table, indent=1) + "\n")


if __name__ == "__main__":
    main()
