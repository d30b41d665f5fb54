"""Events a run sends to code above the trainer (HTML summaries, live curves, pruning), in the spirit of
fastai's callbacks: the trainer calls them and knows nothing of what they do.

Subclass `Callback` and override what you need. A plain function `fn(trainer, row)` is accepted too,
as an epoch-end callback (that is what `callbacks=` took before there were events).
"""
from __future__ import annotations

from typing import Callable, Sequence, Union


class Callback:
    def on_epoch_end(self, trainer, row: dict) -> None:
        """After each epoch's checkpoint is written; `row` is its metrics.csv row. Raise to stop the run
        (an Optuna pruner does): the checkpoints written so far stay."""

    def on_fit_end(self, trainer, summary: dict) -> None:
        """On the main process once summary.json is written. The run has finished: an exception here is
        a warning in the log, never a failed run."""


class _EpochFunction(Callback):
    def __init__(self, fn: Callable):
        self.fn = fn

    def on_epoch_end(self, trainer, row: dict) -> None:
        self.fn(trainer, row)


CallbackLike = Union[Callback, Callable[..., None]]


def as_callbacks(callbacks: Sequence[CallbackLike]) -> list[Callback]:
    return [c if isinstance(c, Callback) else _EpochFunction(c) for c in callbacks]
