"""The training loop. Read `Trainer.fit` top to bottom: that is everything a run does.

Honesty rules built in: the best epoch is chosen on validation images carved from train; the
test split (when the dataset has one) is evaluated once, at the end, with the best weights.
Reproducibility: the model is initialised from `train.seed`, and every epoch reseeds shuffling
and augmentation from (seed, epoch), so a resumed run replays exactly what it would have done.
"""
from __future__ import annotations

import math
import os
import time
from contextlib import nullcontext
from typing import Callable, Sequence

import torch

from cifarlab.data.augment import progressive_size
from cifarlab.data.loader import PreparedData
from cifarlab.data.mix import BatchMix
from cifarlab.errors import TrainingDiverged, UserError, WriteFailed, short
from cifarlab.fileio import atomic_write_text
from cifarlab.models import build_model, count_parameters
from cifarlab.schema import ExperimentConfig
from cifarlab.train.callbacks import CallbackLike, as_callbacks
from cifarlab.train.checkpoint import check_free_space, load_checkpoint, load_weights, save_checkpoint
from cifarlab.train.distributed import Dist
from cifarlab.train.ema import WeightEMA
from cifarlab.train.evaluate import full_metrics, loss_and_accuracy, predict
from cifarlab.train.loss import IMBALANCED, balanced_weights, classification_loss, imbalance
from cifarlab.train.optim import build_optimizer, build_scheduler, optimizer_states
from cifarlab.train.param_groups import scaled_for_batch
from cifarlab.train.resources import peak_memory_mb
from cifarlab.train.rundir import RunDir, validated
from cifarlab.train.runtime import autocast, environment, resolve_device, resolve_precision

CHANCE_EPOCHS = 3  # epochs at chance accuracy before we warn


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % (2 ** 63)


