"""A line when kernels start compiling: the first run of a network on a machine can spend
tens of seconds in Numba, and should say so."""

from __future__ import annotations

import sys
from contextlib import contextmanager


@contextmanager
def announce_compiling(message: str, stream=None):
    """Print ``message`` once, when Numba starts compiling a kernel that its on-disk cache
    lacks (a cached kernel loads without this event): the first run of a network on a
    machine can spend tens of seconds compiling, and should say so."""
    from numba.core import event

    class Announcer(event.Listener):
        said = False

        def on_start(self, ev):
            if not self.said:
                self.said = True
                print(message, file=stream or sys.stderr, flush=True)

        def on_end(self, ev):
            pass

    with event.install_listener("numba:compile", Announcer()):
        yield
