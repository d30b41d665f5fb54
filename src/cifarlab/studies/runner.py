"""Run a study on Optuna's storage: create or continue it, and work on it as one of many workers.

Work comes from two places, as the study's sweep method (studies/methods.py) says. Grid and OFAT
points are enqueued up front (OFAT one step at a time) and workers pop them atomically from the
storage: no point is run twice or lost. Random and TPE trials are asked from the sampler while the
budget lasts. A trial is one configuration trained
over the study's seeds; its value is the mean best validation accuracy (test accuracy is recorded,
never used to choose).

Reliability: every running trial sends a heartbeat; a trial whose worker died (kill -9, a lost
machine) goes stale after the grace period, is marked FAIL and re-enqueued with the same params
(Optuna's RetryHeartbeatStaleTrialCallback); the retry continues the killed runs from their last
checkpoints (studies/trial.py). A trial that raises (diverged, crashed) is FAIL with
its reason in the user attribute `fail_reason`, and the study goes on. How a trial is popped, asked,
beaten for and retried on Optuna's storage is in studies/optuna_adapter.py.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import optuna
from optuna.trial import TrialState

from cifarlab.errors import UserError, short
from cifarlab.fileio import check_output_dir
from cifarlab.studies import optuna_adapter as adapter
from cifarlab.studies.pruners import build_pruner
from cifarlab.studies.space import Study, study_from_dict

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
MAX_RETRY = 3
SQLITE_BUSY_SECONDS = 120
Log = Callable[[str], None]


# ---------------------------------------------------------------------- storage and study

def _driver(url: str) -> str:
    """SQLAlchemy 2.1 reads postgresql:// as psycopg 3; use psycopg2 (the `postgres` extra) where only it is here."""
    import importlib.util

    scheme, sep, rest = url.partition("://")
    if scheme in ("postgresql", "postgres") and not importlib.util.find_spec("psycopg") \
            and importlib.util.find_spec("psycopg2"):
        return f"postgresql+psycopg2://{rest}"
    return url


STORAGE_ENV = "CIFARLAB_STORAGE"  # a storage URL (and its password) kept out of argv, `ps` and shell history


def shown(url: str) -> str:
    """A storage URL as messages show it: its password masked (sqlalchemy's own rendering)."""
    from sqlalchemy.engine import make_url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001  (not a URL sqlalchemy parses: nothing to hide in it)
        return url


def open_storage(url: str, heartbeat: int = 10) -> optuna.storages.RDBStorage:
    """An RDB storage with heartbeats: a trial silent for 3 heartbeats is stale and is retried."""
    kwargs = {"pool_pre_ping": True}
    if url.startswith("sqlite"):  # N local workers write one file: wait for the lock instead of "database is locked"
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_SECONDS}
    try:
        return adapter.rdb_storage(_driver(url), heartbeat, MAX_RETRY, **kwargs)
    except ImportError:
        raise UserError(f"storage '{shown(url)}' needs a database driver that is not installed: "
                        "pip install 'cifarlab[postgres]' for PostgreSQL") from None
    except Exception as err:  # sqlalchemy's errors: bad URL, server down, wrong password
        msg = " ".join(str(err).split("(Background on this error")[0].split())[:200]
        if url.startswith("sqlite") and "sqlite3.DatabaseError" in msg:  # the file is there but not a database
            raise UserError(f"study storage '{shown(url)}' is damaged or not a study database ({msg[:120]}): "
                            "restore it from a copy, or start the study in a new --out") from None
        raise UserError(f"cannot open study storage '{shown(url)}': {msg}: check the URL (sqlite:///FILE, "
                        "postgresql://USER@HOST:PORT/DB) and that its database is up") from None


def _sampler(study: Study, worker: int):
    # Each worker samples from its own stream: equal seeds in two workers would propose equal trials.
    return study.sweep_method.sampler(study, study.seed + 1000 * worker)


def _comparable(d: dict) -> str:
    return json.dumps({k: v for k, v in d.items() if k not in ("trials", "description")}, sort_keys=True)


