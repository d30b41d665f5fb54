"""What `--resume` may change, and the record of what it changed.

config.yaml is the truth of what ran. The epochs already trained used the run's optimizer, schedule,
data and model, so an override of any of those on resume would make config.yaml lie (or, on an
interrupted run, be silently ignored by the restored optimizer state): refused, naming the keys that
may change. What may change only steers what happens from now on: how many epochs in all (extend a
finished run, or shorten an interrupted one to no fewer than it has done), the time limit, early
stopping, and the CPU threads. Each accepted change is appended to RUN/resume_history.json with the
epoch it applies from.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from cifarlab.config import set_key
from cifarlab.errors import UserError, short
from cifarlab.schema import ExperimentConfig, validate_config

RESUMABLE = ("train.epochs", "train.time_limit_minutes", "train.early_stopping_patience", "train.threads")
HISTORY = "resume_history.json"


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "options":  # model.options is one value: the model's own
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def apply_overrides(raw: dict, overrides: dict | None, epochs_done: int | None = None) -> tuple[ExperimentConfig, dict]:
    """The run's config with the overrides a resume may honour, and {key: (old, new)} of what changes.
    Any other change is a one-line UserError; an override equal to the run's value is no change."""
    import copy

    old = validate_config(copy.deepcopy(raw))
    new_raw = copy.deepcopy(raw)
    for key, value in (overrides or {}).items():
        set_key(new_raw, key, value, merge=True)
    new = validate_config(new_raw)
    before, after = _flat(old.to_dict()), _flat(new.to_dict())
    changed = {k: (before.get(k), after.get(k)) for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)}
    refused = [k for k in changed if k not in RESUMABLE]
    if refused:
        k = refused[0]
        raise UserError(f"--resume cannot change {k} (the epochs already trained used {short(changed[k][0])}): only "
                        f"{', '.join(RESUMABLE)} can change on resume; start a new run (--out) to change "
                        f"{'it' if len(refused) == 1 else 'them'}")
    if epochs_done is not None and "train.epochs" in changed and new.train.epochs < epochs_done:
        raise UserError(f"the run has done {epochs_done} epochs already: --epochs on resume is the new total and "
                        f"must be at least {epochs_done}, got {new.train.epochs}")
    return new, changed


def record_changes(run_dir: str | Path, changed: dict, from_epoch: int) -> None:
    """Append the accepted changes to RUN/resume_history.json (atomically): what, from which value, from when."""
    if not changed:
        return
    from cifarlab.fileio import atomic_write_text

    path = Path(run_dir) / HISTORY
    try:
        history = json.loads(path.read_text()) if path.is_file() else []
        if not isinstance(history, list):
            history = []
    except (OSError, ValueError):
        history = []
    history.append({"from_epoch": from_epoch + 1, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "changes": {k: {"from": a, "to": b} for k, (a, b) in changed.items()}})
    atomic_write_text(path, json.dumps(history, indent=2) + "\n")
