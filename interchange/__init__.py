"""ONNX in and out: export a checked network, import an ONNX model as a ``.cnn`` spec, and run
ONNX models through cnnc as an ``onnx.backend`` (README.md, section ONNX).

Everything here needs the optional ``onnx`` package (``pip install "cnnc[onnx]"``);
:func:`require_onnx` turns its absence into a usage error that says how to install it.
"""

from __future__ import annotations

from ..compiler import UsageError, error

INSTALL_HINT = 'pip install "cnnc[onnx]"  (or: pip install onnx)'


def require_onnx():
    """Import ``onnx`` or raise a :class:`UsageError` saying how to install it."""
    try:
        import onnx
    except ImportError:
        raise UsageError(
            error(
                "ONNX support needs the 'onnx' package, which is not installed", hint=INSTALL_HINT
            )
        ) from None
    return onnx
