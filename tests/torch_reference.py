"""The same network in PyTorch, built op by op from a checked cnnc graph, with the same weights.

Used as the reference for kernels and whole networks: torch's own conv, pooling, batch norm,
interpolation... applied in source order.
"""

from __future__ import annotations

import numpy as np


def forward(torch, net, weights: dict, inputs: dict) -> dict:
    F = torch.nn.functional
    values = {name: torch.from_numpy(np.ascontiguousarray(x)) for name, x in inputs.items()}

    def w(layer, key):
        return torch.from_numpy(weights[f"{layer.name}.{key}"])

    with torch.no_grad():
        for layer in net.layers:
            xs = [values[i.name] for i in layer.inputs]
            x = xs[0]
            a, op = layer.args, layer.op
            bias = w(layer, "bias") if "bias" in layer.weights else None
            if op in ("conv", "dwconv"):
                y = F.conv2d(x, w(layer, "weight"), bias, a["s"], a["p"], a["d"], a["g"])
            elif op == "convt":
                y = F.conv_transpose2d(x, w(layer, "weight"), bias, a["s"], a["p"], a["op"],
                                       a["g"], a["d"])
            elif op == "maxpool":
                y = F.max_pool2d(x, a["k"], a["s"], a["p"], a["d"], ceil_mode=a["ceil"])
            elif op == "avgpool":
                y = F.avg_pool2d(x, a["k"], a["s"], a["p"], ceil_mode=a["ceil"],
                                 count_include_pad=a["count_pad"])
            elif op == "gap":
                y = x.mean((2, 3), keepdim=True)
            elif op == "gmp":
                y = x.amax((2, 3), keepdim=True)
            elif op == "fc":
                y = F.linear(x, w(layer, "weight"), bias)
            elif op == "flatten":
                y = x.flatten(1)
            elif op == "bn":
                y = F.batch_norm(x, w(layer, "running_mean"), w(layer, "running_var"),
                                 w(layer, "weight"), w(layer, "bias"), False, 0.0, a["eps"])
            elif op == "lrn":
                y = F.local_response_norm(x, a["size"], a["alpha"], a["beta"], a["k"])
            elif op == "upsample":
                bilinear = a["mode"] == "bilinear"
                y = F.interpolate(x, scale_factor=a["scale"], mode=a["mode"],
                                  align_corners=False if bilinear else None)
            elif op == "concat":
                y = torch.cat(xs, 1)
            elif op == "add":
                y = sum(xs[1:], xs[0])
            elif op == "crop":
                (h, wd), (hr, wr) = x.shape[2:], xs[1].shape[2:]
                oy, ox = (h - hr) // 2, (wd - wr) // 2
                y = x[:, :, oy:oy + hr, ox:ox + wr]
            elif op == "softmax":
                y = torch.softmax(x, 1)
            elif op == "relu":
                y = torch.relu(x)
            elif op == "relu6":
                y = F.relu6(x)
            elif op == "leaky_relu":
                y = F.leaky_relu(x, a["a"])
            elif op == "sigmoid":
                y = torch.sigmoid(x)
            elif op == "tanh":
                y = torch.tanh(x)
            elif op in ("identity", "dropout"):
                y = x
            else:
                raise NotImplementedError(op)
            values[layer.name] = y
        return {name: values[layer.name].numpy() for name, layer in net.outputs.items()}


def random_weights(net, seed: int = 0) -> dict:
    """Weights with non-trivial biases and batch-norm statistics, so fusions are exercised."""
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
        elif key.endswith(".weight") and value.ndim == 1:
            weights[key] = rng.uniform(0.5, 1.5, value.shape).astype(np.float32)
    return weights
