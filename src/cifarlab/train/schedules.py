"""The learning-rate schedules a config can name (`schedule.name`), one registry entry each.

Every schedule is one pure function of the global step, applied through LambdaLR and stepped
every batch: a resumed run continues on exactly the same curve, and extending a run re-plans
the curve over the new total (the steps already taken keep their values for constant,
step and multistep schedules). An entry gives the multiplier of the base LR at a `Point` of
training; the linear warm-up (`warmup_epochs`) multiplies it, unless the entry has its own rise.
To add one:

    @register_schedule("linear")
    def linear(cfg, at):
        '''Linear decay to 0.'''
        return 1 - at.step / at.total

No torch here (LambdaLR is imported when a scheduler is built), so the config can check a name cheaply.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from cifarlab.registry import SCHEDULES

if TYPE_CHECKING:
    import torch

    from cifarlab.schema import ScheduleConfig


@dataclass(frozen=True)
class Point:
    """Where training is, in the units schedules are written in."""
    step: int  # optimizer steps taken
    epoch: float  # fractional: schedules move within an epoch, not only at its end
    total: int  # steps in the whole run (at least 1)
    warm: float  # steps of linear warm-up (warmup_epochs may be fractional)
    base_lr: float


@dataclass(frozen=True)
class ScheduleEntry:
    name: str
    factor: Callable[[ScheduleConfig, Point], float]
    warmup: bool  # False: the schedule has its own rise, and warmup_epochs does not apply
    summary: str  # first line of the function's docstring




def register_schedule(name: str, warmup: bool = True):
    """Decorator: `@register_schedule("cosine")` over `factor(cfg, at: Point) -> multiplier of the base LR`."""
    def add(factor):
        doc = inspect.getdoc(factor) or ""
        SCHEDULES.add(name, ScheduleEntry(name, factor, warmup, doc.splitlines()[0] if doc else ""))
        return factor
    return add


def lr_factor(cfg: ScheduleConfig, step: int, steps_per_epoch: int, epochs: int, base_lr: float) -> float:
    """Multiplier of the base LR after `step` optimizer steps."""
    entry = SCHEDULES.get(cfg.name)
    warm = cfg.warmup_epochs * steps_per_epoch
    at = Point(step, step / steps_per_epoch, max(1, steps_per_epoch * epochs), warm, base_lr)
    if not entry.warmup:
        return entry.factor(cfg, at)
    rise = min(1.0, (step + 1) / warm) if warm and step < warm else 1.0
    return rise * entry.factor(cfg, at)


def time_step(fraction: float, steps_per_epoch: int, epochs: int) -> int:
    """The virtual step at `fraction` of a time budget spent: the schedule's whole curve is laid over the budget."""
    total = max(1, steps_per_epoch * epochs)
    return min(total, int(fraction * total))


def build_scheduler(cfg: ScheduleConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int,
                    base_lr: float, budget_spent: Callable[[], float] | None = None
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    """`budget_spent` (with cfg.fit_time_limit): a function giving the fraction of the time budget used so far;
    the curve then follows it, or the step count where that is further on, so that its decay ends when the budget
    is spent or at the last epoch, whichever comes first (a fast machine reaching train.epochs early is not cut off
    mid-schedule)."""
    import torch
    SCHEDULES.get(cfg.name)  # an unknown name fails here, not at the first step
    if budget_spent is not None:  # whichever runs out first, the time or train.epochs, ends the decay
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(
            cfg, max(min(step, steps_per_epoch * epochs), time_step(budget_spent(), steps_per_epoch, epochs)),
            steps_per_epoch, epochs, base_lr))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(cfg, step, steps_per_epoch, epochs, base_lr))


@register_schedule("constant")
def constant(cfg, at):
    """The base LR throughout (after any warm-up)."""
    return 1.0


@register_schedule("step")
def step(cfg, at):
    """Multiply by gamma every step_size epochs."""
    return cfg.gamma ** (int(at.epoch) // cfg.step_size)


@register_schedule("multistep")
def multistep(cfg, at):
    """Multiply by gamma at each epoch in milestones."""
    return cfg.gamma ** sum(int(at.epoch) >= m for m in cfg.milestones)


@register_schedule("cosine")
def cosine(cfg, at):
    """Cosine decay from the base LR to min_lr, over the steps after the warm-up."""
    t = min(1.0, max(0.0, (at.step - at.warm) / max(1, at.total - at.warm)))
    floor = cfg.min_lr / at.base_lr
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))


@register_schedule("onecycle", warmup=False)
def onecycle(cfg, at):
    """Smith's one-cycle, as torch's OneCycleLR: lr/25 rising to lr over pct_start, then cosine down to lr/1e4."""
    rise = max(1, int(cfg.pct_start * at.total))
    lo, end = 1 / 25, 1 / 25e4
    if at.step < rise:
        return lo + (1 - lo) * 0.5 * (1 - math.cos(math.pi * at.step / rise))
    t = min(1.0, (at.step - rise) / max(1, at.total - rise))
    return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * t))


@register_schedule("triangle", warmup=False)
def triangle(cfg, at):
    """airbench's: linear from start_factor x lr up to lr at pct_start, then linear down to end_factor x lr."""
    peak = max(1, int(cfg.pct_start * at.total))
    if at.step < peak:
        return cfg.start_factor + (1 - cfg.start_factor) * at.step / peak
    t = min(1.0, (at.step - peak) / max(1, at.total - peak))
    return 1 + (cfg.end_factor - 1) * t
