"""Sweep methods, registered by name (`method: NAME` in a study file): how a method fills the
study's queue, which sampler proposes its values, and how its results read.

A method is one `SweepMethod` subclass registered with `@register_method("name")`; its defaults
are those of a fixed queue of listed values (grid), so a new method overrides only what differs.
A method registered outside cifarlab must be imported in every worker process that joins its study.
"""
from __future__ import annotations

import difflib
import math
from typing import TYPE_CHECKING, Any, Callable

import optuna

from cifarlab.errors import UserError
from cifarlab.studies.optuna_adapter import experimental_api

if TYPE_CHECKING:
    from cifarlab.studies.space import Study

MAX_GRID = 10_000


class SweepMethod:
    """What a method decides. `name` is set by `register_method`."""

    name: str = ""
    takes_ranges = False  # the space may hold ranges for the sampler, not only lists of values
    asks = False          # workers ask the sampler for new configurations while the `trials` budget lasts
    fixed_queue = True    # all the work is queued before workers start (else `run` plans it as trials finish)
    stepwise = False      # trials come in steps that each vary one key: outputs show the path, step by step

    def check(self, study: Study, where: str, check_point: Callable[[dict], None]) -> None:
        """Refuse a study this method cannot run; `check_point(values)` validates values set on the base."""

    def sampler(self, study: Study, seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.RandomSampler(seed=seed)

    def enqueue(self, study: Study, s: optuna.Study) -> None:
        """Queue the work known before any trial runs (idempotent: a continued study queues nothing twice)."""

    def run(self, study: Study, s: optuna.Study, drain: Callable[[], None]) -> None:
        """Work on the study in the sweeping process; `drain()` runs queued trials until none is left or running."""
        drain()

    def kept(self, study: Study, s: optuna.Study) -> dict[int, Any]:
        """Stepwise methods: the value each step kept (by step), marked in the results table."""
        return {}

    def connects_points(self, study: Study) -> bool:
        """Whether a key's plot joins its points with a line (they form one curve)."""
        return False


_METHODS: dict[str, SweepMethod] = {}


def register_method(name: str):
    """Class decorator: `@register_method("grid")` over a SweepMethod subclass."""
    def add(cls: type[SweepMethod]) -> type[SweepMethod]:
        if name in _METHODS:
            raise ValueError(f"sweep method '{name}' registered twice")
        method = cls()
        method.name = name
        _METHODS[name] = method
        return cls
    return add


def method_names() -> list[str]:
    return sorted(_METHODS)


def get_method(name: str) -> SweepMethod:
    if name not in _METHODS:
        close = difflib.get_close_matches(name, list(_METHODS), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise UserError(f"unknown sweep method '{name}': {hint}use one of {', '.join(method_names())}")
    return _METHODS[name]


def enqueue_missing(s: optuna.Study, points: list[tuple[dict, dict]]) -> int:
    """Enqueue (params, user_attrs) points whose `slot` attribute is not in the study yet (idempotent)."""
    have = {t.user_attrs.get("slot") for t in s.get_trials(deepcopy=False)}
    todo = [(p, a) for p, a in points if a["slot"] not in have]
    for params, attrs in todo:
        s.enqueue_trial(params, user_attrs=attrs)
    return len(todo)


# ---------------------------------------------------------------------- the built-in methods

@register_method("grid")
class Grid(SweepMethod):
    """Every combination of the listed values, once each."""

    def check(self, study, where, check_point):
        points = math.prod(len(p.choices) for p in study.params)
        if points > MAX_GRID:
            raise UserError(f"{where}: the grid has {points:,} points (more than {MAX_GRID:,}): use random or tpe")
        for point in study.grid():  # combinations can clash where single values do not
            check_point(point)

    def enqueue(self, study, s):
        enqueue_missing(s, [(p, {"slot": f"grid-{i}"}) for i, p in enumerate(study.grid())])

    def connects_points(self, study):
        return len(study.params) == 1


@register_method("ofat")
class OneFactorAtATime(SweepMethod):
    """One key at a time, in order, the others at their best so far (see studies/ofat.py)."""

    fixed_queue = False
    stepwise = True

    def run(self, study, s, drain):
        from cifarlab.studies.ofat import run_ofat  # ofat imports space, which imports this registry

        run_ofat(study, s, drain)

    def kept(self, study, s):
        from cifarlab.studies.ofat import best_of_step

        best = {step: best_of_step(s, study, step) for step in range(len(study.params))}
        return {step: t.params[t.user_attrs["varies"]] for step, t in best.items() if t is not None}

    def connects_points(self, study):
        return True


@register_method("random")
class Random(SweepMethod):
    """`trials` configurations drawn at random from the space."""

    takes_ranges = True
    asks = True


@register_method("tpe")
class TPE(Random):
    """`trials` configurations proposed by TPE from the results so far."""

    def sampler(self, study, seed):
        # constant_liar: workers running in parallel do not all propose the same promising point
        with experimental_api():
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, (study.trials or 10) // 3)),
                                              constant_liar=True)
