"""Live view while training: TensorBoard event files in RUN_DIR/tensorboard, written every epoch.

(metrics.csv is rewritten every epoch anyway, so `cifarlab report RUN_DIR` also works mid-run.)
"""
from __future__ import annotations

import importlib.util

from cifarlab.errors import UserError
from cifarlab.train.callbacks import Callback

SCALARS = {"loss/train": "train_loss", "loss/val": "val_loss", "accuracy/train": "train_accuracy",
           "accuracy/val": "val_accuracy", "lr": "lr", "speed/images_per_second": "images_per_second",
           "speed/epoch_seconds": "epoch_seconds"}


class TensorBoardCallback(Callback):
    """For `train(..., callbacks=[...])`: one scalar per curve, step = epoch; closed when the run ends."""

    def __init__(self):
        if importlib.util.find_spec("tensorboard") is None:
            raise UserError("--tensorboard needs the tensorboard package: pip install cifarlab[tensorboard]")
        self.writer = None
        self.log_dir = None

    def on_epoch_end(self, trainer, row: dict) -> None:
        if not getattr(getattr(trainer, "dist", None), "is_main", True):
            return  # under DDP every rank sees the same row; one writes it
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter
            self.log_dir = trainer.run.path / "tensorboard"
            # purge_step: a resumed run drops what an interrupted session logged past its last checkpoint
            self.writer = SummaryWriter(str(self.log_dir), purge_step=row["epoch"])
        for tag, key in SCALARS.items():
            if row[key] == row[key]:  # NaN: an epoch train.val_every did not validate
                self.writer.add_scalar(tag, row[key], row["epoch"])
        self.writer.flush()  # visible in TensorBoard now, not when the run ends

    def on_fit_end(self, trainer, summary: dict) -> None:
        self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
