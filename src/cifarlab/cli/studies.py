"""CLI commands of the "Studies" issue: sweep, worker, repeat, compare, lr-find."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from cifarlab.cli.app import _say, app, emit_json
from cifarlab.errors import UserError

STORAGE_ENV = "CIFARLAB_STORAGE"  # as studies.runner.STORAGE_ENV (importing the runner here would load optuna)

def _quiet_optuna() -> None:
    """This process is ours: silence Optuna's experimental warnings and per-trial INFO lines for good."""
    from cifarlab.studies.optuna_adapter import quiet_optuna

    quiet_optuna()


def _overrides(data: Optional[str], set_: List[str]) -> dict:
    from cifarlab.config import parse_assignment

    out = {"data.dataset": data} if data else {}
    out.update(parse_assignment(s) for s in set_)
    return out


@app.command()
def sweep(
    config: str = typer.Option(..., "--config", "-c", help="a study YAML file, or a preset name (docs/studies.md)"),
    method: Optional[str] = typer.Option(None, help="ofat | grid | random | tpe, or another registered sweep method "
                                                    "(default: the file's)"),
    trials: Optional[int] = typer.Option(None, min=1, max=100_000, help="random/tpe: configurations to try (default: the file's)"),
    repeats: Optional[int] = typer.Option(None, min=1, max=1000, help="seeds per configuration (default: the file's)"),
    data: Optional[str] = typer.Option(None, help="dataset spec for every trial (as for train)"),
    set_: List[str] = typer.Option([], "--set", "-s", help="a base config key for every trial: --set train.epochs=2"),
    storage: Optional[str] = typer.Option(None, envvar=STORAGE_ENV,
                                          help="Optuna storage URL (default: sqlite in the study directory)"),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, max=64, help="local worker processes"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="study directory (default studies/NAME)"),
    heartbeat: int = typer.Option(10, min=1, max=3600, help="seconds between heartbeats; a trial silent 3x this is retried"),
    as_json: bool = typer.Option(False, "--json"),
    mlflow: Optional[str] = typer.Option(None, "--mlflow", help="MLflow tracking URI: one parent run, each trained run "
                                         "a child (default: base track.mlflow, else $MLFLOW_TRACKING_URI)"),
):
    """Run (or continue) a study: a base config plus a search space; writes tables, plots, best.yaml."""
    _quiet_optuna()
    from cifarlab.studies.runner import sweep as run_sweep
    from cifarlab.studies.space import read_study_file

    study = read_study_file(config, _overrides(data, set_), method=method, trials=trials, repeats=repeats)
    summary = run_sweep(study, out or Path("studies") / study.name, storage, jobs, heartbeat, _say(as_json),
                        mlflow=mlflow)
    if as_json:
        emit_json(summary)


@app.command()
def worker(
    study: str = typer.Option(..., "--study", help="the study's name"),
    storage: str = typer.Option(..., "--storage", envvar=STORAGE_ENV,
                                help="the Optuna storage URL the study lives in"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="where this worker's run directories go"),
    worker_index: int = typer.Option(0, "--worker-index", min=0, max=100_000, help="picks this worker's sampler stream"),
    heartbeat: int = typer.Option(10, min=1, max=3600),
    idle_timeout: float = typer.Option(600, "--idle-timeout", min=0, max=10**7, help="leave after this many seconds without work"),
    parent_pid: Optional[int] = typer.Option(None, "--parent-pid", hidden=True, help="stop when this process dies"),
    as_json: bool = typer.Option(False, "--json"),
):
    """Join a study started by `cifarlab sweep --storage URL` (from this or any other machine)."""
    _quiet_optuna()
    from cifarlab.studies.runner import join

    if parent_pid is not None:  # a worker `sweep --jobs N` started: kill -9 of the sweep stops it too
        from cifarlab.train.distributed import die_with_parent
        die_with_parent(parent_pid)

    ran = join(study, storage, out, worker_index, heartbeat, _say(as_json), idle_timeout)
    if as_json:
        emit_json({"study": study, "trials_run": ran})


@app.command()
def repeat(
    recipe: str = typer.Argument(..., help="a recipe name or a YAML config file"),
    seeds: int = typer.Option(5, "--seeds", "-k", min=1, max=1000, help="how many seeds (train.seed, +1, ...)"),
    data: Optional[str] = typer.Option(None),
    set_: List[str] = typer.Option([], "--set", "-s", help="any config key: --set train.epochs=2"),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, max=64),
    storage: Optional[str] = typer.Option(None, envvar=STORAGE_ENV,
                                          help="Optuna storage URL (default: sqlite in the study directory)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="default studies/repeat-NAME"),
    as_json: bool = typer.Option(False, "--json"),
    mlflow: Optional[str] = typer.Option(None, "--mlflow", help="MLflow tracking URI: the seeds as children of one run"),
):
    """Train one configuration over K seeds: mean ± std and 95% CI of validation and test accuracy."""
    _quiet_optuna()
    from cifarlab.studies.repeats import repeat as run_repeat

    result = run_repeat(recipe, seeds, _overrides(data, set_), out, storage, jobs, log=_say(as_json), mlflow=mlflow)
    if as_json:
        emit_json(result)


@app.command()
def compare(
    a: str = typer.Argument(..., help="a recipe, a config file, or a directory written by `cifarlab repeat`"),
    b: str = typer.Argument(..., help="the other one"),
    seeds: int = typer.Option(5, "--seeds", "-k", min=2, max=1000, help="seeds for a side that has not been repeated yet"),
    data: Optional[str] = typer.Option(None),
    set_: List[str] = typer.Option([], "--set", "-s", help="a config key for both sides"),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, max=64),
    as_json: bool = typer.Option(False, "--json"),
):
    """Do A and B differ? Welch's t-test on their repeats, with the 95% CI of the difference."""
    _quiet_optuna()
    from cifarlab.studies.repeats import compare as run_compare
    from cifarlab.studies.repeats import load_or_repeat

    say = _say(as_json)
    ra, rb = (load_or_repeat(x, seeds, _overrides(data, set_), jobs, say) for x in (a, b))
    result = run_compare(ra, rb, say)
    if as_json:
        emit_json(result)


@app.command("lr-find")
def lr_find(
    recipe: Optional[str] = typer.Option(None, "--recipe", "-r"),
    config: Optional[Path] = typer.Option(None, "--config", "-c"),
    data: Optional[str] = typer.Option(None),
    set_: List[str] = typer.Option([], "--set", "-s", help="any config key: --set optimizer.name=adam"),
    start_lr: float = typer.Option(1e-7, "--start-lr", min=1e-12, max=1e3),
    end_lr: float = typer.Option(10.0, "--end-lr", min=1e-12, max=1e3),
    steps: int = typer.Option(100, min=5, max=10_000, help="LR steps (a few hundred at most)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="default runs/lrfind-NAME-TIME"),
    as_json: bool = typer.Option(False, "--json"),
):
    """The LR range test: loss against an exponentially growing LR; plots it and suggests an LR."""
    from cifarlab.config import load_config
    from cifarlab.studies.lrfind import lr_find as run_lr_find
    from cifarlab.train.rundir import default_run_dir

    if not recipe and not config:
        raise UserError("give --recipe NAME or --config FILE: the model, data and optimizer to test")
    cfg = load_config(recipe, config, _overrides(data, set_))
    result = run_lr_find(cfg, out or default_run_dir(f"lrfind-{cfg.name}"), start_lr, end_lr, steps, log=_say(as_json))
    if as_json:
        emit_json(result)
