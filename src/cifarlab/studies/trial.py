"""One trial: a configuration trained once per seed, each run in its own run directory."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from cifarlab.config import validate_config
from cifarlab.errors import TrainingDiverged
from cifarlab.studies.space import Study


def _pruning(trial):
    import optuna

    def report(trainer, row):
        trial.report(row["val_accuracy"], row["epoch"])
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {row['epoch']}")
    return report


def train_one(cfg, run_dir: Path, callbacks=(), report: bool = True) -> dict:
    """Train into run_dir; a run that finished there before (a retried trial) is not trained again.
    report=False skips each run's report.html (seconds of plotting per run in a long sweep)."""
    from cifarlab.report.hooks import WriteReport
    from cifarlab.train.trainer import train

    summary = run_dir / "summary.json"
    if summary.is_file():
        done = json.loads(summary.read_text())
        if done.get("status") == "diverged":
            raise TrainingDiverged(done.get("stopped_reason") or "diverged")
        if done.get("status") in ("completed", "stopped"):
            return done
    shutil.rmtree(run_dir, ignore_errors=True)  # a run cut off mid-way starts again from scratch
    return train(cfg, run_dir, log=lambda _line: None, callbacks=[*callbacks, WriteReport()] if report else callbacks)


def train_seeds(study: Study, params: dict, folder: Path, trial=None) -> dict:
    """Mean validation accuracy over the study's seeds, and each seed's figures."""
    runs, seeds = [], []
    for seed in study.seeds():
        cfg = validate_config(study.config(params, seed))
        cbs = (_pruning(trial),) if trial is not None else ()
        runs.append(train_one(cfg, folder / f"seed{cfg.train.seed}", cbs))
        seeds.append(cfg.train.seed)
    vals = [r["best_val_accuracy"] for r in runs]
    tests = [r["test_accuracy"] for r in runs if r.get("test_accuracy") is not None]
    return {"val_accuracy": sum(vals) / len(vals), "val_accuracies": vals, "test_accuracies": tests,
            "test_accuracy": sum(tests) / len(tests) if tests else None,
            "seeds": seeds,
            "best_epochs": [r["best_epoch"] for r in runs], "train_seconds": sum(r["train_seconds"] for r in runs),
            "run_dirs": [r["run_dir"] for r in runs]}
