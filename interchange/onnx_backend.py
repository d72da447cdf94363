"""cnnc as an ONNX backend (``onnx.backend.base.Backend``): import, then run on cnnc's CPU
runtime, so that onnx's own ``BackendTest`` runner can test cnnc.

Inputs that feed parameter slots (a Conv's weight, a Reshape's shape, Resize's scales...) are
parameters in cnnc: the representation binds them as constants when it runs. A model that
uses an op, attribute or pattern the language lacks raises :class:`unittest.SkipTest` from
``run`` with the importer's message; any other failure, and every wrong number, fails.
"""

from __future__ import annotations

import unittest

import numpy as np
from onnx.backend.base import Backend, BackendRep

from ..compiler import DataError
from .onnx_import import import_model, translate

#: (op type, input index from which on) inputs that are parameters, not data
PARAMETER_INPUTS = {
    "Conv": 1,
    "ConvTranspose": 1,
    "Gemm": 1,
    "MatMul": 1,
    "BatchNormalization": 1,
    "InstanceNormalization": 1,
    "LayerNormalization": 1,
    "PRelu": 1,
    "Clip": 1,
    "Pad": 1,
    "Resize": 1,
    "Upsample": 1,
    "Reshape": 1,
    "Slice": 1,
    "Split": 1,
    "Squeeze": 1,
    "ReduceMean": 1,
    "Dropout": 1,
}


def parameter_inputs(model) -> set[str]:
    names = set()
    for node in model.graph.node:
        start = PARAMETER_INPUTS.get(node.op_type)
        if start is not None:
            names.update(n for n in node.input[start:] if n)
    return names


class CnncRep(BackendRep):
    def __init__(self, model):
        self.model = model
        inits = {i.name for i in model.graph.initializer}
        self.inputs = [i.name for i in model.graph.input if i.name not in inits]
        self.parameters = parameter_inputs(model)
        self.outputs = [o.name for o in model.graph.output]

    def run(self, inputs, **kwargs):
        import cnnc

        if isinstance(inputs, dict):
            feeds = dict(inputs)
        else:
            feeds = dict(
                zip(self.inputs, inputs if isinstance(inputs, (list, tuple)) else [inputs])
            )
        bind = {k: np.asarray(v) for k, v in feeds.items() if k in self.parameters}
        try:
            _, weights, net = import_model(self.model, "model", bind)
        except DataError as exc:
            raise unittest.SkipTest(exc.format()) from None
        data = {k: np.asarray(v, np.float32) for k, v in feeds.items() if k not in bind}
        by_onnx = dict(zip(data, net.inputs))  # import keeps the input order
        outputs = cnnc.run(net, {by_onnx[k]: v for k, v in data.items()}, weights)
        return tuple(outputs[name] for name in outputs)


class CnncBackend(Backend):
    @classmethod
    def is_compatible(cls, model, device: str = "CPU", **kwargs) -> bool:
        """Whether the model imports; with inputs that feed parameter slots, only ``run``
        can tell (it binds their values)."""
        inits = {i.name for i in model.graph.initializer}
        if parameter_inputs(model) & {i.name for i in model.graph.input} - inits:
            return True
        try:
            translate(model)
        except DataError:
            return False
        return True

    @classmethod
    def prepare(cls, model, device: str = "CPU", **kwargs):
        super().prepare(model, device, **kwargs)
        return CnncRep(model)

    @classmethod
    def run_model(cls, model, inputs, device: str = "CPU", **kwargs):
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device == "CPU"


prepare = CnncBackend.prepare
run_model = CnncBackend.run_model
supports_device = CnncBackend.supports_device
is_compatible = CnncBackend.is_compatible
