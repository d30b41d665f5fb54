"""What cifarlab needs from Optuna beyond its study API, in one place.

Our workers pop queued trials without ever creating one, beat for a trial before it turns RUNNING
and while it trains, and retry trials they interrupted themselves. Optuna does the beating only
inside `Study.optimize`, which cannot run a queue that must never grow, so those pieces are built
here from the storage's heartbeat API. This module is the only one that touches an Optuna private
attribute; each use says why the public API cannot do it.

Optuna marks its heartbeat and retry API experimental. The calls are wrapped one by one in
`experimental_api()`, so a library caller of `sweep()` sees no ExperimentalWarning and keeps its
own warning filters; `quiet_optuna()` is for the command line, which owns its process.
"""
from __future__ import annotations

import contextlib
import threading
import time
import warnings
from typing import Iterator

import optuna
from optuna.trial import FrozenTrial, TrialState

# optuna 4.9 renamed the retry callback and its storage argument; older releases know only the first names
if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):
    _Retry = optuna.storages.RetryHeartbeatStaleTrialCallback
    _RETRY_ARGUMENT = "heartbeat_stale_trial_callback"
else:  # pragma: no cover (optuna < 4.9)
    _Retry = optuna.storages.RetryFailedTrialCallback
    _RETRY_ARGUMENT = "failed_trial_callback"


def quiet_optuna() -> None:
    """For a command's own process: no experimental/future warnings, no per-trial INFO lines."""
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)


@contextlib.contextmanager
def experimental_api() -> Iterator[None]:
    """Call Optuna's experimental API without its ExperimentalWarning, leaving the caller's filters as they were."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


# ---------------------------------------------------------------------- storage and retries

# What a storage says when another process created its tables or version row a moment earlier.
_CREATED_BESIDE_US = ("already exists", "unique constraint", "duplicate key")


def rdb_storage(url: str, heartbeat: int, max_retry: int, tries: int = 8,
                **engine_kwargs) -> optuna.storages.RDBStorage:
    """An RDB storage with heartbeats: a trial silent for 3 heartbeats is stale, failed and retried.
    Several processes may open a fresh storage at once (a sweep, its workers, a dashboard polling the new
    file): Optuna creates the schema table by table, so the losers of that race see 'table ... already
    exists'; by the next try the schema is there and opening it is a read."""
    for attempt in range(tries):
        try:
            with experimental_api():
                return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat, grace_period=3 * heartbeat,
                                                  **{_RETRY_ARGUMENT: _Retry(max_retry=max_retry)},
                                                  engine_kwargs=engine_kwargs)
        except Exception as err:
            if attempt == tries - 1 or not any(s in str(err).lower() for s in _CREATED_BESIDE_US):
                raise
            time.sleep(0.05 * (attempt + 1))


def fail_stale(s: optuna.Study) -> None:
    """Fail the trials whose worker stopped beating; the storage's retry callback re-enqueues them."""
    with experimental_api():
        optuna.storages.fail_stale_trials(s)


def retry(s: optuna.Study, trial: FrozenTrial, max_retry: int) -> None:
    """Re-enqueue a failed trial with its params, exactly as the heartbeat's retry callback would."""
    with experimental_api():
        _Retry(max_retry=max_retry)(s, trial)


def retried_from(trial: FrozenTrial) -> int | None:
    """The number of the trial this one retries, or None for an original."""
    with experimental_api():
        return _Retry.retried_trial_number(trial)


def retry_history(trial: FrozenTrial) -> list[int]:
    """The trials this one is a retry of, oldest first (empty for an original)."""
    with experimental_api():
        return _Retry.retry_history(trial)


def point(trial: FrozenTrial) -> dict:
    """The values a trial trains with: those suggested so far and, for an enqueued trial, the values it was
    enqueued with (a trial killed between its start and its first suggestion has only the latter)."""
    # enqueue_trial keeps them in system_attrs["fixed_params"] until suggested; FrozenTrial has no public view
    return {**trial.system_attrs.get("fixed_params", {}), **trial.params}


# ---------------------------------------------------------------------- taking trials and beating

def _storage(s: optuna.Study):
    # Study has no public accessor for its storage, and the heartbeat and the atomic pop live on it
    return s._storage


def _trial_id(s: optuna.Study, number: int) -> int:
    storage = _storage(s)
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(s.study_name), number)


def pop_waiting(s: optuna.Study) -> optuna.Trial | None:
    """Take a queued trial as `Study.ask` does, but never create a new one when the queue is empty
    (a grid or OFAT study must not grow trials without params)."""
    storage = _storage(s)
    waiting = s.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    if not waiting:
        return None
    study_id = storage.get_study_id_from_name(s.study_name)
    for t in waiting:
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        # beat before taking it: a RUNNING trial without any heartbeat would never go stale, so a
        # worker killed between the two would leave it "running" forever (a beat on a waiting trial is harmless)
        storage.record_heartbeat(trial_id)
        try:
            if storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                return optuna.Trial(s, trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


def ask(s: optuna.Study) -> optuna.Trial:
    """A new trial from the sampler, with its first heartbeat at once (see pop_waiting)."""
    with warnings.catch_warnings():  # "heartbeat is supposed to be used with optimize": we beat ourselves
        warnings.simplefilter("ignore", UserWarning)
        trial = s.ask()
    _storage(s).record_heartbeat(_trial_id(s, trial.number))
    return trial


@contextlib.contextmanager
def heartbeat(s: optuna.Study, trial: optuna.Trial) -> Iterator[None]:
    """Beat for the trial every heartbeat interval while the block runs (the trial trains).

    Optuna's own beating thread lives in the private optuna.storages._heartbeat and only
    Study.optimize starts it; ours is also a daemon (it never holds up an exit) and survives a missed beat.
    """
    storage = _storage(s)
    trial_id = _trial_id(s, trial.number)
    interval = storage.get_heartbeat_interval()
    stop = threading.Event()

    def beat():
        while True:
            try:
                storage.record_heartbeat(trial_id)
            except Exception:  # a missed beat is harmless; a dead worker is what stops them
                pass
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-trial-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
