"""What the command line shows while it waits: a one-line progress display on a terminal
(silent when stderr is a file or a pipe), and a line when kernels start compiling."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager


class Progress:
    """``[#####.....]  12/40 inputs  3 failed  4.1/s``, redrawn in place on a terminal."""

    def __init__(self, total: int, noun: str, stream=None, width: int = 24):
        self.total, self.noun, self.width = total, noun, width
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() and total > 0
        self.done = self.failed = 0
        self.start = time.perf_counter()

    def line(self) -> str:
        filled = self.width * self.done // max(self.total, 1)
        rate = self.done / max(time.perf_counter() - self.start, 1e-9)
        failed = f"  {self.failed} failed" if self.failed else ""
        return (
            f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} "
            f"{self.noun}{failed}  {rate:.1f}/s"
        )

    def update(self, done: int = 1, failed: int = 0):
        self.done += done
        self.failed += failed
        if self.enabled:
            self.stream.write("\r" + self.line())
            self.stream.flush()

    def close(self):
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


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
