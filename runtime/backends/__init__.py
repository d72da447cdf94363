"""Backends that run plans: ``cpu`` (Numba) and ``cuda`` (numba.cuda), with one kernel table
each (``backends/<device>/``), kernels named after the ops they run."""

from __future__ import annotations

import os

from ...compiler import DataError, ResourceError, error

DEVICES = ("cpu", "cuda")


#: The CPU's convolution algorithms (``--algorithm``, ``algorithm=``, ``$CNNC_ALGORITHM``), each
#: described by what it runs; the CUDA backend has one path and ignores the choice.
#: What a convolution runs by when nothing is cached for its shape (autotune.default_choice);
#: the README and --help say the same.
DEFAULT_CONV = "the micro-kernel for ungrouped layers and BLAS for grouped ones"

ALGORITHMS = {
    "auto": "per layer, the fastest of cnnc's micro-kernel, BLAS and Winograd as measured on "
    f"this machine (`cnnc tune`, `--tune`), else {DEFAULT_CONV} (the default)",
    "direct": "as auto without Winograd: exact direct convolution on the micro-kernel or BLAS",
    "blas": "every convolution as BLAS matrix products and depthwise ones as plain loops: "
    "nothing on cnnc's micro-kernel (slower; the path to fall back on)",
    "winograd": "Winograd F(4x4) for every 3x3 stride-1 layer, elsewhere as auto's default",
}


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


def preload(device: str) -> None:
    """Load what a backend's first kernel would: for the CPU, Numba, cnnc's kernel modules
    and Numba's registries (about 0.3 s of Python, once per process), so that a caller can
    run it beside work that leaves the interpreter free (weights.initialise_while). Nothing
    for other devices, nor for an unknown one (``backend_for`` says so)."""
    if device == "cpu":
        from .cpu import registries

        registries.load()


def backend_for(device: str, algorithm: str | None = None, tune: bool = False):
    """A fresh backend object for ``device``, its kernels imported (and compiled on first use).

    ``algorithm`` picks the CPU's convolution algorithms (``ALGORITHMS``); ``tune`` measures
    the layers whose choice is not cached yet. The CUDA backend has one path only."""
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
