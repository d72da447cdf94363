"""The same network in PyTorch, built op by op from a checked cnnc graph, with the same weights.

Used as the reference for kernels and whole networks: torch's own functions applied in source
order. ``REFERENCE`` holds one line per op: ``(F, xs, a, w) -> tensor`` with ``xs`` the input
tensors, ``a`` the layer's bound arguments and ``w(key)`` its weights (``None`` if absent).
"""

from __future__ import annotations

import numpy as np


def _crop(x, ref):
    (h, wd), (hr, wr) = x.shape[2:], ref.shape[2:]
    oy, ox = (h - hr) // 2, (wd - wr) // 2
    return x[:, :, oy : oy + hr, ox : ox + wr]


def _resize(F, xs, a):
    size = tuple(xs[1].shape[2:]) if len(xs) == 2 else a["size"]
    bilinear = a["mode"] == "bilinear"
    return F.interpolate(
        xs[0], size=size, mode=a["mode"], align_corners=False if bilinear else None
    )


def _layernorm(F, x, a, w):
    if x.dim() == 2:
        return F.layer_norm(x, x.shape[1:], w("weight"), w("bias"), a["eps"])
    y = F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], w("weight"), w("bias"), a["eps"])
    return y.permute(0, 3, 1, 2)


def _shuffle(x, g):
    n, c, h, wd = x.shape
    return x.reshape(n, g, c // g, h, wd).transpose(1, 2).reshape(n, c, h, wd)


def _pad(F, x, a):
    top, bottom, left, right = a["p"]
    mode = {"zeros": "constant"}.get(a["mode"], a["mode"])
    return F.pad(x, (left, right, top, bottom), mode=mode)


def _mul(xs):
    y = xs[0]
    for x in xs[1:]:
        y = y * x
    return y


REFERENCE = {
    "conv": lambda F, xs, a, w: F.conv2d(
        xs[0], w("weight"), w("bias"), a["s"], a["p"], a["d"], a["g"]
    ),
    "dwconv": lambda F, xs, a, w: F.conv2d(
        xs[0], w("weight"), w("bias"), a["s"], a["p"], a["d"], a["g"]
    ),
    "convt": lambda F, xs, a, w: F.conv_transpose2d(
        xs[0], w("weight"), w("bias"), a["s"], a["p"], a["op"], a["g"], a["d"]
    ),
    "fc": lambda F, xs, a, w: F.linear(xs[0], w("weight"), w("bias")),
    "maxpool": lambda F, xs, a, w: F.max_pool2d(
        xs[0], a["k"], a["s"], a["p"], a["d"], ceil_mode=a["ceil"]
    ),
    "avgpool": lambda F, xs, a, w: F.avg_pool2d(
        xs[0], a["k"], a["s"], a["p"], ceil_mode=a["ceil"], count_include_pad=a["count_pad"]
    ),
    "gap": lambda F, xs, a, w: xs[0].mean((2, 3), keepdim=True),
    "gmp": lambda F, xs, a, w: xs[0].amax((2, 3), keepdim=True),
    "adaptive_avgpool": lambda F, xs, a, w: F.adaptive_avg_pool2d(xs[0], a["size"]),
    "flatten": lambda F, xs, a, w: xs[0].flatten(1),
    "bn": lambda F, xs, a, w: F.batch_norm(
        xs[0], w("running_mean"), w("running_var"), w("weight"), w("bias"), False, 0.0, a["eps"]
    ),
    "layernorm": lambda F, xs, a, w: _layernorm(F, xs[0], a, w),
    "groupnorm": lambda F, xs, a, w: F.group_norm(
        xs[0], a["groups"], w("weight"), w("bias"), a["eps"]
    ),
    "scale": lambda F, xs, a, w: xs[0] * w("weight"),
    "lrn": lambda F, xs, a, w: F.local_response_norm(
        xs[0], a["size"], a["alpha"], a["beta"], a["k"]
    ),
    "upsample": lambda F, xs, a, w: F.interpolate(
        xs[0],
        scale_factor=a["scale"],
        mode=a["mode"],
        align_corners=False if a["mode"] == "bilinear" else None,
    ),
    "resize": lambda F, xs, a, w: _resize(F, xs, a),
    "concat": lambda F, xs, a, w: F.torch.cat(xs, 1),
    "add": lambda F, xs, a, w: sum(xs[1:], xs[0]),
    "mul": lambda F, xs, a, w: _mul(xs),
    "crop": lambda F, xs, a, w: _crop(xs[0], xs[1]),
    "slice": lambda F, xs, a, w: xs[0][:, a["start"] : a["stop"]],
    "shuffle": lambda F, xs, a, w: _shuffle(xs[0], a["g"]),
    "pad": lambda F, xs, a, w: _pad(F, xs[0], a),
    "softmax": lambda F, xs, a, w: F.softmax(xs[0], 1),
    "relu": lambda F, xs, a, w: F.relu(xs[0]),
    "relu6": lambda F, xs, a, w: F.relu6(xs[0]),
    "leaky_relu": lambda F, xs, a, w: F.leaky_relu(xs[0], a["a"]),
    "sigmoid": lambda F, xs, a, w: F.sigmoid(xs[0]),
    "tanh": lambda F, xs, a, w: F.tanh(xs[0]),
    "silu": lambda F, xs, a, w: F.silu(xs[0]),
    "hardswish": lambda F, xs, a, w: F.hardswish(xs[0]),
    "hardsigmoid": lambda F, xs, a, w: F.hardsigmoid(xs[0]),
    "gelu": lambda F, xs, a, w: F.gelu(xs[0], approximate=a["approx"]),
    "elu": lambda F, xs, a, w: F.elu(xs[0], a["a"]),
    "softplus": lambda F, xs, a, w: F.softplus(xs[0]),
    "mish": lambda F, xs, a, w: F.mish(xs[0]),
    "selu": lambda F, xs, a, w: F.selu(xs[0]),
    "clamp": lambda F, xs, a, w: F.torch.clamp(xs[0], a["lo"], a["hi"]),
    "prelu": lambda F, xs, a, w: F.prelu(xs[0], w("weight")),
    "identity": lambda F, xs, a, w: xs[0],
    "dropout": lambda F, xs, a, w: xs[0],
    "droppath": lambda F, xs, a, w: xs[0],
}


def _bn_train(F, xs, a, w):
    """Batch norm in training: the batch's statistics (PyTorch updates copies of the running
    ones, which the gradient does not see)."""
    return F.batch_norm(
        xs[0], w("running_mean").clone(), w("running_var").clone(), w("weight"), w("bias"),
        True, 0.1, a["eps"],
    )  # fmt: skip


#: Every op's line for gradients (``torch.autograd`` through it) with ``train=True``: the
#: forward line where training changes nothing, else its training form. Dropout and droppath
#: drop at random, so tests of gradients through them pass cnnc's mask (``w("mask")``).
TRAINING = {name: line for name, line in REFERENCE.items()}
TRAINING["bn"] = _bn_train
TRAINING["dropout"] = lambda F, xs, a, w: xs[0] if w("mask") is None else xs[0] * w("mask")
TRAINING["droppath"] = lambda F, xs, a, w: xs[0] if w("mask") is None else xs[0] * w("mask")


def gradients(
    torch,
    net,
    weights: dict,
    inputs: dict,
    targets,
    loss="cross_entropy",
    train=True,
    label_smoothing=0.0,
    masks=None,
) -> tuple[float, dict]:
    """PyTorch's ``(loss, grads)`` for the same batch, as ``cnnc.grad`` returns them:
    ``torch.autograd`` through the op lines, batch norm with batch statistics where
    ``train``. ``masks`` (layer name -> NCHW array) are dropout's and droppath's."""
    F = torch.nn.functional
    params = {
        k: torch.from_numpy(np.ascontiguousarray(v)).requires_grad_(
            not k.endswith(("running_mean", "running_var"))
        )
        for k, v in weights.items()
    }
    values = {
        name: torch.from_numpy(np.ascontiguousarray(x)).requires_grad_(True)
        for name, x in inputs.items()
    }
    leaves = dict(values)
    table = TRAINING if train else REFERENCE
    for layer in net.layers:

        def w(key, layer=layer):
            if key == "mask":
                m = (masks or {}).get(layer.name)
                return None if m is None else torch.from_numpy(m)
            return params.get(f"{layer.name}.{key}")

        xs = [values[i.name] for i in layer.inputs]
        values[layer.name] = table[layer.op](F, xs, layer.args, w)
    targets = targets if isinstance(targets, dict) else {next(iter(net.outputs)): targets}
    total = 0
    for name, layer in net.outputs.items():
        out = values[layer.name]
        t = torch.from_numpy(np.asarray(targets[name]))
        if loss == "cross_entropy":
            logits = values[layer.inputs[0].name] if layer.op == "softmax" else out
            total = total + F.cross_entropy(logits, t.long(), label_smoothing=label_smoothing)
        elif loss == "mse":
            total = total + F.mse_loss(out, t.to(out.dtype))
        else:
            n = out.shape[0]
            cos = F.cosine_similarity(out.reshape(n, -1), t.to(out.dtype).reshape(n, -1), dim=1)
            total = total + (1 - cos).mean()
    total.backward()
    grads = {
        k: p.grad.numpy() if p.grad is not None else np.zeros(p.shape, np.float32)
        for k, p in params.items()
        if p.requires_grad
    }
    grads.update({k: v.grad.numpy() for k, v in leaves.items()})
    return float(total), grads


def forward(torch, net, weights: dict, inputs: dict, before=None, device="cpu") -> dict:
    """Run ``net`` in PyTorch with ``weights`` on NCHW ``inputs``; return NCHW outputs.

    ``before(layer, xs)``, if given, is called with each layer's input tensors before the layer
    runs (it may change ``weights``: data-dependent initialisation). Tensors are dropped after
    their last use, so the largest networks fit in memory."""
    F = torch.nn.functional
    values = {
        name: torch.from_numpy(np.ascontiguousarray(x)).to(device) for name, x in inputs.items()
    }
    last_use = {i.name: n for n, layer in enumerate(net.layers) for i in layer.inputs}
    keep = {layer.name for layer in net.outputs.values()}
    with torch.no_grad():
        for n, layer in enumerate(net.layers):

            def w(key, layer=layer):
                full = f"{layer.name}.{key}"
                return torch.from_numpy(weights[full]).to(device) if full in weights else None

            xs = [values[i.name] for i in layer.inputs]
            if before is not None:
                before(layer, xs)
            values[layer.name] = REFERENCE[layer.op](F, xs, layer.args, w)
            for i in layer.inputs:
                if last_use[i.name] == n and i.name not in keep:
                    values.pop(i.name, None)  # an input may appear twice: add(x, x)
        return {name: values[layer.name].cpu().numpy() for name, layer in net.outputs.items()}


def random_weights(net, seed: int = 0) -> dict:
    """Weights with non-trivial biases, norms and statistics, so fusions are exercised."""
    from cnnc.runtime.weights import initialise

    rng = np.random.default_rng(seed)
    weights = initialise(net, seed)
    for key, value in weights.items():
        if key.endswith(".bias"):
            weights[key] = (0.1 * rng.standard_normal(value.shape)).astype(np.float32)
        elif key.endswith(".running_mean"):
            weights[key] = (0.1 * rng.standard_normal(value.shape)).astype(np.float32)
        elif key.endswith(".running_var"):
            weights[key] = rng.uniform(0.5, 1.5, value.shape).astype(np.float32)
        elif key.endswith(".weight") and (value.ndim == 1 or value.shape[1:] == (1, 1)):
            weights[key] = rng.uniform(0.5, 1.5, value.shape).astype(np.float32)
    return weights
