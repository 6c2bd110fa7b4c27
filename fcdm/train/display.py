"""The trainer's terminal progress bar: step, loss and steps/s (fcdm.train.loop draws it on the main process)."""
from __future__ import annotations

import time

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class ProgressBar:
    """A rich progress bar with step, loss and steps/s (a no-op when disabled)."""

    def __init__(self, enabled: bool, start: int, total: int):
        self.bar = None
        if enabled:
            self.bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("loss {task.fields[loss]:.4f}"),
                                TextColumn("{task.fields[rate]:.1f} steps/s"), TimeRemainingColumn())
            self.bar.start()
            self.task = self.bar.add_task("train", total=total, completed=start, loss=float("nan"), rate=0.0)
            self.start, self.t0 = start, time.perf_counter()

    def update(self, step: int, loss: float) -> None:
        if self.bar:
            rate = (step - self.start) / max(time.perf_counter() - self.t0, 1e-9)
            self.bar.update(self.task, completed=step, loss=loss, rate=rate)

    def close(self) -> None:
        if self.bar:
            self.bar.stop()
            self.bar = None
