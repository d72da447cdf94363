"""Backends that run plans: ``cpu`` (Numba) and ``cuda`` (numba.cuda), with one kernel table
each (``backends/<device>/``), kernels named after the ops they run."""

from __future__ import annotations

from ...compiler import DataError, ResourceError, error

DEVICES = ("cpu", "cuda")


def backend_for(device: str):
    """A fresh backend object for ``device``, its kernels imported (and compiled on first use)."""
    if device == "cpu":
        from .cpu import CpuBackend

        return CpuBackend()
    if device == "cuda":
        try:
            from .cuda import CudaBackend
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.cuda":
                raise
            raise ResourceError(
                error(
                    "--device cuda: this version of cnnc has no CUDA backend",
                    hint="run on the CPU (--device cpu, the default)",
                )
            ) from None
        return CudaBackend()
    raise DataError(error(f"unknown device '{device}' (cpu or cuda)"))
