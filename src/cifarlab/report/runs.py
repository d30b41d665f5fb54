"""Finding and reading run directories: what `cifarlab runs` lists and what a report is built from.

A run is any folder with summary.json, or with metrics.csv and config.yaml (a run still training,
or one that was interrupted). Nothing here loads a checkpoint or the dataset.
"""
from __future__ import annotations

import csv
import fcntl
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cifarlab.config import get_key
from cifarlab.errors import UserError
from cifarlab.report.format import format_seconds, pct
from cifarlab.train.rundir import RunDir, read_metrics, validated

COLUMNS = ["run", "model", "optimizer", "lr", "batch_size", "epochs", "augment", "best_val", "test", "vs_seed", "time",
           "status"]
DESCRIPTIONS = {"best_val": "best validation accuracy", "test": "test accuracy (evaluated once)",
                "epochs": "epochs run / planned", "time": "wall time (training time while unfinished)"}


@dataclass
class Run:
    path: Path
    config: dict = field(default_factory=dict)
    metrics: list[dict] = field(default_factory=list)
    summary: dict | None = None
    environment: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.config.get("name") or self.path.name)

    @property
    def status(self) -> str:
        if self.summary is not None:
            return str(self.summary.get("status", "completed"))
        return "running" if _locked(self.path / ".lock") else "interrupted"

    @property
    def best(self) -> dict | None:
        """The best epoch's metrics row (by validation accuracy, first of ties, as the trainer picks)."""
        return max(filter(validated, self.metrics), key=lambda r: r["val_accuracy"], default=None)

    def setting(self, dotted: str):
        return get_key(self.config, dotted)


def _locked(lock: Path) -> bool:
    """True while a training process holds the run directory's lock."""
    try:
        with open(lock) as f:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
    except BlockingIOError:
        return True
    except OSError:
        return False


def is_run_dir(path: Path) -> bool:
    rd = RunDir(path)
    return rd.summary.is_file() or (rd.metrics.is_file() and rd.config.is_file())


def _read_json(path: Path) -> dict | None:
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise UserError(f"'{path}' is unreadable or not JSON ({err}): the run directory is damaged") from None
    return obj if isinstance(obj, dict) else None


def load_run(path: str | Path, need_metrics: bool = True) -> Run:
    """Read a run directory; a missing folder or (with need_metrics) missing metrics.csv is a UserError."""
    rd = RunDir(path)
    if not rd.path.is_dir():
        raise UserError(f"run directory '{rd.path}' does not exist: check the path (`cifarlab runs` lists runs)")
    if need_metrics and not rd.metrics.is_file():
        raise UserError(f"'{rd.path}' has no metrics.csv: it is not a run directory, or its run stopped before "
                        "finishing one epoch")
    run = Run(rd.path, summary=_read_json(rd.summary), environment=_read_json(rd.environment) or {})
    try:
        run.config = (yaml.safe_load(rd.config.read_text()) or {}) if rd.config.is_file() else {}
        run.metrics = read_metrics(rd.metrics) if rd.metrics.is_file() else []
    except (OSError, yaml.YAMLError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"cannot read run '{rd.path}' ({str(err).splitlines()[0][:120]}): "
                        "its config.yaml or metrics.csv is damaged") from None
    return run


