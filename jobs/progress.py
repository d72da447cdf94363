"""Progress of a job on a terminal: tqdm's bar (count, rate, ETA) where tqdm is installed
(the ``train`` extra), else a plain line redrawn in place, so that folder runs and sweeps need
nothing beyond Dask; silent when stderr is a file or a pipe."""

from __future__ import annotations

import sys
import time


class Progress:
    """``update(done, failed)`` per finished item; ``close()`` at the end."""

    def __init__(self, total: int, noun: str, stream=None, width: int = 24):
        self.total, self.noun, self.width = total, noun, width
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() and total > 0
        self.done = self.failed = 0
        self.start = time.perf_counter()
        self.bar = None
        if self.enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                pass
            else:
                self.bar = tqdm(total=total, unit=noun.rstrip("s"), file=self.stream, leave=True)

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
        if self.bar is not None:
            if failed:
                self.bar.set_postfix(failed=self.failed, refresh=False)
            self.bar.update(done)
        elif self.enabled:
            self.stream.write("\r" + self.line())
            self.stream.flush()

    def close(self):
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            self.stream.write("\n")
            self.stream.flush()
