"""Finding and reading run directories: what `cifarlab runs` lists and what a report is built from.

A run is any folder with summary.json, or with metrics.csv and config.yaml (a run still training,
or one that was interrupted). Nothing here loads a checkpoint or the dataset. `load_run` checks every value
the readers format (see SUMMARY_KEYS, CONFIG_KEYS) as it reads a run: a damaged run is one line naming the file
and the key, and `find_runs` skips it with a warning instead of failing the whole listing.
"""
from __future__ import annotations

import csv
import fcntl
import io
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from cifarlab.config import get_key, load_yaml
from cifarlab.errors import CifarlabWarning, UserError, short
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


def _damaged(path: Path, what: str) -> UserError:
    return UserError(f"run directory '{path}' is damaged: {what}: restore that file from a copy of the run "
                     "(or move the run out of the folder)")


def _read_json(rd: RunDir, path: Path) -> dict | None:
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except OSError as err:
        raise UserError(f"cannot read '{path}' ({err.strerror or err}): check its permissions") from None
    except (ValueError, RecursionError) as err:  # not JSON, not UTF-8, or nested beyond the parser's stack
        raise _damaged(rd.path, f"{path.name} is not valid JSON ({short(err, 80, plain=True)})") from None
    if not isinstance(obj, dict):
        raise _damaged(rd.path, f"{path.name} holds {_kind_of(obj)}, not a JSON object")
    return obj


def _read_config(rd: RunDir) -> dict:
    if not rd.config.is_file():
        return {}
    try:
        raw = load_yaml(rd.config.read_text(), rd.config.name)  # bounded: an alias bomb is refused, not expanded
    except OSError as err:
        raise UserError(f"cannot read '{rd.config}' ({err.strerror or err}): check its permissions") from None
    except UserError as err:  # too big, an alias bomb, nested too deep: its own advice gives way to ours
        raise _damaged(rd.path, str(err).rsplit(": ", 1)[0]) from None
    except (yaml.YAMLError, ValueError) as err:  # ValueError: not UTF-8
        mark = getattr(err, "problem_mark", None)
        raise _damaged(rd.path, "config.yaml is not valid YAML" + (f" (line {mark.line + 1})" if mark else "")) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _damaged(rd.path, f"config.yaml holds {_kind_of(raw)}, not a mapping of sections (model, data, train, ...)")
    return raw


def _read_metrics(rd: RunDir) -> list[dict]:
    if not rd.metrics.is_file():
        return []
    try:
        rows = read_metrics(rd.metrics)
    except OSError as err:
        raise UserError(f"cannot read '{rd.metrics}' ({err.strerror or err}): check its permissions") from None
    except (ValueError, TypeError, csv.Error) as err:  # a cell that is no number, a row too short or too long
        raise _damaged(rd.path, f"metrics.csv is not a table of numbers ({short(err, 80, plain=True)})") from None
    for i, row in enumerate(rows, 1):
        missing = [c for c in METRICS_READ if c not in row]
        if missing:
            raise _damaged(rd.path, f"metrics.csv has no column '{missing[0]}'")
        for c in SECONDS:
            if not math.isfinite(row[c]):
                raise _damaged(rd.path, f"metrics.csv row {i} has {c} {row[c]}, not a finite number of seconds")
    return rows


# ------------------------------------------------------------------ what the readers assume of a run's files
# Every value `runs`, `report` and a comparison read from summary.json and config.yaml, with the type their
# formatting needs (a number for :f, a mapping for .get, ...). `load_run` checks them all when it reads a
# run, so a damaged file is one line naming the file and the key, never a traceback deep in a report.
# A key may be absent or null (an older run, an unfinished one, a recipe without `reported:`).

def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_seconds(v) -> bool:
    return _is_number(v) and math.isfinite(v) and v >= 0


KINDS: dict[str, tuple[Callable[[object], bool], str]] = {
    "number": (_is_number, "a number"),
    "seconds": (_is_seconds, "a finite number of seconds"),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "a whole number"),
    "text": (lambda v: isinstance(v, str), "text"),
    "name": (lambda v: isinstance(v, (str, int, float)), "text"),
    "mapping": (lambda v: isinstance(v, dict), "a mapping"),
    "split": (lambda v: isinstance(v, dict), "a mapping of the split's metrics"),
}
CONFIG_KEYS = {"name": "name", "model": "mapping", "model.name": "text", "data": "mapping", "data.dataset": "text",
               "data.augment": "mapping", "optimizer": "mapping", "optimizer.name": "text", "optimizer.lr": "number",
               "train": "mapping", "train.epochs": "int", "train.batch_size": "int", "reported": "mapping",
               "reported.accuracy": "number", "reported.split": "text"}
