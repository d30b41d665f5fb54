"""One factor at a time, as seed 001 did by hand: for each key in order, try its values with the
others at their best so far, keep the best by validation accuracy, move on.

Each step's trials are enqueued together (so workers can run them in parallel); the next step is
planned only when every trial of this one has finished. Every trial records its `step` and the
key it `varies`, so the final table shows the whole path. The value a step's key already has is
the configuration kept from the step before: its result is carried over, not trained again.
"""
from __future__ import annotations

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from cifarlab.studies.methods import enqueue_missing
from cifarlab.studies.params import decode, encode
from cifarlab.studies.space import Study


def best_of_step(s: optuna.Study, study: Study, step: int):
    """The best completed trial of this step (ties: the earlier value in the list), or None."""
    key = study.params[step].key
    done = [t for t in s.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.user_attrs.get("step") == step]
    order = [encode(v) for v in study.params[step].choices]
    return max(done, key=lambda t: (t.value, -order.index(t.params[key])), default=None)


def _carry_over(s: optuna.Study, study: Study, kept, params: dict, attrs: dict) -> None:
    dists = {**kept.distributions, attrs["varies"]: CategoricalDistribution(
        [encode(v) for v in study.params[attrs["step"]].choices])}
    origin = kept.user_attrs.get("same_as", kept.number)
    s.add_trial(optuna.create_trial(params=params, distributions=dists, value=kept.value,
                                    user_attrs={**kept.user_attrs, **attrs, "same_as": origin}))


def run_ofat(study: Study, s: optuna.Study, drain) -> dict:
    """Walk the steps; `drain()` runs queued trials until none is left or running. Returns the best
    assignment (a key whose every value failed keeps the base's value and is left out)."""
    best, kept = {}, None
    for step, p in enumerate(study.params):
        have = {t.user_attrs.get("slot") for t in s.get_trials(deepcopy=False)}
        current = study.effective(best)[p.key]
        todo = []
        for i, v in enumerate(p.choices):
            params, attrs = {**best, p.key: encode(v)}, {"slot": f"ofat-{step}-{i}", "step": step, "varies": p.key}
            if kept is not None and decode(encode(v)) == current:
                if attrs["slot"] not in have:
                    _carry_over(s, study, kept, params, attrs)
            else:
                todo.append((params, attrs))
        enqueue_missing(s, todo)
        drain()
        top = best_of_step(s, study, step)
        if top is not None:
            best[p.key], kept = top.params[p.key], top
    return best
