"""CPU threads a runner hands a running trainer: when a job of a spec ends and fewer jobs than cores are
left, the runner writes a larger thread count into the job's threads file (its path in the trainer's
environment, fcdm.store.trainlog.THREADS_ENV), and the trainer takes it up at its next log interval.

torch.set_num_threads changes the floating-point reduction order of some kernels, so the steps after a
change differ from a run at a fixed thread count in the last bits (README, "What is bitwise"); the
changes are logged in train.log and in the run's `fcdm.threads` tag.
"""
from __future__ import annotations

import os

import torch

from fcdm.store.trainlog import THREADS_ENV


class ThreadControl:
    """`poll()` returns the new thread count after the runner changed it (and applies it), else None."""

    def __init__(self, enabled: bool = True):
        path = os.environ.get(THREADS_ENV) if enabled else None
        self.path = path or None
        self.threads = torch.get_num_threads()
        self.history = [(0, self.threads)]  # (step, threads) of each change
        self._seen: float | None = None

    def poll(self, step: int) -> int | None:
        if self.path is None:
            return None
        try:
            mtime = os.stat(self.path).st_mtime_ns
            if mtime == self._seen:
                return None
            self._seen = mtime
            wanted = int(open(self.path).read().strip())
        except (OSError, ValueError):  # no file yet, or caught mid-write: look again next time
            return None
        if wanted < 1 or wanted == self.threads:
            return None
        torch.set_num_threads(wanted)
        self.threads = wanted
        self.history.append((step, wanted))
        return wanted

    def describe(self) -> str:
        """'1', or '1; 2 from step 212' after a change."""
        return "; ".join(str(n) if not step else f"{n} from step {step}" for step, n in self.history)