SUMMARY_KEYS = {"status": "text", "model": "text", "parameters": "int", "epochs_run": "int", "best_epoch": "int",
                "best_val_accuracy": "number", "test_accuracy": "number", "train_images_per_second": "number",
                "train_seconds": "seconds", "wall_seconds": "seconds", "stopped_reason": "text",
                "val": "split", "test": "split"}
SPLIT_KEYS = {"images": "int", "accuracy": "number", "loss": "number", "macro_f1": "number"}
METRICS_READ = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "epoch_seconds",
                "train_seconds", "images_per_second"]
SECONDS = ("epoch_seconds", "train_seconds")


def _kind_of(v) -> str:
    return {dict: "a mapping", list: "a list", str: "text", bool: "true/false", type(None): "nothing"}.get(
        type(v), "a number" if _is_number(v) else type(v).__name__)


def _check_keys(rd: RunDir, file: str, obj: dict, keys: dict[str, str]) -> None:
    for dotted, kind in keys.items():
        value = get_key(obj, dotted)
        ok, wanted = KINDS[kind]
        if value is not None and not ok(value):
            raise _damaged(rd.path, f"{file}'s {dotted} is {short(value)}, not {wanted}")
        if kind == "split" and value:
            _check_split(rd, f"{file}'s {dotted}", value)


def _check_split(rd: RunDir, where: str, split: dict) -> None:
    """A split's final metrics: the report formats the numbers and draws the per-class table and confusion."""
    for key, kind in SPLIT_KEYS.items():
        ok, wanted = KINDS[kind]
        if not ok(split.get(key)):
            raise _damaged(rd.path, f"{where}.{key} is {short(split.get(key))}, not {wanted}")
    classes, per_class, confusion = split.get("classes"), split.get("per_class_accuracy"), split.get("confusion_matrix")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise _damaged(rd.path, f"{where}.classes is {short(classes)}, not a list of class names")
    if not isinstance(per_class, dict) or not all(_is_number(per_class.get(c)) for c in classes):
        raise _damaged(rd.path, f"{where}.per_class_accuracy is {short(per_class)}, not a number for each class")
    n = len(classes)
    if not (isinstance(confusion, list) and len(confusion) == n and all(
            isinstance(row, list) and len(row) == n and all(_is_number(v) for v in row) for row in confusion)):
        raise _damaged(rd.path, f"{where}.confusion_matrix is {short(confusion)}, not {n} rows of {n} counts")


def check_run(run: Run) -> Run:
    """`run` unchanged when its summary.json and config.yaml hold what the readers format; a UserError naming
    the file, the key and the value otherwise."""
    rd = RunDir(run.path)
    _check_keys(rd, "config.yaml", run.config, CONFIG_KEYS)
    if run.summary is not None:
        _check_keys(rd, "summary.json", run.summary, SUMMARY_KEYS)
    return run


def load_run(path: str | Path, need_metrics: bool = True) -> Run:
    """Read a run directory; a missing folder or (with need_metrics) missing metrics.csv is a UserError, and so
    is a damaged file (one line: the file, the key, what it holds)."""
    rd = RunDir(path)
    if not rd.path.is_dir():
        raise UserError(f"run directory '{rd.path}' does not exist: check the path (`cifarlab runs` lists runs)")
    if need_metrics and not rd.metrics.is_file():
        raise UserError(f"'{rd.path}' has no metrics.csv: it is not a run directory, or its run stopped before "
                        "finishing one epoch")
    run = Run(rd.path, summary=_read_json(rd, rd.summary), environment=_read_json(rd, rd.environment) or {},
              config=_read_config(rd), metrics=_read_metrics(rd))
    return check_run(run)


def find_runs(root: str | Path) -> list[Run]:
    """Every run below `root` (root itself included), sorted by path; a damaged run is skipped with a warning."""
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
            except UserError as err:  # one damaged run does not hide the others: it is named, and left out
                warnings.warn(f"skipped: {err}", CifarlabWarning, stacklevel=2)
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
        parsed = load_yaml(want, "--filter value")
    except (yaml.YAMLError, UserError):  # not YAML (or an alias bomb): compared as text
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
