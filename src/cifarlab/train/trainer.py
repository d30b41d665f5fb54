"""The training loop. Read `Trainer.fit` top to bottom: that is everything a run does.

Honesty rules built in: the best epoch is chosen on validation images carved from train; the
test split (when the dataset has one) is evaluated once, at the end, with the best weights.
Reproducibility: the model is initialised from `train.seed`, and every epoch reseeds shuffling
and augmentation from (seed, epoch), so a resumed run replays exactly what it would have done.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
import yaml

from cifarlab.config import ExperimentConfig, set_key, validate_config
from cifarlab.data.loader import PreparedData
from cifarlab.errors import TrainingDiverged, UserError
from cifarlab.models import build_model, count_parameters
from cifarlab.train.checkpoint import atomic_write_text, load_checkpoint, load_weights, save_checkpoint
from cifarlab.train.evaluate import full_metrics, loss_and_accuracy, predict
from cifarlab.train.optim import build_optimizer, build_scheduler
from cifarlab.train.rundir import RunDir, default_run_dir
from cifarlab.train.runtime import autocast, environment, resolve_device, resolve_precision

CHANCE_EPOCHS = 3  # epochs at chance accuracy before we warn
EpochCallback = Callable[["Trainer", dict], None]  # called with the trainer and the epoch's metrics row


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % (2 ** 63)


class Trainer:
    def __init__(self, cfg: ExperimentConfig, run: RunDir, log: Callable[[str], None] = print,
                 progress: bool = False, state: dict | None = None, callbacks: Sequence[EpochCallback] = ()):
        self.cfg, self.run, self.progress, self.callbacks = cfg, run, progress, list(callbacks)
        self._log = log
        t = cfg.train
        if t.threads:
            torch.set_num_threads(t.threads)
        self.device = resolve_device(t.device)
        self.precision = resolve_precision(t.precision, self.device)
        self.data = PreparedData(cfg.data, self.device)
        c, h, _ = self.data.image_shape
        self.model_spec = {"name": cfg.model.name, "options": dict(cfg.model.options),
                           "num_classes": self.data.num_classes, "in_channels": c, "image_size": h}
        torch.manual_seed(t.seed)
        self.model = build_model(cfg.model.name, num_classes=self.data.num_classes, in_channels=c, image_size=h,
                                 **cfg.model.options).to(self.device)
        if t.channels_last:  # NHWC lets oneDNN/cuDNN pick their fastest convolution kernels
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(cfg.optimizer, self.model.parameters())
        n = len(self.data.train) * (2 if cfg.data.augment.concat_original else 1)
        self.steps_per_epoch = max(1, n // t.batch_size + (n % t.batch_size > 1))
        self.scheduler = build_scheduler(cfg.schedule, self.optimizer, self.steps_per_epoch, t.epochs, cfg.optimizer.lr)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.forward = torch.compile(self.model) if t.compile else self.model
        self.epoch, self.history, self.train_seconds = 0, [], 0.0
        self.best = {"val_accuracy": -1.0, "epoch": 0}
        if state is not None:
            self._restore(state)

    # ------------------------------------------------------------------ the run
    def fit(self) -> dict:
        cfg, t, run = self.cfg, self.cfg.train, self.run
        atomic_write_text(run.config, cfg.to_yaml())
        run.write_json(run.environment, environment(self.device, self.precision))
        test = f", {len(self.data.test)} test" if self.data.test is not None else ""
        self.log(f"{cfg.name}: {cfg.model.name} ({count_parameters(self.model):,} parameters) on "
                 f"{len(self.data.train)} train / {len(self.data.val)} val{test} images, "
                 f"{self.device} {self.precision}, run dir {run.path}")
        wall0, stop_reason, chance_streak = time.time(), None, 0
        for epoch in range(self.epoch + 1, t.epochs + 1):
            epoch0 = time.perf_counter()
            row = self._train_epoch(epoch)
            val_loss, val_acc = loss_and_accuracy(*self._predict(self.data.val))
            row.update(val_loss=val_loss, val_accuracy=val_acc, epoch_seconds=time.perf_counter() - epoch0)
            improved = val_acc > self.best["val_accuracy"]
            if improved:
                self.best = {"val_accuracy": val_acc, "epoch": epoch}
            self.history.append(row)
            self.epoch = epoch
            self._save(improved)
            self.log(self._epoch_line(row, improved))
            for callback in self.callbacks:  # e.g. live TensorBoard curves, Optuna pruning (may raise to stop)
                callback(self, row)
            chance_streak = chance_streak + 1 if val_acc <= 1.5 / self.data.num_classes else 0
            if chance_streak == CHANCE_EPOCHS:
                self.log(f"warning: validation accuracy has stayed at chance ({1 / self.data.num_classes:.0%}) for "
                         f"{CHANCE_EPOCHS} epochs: the network is not learning; try a 10x smaller or larger --lr, "
                         "another optimizer or initialisation")
            if t.early_stopping_patience and epoch - self.best["epoch"] >= t.early_stopping_patience:
                stop_reason = f"early stopping: no better val accuracy for {t.early_stopping_patience} epochs"
            if self._out_of_time():
                stop_reason = f"time limit of {t.time_limit_minutes:g} minutes reached"
            if stop_reason:
                self.log(stop_reason)
                break
        return self._finish(stop_reason, time.time() - wall0)

    def _train_epoch(self, epoch: int) -> dict:
        t = self.cfg.train
        torch.manual_seed(_epoch_seed(t.seed, epoch))  # augmentation and dropout randomness
        order = torch.Generator().manual_seed(_epoch_seed(t.seed, epoch))
        self.model.train()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen, t0 = 0, time.perf_counter()
        bar = self._progress_bar(epoch)
        for i, (xb, yb) in enumerate(self.data.train_batches(t.batch_size, order)):
            if t.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with autocast(self.device, self.precision):
                logits = self.forward(xb)
                loss = F.cross_entropy(logits.float(), yb, label_smoothing=t.label_smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if t.grad_clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            loss_sum += loss.detach() * len(yb)
            correct += (logits.argmax(1) == yb).sum()
            seen += len(yb)
            if i % 25 == 0:  # a NaN poisons loss_sum, so checking now and then catches it within 25 steps
                self._check_finite(loss_sum, epoch)
                if bar:
                    bar.update(i + 1, loss=loss_sum.item() / seen)
                if self._out_of_time(time.perf_counter() - t0):
                    break
        if bar:
            bar.close()
        self._check_finite(loss_sum, epoch)
        seconds = time.perf_counter() - t0
        self.train_seconds += seconds
        return {"epoch": epoch, "train_loss": loss_sum.item() / max(seen, 1), "train_accuracy": correct.item() / max(seen, 1),
                "lr": self.optimizer.param_groups[0]["lr"], "train_seconds": seconds,
                "images_per_second": seen / max(seconds, 1e-9)}

    def _finish(self, stop_reason: str | None, wall_seconds: float) -> dict:
        best = load_checkpoint(self.run.best)  # select on validation: report the best epoch's weights
        load_weights(self.model, best["state_dict"], str(self.run.best))
        val = full_metrics(*self._predict(self.data.val), self.data.classes)
        test = full_metrics(*self._predict(self.data.test), self.data.classes) if self.data.test is not None else None
        images = sum(r["images_per_second"] * r["train_seconds"] for r in self.history)
        summary = {
            "name": self.cfg.name, "status": "stopped" if stop_reason else "completed", "stopped_reason": stop_reason,
            "model": self.cfg.model.name, "parameters": count_parameters(self.model),
            "epochs_run": self.epoch, "best_epoch": self.best["epoch"], "best_val_accuracy": self.best["val_accuracy"],
            "test_accuracy": test["accuracy"] if test else None, "test_loss": test["loss"] if test else None,
            "train_images_per_second": images / max(self.train_seconds, 1e-9), "train_seconds": self.train_seconds,
            "wall_seconds": wall_seconds, "device": str(self.device), "precision": self.precision,
            "run_dir": str(self.run.path), "val": val, "test": test,
        }
        self.run.write_json(self.run.summary, summary)
        # reports hook: the run's report is written here (issue "Reports")
        test_part = f", test {test['accuracy']:.2%} (evaluated once)" if test else ", no test split"
        self.log(f"done: best val {self.best['val_accuracy']:.2%} at epoch {self.best['epoch']}{test_part}; "
                 f"{summary['train_images_per_second']:.0f} img/s; {self.run.path}")
        return summary

    # ------------------------------------------------------------------ helpers
    def log(self, line: str) -> None:
        self._log(line)
        self.run.append_log(line)

    def _predict(self, split):
        return predict(self.model, self.data.eval_batches(split, self.cfg.train.eval_batch_size), self.device,
                       self.precision, self.cfg.train.channels_last)

    def _out_of_time(self, running: float = 0.0) -> bool:
        limit = self.cfg.train.time_limit_minutes
        return bool(limit) and self.train_seconds + running >= limit * 60

    def _check_finite(self, loss_sum: torch.Tensor, epoch: int) -> None:
        if math.isfinite(loss_sum.item()):
            return
        o = self.cfg.optimizer
        cause = f"learning rate {o.lr:g} is likely too high for {o.name} (try 10x smaller)"
        if o.weight_decay >= 1e-2:
            cause += f", or weight decay {o.weight_decay:g} too large"
        msg = (f"training diverged in epoch {epoch}: the loss became NaN/inf; {cause}. "
               f"Checkpoints up to epoch {self.epoch} are kept in {self.run.path}")
        self.run.write_json(self.run.summary, {"name": self.cfg.name, "status": "diverged", "stopped_reason": msg,
                                               "epochs_run": self.epoch, "run_dir": str(self.run.path)})
        self.run.append_log(msg)
        raise TrainingDiverged(msg)

    def _epoch_line(self, r: dict, improved: bool) -> str:
        width = len(str(self.cfg.train.epochs))
        return (f"epoch {r['epoch']:>{width}}/{self.cfg.train.epochs}  train loss {r['train_loss']:.4f} "
                f"acc {r['train_accuracy']:6.2%}  val loss {r['val_loss']:.4f} acc {r['val_accuracy']:6.2%}"
                f"{' *' if improved else '  '}  lr {r['lr']:.2e}  {r['epoch_seconds']:.1f}s  "
                f"{r['images_per_second']:.0f} img/s")

    def _progress_bar(self, epoch: int):
        if not self.progress:
            return None
        from cifarlab.train.progress import EpochBar
        return EpochBar(f"epoch {epoch}/{self.cfg.train.epochs}", self.steps_per_epoch)

    # ------------------------------------------------------------------ checkpoints
    def _weights_state(self) -> dict:
        return {"model": self.model_spec, "classes": self.data.classes, "state_dict": self.model.state_dict(),
                "normalization": {"mean": self.data.mean, "std": self.data.std}, "epoch": self.epoch,
                "val_accuracy": self.history[-1]["val_accuracy"], "config": self.cfg.to_dict()}

    def _save(self, improved: bool) -> None:
        weights = self._weights_state()
        save_checkpoint(self.run.last, {**weights, "optimizer": self.optimizer.state_dict(),
                                        "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                                        "history": self.history, "best": self.best, "train_seconds": self.train_seconds})
        if improved:
            save_checkpoint(self.run.best, weights)
        self.run.write_metrics(self.history)

    def _restore(self, state: dict) -> None:
        load_weights(self.model, state["state_dict"], str(self.run.last))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.history = state["epoch"], list(state["history"])
        self.best, self.train_seconds = dict(state["best"]), state["train_seconds"]


# ---------------------------------------------------------------------- entry points

def train(cfg: ExperimentConfig, out: str | Path | None = None, log: Callable[[str], None] = print,
          progress: bool = False, callbacks: Sequence[EpochCallback] = ()) -> dict:
    """Train a config into a new run directory; returns the summary (also in summary.json)."""
    run = RunDir(out or default_run_dir(cfg.name)).open(new=True)
    try:
        return Trainer(cfg, run, log, progress, callbacks=callbacks).fit()
    finally:
        run.close()


def resume(run_dir: str | Path, overrides: dict | None = None, log: Callable[[str], None] = print,
           progress: bool = False, callbacks: Sequence[EpochCallback] = ()) -> dict:
    """Continue an interrupted run exactly, or extend a finished one (`overrides={"train.epochs": N}`)."""
    run = RunDir(run_dir).open(new=False)
    try:
        try:
            raw = yaml.safe_load(run.config.read_text())
        except (OSError, yaml.YAMLError) as err:
            raise UserError(f"cannot read '{run.config}' ({err}): the run directory is damaged") from None
        for key, value in (overrides or {}).items():
            set_key(raw, key, value)
        cfg = validate_config(raw)
        state = load_checkpoint(run.last)
        if state["epoch"] >= cfg.train.epochs and not overrides:
            raise UserError(f"run '{run.path}' already finished its {cfg.train.epochs} epochs: "
                            "extend it with --resume DIR --epochs N (N > the epochs done)")
        return Trainer(cfg, run, log, progress, state, callbacks).fit()
    finally:
        run.close()