def create_study(study: Study, storage, worker: int = 0) -> optuna.Study:
    """Create the study in the storage, or continue it if it exists and was made from the same file."""
    s = optuna.create_study(study_name=study.name, storage=storage, direction="maximize", load_if_exists=True,
                            sampler=_sampler(study, worker), pruner=build_pruner(study.pruner))
    stored = s.user_attrs.get("study")
    if stored is None:
        s.set_user_attr("study", study.to_dict())
    elif _comparable(stored) != _comparable(study.to_dict()):
        raise UserError(f"study '{study.name}' already exists in this storage with another base or space: "
                        "rename the study (name: ...) or use another --out/--storage")
    elif stored.get("trials") != study.trials:
        s.set_user_attr("study", study.to_dict())  # a larger budget extends a random/tpe study
    return s


def load_study(name: str, storage, worker: int) -> tuple[Study, optuna.Study]:
    """Join a study someone created (`cifarlab worker`): its definition comes from the storage."""
    try:
        s = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = [x.study_name for x in optuna.get_all_study_summaries(storage)]
        raise UserError(f"no study named '{name}' in this storage (it has: {', '.join(names) or 'none'}): "
                        "start it with `cifarlab sweep --storage URL`") from None
    if "study" not in s.user_attrs:
        raise UserError(f"study '{name}' was not made by cifarlab sweep: nothing to work on")
    study = study_from_dict(s.user_attrs["study"])
    return study, optuna.load_study(study_name=name, storage=storage, sampler=_sampler(study, worker),
                                    pruner=build_pruner(study.pruner))


def retry_interrupted(s: optuna.Study) -> None:
    """Trials stopped by Ctrl-C were failed by us, not by the heartbeat: re-enqueue those not yet retried."""
    trials = s.get_trials(deepcopy=False)
    retried = {n for t in trials for n in adapter.retry_history(t)}
    for t in trials:
        if t.state == TrialState.FAIL and t.user_attrs.get("fail_reason") == "interrupted" and t.number not in retried:
            adapter.retry(s, t, MAX_RETRY)


def originals(s: optuna.Study) -> list:
    """Trials that are not retries of another: each one is one configuration of the budget."""
    return [t for t in s.get_trials(deepcopy=False) if adapter.retried_from(t) is None]


# ---------------------------------------------------------------------- working

def _describe(params: dict) -> str:
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={v:.3g}" if isinstance(v, float) else f"{k.rsplit('.', 1)[-1]}={v}"
                     for k, v in params.items())


def run_trial(study: Study, s: optuna.Study, trial: optuna.Trial, out: Path, log: Log) -> None:
    try:
        _train_and_record(study, s, trial, out, log)
    except (optuna.exceptions.UpdateFinishedTrialError, ValueError):  # tell() says ValueError("Cannot tell a FAIL trial")
        if s.get_trials(deepcopy=False)[trial.number].state == TrialState.RUNNING:
            raise  # still ours: a real error
        # Another worker saw this trial miss 3 heartbeats (a machine too busy, or a storage lock held too
        # long), failed it and queued a retry with the same values: the retry owns the configuration now.
        log(f"trial {trial.number}: missed its heartbeats and was handed to a retry; this worker's result "
            "is not recorded and the study goes on")


