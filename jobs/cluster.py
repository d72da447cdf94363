"""Dask, the only scheduler cnnc uses: a local cluster by default, or an existing one.

``dask[distributed]`` is the optional extra ``cnnc[dask]``; it is imported only here.
"""

from __future__ import annotations

import logging
import os
import re
from contextlib import contextmanager

from ..compiler import ResourceError, UsageError, error

ADDRESS = re.compile(r"^[a-z][a-z0-9+]*://[^\s:/]+(:\d+)?/?$|^[^\s:/]+:\d+$")
MAX_LOCAL_WORKERS = 4


def available() -> bool:
    try:
        import distributed  # noqa: F401
    except ImportError:
        return False
    return True


def require(command: str):
    if not available():
        raise ResourceError(
            error(
                f"{command} runs on Dask, which is not installed",
                hint="pip install 'cnnc[dask]'",
            )
        )


def local_workers(requested: int | None) -> int:
    if requested is not None:
        if requested < 1:
            raise UsageError(error(f"--workers must be at least 1, got {requested}"))
        return requested
    return max(1, min(MAX_LOCAL_WORKERS, os.cpu_count() or 1))


@contextmanager
def client(scheduler: str | None, workers: int | None = None, command: str = "cnnc"):
    """A ``distributed.Client``: to ``scheduler`` if given, else to a fresh local cluster of
    ``workers`` processes with one task slot each, the cores split between them (so that
    Numba's threads in one worker do not slow down another's timings)."""
    require(command)
    from distributed import Client, LocalCluster

    if scheduler is not None:
        if not ADDRESS.match(scheduler):
            raise UsageError(
                error(f"--scheduler '{scheduler}': give an address like tcp://HOST:PORT")
            )
        try:
            c = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError) as exc:
            raise ResourceError(
                error(f"cannot reach the Dask scheduler at {scheduler}: {exc}")
            ) from None
        with c:
            yield c
        return
    n = local_workers(workers)
    threads = max(1, (os.cpu_count() or 1) // n)
    with (
        LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
            env={"NUMBA_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)},
        ) as cluster,
        Client(cluster) as c,
    ):
        yield c
