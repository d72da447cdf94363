"""Backends that run plans: ``cpu`` (Numba) and ``cuda`` (numba.cuda), with one kernel table
each (``backends/<device>/``), kernels named after the ops they run."""

from __future__ import annotations

import os

from ...compiler import DataError, ResourceError, error

DEVICES = ("cpu", "cuda")


ALGORITHMS = ("auto", "direct", "winograd")


def resolve_algorithm(algorithm: str | None) -> str:
    """The algorithm policy: the one asked for, else ``$CNNC_ALGORITHM``, else ``auto``."""
    chosen = algorithm or os.environ.get("CNNC_ALGORITHM") or "auto"
    if chosen not in ALGORITHMS:
        source = "" if algorithm else " (from CNNC_ALGORITHM)"
        raise DataError(error(f"unknown algorithm '{chosen}'{source}: {', '.join(ALGORITHMS)}"))
    return chosen


def resolve_tune(tune: bool | None) -> bool:
    """Whether runs measure untuned convolutions: as asked, else ``$CNNC_TUNE`` (1/true/yes)."""
    if tune is not None:
        return bool(tune)
    return os.environ.get("CNNC_TUNE", "").strip().lower() in ("1", "true", "yes", "on")


def backend_for(device: str, algorithm: str | None = None, tune: bool = False):
    """A fresh backend object for ``device``, its kernels imported (and compiled on first use).

    ``algorithm`` picks the CPU's convolution algorithms: ``auto`` takes the choice cached per
    layer shape and machine (with ``tune``, measured where none is cached, else
    ``autotune.default_choice``), ``direct`` never uses Winograd, ``winograd`` forces Winograd
    wherever it applies. The CUDA backend has the direct path only."""
    algorithm = resolve_algorithm(algorithm)
    if device == "cpu":
        from .cpu import CpuBackend

        return CpuBackend(algorithm, tune)
    if device == "cuda":
        try:
            from .cuda import CudaBackend
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.cuda":
                raise
            raise ResourceError(
                error(
                    "device 'cuda': this version of cnnc has no CUDA backend",
                    hint="run on the CPU (device 'cpu', the default)",
                )
            ) from None
        return CudaBackend()
    raise DataError(error(f"unknown device '{device}' (cpu or cuda)"))