def _train_and_record(study: Study, s: optuna.Study, trial: optuna.Trial, out: Path, log: Log) -> None:
    from cifarlab.studies.trial import train_seeds

    frozen = s.get_trials(deepcopy=False)[trial.number]
    # an asked trial has no values yet: the sampler proposes every key (an enqueued one: its own keys)
    names = adapter.point(frozen).keys()
    params = {p.key: p.suggest(trial) for p in study.params if p.key in names or study.sweep_method.asks}
    slot = adapter.retried_from(frozen)  # a retry reuses its original's run directories
    slot = trial.number if slot is None else slot
    t0 = time.time()
    with adapter.heartbeat(s, trial):
        try:
            results = train_seeds(study, params, out / "trials" / f"{slot:04d}", trial)
        except optuna.TrialPruned:
            s.tell(trial, state=TrialState.PRUNED)
            log(f"trial {trial.number} [{_describe(params)}]: pruned")
            return
        except KeyboardInterrupt:
            trial.set_user_attr("fail_reason", "interrupted")
            s.tell(trial, state=TrialState.FAIL)
            raise
        except Exception as err:  # diverged or crashed: record why, go on with the study
            reason = " ".join(f"{type(err).__name__ if not isinstance(err, UserError) else ''} {err}".split())[:500]
            trial.set_user_attr("fail_reason", reason)
            s.tell(trial, state=TrialState.FAIL)
            log(f"trial {trial.number} [{_describe(params)}]: FAILED: {reason}")
            return
    for key, value in results.items():
        trial.set_user_attr(key, value)
    s.tell(trial, results["val_accuracy"])
    log(f"trial {trial.number} [{_describe(params)}]: val {results['val_accuracy']:.2%}"
        f"{' over ' + str(len(results['seeds'])) + ' seeds' if len(results['seeds']) > 1 else ''} "
        f"({time.time() - t0:.0f}s)")


def work(study: Study, s: optuna.Study, out: Path, log: Log, stop_when_drained: Callable[[], bool],
         poll: float = 1.0, idle_timeout: float | None = None) -> int:
    """Run trials until there is nothing left: the queue is empty, the budget spent, and no trial is
    running anywhere (a running one may still go stale and come back as a retry)."""
    idle_since, ran = None, 0
    while True:
        adapter.fail_stale(s)
        trial = adapter.pop_waiting(s)
        if trial is None and study.sweep_method.asks and len(originals(s)) < study.trials:
            trial = adapter.ask(s)
        if trial is not None:
            idle_since = None
            run_trial(study, s, trial, out, log)
            ran += 1
            continue
        if not s.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) and stop_when_drained():
            return ran
        idle_since = idle_since or time.time()
        if idle_timeout is not None and time.time() - idle_since > idle_timeout:
            log(f"no work for {idle_timeout:.0f}s: leaving study '{study.name}'")
            return ran
        time.sleep(poll)


# ---------------------------------------------------------------------- the sweep command

def default_storage(out: Path) -> str:
    return f"sqlite:///{(out / 'study.db').resolve()}"


def _spawn_workers(n: int, name: str, url: str, out: Path, heartbeat: int) -> list:
    import os
    import subprocess
    import sys

    procs = []
    for i in range(1, n + 1):
        logf = open(out / f"worker-{i}.log", "a")
        # --parent-pid: a worker outliving a killed sweep would go on training beside the next one
        cmd = [sys.executable, "-m", "cifarlab", "worker", "--study", name, "--out", str(out),
               "--worker-index", str(i), "--heartbeat", str(heartbeat), "--parent-pid", str(os.getpid())]
        env = {**os.environ, STORAGE_ENV: url}  # not in argv, where `ps` shows a password to every user
        procs.append((subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env), logf))
    return procs


