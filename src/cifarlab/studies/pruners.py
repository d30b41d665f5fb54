"""Pruners, registered by name (`pruner: NAME` in a study file): stop weak trials early from their
per-epoch validation accuracy. `none` never prunes, and then trials report nothing per epoch."""
from __future__ import annotations

import difflib
from typing import Callable

import optuna

from cifarlab.errors import UserError

NO_PRUNING = "none"

_PRUNERS: dict[str, Callable[[], optuna.pruners.BasePruner]] = {}


def register_pruner(name: str, factory: Callable[[], optuna.pruners.BasePruner]) -> None:
    if name in _PRUNERS:
        raise ValueError(f"pruner '{name}' registered twice")
    _PRUNERS[name] = factory


def pruner_names() -> list[str]:
    return sorted(_PRUNERS)


def pruner_factory(name: str) -> Callable[[], optuna.pruners.BasePruner]:
    if name not in _PRUNERS:
        close = difflib.get_close_matches(name, list(_PRUNERS), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise UserError(f"unknown pruner '{name}': {hint}use one of {', '.join(pruner_names())}")
    return _PRUNERS[name]


def build_pruner(name: str) -> optuna.pruners.BasePruner:
    return pruner_factory(name)()


register_pruner(NO_PRUNING, optuna.pruners.NopPruner)
register_pruner("median", lambda: optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1))
register_pruner("halving", optuna.pruners.SuccessiveHalvingPruner)
