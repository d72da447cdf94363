"""``cnnc.onnx_backend``: cnnc as an ``onnx.backend`` (see :mod:`cnnc.interchange.onnx_backend`).

Needs the ``onnx`` extra: ``pip install "cnnc[onnx]"``.
"""

from cnnc.interchange.onnx_backend import (
    CnncBackend,
    CnncRep,
    is_compatible,
    prepare,
    run_model,
    supports_device,
)

__all__ = ["CnncBackend", "CnncRep", "is_compatible", "prepare", "run_model", "supports_device"]