def sweep(study: Study, out: Path, storage_url: str | None = None, jobs: int = 1, heartbeat: int = 10,
          log: Log = print, export_best: bool = True, mlflow: str | None = None, kind: str = "study") -> dict:
    """Create or continue the study, work on it with `jobs` local workers, then write its outputs.
    `mlflow`: a tracking URI (else the base config's track.mlflow, else $MLFLOW_TRACKING_URI): the study
    is one parent run there and every trained run its child."""
    from cifarlab.report import mlflow_hook
    from cifarlab.studies.outputs import write_outputs

    preflight(study)  # bad data or a base that cannot train: one line now, not N failed trials and exit 0
    track = study.base.get("track") or {}
    uri = mlflow_hook.checked_uri(mlflow_hook.resolve_uri(mlflow, track.get("mlflow")), "MLflow tracking URI")
    # a given storage is opened first: a bad URL or a database that is down leaves no empty study folder
    storage = open_storage(storage_url, heartbeat) if storage_url else None
    check_output_dir(out)  # never a run's directory; a file in its place or a read-only folder is one line
    url = storage_url or default_storage(out)
    s = create_study(study, storage or open_storage(url, heartbeat))
    retry_interrupted(s)
    done = len([t for t in s.get_trials(deepcopy=False) if t.state in FINISHED])
    log(f"study '{study.name}' ({study.method}, {len(study.params)} keys, {study.repeats} seed(s) per configuration) "
        f"in {out}; {done} trials finished before")
    tracking = mlflow_hook.start_study(uri, track.get("experiment"), study.name, kind, s.user_attrs.get("mlflow"), log)
    if tracking:  # trials (in any worker) find their parent run here
        s.set_user_attr("mlflow", tracking)
    method = study.sweep_method
    method.enqueue(study, s)
    if method.fixed_queue:  # workers that find the queue empty and nothing running may leave
        s.set_user_attr("queued_all", True)
    procs = _spawn_workers(jobs - 1, study.name, url, out, heartbeat)
    try:
        method.run(study, s, lambda: work(study, s, out, log, stop_when_drained=lambda: True))
        if not method.fixed_queue:
            s.set_user_attr("queued_all", True)
    finally:
        for proc, logf in procs:
            proc.wait()
            logf.close()
    summary = write_outputs(study, s, out, log, export_best)
    done = [t.value for t in s.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    mlflow_hook.end_study(tracking, max(done) if done else None, out, log)
    check_some_succeeded(study, s, out)
    return summary


def preflight(study: Study) -> None:
    """What `train` checks before its first epoch, once for the whole study: the base config, its data
    (read and cached here, so trials find it decoded) and its model on that data."""
    from cifarlab.data.sources import load_dataset
    from cifarlab.models import build_model
    from cifarlab.schema import validate_config

    try:
        cfg = validate_config(study.config({}))
        specs = {cfg.data.dataset}
        specs |= {str(v) for p in study.params if p.key == "data.dataset" for v in (p.choices or ())}
        for spec in sorted(specs - {cfg.data.dataset}):
            load_dataset(spec, size=cfg.data.image_size)
        ds = load_dataset(cfg.data.dataset, size=cfg.data.image_size)
        c, h, _ = ds.image_shape
        build_model(cfg.model.name, num_classes=len(ds.classes), in_channels=c, image_size=h, **cfg.model.options)
    except UserError as err:
        raise UserError(f"study '{study.name}': {err}") from None


def check_some_succeeded(study: Study, s: optuna.Study, out: Path) -> None:
    """A study none of whose trials succeeded failed: exit non-zero (the tables still say why)."""
    trials = s.get_trials(deepcopy=False)
    if not trials or any(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials):
        return
    failed = [t for t in trials if t.state == TrialState.FAIL]
    reason = next((t.user_attrs.get("fail_reason") for t in failed if t.user_attrs.get("fail_reason")), "see the log")
    raise UserError(f"no trial of study '{study.name}' succeeded ({len(failed)} failed; the first because: "
                    f"{short(reason, 200, plain=True)}): see {out / 'results.md'}")


def _refuse_a_missing_sqlite_file(url: str) -> None:
    """A worker joins a study that exists: SQLite would create an empty database at a mistyped path."""
    from sqlalchemy.engine import make_url
    try:
        u = make_url(url)
    except Exception:  # noqa: BLE001  (open_storage says what is wrong with it)
        return
    if u.get_backend_name() == "sqlite" and u.database not in (None, "", ":memory:") and not Path(u.database).is_file():
        raise UserError(f"no study storage at '{u.database}' (from {shown(url)}): give the --storage URL the "
                        "study's `cifarlab sweep` used (default sqlite:///STUDY_DIR/study.db)")


def join(name: str, storage_url: str, out: Path | None, worker: int = 0, heartbeat: int = 10, log: Log = print,
         idle_timeout: float = 600) -> int:
    """`cifarlab worker`: run trials of a study until it is finished; returns how many this worker ran."""
    _refuse_a_missing_sqlite_file(storage_url)
    study, s = load_study(name, open_storage(storage_url, heartbeat), worker)
    out = out or Path("studies") / study.name
    log(f"worker {worker} joined study '{name}' ({study.method}); run directories in {out}")
    return work(study, s, out, log, stop_when_drained=lambda: bool(s.user_attrs.get("queued_all")),
                idle_timeout=idle_timeout)
