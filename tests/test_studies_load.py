"""Load as users run it: `cifarlab sweep --jobs 4` on the default SQLite storage and on PostgreSQL.

An 8-point grid of tiny trials must complete with no point lost, duplicated or left RUNNING, and no
"database is locked" reaching the user (four processes write one SQLite file; Optuna warns about that).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import tiny_overrides
from test_studies_postgres import postgres_url  # noqa: F401  (the fixture: a throwaway PostgreSQL server)

SRC = str(Path(__file__).resolve().parents[1] / "src")
LRS, MOMENTA, BATCHES = [0.01, 0.1], [0.0, 0.9], [16, 32]  # 8 points: two each for 4 workers


def _sweep_with_4_jobs(tmp_path: Path, storage: str | None) -> tuple[subprocess.CompletedProcess, Path]:
    f = tmp_path / "load.yaml"
    f.write_text(yaml.safe_dump({
        "name": "load", "base": "quickstart", "method": "grid", "trial_reports": False,
        "set": tiny_overrides(**{"train.epochs": 1, "model.name": "mlp", "data.train_limit": 100, "data.val_size": 50}),
        "space": {"optimizer.lr": LRS, "optimizer.momentum": MOMENTA, "train.batch_size": BATCHES}}))
    out = tmp_path / "study"
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    # the default heartbeat (10 s): four processes on two cores must not make a live trial look dead
    cmd = [sys.executable, "-m", "cifarlab", "sweep", "--config", str(f), "--out", str(out), "--jobs", "4"]
    done = subprocess.run(cmd + (["--storage", storage] if storage else []), env=env, capture_output=True,
                          text=True, timeout=280)
    return done, out


def _check_every_point_once(done: subprocess.CompletedProcess, out: Path, storage: str) -> None:
    import optuna

    logs = done.stdout + done.stderr + "".join(p.read_text() for p in out.glob("worker-*.log"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "database is locked" not in logs and "Traceback" not in logs, logs[-2000:]
    trials = optuna.load_study(study_name="load", storage=storage).get_trials()
    assert len(trials) == 8 and all(t.state.name == "COMPLETE" for t in trials), [t.state.name for t in trials]
    points = sorted((t.params["optimizer.lr"], t.params["optimizer.momentum"], t.params["train.batch_size"])
                    for t in trials)
    assert points == sorted((lr, m, b) for lr in LRS for m in MOMENTA for b in BATCHES)  # each exactly once
    assert len(list((out / "trials").glob("*/seed*/summary.json"))) == 8  # every trial trained exactly once
    workers = [p for p in out.glob("worker-*.log") if "trial" in p.read_text()]
    assert workers, "no spawned worker ran a trial: the test did not exercise concurrent writers"
    assert (out / "results.md").read_text().count("| COMPLETE |") == 8
    assert not list((out / "trials").glob("*/seed*/report.html"))  # trial_reports: false skips them


def test_four_jobs_on_the_default_sqlite_storage(tmp_path):
    done, out = _sweep_with_4_jobs(tmp_path, None)
    _check_every_point_once(done, out, f"sqlite:///{(out / 'study.db').resolve()}")


@pytest.mark.slow
def test_four_jobs_on_postgres(tmp_path, postgres_url):  # noqa: F811
    from cifarlab.studies.runner import _driver

    done, out = _sweep_with_4_jobs(tmp_path, postgres_url)
    _check_every_point_once(done, out, _driver(postgres_url))
