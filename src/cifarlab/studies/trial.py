"""One trial: a configuration trained once per seed, each run in its own run directory.

Every trial reports its per-epoch validation accuracy to Optuna (the intermediate values a pruner
reads, and optuna-dashboard plots), whatever the pruner; `none` simply never stops one. Each trial's
run directories are in its user attributes (`run_dir`, `run_dirs`) from the moment it starts.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from cifarlab.errors import TrainingDiverged, UserError
from cifarlab.schema import validate_config
from cifarlab.studies.space import Study
from cifarlab.train.rundir import validated


def _pruning(trial):
    import optuna

    def report(trainer, row):
        if not validated(row):
            return  # an epoch train.val_every skipped: nothing to report
        trial.report(row["val_accuracy"], row["epoch"])
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {row['epoch']}")
    return report


def _resumable(cfg, run_dir: Path) -> bool:
    """A run of this very configuration that was cut off (kill -9, a session's end) after some epoch,
    with a checkpoint that loads: it can continue where it stopped."""
    from cifarlab.train.checkpoint import check_resume_state, load_checkpoint
    from cifarlab.train.entry import read_run_config
    from cifarlab.train.rundir import RunDir

    run = RunDir(run_dir)
    if not (run.last.is_file() and run.config.is_file()):
        return False
    try:
        if validate_config(read_run_config(run)).model_dump() != cfg.model_dump():
            return False
        check_resume_state(load_checkpoint(run.last), run.last)
        return True
    except UserError:  # a damaged config.yaml or checkpoint: train again from scratch
        return False


def train_one(cfg, run_dir: Path, callbacks=(), report: bool = True) -> dict:
    """Train into run_dir; a run that finished there before (a retried trial) is not trained again, and
    one cut off mid-way continues from its last checkpoint, exactly as `cifarlab train --resume` would.
    report=False skips each run's report.html (seconds of plotting per run in a long sweep).
    A callback with an `abort(status)` method (MLflow's) hears of a run that stopped with an exception."""
    import optuna

    from cifarlab.report.hooks import WriteReport
    from cifarlab.train.entry import resume, train

    summary = run_dir / "summary.json"
    if summary.is_file():
        done = json.loads(summary.read_text())
        if done.get("status") == "diverged":
            raise TrainingDiverged(done.get("stopped_reason") or "diverged")
        if done.get("status") in ("completed", "stopped"):
            return done
    # the report first: end-of-run hooks run in order, and the MLflow hook uploads report.html
    hooks = [WriteReport(), *callbacks] if report else list(callbacks)
    try:
        if _resumable(cfg, run_dir):  # an hour of a killed study's trial is not thrown away
            return resume(run_dir, log=lambda _line: None, callbacks=hooks)
        shutil.rmtree(run_dir, ignore_errors=True)
        return train(cfg, run_dir, log=lambda _line: None, callbacks=hooks)
    except BaseException as err:
        status = "KILLED" if isinstance(err, (optuna.TrialPruned, KeyboardInterrupt)) else "FAILED"
        for cb in callbacks:
            if hasattr(cb, "abort"):
                cb.abort(status)
        raise


def _tracking(trial, cfg, seed_dir: Path):
    """The MLflow child-run hook of one seed's run, when the study has a parent run."""
    info = trial.study.user_attrs.get("mlflow") if trial is not None else None
    if not info:
        return None
    from cifarlab.report.mlflow_hook import MlflowCallback
    return MlflowCallback(info["uri"], info.get("experiment"), info.get("parent_run_id"),
                          tags={"cifarlab.trial": trial.number, "cifarlab.study": trial.study.study_name},
                          run_name=f"trial-{trial.number}-{seed_dir.name}")


def train_seeds(study: Study, params: dict, folder: Path, trial=None) -> dict:
    """Mean validation accuracy over the study's seeds, and each seed's figures."""
    runs, seeds = [], []
    cfgs = [validate_config(study.config(params, seed)) for seed in study.seeds()]
    dirs = [folder / f"seed{cfg.train.seed}" for cfg in cfgs]
    if trial is not None:  # known before training, so a running or pruned trial shows where its runs are
        trial.set_user_attr("run_dir", str(dirs[0].resolve()))
        trial.set_user_attr("run_dirs", [str(d.resolve()) for d in dirs])
    for cfg, run_dir in zip(cfgs, dirs):
        cbs = []
        track = _tracking(trial, cfg, run_dir)
        if track is not None:  # before pruning: an epoch is logged before a pruner may stop the run
            cbs.append(track)
        if trial is not None:
            cbs.append(_pruning(trial))
        runs.append(train_one(cfg, run_dir, cbs, report=study.trial_reports))
        seeds.append(cfg.train.seed)
    vals = [r["best_val_accuracy"] for r in runs]
    tests = [r["test_accuracy"] for r in runs if r.get("test_accuracy") is not None]
    return {"val_accuracy": sum(vals) / len(vals), "val_accuracies": vals, "test_accuracies": tests,
            "test_accuracy": sum(tests) / len(tests) if tests else None,
            "seeds": seeds,
            "best_epochs": [r["best_epoch"] for r in runs], "train_seconds": sum(r["train_seconds"] for r in runs),
            "run_dir": str(dirs[0].resolve()), "run_dirs": [str(Path(r["run_dir"]).resolve()) for r in runs]}
