"""The LR range test (Smith 2015; fastai's lr_find): train from a tiny LR, multiplying it every step
up to a huge one, and watch the smoothed loss. It falls, flattens, then explodes; a good LR sits on
the steep descent, well before the minimum. Stops early once the loss exceeds 4x its minimum.

Suggestions, as fastai names them: `valley` (fastai's default: in the longest stretch of falling
loss, two thirds of the way down), `steep` (the steepest descent) and `minimum` (the LR at the lowest
loss divided by 10). Valley and steep are looked for only up to the lowest loss.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import torch

from cifarlab.errors import UserError
from cifarlab.fileio import atomic_write_text, check_output_dir
from cifarlab.schema import ExperimentConfig
from cifarlab.train.rundir import RunDir


def valley(lrs: list[float], losses: list[float]) -> float:
    """fastai's `valley`: the longest decreasing subsequence of the loss; two thirds down it."""
    n = len(losses)
    lds, start, end = [1] * n, 0, 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
        if lds[end] < lds[i]:
            end, start = i, i - lds[i]
    third = (end - start) / 3
    return lrs[min(n - 1, start + int(third) + int(third / 2))]


def suggestions(lrs: list[float], losses: list[float]) -> dict:
    skip = len(lrs) // 10  # the first smoothed values are still mostly noise: steep and minimum skip them
    tail_lrs, tail = lrs[skip:], losses[skip:]
    lowest = min(range(len(tail)), key=tail.__getitem__)
    # Only the descent up to the lowest loss counts: a bounded loss (label smoothing, BatchNorm nets) may
    # rise past the minimum without exploding, then fall again at absurd LRs (CifarNet: down from 3.1 at
    # lr 1 to 2.9 at lr 5), and that second fall is no place for a learning rate.
    logs = [math.log10(x) for x in tail_lrs[:lowest + 1]]
    slopes = [(tail[i + 1] - tail[i - 1]) / (logs[i + 1] - logs[i - 1]) for i in range(1, len(logs) - 1)]
    steep = tail_lrs[1 + min(range(len(slopes)), key=slopes.__getitem__)] if slopes else tail_lrs[0]
    return {"valley": valley(lrs[:skip + lowest + 1], losses[:skip + lowest + 1]), "steep": steep,
            "minimum": tail_lrs[lowest] / 10}


def lr_find(cfg: ExperimentConfig, out: Path, start_lr: float = 1e-7, end_lr: float = 10.0, steps: int = 100,
            beta: float = 0.98, log=print) -> dict:
    from cifarlab.train.trainer import Trainer

    if not 0 < start_lr < end_lr:
        raise UserError(f"--start-lr must be positive and below --end-lr (got {start_lr:g} and {end_lr:g})")
    if steps < 10:
        raise UserError(f"--steps must be at least 10 to draw a curve (got {steps})")
    out = check_output_dir(out)  # never into a run directory; unwritable places are one line
    tr = Trainer(cfg, RunDir(out), log=lambda _line: None)  # the model, data and optimizer a run would use
    model, opt, t = tr.model, tr.optimizer, cfg.train
    mult = (end_lr / start_lr) ** (1 / (steps - 1))
    order = torch.Generator().manual_seed(t.seed)
    lrs, losses, avg, best, stopped = [], [], 0.0, math.inf, "reached --end-lr"
    model.train()
    while len(lrs) < steps and stopped == "reached --end-lr":
        for xb, yb in tr.data.train_batches(t.batch_size, order):
            lr = start_lr * mult ** len(lrs)
            for g in opt.param_groups:
                g["lr"] = lr
            loss, _ = tr.train_step(xb, yb)  # the trainer's own step: precision, loss scaling, clipping
            value = loss.item()
            if not math.isfinite(value):
                stopped = f"loss became {value} at lr {lr:.3g}"
                break
            avg = beta * avg + (1 - beta) * value
            smooth = avg / (1 - beta ** (len(lrs) + 1))  # bias-corrected, as fastai
            lrs.append(lr)
            losses.append(smooth)
            best = min(best, smooth)
            if smooth > 4 * best:
                stopped = f"loss exceeded 4x its minimum at lr {lr:.3g}"
                break
            if len(lrs) == steps:
                break
    if len(lrs) < 5:
        raise UserError(f"the LR range test diverged after {len(lrs)} steps: lower --start-lr")
    cut = max(5, len(lrs) - 3)  # the last points are the explosion itself
    sug = suggestions(lrs[:cut], losses[:cut])
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["step", "lr", "smoothed_loss"])
    # full precision: the file is the very curve the suggestions came from (6 digits tied on a flat bf16 plateau)
    w.writerows((i, repr(float(lr)), repr(float(ls))) for i, (lr, ls) in enumerate(zip(lrs, losses)))
    atomic_write_text(out / "lr_find.csv", buf.getvalue())
    plot = _plot(lrs, losses, sug, out / "lr_find.png", cfg)
    result = {"name": cfg.name, "optimizer": cfg.optimizer.name, "batch_size": t.batch_size, "steps": len(lrs),
              "stopped": stopped, "suggested_lr": sug["valley"], "suggestions": sug, "plot": plot,
              "csv": str(out / "lr_find.csv"), "directory": str(out)}
    atomic_write_text(out / "lr_find.json", json.dumps(result, indent=2) + "\n")
    log(f"lr-find: {len(lrs)} steps from {start_lr:g} ({stopped}); suggested lr {sug['valley']:.2e} (valley), "
        f"steep {sug['steep']:.2e}, minimum/10 {sug['minimum']:.2e}; plot {plot}")
    return result


def _plot(lrs, losses, sug, path: Path, cfg) -> str:
    from cifarlab.report.plots import plot_lr_find  # matplotlib loads only when a plot is drawn

    fig = plot_lr_find(lrs, losses, sug, f"LR range test: {cfg.model.name}, {cfg.optimizer.name}, "
                                         f"batch {cfg.train.batch_size}")
    fig.savefig(path, dpi=100)
    return str(path)
