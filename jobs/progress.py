"""A one-line progress display on a terminal; silent when stderr is a file or a pipe."""

from __future__ import annotations

import sys
import time


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
