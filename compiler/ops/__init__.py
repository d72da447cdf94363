"""The built-in ops: one registry entry per op holding its pure rules (see base.py).

Importing this package registers every op in :data:`OPS`, family by family. The runtimes
register their kernels under the same names (``runtime/backends/<device>/``).
"""

from __future__ import annotations

from . import conv, elementwise, merge, norm, pool, resample, shape  # noqa: F401 (register)
from .base import (
    OPS,
    RF,
    WORDS,
    Arg,
    ArgError,
    Op,
    ShapeError,
    bind_args,
    fmt_shape,
    match_arguments,
    register,
)
from .elementwise import Activation

#: Names people bring from other frameworks, mapped to ours for "did you mean" hints.
ALIASES = {
    "conv2d": "conv", "convolution": "conv", "linear": "fc", "dense": "fc",
    "fully_connected": "fc", "batchnorm": "bn", "batch_norm": "bn", "batchnorm2d": "bn",
    "cat": "concat", "concatenate": "concat", "deconv": "convt", "conv_transpose": "convt",
    "convtranspose": "convt", "conv2dtranspose": "convt", "upconv": "convt",
    "maxpool2d": "maxpool", "max_pool": "maxpool", "avgpool2d": "avgpool",
    "avg_pool": "avgpool", "globalavgpool": "gap", "global_avg_pool": "gap",
    "adaptive_avg_pool": "adaptive_avgpool", "adaptiveavgpool2d": "adaptive_avgpool",
    "globalmaxpool": "gmp", "interpolate": "resize",
    "upsampling": "upsample", "upsampling2d": "upsample", "sum": "add", "plus": "add",
    "multiply": "mul", "prod": "mul", "reshape": "flatten", "view": "flatten",
    "depthwise": "dwconv", "depthwise_conv": "dwconv", "separable": "dwconv",
    "lrelu": "leaky_relu", "leakyrelu": "leaky_relu", "swish": "silu", "hswish": "hardswish",
    "hard_swish": "hardswish", "hsigmoid": "hardsigmoid", "hard_sigmoid": "hardsigmoid",
    "clip": "clamp", "relu_n": "clamp", "layer_norm": "layernorm", "layernorm2d": "layernorm",
    "group_norm": "groupnorm", "layer_scale": "scale", "drop_path": "droppath",
    "stochastic_depth": "droppath", "channel_shuffle": "shuffle", "split": "slice",
    "chunk": "slice", "zeropad": "pad", "padding": "pad",
    "center_crop": "crop", "centercrop": "crop", "localresponsenorm": "lrn",
}

__all__ = ["OPS", "RF", "WORDS", "ALIASES", "Arg", "ArgError", "Op", "ShapeError", "Activation",
           "bind_args", "fmt_shape", "match_arguments", "register"]
