"""Optimisers and learning-rate schedules from the config: the two registries' entry points in one place.

The entries live in train/optimizers.py (register_optimizer) and train/schedules.py (register_schedule);
the trainer imports from here, so neither registry's file layout is its concern.
"""
from cifarlab.train.optimizers import OPTIMIZERS, build_optimizer, optimizer_states, register_optimizer
from cifarlab.train.schedules import SCHEDULES, build_scheduler, lr_factor, register_schedule

__all__ = ["OPTIMIZERS", "SCHEDULES", "build_optimizer", "build_scheduler", "lr_factor", "optimizer_states",
           "register_optimizer", "register_schedule"]
