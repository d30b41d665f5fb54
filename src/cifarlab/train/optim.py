"""Optimisers and learning-rate schedules from the config.

Every schedule is one pure function of the global step, applied through LambdaLR and stepped
every batch: a resumed run continues on exactly the same curve, and extending a run re-plans
the curve over the new total (the steps already taken keep their values for constant,
step and multistep schedules).
"""
from __future__ import annotations

import math

import torch

from cifarlab.config import OptimizerConfig, ScheduleConfig


def build_optimizer(cfg: OptimizerConfig, params) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                               weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    return torch.optim.RMSprop(params, lr=cfg.lr, alpha=cfg.alpha, eps=cfg.eps, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)


def optimizer_states(cfg: OptimizerConfig) -> int:
    """How many tensors the optimizer keeps per parameter (what last.pt holds besides the weights)."""
    if cfg.name in ("adam", "adamw"):
        return 2
    return (cfg.name == "rmsprop") + (cfg.momentum > 0)


def lr_factor(cfg: ScheduleConfig, step: int, steps_per_epoch: int, epochs: int, base_lr: float) -> float:
    """Multiplier of the base LR after `step` optimizer steps."""
    epoch = step / steps_per_epoch  # fractional: schedules move within an epoch, not only at its end
    total = max(1, steps_per_epoch * epochs)
    warm = cfg.warmup_epochs * steps_per_epoch
    factor = min(1.0, (step + 1) / warm) if warm and step < warm else 1.0
    if cfg.name == "step":
        return factor * cfg.gamma ** (int(epoch) // cfg.step_size)
    if cfg.name == "multistep":
        return factor * cfg.gamma ** sum(int(epoch) >= m for m in cfg.milestones)
    if cfg.name == "cosine":
        t = min(1.0, max(0.0, (step - warm) / max(1, total - warm)))
        floor = cfg.min_lr / base_lr
        return factor * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))
    if cfg.name == "onecycle":
        # Smith's one-cycle as torch's OneCycleLR: lr/25 rising to lr, then cosine down to lr/1e4
        rise = max(1, int(cfg.pct_start * total))
        lo, end = 1 / 25, 1 / 25e4
        if step < rise:
            return lo + (1 - lo) * 0.5 * (1 - math.cos(math.pi * step / rise))
        t = min(1.0, (step - rise) / max(1, total - rise))
        return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * t))
    return factor


def build_scheduler(cfg: ScheduleConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int,
                    base_lr: float) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(cfg, step, steps_per_epoch, epochs, base_lr))
