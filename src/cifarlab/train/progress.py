"""A transient progress bar for the batches of one epoch (on stderr, only on a terminal)."""
from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class EpochBar:
    def __init__(self, title: str, total: int):
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("loss {task.fields[loss]:.4f}"), TimeRemainingColumn(),
                                  console=Console(stderr=True), transient=True)
        self._task = self._progress.add_task(title, total=total, loss=float("nan"))
        self._progress.start()

    def update(self, completed: int, loss: float) -> None:
        self._progress.update(self._task, completed=completed, loss=loss)

    def close(self) -> None:
        self._progress.stop()
