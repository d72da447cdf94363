"""The CUDA backend (numba.cuda): kernels named as the CPU's, in the same NHWC buffers.

Activations live in device memory in the liveness-planned buffers; weights are copied to the
device once per plan, and only inputs and outputs cross the bus. Tests run the kernels under
Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1) and compile them for sm_90 with
``cuda.compile_ptx``.
"""

from __future__ import annotations

import contextlib

import numpy as np

from ....compiler import ResourceError, error

try:
    from numba import cuda
except ImportError as exc:  # numba-cuda missing
    raise ResourceError(
        error(f"device 'cuda' needs numba-cuda ({exc})", hint="pip install 'cnnc[cuda]'")
    ) from None


def _register_array_overloads() -> None:
    """Load numba-cuda's NumPy array overloads now, lending NumPy 2.5's missing alias
    ``np.row_stack`` for that moment only.

    numba-cuda 0.30 registers an overload of ``np.row_stack`` when that module is imported, on
    the first kernel compile; NumPy 2.5 removed the alias of ``vstack``, and every kernel then
    failed with AttributeError (seen on an H200 machine with numpy 2.5.2). Once registered,
    the overload holds ``np.vstack`` itself, so the alias is taken away again: the host's
    NumPy stays as it was."""
    lent = not hasattr(np, "row_stack")
    if lent:
        np.row_stack = np.vstack
    try:
        import numba.cuda.np.arrayobj  # noqa: F401
    except ImportError:  # another numba-cuda layout: nothing of this to register
        pass
    finally:
        if lent:
            del np.row_stack


_register_array_overloads()

from . import conv, elementwise, layout, norm, pool  # noqa: E402,F401 (register kernels)
from .launch import GRADS, KERNELS  # noqa: E402


class CudaBackend:
    """Runs plan steps with the kernels of this folder; buffers live on the device."""

    name = "cuda"
    kernels = KERNELS
    grads = GRADS

    def __init__(self):
        try:
            available = cuda.is_available()
        except Exception as exc:  # a broken driver raises here
            raise ResourceError(error(f"device 'cuda': no usable CUDA driver ({exc})")) from None
        if not available:
            raise ResourceError(
                error(
                    "device 'cuda': no usable NVIDIA GPU or driver was found",
                    hint="run on the CPU (device 'cpu'), or install the NVIDIA driver",
                )
            )
        self.dummy = cuda.to_device(np.zeros(1, np.float32))

    def check_memory(self, need: int):
        """Refuse a plan that cannot fit in the GPU's free memory, before allocating it."""
        try:
            free, _ = cuda.current_context().get_memory_info()
        except Exception:  # the simulator reports no device memory
            return
        if need > 0.9 * free:
            raise ResourceError(
                error(
                    f"device 'cuda': this run needs about {need / 2**30:.2f} GiB of GPU memory but "
                    f"{free / 2**30:.2f} GiB is free",
                    hint="use a smaller batch size",
                )
            )

    def empty(self, n: int):
        return cuda.device_array(n, np.float32)

    def to_device(self, array):
        return cuda.to_device(np.ascontiguousarray(array).reshape(-1))

    def to_host(self, array):
        return array.copy_to_host()

    def nchw_to_runtime(self, x, out):
        host = x.transpose(0, 2, 3, 1) if x.ndim == 4 else x
        out.copy_to_device(np.ascontiguousarray(host, np.float32))

    def runtime_to_nchw(self, x):
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if x.ndim == 4 else x.copy()

    def synchronize(self):
        cuda.synchronize()

    def running(self):
        """The context of a pass: nothing of the process to set on this backend."""
        return contextlib.nullcontext()

    def describe(self) -> dict:
        try:
            dev = cuda.get_current_device()
            return {
                "gpu": getattr(dev, "name", b"?").decode()
                if isinstance(getattr(dev, "name", ""), bytes)
                else str(getattr(dev, "name", "?"))
            }
        except Exception:  # the simulator has no real device
            return {}

    def run_step(self, step, arrays, ins, res, out, work):
        self.kernels[step.kernel](self, step, arrays, ins, res, out, work)
