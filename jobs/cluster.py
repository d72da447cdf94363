"""Dask, the only scheduler cnnc uses: a local cluster by default, or an existing one.

``dask[distributed]`` is the optional extra ``cnnc[dask]``; it is imported only here.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import warnings
from contextlib import contextmanager

from ..compiler import CnncWarning, ResourceError, UsageError, error

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


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, as Dask's own defaults count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def local_workers(requested: int | None) -> int:
    """Worker processes of a local cluster: at most one per usable core, since each worker
    runs one task at a time and more processes only compete for the same cores (and a
    thousand of them exhaust the machine before the first task runs)."""
    cores = usable_cores()
    if requested is None:
        return min(MAX_LOCAL_WORKERS, cores)
    if requested < 1:
        raise UsageError(error(f"--workers must be at least 1, got {requested}"))
    if requested > cores:
        warnings.warn(
            f"--workers {requested}: this machine has {cores} usable core"
            f"{'s' if cores != 1 else ''}; starting {cores} workers",
            CnncWarning,
            stacklevel=2,
        )
        return cores
    return requested


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
        with c, _quiet_when_interrupted():
            yield c
        return
    n = local_workers(workers)
    threads = max(1, usable_cores() // n)
    with _children_ignore_sigint():
        cluster = LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            # the scheduler's HTTP server (health checks) on a free port: its default, 8787,
            # taken by another cluster gave a warning about "a cluster running"
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
            # the workers' own logs: a worker whose scheduler closes first (Ctrl-C) reports its
            # lost heartbeat with a traceback; task failures come back through their futures
            silence_logs=logging.CRITICAL,
            env={"NUMBA_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)},
        )
    with cluster, Client(cluster) as c, _quiet_when_interrupted():
        yield c


#: Loggers that report a cluster's shutdown: after Ctrl-C, closed connections and cancelled
#: tasks are the expected outcome, not errors worth a traceback each.
SHUTDOWN_LOGGERS = ("distributed", "tornado", "asyncio")


@contextmanager
def _quiet_when_interrupted():
    """On an interrupt (or any error) leaving the block, silence Dask's loggers while the
    cluster closes, so that the user sees cnnc's one line instead of every worker's and the
    scheduler's reports of connections closed under them."""
    try:
        yield
    except BaseException:
        known = logging.root.manager.loggerDict
        existing = [n for n in known if n.split(".")[0] in SHUTDOWN_LOGGERS]
        for name in (*SHUTDOWN_LOGGERS, *existing):  # children may carry levels of their own
            logging.getLogger(name).setLevel(logging.CRITICAL + 1)
        raise


@contextmanager
def _children_ignore_sigint():
    """Start the cluster with SIGINT blocked in this thread: the threads it starts inherit the
    mask, and so do the worker processes they spawn (a signal mask survives fork and exec).
    Ctrl-C reaches the whole process group, and a worker that takes it dies printing a
    traceback, while this process alone should stop the run and close the cluster in order.
    A Ctrl-C during the start stays pending, and arrives here once the mask is restored."""
    if not hasattr(signal, "pthread_sigmask"):  # not on a POSIX system
        yield
        return
    # multiprocessing starts its resource tracker with SIGINT blocked and then unblocks it in
    # the starting thread, which would undo the mask before the workers are spawned: start it
    # first (a no-op where it runs already)
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
