"""`cifarlab repeat` and `cifarlab compare`: one configuration over K seeds, and two such compared.

A repeat is a grid study over `train.seed`, so it runs on the same storage as any sweep: resumable
after a kill, and `--jobs` trains seeds in parallel. Its per-seed figures and their statistics go
to repeat.json in the study directory; `compare` reads that file or runs the repeat first.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from optuna.trial import TrialState

from cifarlab.config import load_raw, set_key
from cifarlab.errors import UserError
from cifarlab.fileio import atomic_write_text
from cifarlab.studies.space import build_study
from cifarlab.studies.stats import summarize, welch


def _source(what: str) -> tuple[str, dict]:
    """A recipe name, a YAML config file or a training run's directory -> (short name, raw config)."""
    p = Path(what)
    if p.is_dir():
        if (p / "config.yaml").is_file():  # a run directory: repeat the config that run trained with
            return p.resolve().name, load_raw(config_file=p / "config.yaml")
        raise UserError(f"'{what}' is a folder with neither repeat.json (a `cifarlab repeat` directory) nor "
                        "config.yaml (a training run): give one of those, a recipe or a config file")
    if p.suffix in (".yaml", ".yml") or p.is_file():
        return p.stem, load_raw(config_file=p)
    return what, load_raw(recipe=what)


def repeat(what: str, seeds: int, overrides: dict, out: Path | None = None, storage: str | None = None,
           jobs: int = 1, heartbeat: int = 10, log=print, mlflow: str | None = None) -> dict:
    from cifarlab.studies.runner import create_study, default_storage, open_storage, sweep

    if seeds < 2:
        raise UserError("--seeds must be at least 2 to measure a spread")
    short, raw = _source(what)
    for key, value in overrides.items():
        set_key(raw, key, value, merge=True)  # --set train={...}: those keys, the recipe's others stay
    first = (raw.get("train") or {}).get("seed", 0)
    name = "repeat-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", short)
    study = build_study({"name": name, "base": raw, "method": "grid", "space": {"train.seed": [
        first + i for i in range(seeds)]}}, f"repeat of '{what}'")
    out = out or Path("studies") / name
    # a best seed is no result; with MLflow the seeds are children of one parent run
    sweep(study, out, storage, jobs, heartbeat, log=log, export_best=False, mlflow=mlflow, kind="repeat")
    s = create_study(study, open_storage(storage or default_storage(out), heartbeat))
    done = [t for t in s.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    val = [t.value for t in done]
    test = [t.user_attrs["test_accuracy"] for t in done if t.user_attrs.get("test_accuracy") is not None]
    result = {"name": short, "source": what, "seeds": [t.params["train.seed"] for t in done],
              "val_accuracy": val, "test_accuracy": test, "val": summarize(val) if val else None,
              "test": summarize(test) if test else None, "failed": seeds - len(done), "directory": str(out)}
    atomic_write_text(out / "repeat.json", json.dumps(result, indent=2) + "\n")
    for split in ("val", "test"):
        if result[split]:
            log(f"{short}: {split} accuracy {_pm(result[split])} over {len(done)} seeds")
    return result


def _pm(s: dict) -> str:
    if s["std"] is None:
        return f"{s['mean']:.2%}"
    return f"{s['mean']:.2%} ± {s['std']:.2%} (95% CI {s['ci_low']:.2%} to {s['ci_high']:.2%})"


def load_or_repeat(what: str, seeds: int, overrides: dict, jobs: int, log) -> dict:
    f = Path(what) / "repeat.json"
    if f.is_file():
        return _read_repeat(f)
    return repeat(what, seeds, overrides, jobs=jobs, log=log)


def _read_repeat(f: Path) -> dict:
    """A repeat.json as `compare` needs it: a name and each split's accuracies, numbers in [0, 1]."""
    try:
        result = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise UserError(f"'{f}' is unreadable or not JSON ({str(err)[:100]}): run `cifarlab repeat` again "
                        "into that folder (its finished seeds are kept)") from None
    ok = isinstance(result, dict) and isinstance(result.get("name"), str) and all(
        isinstance(result.get(k), list) and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                 and 0 <= x <= 1 for x in result[k])
        for k in ("val_accuracy", "test_accuracy"))
    if not ok:
        raise UserError(f"'{f}' is not a repeat record (a name and lists of accuracies in [0, 1] under "
                        "val_accuracy and test_accuracy): run `cifarlab repeat` again into that folder")
    return result


def compare(a: dict, b: dict, log=print) -> dict:
    """Welch's t-test of B against A on test accuracy (where both have it) and validation accuracy."""
    out = {"a": a["name"], "b": b["name"], "tests": {}}
    for split in ("test", "val"):
        xa, xb = a[f"{split}_accuracy"], b[f"{split}_accuracy"]
        if len(xa) < 2 or len(xb) < 2:
            continue
        r = welch(xa, xb)
        out["tests"][split] = r
        p = "n/a" if r["p_value"] is None else f"{r['p_value']:.3g}"
        verdict = "a significant difference" if r["significant"] else "no significant difference"
        log(f"{split} accuracy: {b['name']} - {a['name']} = {r['difference']:+.2%} (95% CI {r['ci_low']:+.2%} to "
            f"{r['ci_high']:+.2%}), Welch p = {p}: {verdict} at {r['alpha']:g} "
            f"({len(xa)} vs {len(xb)} seeds)")
    if not out["tests"]:
        raise UserError("nothing to compare: each side needs at least 2 finished seeds")
    return out