def find_runs(root: str | Path) -> list[Run]:
    """Every run below `root` (root itself included), sorted by path; damaged runs are skipped."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"'{root}' is not a directory: give the folder that holds your runs (default runs/)")
    runs = []
    for dirpath, dirnames, _ in os.walk(root):
        path = Path(dirpath)
        if is_run_dir(path):
            dirnames.clear()  # a run's own folders (report/, tensorboard/) hold no runs
            try:
                runs.append(load_run(path, need_metrics=False))
            except UserError:
                continue
        dirnames.sort()
    return runs


def run_row(run: Run, root: Path | None = None) -> dict:
    """The `cifarlab runs` row of a run: raw values (fractions, seconds), formatted only on display."""
    s = run.summary or {}
    best = run.best
    augment = run.setting("data.augment") or {}
    on = any(augment.get(k) for k in ("crop_padding", "flip", "autoaugment", "color_jitter", "rotation", "cutout"))
    planned = run.setting("train.epochs")
    done = s.get("epochs_run", len(run.metrics))
    time_s = s.get("wall_seconds") if s.get("wall_seconds") is not None else sum(r["epoch_seconds"] for r in run.metrics)
    label = run.path.relative_to(root).as_posix() if root is not None and run.path != root else run.path.name
    best_val, test = s.get("best_val_accuracy", best["val_accuracy"] if best else None), s.get("test_accuracy")
    # vs_seed: this run's figure minus the figure its recipe's seed report gives (`reported:`), in points
    seed = run.setting("reported.accuracy")
    ours, ours_split = figure_to_compare(run.setting("reported.split") or "test", best_val, test)
    return {"run": label or run.path.name, "name": run.name, "path": str(run.path),
            "model": run.setting("model.name") or s.get("model"), "optimizer": run.setting("optimizer.name"),
            "lr": run.setting("optimizer.lr"), "batch_size": run.setting("train.batch_size"),
            "epochs": f"{done}/{planned}" if planned else str(done), "epochs_run": done, "augment": "on" if on else "off",
            "best_val": best_val, "test": test,
            "vs_seed": ours - seed if isinstance(seed, (int, float)) and ours is not None else None,
            "vs_split": "test" if ours_split == "test" else "val", "time": time_s, "status": run.status}


def figure_to_compare(reported_split: str, best_val: float | None, test: float | None) -> tuple[float | None, str]:
    """This run's figure to set beside a recipe's `reported:` one, and its split: the test split's where the
    run has one and the figure is a test figure (the seeds'), else the best validation accuracy (a target
    stated on validation, such as issue 14's, is met or missed on validation even when a test split exists)."""
    if test is not None and reported_split == "test":
        return test, "test"
    return best_val, "best validation"


def format_row(row: dict) -> dict:
    """The row's display strings (accuracies in %, time as 1m23s)."""
    lr = row["lr"]
    return {**{k: "" if v is None else str(v) for k, v in row.items()},
            "lr": "" if lr is None else f"{lr:g}", "best_val": pct(row["best_val"]), "test": pct(row["test"]),
            "time": format_seconds(row["time"]),
            "vs_seed": "" if row.get("vs_seed") is None else f"{100 * row['vs_seed']:+.1f} pts {row['vs_split']}"}


def _matches(row: dict, run: Run, key: str, want: str) -> bool:
    have = row[key] if key in row else run.setting(key)
    if have is None:
        return False
    try:
        parsed = yaml.safe_load(want)
    except yaml.YAMLError:
        parsed = want
    if isinstance(have, (int, float)) and isinstance(parsed, (int, float)) and not isinstance(parsed, bool):
        return float(have) == float(parsed)
    return str(have).lower() == str(want).lower() or have == parsed


def select_rows(runs: list[Run], root: Path, filters: list[str], sort: str | None, desc: bool) -> list[dict]:
    """Rows of the runs passing every `key=value` filter (a column or a dotted config key), sorted."""
    parsed = []
    for f in filters:
        key, sep, value = f.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--filter takes KEY=VALUE (e.g. model=tutorial_cnn), got '{f}'")
        if key not in COLUMNS and "." not in key:
            raise UserError(f"unknown filter key '{key}': use a column ({', '.join(COLUMNS)}) "
                            "or a config key such as train.batch_size")
        parsed.append((key, value.strip()))
    rows = []
    for run in runs:
        row = run_row(run, root)
        if all(_matches(row, run, k, v) for k, v in parsed):
            rows.append(row)
    if sort:
        if sort not in COLUMNS:
            raise UserError(f"cannot sort by '{sort}': use one of {', '.join(COLUMNS)}")
        key = "epochs_run" if sort == "epochs" else sort
        present = [r for r in rows if r[key] is not None]
        present.sort(key=lambda r: (isinstance(r[key], str), r[key]), reverse=desc)
        rows = present + [r for r in rows if r[key] is None]  # runs without the value go last either way
    return rows


FORMATS = ("table", "csv", "markdown")


def render_rows(rows: list[dict], fmt: str) -> str:
    """`cifarlab runs --format csv|markdown`: CSV keeps raw values (fractions, seconds, the full path) for
    spreadsheets; Markdown shows the table's display strings, ready to paste into a report."""
    if fmt == "csv":
        cols = COLUMNS + ["vs_split", "name", "path", "epochs_run"]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows({c: "" if r.get(c) is None else r[c] for c in cols} for r in rows)
        return buf.getvalue()
    if fmt == "markdown":
        numeric = {"lr", "batch_size", "epochs", "best_val", "test", "vs_seed", "time"}
        cell = lambda v: str(v).replace("|", "\\|")  # noqa: E731
        lines = ["| " + " | ".join(COLUMNS) + " |",
                 "| " + " | ".join("---:" if c in numeric else "---" for c in COLUMNS) + " |"]
        lines += ["| " + " | ".join(cell(format_row(r)[c]) for c in COLUMNS) + " |" for r in rows]
        return "\n".join(lines) + "\n"
    raise UserError(f"unknown format '{fmt}': use one of {', '.join(FORMATS)}")
