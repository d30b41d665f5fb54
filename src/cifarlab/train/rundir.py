"""The run directory: one folder per run, holding everything needed to understand and redo it.

    config.yaml       the resolved config (re-runnable: `cifarlab train --config config.yaml`)
    environment.json  versions, device, threads, precision
    metrics.csv       one row per epoch, rewritten atomically every epoch
    best.pt, last.pt  checkpoints (best by validation accuracy; last for --resume)
    summary.json      the final result (also the last line of `train --json`)
    train.log         the lines printed during training
    .lock             held while a process writes here
"""
from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import re
import time
from pathlib import Path

from cifarlab.errors import UserError, WriteFailed
from cifarlab.fileio import TEMP_SUFFIX, atomic_write_text, check_output_dir, remove_stale_temps

METRIC_COLUMNS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr",
                  "epoch_seconds", "train_seconds", "images_per_second", "peak_memory_mb"]


def default_run_dir(name: str, root: str | Path = "runs") -> Path:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "run"
    base = Path(root) / f"{slug}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config = self.path / "config.yaml"
        self.environment = self.path / "environment.json"
        self.metrics = self.path / "metrics.csv"
        self.best = self.path / "best.pt"
        self.last = self.path / "last.pt"
        self.summary = self.path / "summary.json"
        self.log = self.path / "train.log"
        self._lock_file = None

    def holds_run(self) -> bool:
        return self.last.exists() or self.config.exists()

    def open(self, new: bool) -> "RunDir":
        """Create (new run) or reopen (resume) the directory and take its lock; fail before any training."""
        if new and self.path.exists() and self.holds_run():
            raise UserError(f"'{self.path}' already holds a run: continue it with --resume {self.path} "
                            "or choose another --out")
        if not new and not self.last.exists():
            raise UserError(f"'{self.path}' holds no run to resume (no last.pt): check the path")
        if new:
            self.check_new_folder()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock_file = open(self.path / ".lock", "a+")
        except OSError as err:
            raise UserError(f"cannot write to run directory '{self.path}' ({err.strerror}): choose another --out") from None
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.seek(0)
            owner = self._lock_file.read().strip() or "another process"
            self._lock_file.close()
            raise UserError(f"run directory '{self.path}' is in use by {owner}: wait for it to finish "
                            "or choose another --out") from None
        self._lock_file.seek(0)
        self._lock_file.truncate()
        self._lock_file.write(f"cifarlab pid {os.getpid()}")
        self._lock_file.flush()
        remove_stale_temps(self.path)  # halves of writes a killed process left; the files they replace are whole
        return self

    def check_new_folder(self) -> None:
        """A new run goes into a folder that does not exist, or one that is empty: never over a user's files,
        never inside another run (`check_output_dir` also refuses a file in its place)."""
        check_output_dir(self.path, create=False)
        if self.path.is_dir():
            try:
                left = [p.name for p in self.path.iterdir()
                        if p.name != ".lock" and not (p.name.startswith(".") and p.name.endswith(TEMP_SUFFIX))]
            except OSError as err:
                raise UserError(f"cannot read folder '{self.path}' ({err.strerror}): choose another --out") from None
            if left:
                raise UserError(f"'{self.path}' is a folder that already holds files ({sorted(left)[0][:60]}, ...) "
                                "and no run: choose a new or empty folder with --out")

    def close(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing releases the flock
            self._lock_file = None

    def discard_if_empty(self) -> None:
        """Remove a directory this process created that holds nothing but its lock file."""
        if self.path.is_dir() and {p.name for p in self.path.iterdir()} <= {".lock"}:
            (self.path / ".lock").unlink(missing_ok=True)
            self.path.rmdir()

    def write_json(self, path: Path, obj) -> None:
        atomic_write_text(path, json.dumps(obj, indent=2) + "\n")

    def write_metrics(self, history: list[dict]) -> None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(history)
        atomic_write_text(self.metrics, buf.getvalue())

    def append_log(self, line: str) -> None:
        try:
            with open(self.log, "a") as f:
                f.write(line + "\n")
        except OSError as err:
            raise WriteFailed.from_os_error(self.log, err) from None


def validated(row: dict) -> bool:
    """Whether an epoch's metrics row has validation figures (train.val_every leaves NaN in the others)."""
    return row["val_accuracy"] == row["val_accuracy"]  # NaN is the one float unequal to itself


def read_metrics(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: float(v) if k != "epoch" else int(v) for k, v in row.items()} for row in csv.DictReader(f)]
