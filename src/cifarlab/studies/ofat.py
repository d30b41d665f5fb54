"""One factor at a time, as seed 001 did by hand: for each key in order, try its values with the
others at their best so far, keep the best by validation accuracy, move on.

Each step's trials are enqueued together (so workers can run them in parallel); the next step is
planned only when every trial of this one has finished. Every trial records its `step` and the
key it `varies`, so the final table shows the whole path.
"""
from __future__ import annotations

import optuna
from optuna.trial import TrialState

from cifarlab.studies.space import Study, encode


def step_points(study: Study, step: int, best: dict) -> list[tuple[dict, dict]]:
    p = study.params[step]
    return [({**best, p.key: encode(v)}, {"slot": f"ofat-{step}-{i}", "step": step, "varies": p.key})
            for i, v in enumerate(p.choices)]


def best_of_step(s: optuna.Study, study: Study, step: int) -> object | None:
    """The best value of this step's key among its completed trials (ties: the earlier value in the list)."""
    key = study.params[step].key
    done = [t for t in s.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.user_attrs.get("step") == step]
    if not done:
        return None
    order = [encode(v) for v in study.params[step].choices]
    return max(done, key=lambda t: (t.value, -order.index(t.params[key]))).params[key]


def run_ofat(study: Study, s: optuna.Study, drain) -> dict:
    """Walk the steps; `drain()` runs queued trials until none is left or running. Returns the best
    assignment (keys whose every value failed keep the base's value and are left out)."""
    from cifarlab.studies.runner import enqueue_missing

    best: dict = {}
    for step in range(len(study.params)):
        enqueue_missing(s, step_points(study, step, best))
        drain()
        value = best_of_step(s, study, step)
        if value is not None:
            best[study.params[step].key] = value
    return best
