"""What a study leaves in its directory: results.csv and results.md (every trial), one plot of
validation accuracy against each searched key (plots/KEY.png), and best.yaml, the best
configuration as a config that `cifarlab train --config best.yaml` runs as it is."""
from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path

from optuna.trial import TrialState

from cifarlab.fileio import atomic_write_text
from cifarlab.schema import validate_config
from cifarlab.studies.optuna_adapter import point, retried_from
from cifarlab.studies.params import decode
from cifarlab.studies.space import Study


def collect(study: Study, s) -> list[dict]:
    kept = study.sweep_method.kept(study, s)  # the value each step kept, marked in its row as seed 001's tables did
    rows, trials = [], s.get_trials(deepcopy=False)
    retried_by = {retried_from(t): t.number for t in trials if retried_from(t) is not None}
    for t in trials:
        a = t.user_attrs
        vals = a.get("val_accuracies") or []
        note = a.get("fail_reason", "")
        if t.state == TrialState.FAIL and t.number in retried_by:  # killed, lost or interrupted: its runs went on
            note = (note or "its worker stopped") + f"; continued by trial {retried_by[t.number]}"
        if "same_as" in a:
            note = f"same configuration as trial {a['same_as']}, not trained again"
        if (original := retried_from(t)) is not None:
            note = f"retry of trial {original}" + (f"; {note}" if note else "")
        if t.state == TrialState.PRUNED and t.intermediate_values:
            note = f"pruned after epoch {max(t.intermediate_values)}"
        step = a.get("step")
        if step is not None and t.state == TrialState.COMPLETE and t.params.get(a["varies"]) == kept.get(step) \
                and all(r["step"] != step or "kept" not in r["note"] for r in rows):
            note = "kept" + (f"; {note}" if note else "")
        rows.append({"trial": t.number, "state": t.state.name, "step": a.get("step", ""), "varies": a.get("varies", ""),
                     **study.effective(point(t)),  # a trial killed before its first suggestion: its enqueued point
                     "val_accuracy": t.value if t.state == TrialState.COMPLETE else None,
                     "val_std": statistics.stdev(vals) if len(vals) > 1 else None,
                     "test_accuracy": a.get("test_accuracy"), "seeds": len(vals) or None,
                     "train_seconds": a.get("train_seconds"), "note": note})
    return rows


def best_trial(s):
    done = [t for t in s.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    return max(done, key=lambda t: (t.value, -t.number)) if done else None


def _fmt(v) -> str:
    if v is None or v == "":
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def markdown(rows: list[dict], columns: list[str]) -> str:
    pct = {"val_accuracy", "val_std", "test_accuracy"}
    cell = lambda c, v: f"{v:.2%}" if c in pct and isinstance(v, float) else _fmt(v)  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(c, r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _plot(study: Study, rows: list[dict], folder: Path) -> list[str]:
    """plots/KEY.png: validation accuracy against each searched key (a stepwise method: that key's step)."""
    from cifarlab.report.plots import plot_metric_vs_param

    method = study.sweep_method
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for step, p in enumerate(study.params):
        done = [r for r in rows if r["val_accuracy"] is not None and (not method.stepwise or r["step"] == step)]
        if not done:
            continue
        fig = plot_metric_vs_param([r[p.key] for r in done], [r["val_accuracy"] for r in done], p.key,
                                   "validation accuracy", errors=[r["val_std"] or 0 for r in done],
                                   log_range=p.is_log, connect=method.connects_points(study),
                                   tick_label=_fmt, title=f"{study.name}: {p.key}")
        path = folder / f"{p.key}.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")  # the tight box keeps rotated labels whole
        written.append(str(path))
    return written


def write_outputs(study: Study, s, out: Path, log=print, export_best: bool = True) -> dict:
    rows = collect(study, s)
    keys = [p.key for p in study.params]
    stepwise = study.sweep_method.stepwise
    columns = ["trial", "state"] + (["step", "varies"] if stepwise else []) + keys + ["val_accuracy"] \
        + (["val_std", "seeds"] if study.repeats > 1 else []) + ["test_accuracy", "train_seconds", "note"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    w.writeheader()
    w.writerows({c: _fmt(r.get(c)) for c in columns} for r in rows)
    atomic_write_text(out / "results.csv", buf.getvalue())
    best = best_trial(s)
    ranked = rows if stepwise else sorted(rows, key=lambda r: -(r["val_accuracy"] or -1))
    head = f"# Study {study.name} ({study.method})\n\n"
    if best is not None:
        head += f"Best: trial {best.number}, validation accuracy {best.value:.2%} ({_describe_best(study, best)}).\n\n"
    atomic_write_text(out / "results.md", head + markdown(ranked, [c for c in columns if c != "train_seconds"]))
    summary = {"study": study.name, "method": study.method, "directory": str(out),
               "trials": {st.name: sum(r["state"] == st.name for r in rows) for st in TrialState},
               "results_csv": str(out / "results.csv"), "results_md": str(out / "results.md"),
               "plots": _plot(study, rows, out / "plots"), "best": None}
    if best is not None and export_best:
        cfg = validate_config(study.config(best.params))
        cfg.name = f"{study.name}-best"
        cfg.description = f"best of study {study.name}: trial {best.number}, val {best.value:.2%}"
        atomic_write_text(out / "best.yaml", cfg.to_yaml())
        summary["best"] = {"trial": best.number, "val_accuracy": best.value, "params":
                           {k: decode(v) for k, v in best.params.items()}, "config": str(out / "best.yaml"),
                           "test_accuracy": best.user_attrs.get("test_accuracy")}
        log(f"best: trial {best.number}, val {best.value:.2%} ({_describe_best(study, best)}); "
            f"config {out / 'best.yaml'}")
    log(f"results: {out / 'results.md'}, {out / 'results.csv'}, plots in {out / 'plots'}")
    return summary


def _describe_best(study: Study, t) -> str:
    return ", ".join(f"{k}={_fmt(decode(v))}" for k, v in t.params.items())