class Trainer:
    clock = staticmethod(time.perf_counter)  # what training time is measured with (a test can fake it)

    def __init__(self, cfg: ExperimentConfig, run: RunDir, log: Callable[[str], None] = print,
                 progress: bool = False, state: dict | None = None, callbacks: Sequence[CallbackLike] = (),
                 dist: Dist = Dist()):
        self.cfg, self.run, self.callbacks, self.dist = cfg, run, as_callbacks(callbacks), dist
        self.progress = progress and dist.is_main
        self._log = log
        t = cfg.train
        self.device = resolve_device(t.device)
        if dist.active and self.device.type == "cuda":
            self.device = torch.device("cuda", dist.local_rank)
            torch.cuda.set_device(self.device)
        if t.threads or dist.active:  # N processes on one machine share its cores
            local = int(os.environ.get("LOCAL_WORLD_SIZE", dist.world))
            torch.set_num_threads(t.threads or max(1, (os.cpu_count() or 1) // local))
        if t.batch_size < dist.world:
            raise UserError(f"train.batch_size {t.batch_size} is smaller than the {dist.world} processes: "
                            "each needs at least one image per step")
        self.batch_size = t.batch_size // dist.world  # per process: the global batch stays train.batch_size
        self.precision = resolve_precision(t.precision, self.device)
        self.data = PreparedData(cfg.data, self.device, seed=t.seed)
        c, h, _ = self.data.image_shape
        self.model_spec = {"name": cfg.model.name, "options": dict(cfg.model.options),
                           "num_classes": self.data.num_classes, "in_channels": c, "image_size": h}
        torch.manual_seed(t.seed)
        self.model = build_model(cfg.model.name, num_classes=self.data.num_classes, in_channels=c, image_size=h,
                                 **cfg.model.options).to(self.device)
        if hasattr(self.model, "init_from_data"):  # e.g. a whitening first layer set from training images
            self.model.init_from_data(self.data.transform(self.data.train.x[:5000], train=False))
        if t.channels_last:  # NHWC lets oneDNN/cuDNN pick their fastest convolution kernels
            self.model = self.model.to(memory_format=torch.channels_last)
        self.resize = cfg.data.augment.progressive_resize
        if self.resize:
            self._check_resizable(h)
        # the weights to validate and keep: an average of the recent steps (train.ema) or the model itself;
        # made before the optimizer, so the copy carries none of its gradient hooks (Muon's)
        self.ema = WeightEMA(self.model, t.ema.decay, t.ema.warmup, t.ema.every) if t.ema else None
        self.eval_model = self.ema.module if self.ema else self.model
        self.mix = BatchMix(self.data.num_classes, **cfg.data.mix.model_dump())
        weights = balanced_weights(self.data.train.y, self.data.num_classes) if t.class_weights == "balanced" else None
        # all ones (a balanced split): the plain loss, so the run is the one without the option, bit for bit
        self.class_weight = weights.to(self.device) if weights is not None and (weights != 1).any() else None
        self.step_batch = self.batch_size * t.accumulate_steps  # images per optimizer step, per process
        step_images = t.batch_size * t.accumulate_steps  # per optimizer step, all processes: what LRs scale with
        self.optimizer = build_optimizer(cfg.optimizer, self.model, step_images)
        if dist.is_main:  # refuse before training when the disk cannot hold the checkpoints; an EMA is one more copy
            check_free_space(self.run.path, self.model, optimizer_states(cfg.optimizer) + (self.ema is not None))
        n = len(self.data.train) * (2 if cfg.data.augment.concat_original else 1) // dist.world
        self.steps_per_epoch = max(1, n // self.step_batch + (n % self.step_batch > 1))
        self.train_seconds, self._epoch_t0 = 0.0, None  # training time so far; clock() at the running epoch's start
        base_lr = scaled_for_batch(cfg.optimizer.lr, step_images, cfg.optimizer.reference_batch_size)
        self.scheduler = build_scheduler(cfg.schedule, self.optimizer, self.steps_per_epoch, t.epochs, base_lr,
                                         self._budget_spent if cfg.schedule.fit_time_limit else None)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.forward = self.model
        if dist.active:
            from torch.nn.parallel import DistributedDataParallel
            self.forward = DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if t.compile:  # pays a one-off compilation for faster steps; worth it for long runs
            self.forward = torch.compile(self.forward)
        self.epoch, self.history = 0, []
        self.best = {"val_accuracy": -1.0, "epoch": 0}
        self._best_val_pred = None  # (logits, labels) of best.pt's validation; None until one improves this session
        if state is not None:
            self._restore(state)
        self.saved_epoch = self.epoch  # the last epoch whose checkpoint is on disk

    # ------------------------------------------------------------------ the run
    def fit(self) -> dict:
        cfg, run = self.cfg, self.run
        try:
            if self.dist.is_main:
                atomic_write_text(run.config, cfg.to_yaml())
                run.write_json(run.environment, {**environment(self.device, self.precision), "processes": self.dist.world})
            test = f", {len(self.data.test)} test" if self.data.test is not None else ""
            procs = f" x {self.dist.world} processes" if self.dist.active else ""
            self.log(f"{cfg.name}: {cfg.model.name} ({count_parameters(self.model):,} parameters) on "
                     f"{len(self.data.train)} train / {len(self.data.val)} val{test} images, "
                     f"{self.device}{procs} {self.precision}, run dir {run.path}")
            ratio = imbalance(self.data.train.y, self.data.num_classes)
            if ratio >= IMBALANCED:  # accuracy then mostly measures the common classes
                weighted = ("the loss weighs classes alike (train.class_weights: balanced; its larger steps on rare "
                            "images may need a lower lr)" if self.class_weight is not None
                            else "train.class_weights: balanced weighs them alike in the loss")
                self.log(f"note: the largest class has {ratio:.1f}x the training images of the smallest; {weighted}; "
                         "macro F1 and per-class accuracy at the end show what accuracy hides")
            return self._epochs()
        except WriteFailed as err:  # every file is written whole or not at all, so what is there is good
            resume = (f"continue it with --resume {run.path}" if run.last.exists() else "run it again")
            raise WriteFailed(err.path, err.reason,
                              f"the run up to epoch {self.saved_epoch} is intact in {run.path}; free space on that disk, "
                              f"then {resume}") from None

    def _epochs(self) -> dict:
        t = self.cfg.train
        wall0, stop_reason, chance_streak = time.time(), None, 0
        for epoch in range(self.epoch + 1, t.epochs + 1):
            epoch0 = self.clock()
            row = self._train_epoch(epoch)
            out_of_time = self.dist.any(self._out_of_time(), self.device)
            # train.val_every: a speed run's validation (6 views with TTA level 2) costs what ~0.2 epochs of
            # training do, so it may validate only at the end; unvalidated epochs get NaN and are never "best"
            val_acc = val_loss = math.nan
            if epoch % t.val_every == 0 or epoch == t.epochs or out_of_time:
                self.dist.sync_buffers(self.model)  # every rank then evaluates the same model
                pred = self._predict(self.data.val)
                val_loss, val_acc = loss_and_accuracy(*pred)
            row.update(val_loss=val_loss, val_accuracy=val_acc, epoch_seconds=self.clock() - epoch0)
            improved = val_acc > self.best["val_accuracy"]
            if improved:  # kept, so that the end of the run need not predict the same weights again
                self.best, self._best_val_pred = {"val_accuracy": val_acc, "epoch": epoch}, pred
            self.history.append(row)
            self.epoch = epoch
            self._save(improved)
            self.saved_epoch = epoch
            self.log(self._epoch_line(row, improved))
            for callback in self.callbacks:  # e.g. live TensorBoard curves, Optuna pruning (may raise to stop)
                callback.on_epoch_end(self, row)
            if validated(row):
                chance_streak = chance_streak + 1 if val_acc <= 1.5 / self.data.num_classes else 0
            if chance_streak == CHANCE_EPOCHS:
                self.log(f"warning: validation accuracy has stayed at chance ({1 / self.data.num_classes:.0%}) for "
                         f"{CHANCE_EPOCHS} epochs: the network is not learning; try a 10x smaller or larger --lr, "
                         "another optimizer or initialisation")
            if t.early_stopping_patience and validated(row) and epoch - self.best["epoch"] >= t.early_stopping_patience:
                stop_reason = f"early stopping: no better val accuracy for {t.early_stopping_patience} epochs"
            if out_of_time:
                stop_reason = f"time limit of {t.time_limit_minutes:g} minutes reached"
            if stop_reason:
                self.log(stop_reason)
                break
        return self._finish(stop_reason, time.time() - wall0)

    def _train_epoch(self, epoch: int) -> dict:
        t = self.cfg.train
        torch.manual_seed(_epoch_seed(t.seed, epoch))  # augmentation and dropout randomness
        order = torch.Generator().manual_seed(_epoch_seed(t.seed, epoch))
        if hasattr(self.model, "epoch_started"):  # e.g. speedrun_net freezing its whitening bias after N epochs
            self.model.epoch_started(epoch)
        if self.resize:  # decided at the epoch's start from saved state (epoch, training time): a resume agrees
            # as the time-fitted LR schedule: the time budget or train.epochs, whichever runs out first
            done = max((epoch - 1) / t.epochs, self._budget_spent() if t.time_limit_minutes else 0.0)
            self.data.transform.train_size = progressive_size(self.resize.start_size, self.data.image_shape[1],
                                                              self.resize.full_at, done)
        self.model.train()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen, t0 = 0, self.clock()
        self._epoch_t0 = t0
        bar = self._progress_bar(epoch)
        batches = self.data.train_batches(self.step_batch, order, self.dist.rank, self.dist.world, epoch)
        for i, (xb, yb) in enumerate(batches):
            loss, logits = self.train_step(xb, yb)
            self.scheduler.step()
            if self.ema:
                self.ema.update(self.model)
            loss_sum += loss.detach() * len(yb)
            correct += (logits.argmax(1) == yb).sum()
            seen += len(yb)
            if i % 25 == 0:  # a NaN poisons loss_sum, so checking now and then catches it within 25 steps
                self._check_finite(self.dist.sum(loss_sum.clone()), epoch)
                if bar:
                    bar.update(i + 1, loss=loss_sum.item() / seen)
                if self.dist.any(self._out_of_time(self.clock() - t0), self.device):
                    break
        if bar:
            bar.close()
        totals = self.dist.sum(torch.stack([loss_sum.float(), correct.float(), torch.tensor(float(seen), device=self.device)]))
        loss_sum, correct, seen = totals[0], totals[1], int(totals[2].item())
        self._check_finite(loss_sum, epoch)
        seconds = self.clock() - t0
        self.train_seconds, self._epoch_t0 = self.train_seconds + seconds, None
        shown = {"train_size": self.data.transform.train_size or self.data.image_shape[1]} if self.resize else {}
        return {"epoch": epoch, **shown, "train_loss": loss_sum.item() / max(seen, 1), "train_accuracy": correct.item() / max(seen, 1),
                "lr": self.optimizer.param_groups[0]["lr"], "train_seconds": seconds,
                "images_per_second": seen / max(seconds, 1e-9), "peak_memory_mb": peak_memory_mb(self.device)}

    def train_step(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on a batch: (loss, logits), both on the device (the loss detached).

        The learning rate is the caller's business (the epoch loop steps the scheduler, the LR finder
        sets it), so every other detail of a step (precision, mixing, loss, scaling, clipping) is the same in both.
        The batch goes through the model in micro-batches of at most train.batch_size images (per process):
        with train.accumulate_steps N, a step of N of them adds up their gradients, a big batch in small memory."""
        t = self.cfg.train
        if t.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        target = yb
        if self.mix.enabled:  # Mixup/CutMix: mixed images, soft targets (train accuracy still counts the true labels)
            xb, target = self.mix(xb, yb)
        self.optimizer.zero_grad(set_to_none=True)
        micro = list(zip(xb.split(self.batch_size), target.split(self.batch_size)))
        loss, logits = 0.0, []
        for k, (x, y) in enumerate(micro):
            # DDP all-reduces the gradients once per step, at the last micro-batch, not after each one
            quiet = self.forward.no_sync() if self.dist.active and k < len(micro) - 1 else nullcontext()
            with quiet:
                with autocast(self.device, self.precision):
                    out = self.forward(x)
                    # weighted by its share of the batch: the micro-batches' gradients sum to the batch mean's
                    part = classification_loss(out.float(), y, t.label_smoothing, self.class_weight) * (len(x) / len(xb))
                self.scaler.scale(part).backward()
            loss, logits = loss + part.detach(), logits + [out]
        logits = logits[0] if len(logits) == 1 else torch.cat(logits)
        if t.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss, logits

    def _finish(self, stop_reason: str | None, wall_seconds: float) -> dict:
        if not self.dist.is_main:
            return {}
        best = load_checkpoint(self.run.best)  # select on validation: sum up the best epoch's weights
        load_weights(self.eval_model, best["state_dict"], str(self.run.best))
        val = full_metrics(*(self._best_val_pred or self._predict(self.data.val)), self.data.classes)
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
        for callback in self.callbacks:  # e.g. the HTML summary `cifarlab train` attaches
            try:
                callback.on_fit_end(self, summary)
            except Exception as err:  # noqa: BLE001  (the run is finished and summarised: its results stand)
                self.log(f"warning: end-of-run hook {type(callback).__name__} failed "
                         f"({type(err).__name__}: {str(err)[:200]})")
        test_part = f", test {test['accuracy']:.2%} (evaluated once)" if test else ", no test split"
        self.log(f"done: best val {self.best['val_accuracy']:.2%} at epoch {self.best['epoch']}{test_part}; "
                 f"{summary['train_images_per_second']:.0f} img/s; {self.run.path}")
        per_class = test["per_class_accuracy"] if test else val["per_class_accuracy"]
        self.log(f"per-class {'test' if test else 'val'} accuracy: "
                 + ", ".join(f"{c} {a:.0%}" for c, a in per_class.items()))
        return summary

    # ------------------------------------------------------------------ helpers
    def log(self, line: str) -> None:
        if self.dist.is_main:
            self._log(line)
            self.run.append_log(line)

    def _predict(self, split):
        t = self.cfg.train
        return predict(self.eval_model, self.data.eval_batches(split, t.eval_batch_size), self.device, self.precision,
                       t.channels_last, t.tta)

    def _budget_spent(self) -> float:
        """The fraction of train.time_limit_minutes spent training so far (schedule.fit_time_limit's clock)."""
        running = self.clock() - self._epoch_t0 if self._epoch_t0 is not None else 0.0
        return (self.train_seconds + running) / (self.cfg.train.time_limit_minutes * 60)

    def _out_of_time(self, running: float = 0.0) -> bool:
        limit = self.cfg.train.time_limit_minutes
        return bool(limit) and self.train_seconds + running >= limit * 60

    def _check_resizable(self, full: int) -> None:
        """Refuse before training a model that cannot take the shrunk images (a fixed-size flatten, say)."""
        start = self.resize.start_size
        if start >= full:
            raise UserError(f"data.augment.progressive_resize.start_size {start} is not below the images' {full} px: "
                            f"give a smaller side (e.g. {full * 3 // 4}) or drop progressive_resize")
        probe = torch.zeros(2, self.data.image_shape[0], start, start, device=self.device)
        was_training = self.model.training
        try:
            with torch.no_grad():
                self.model.eval()(probe)
        except (RuntimeError, ValueError) as err:
            raise UserError(f"model {self.cfg.model.name} cannot take {start}x{start} images "
                            f"({str(err).splitlines()[0][:120]}); progressive_resize needs a model that pools "
                            "adaptively (speedrun_net, resnet*, expert_net), or a larger start_size") from None
        finally:
            self.model.train(was_training)

    def _check_finite(self, loss_sum: torch.Tensor, epoch: int) -> None:
        if math.isfinite(loss_sum.item()):
            return
        o = self.cfg.optimizer
        cause = f"learning rate {o.lr:g} is likely too high for {o.name} (try 10x smaller)"
        if o.weight_decay >= 1e-2:
            cause += f", or weight decay {o.weight_decay:g} too large"
        msg = (f"training diverged in epoch {epoch}: the loss became NaN/inf; {cause}. "
               f"Checkpoints up to epoch {self.epoch} are kept in {self.run.path}")
        if self.dist.is_main:
            self.run.write_json(self.run.summary, {"name": self.cfg.name, "status": "diverged", "stopped_reason": msg,
                                                   "epochs_run": self.epoch, "run_dir": str(self.run.path)})
            self.run.append_log(msg)
        raise TrainingDiverged(msg)

    def _epoch_line(self, r: dict, improved: bool) -> str:
        width = len(str(self.cfg.train.epochs))
        val = f"val loss {r['val_loss']:.4f} acc {r['val_accuracy']:6.2%}" if validated(r) else "not validated"
        size = f" at {r['train_size']} px" if r.get("train_size") else ""
        return (f"epoch {r['epoch']:>{width}}/{self.cfg.train.epochs}{size}  train loss {r['train_loss']:.4f} "
                f"acc {r['train_accuracy']:6.2%}  {val}{' *' if improved else '  '}  lr {r['lr']:.2e}  "
                f"{r['epoch_seconds']:.1f}s  {r['images_per_second']:.0f} img/s  {r['peak_memory_mb']:.0f} MiB peak")

    def _progress_bar(self, epoch: int):
        if not self.progress:
            return None
        from cifarlab.train.progress import EpochBar
        return EpochBar(f"epoch {epoch}/{self.cfg.train.epochs}", self.steps_per_epoch)

    # ------------------------------------------------------------------ checkpoints
    def _weights_state(self) -> dict:
        return {"model": self.model_spec, "classes": self.data.classes, "state_dict": self.eval_model.state_dict(),
                "normalization": {"mean": self.data.mean, "std": self.data.std}, "epoch": self.epoch,
                "val_accuracy": self.history[-1]["val_accuracy"], "config": self.cfg.to_dict()}

    def _save(self, improved: bool) -> None:
        if not self.dist.is_main:
            return
        weights = self._weights_state()
        if improved:  # best.pt before last.pt: last.pt commits the epoch, so a kill between the two
            save_checkpoint(self.run.best, weights)  # replays an epoch that rewrites the same best.pt
        # last.pt resumes training: the trained weights themselves, and the EMA's average beside them
        extra = {"state_dict": self.model.state_dict(), "ema": self.ema.state_dict()} if self.ema else {}
        save_checkpoint(self.run.last, {**weights, **extra, "optimizer": self.optimizer.state_dict(),
                                        "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                                        "history": self.history, "best": self.best, "train_seconds": self.train_seconds})
        self.run.write_metrics(self.history)

    def _restore(self, state: dict) -> None:
        load_weights(self.model, state["state_dict"], str(self.run.last))
        parts = [("optimizer", self.optimizer), ("scheduler", self.scheduler), ("scaler", self.scaler)]
        if self.ema and "ema" in state:  # a run that turns EMA on when extended starts its average there
            parts.append(("ema", self.ema))
        for field, part in parts:
            try:
                part.load_state_dict(state[field])
            except (KeyError, IndexError, ValueError, TypeError, RuntimeError, AttributeError) as err:
                raise UserError(f"'{self.run.last}' is damaged: its {field} state does not fit this run "
                                f"({short(err, 100, plain=True)}): resume another run or start a new one (--out)") from None
        self.epoch, self.history = state["epoch"], list(state["history"])
        self.best, self.train_seconds = dict(state["best"]), state["train_seconds"]


# ---------------------------------------------------------------------- entry points
