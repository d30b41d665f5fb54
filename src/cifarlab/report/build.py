"""What a report says: the sections of one run's report, and of a comparison of several runs.

Everything comes from the run directory: config.yaml, environment.json, metrics.csv (the curves,
rewritten every epoch, so a report can be built mid-run), summary.json (final metrics, per class and
confusion, written by the trainer at the end) and best.pt (filters, model summary, misclassified
images). A section whose source is missing says so instead of failing the whole report.
"""
from __future__ import annotations

import contextlib
import json
import statistics
from pathlib import Path
from typing import Callable

import torch

from cifarlab.errors import UserError
from cifarlab.report import plots
from cifarlab.report.document import Image, Note, Report, Section, Table, write_report
from cifarlab.report.format import format_count, format_seconds, pct
from cifarlab.report.predict import load_model
from cifarlab.report.runs import COLUMNS, Run, find_runs, format_row, is_run_dir, load_run, run_row
from cifarlab.report.summary import layer_table, table_totals
from cifarlab.train.rundir import validated

MISCLASSIFIED = 24
UNFINISHED = "not available yet: the run has not finished (summary.json is written at its end)"


def _img(name: str, fig, caption: str) -> Image:
    return Image(name, plots.figure_to_png(fig), caption)


def _flatten(d: dict, prefix: str = "") -> list[list[str]]:
    rows = []
    for k, v in d.items():
        if isinstance(v, dict) and v:
            rows += _flatten(v, f"{prefix}{k}.")
        else:
            rows.append([f"{prefix}{k}", json.dumps(v) if isinstance(v, (list, dict, bool)) or v is None else str(v)])
    return rows


def _guarded(sid: str, title: str, make: Callable[[], list]) -> Section:
    """A section whose inputs (checkpoint, dataset) may be unavailable: the problem becomes its text."""
    try:
        return Section(sid, title, make())
    except UserError as err:
        return Section(sid, title, [Note(f"not available: {err}")])


# ------------------------------------------------------------------ one run

def _overview(run: Run) -> Section:
    s, best = run.summary or {}, run.best
    rows = [["run", run.name], ["directory", str(run.path)], ["status", run.status],
            ["model", run.setting("model.name")], ["dataset", run.setting("data.dataset")]]
    if s.get("parameters"):
        rows.append(["parameters", f"{s['parameters']:,}"])
    rows += [["epochs run", f"{s.get('epochs_run', len(run.metrics))} of {run.setting('train.epochs')}"],
             ["best epoch", s.get("best_epoch", best["epoch"] if best else "")],
             ["best validation accuracy", pct(s.get("best_val_accuracy", best["val_accuracy"] if best else None))]]
    if s.get("test"):
        rows += [["test accuracy (evaluated once, best weights)", pct(s["test"]["accuracy"])],
                 ["test macro F1", f"{s['test']['macro_f1']:.4f}"]]
    elif s:
        rows.append(["test accuracy", "no test split in this dataset"])
    if s.get("stopped_reason"):
        rows.append(["stopped because", s["stopped_reason"]])
    return Section("overview", "Overview", [Table(["", ""], rows)])


def _curves(run: Run) -> Section:
    best = run.best
    best_epoch = (run.summary or {}).get("best_epoch") or (best["epoch"] if best else None)
    fig = plots.plot_curves({run.name: run.metrics}, {run.name: best_epoch} if best_epoch else None)
    rows = [[r["epoch"], f"{r['train_loss']:.4f}", pct(r["train_accuracy"]), f"{r['val_loss']:.4f}" if validated(r) else "",
             pct(r["val_accuracy"]),
             f"{r['lr']:.3e}", f"{r['epoch_seconds']:.1f}", f"{r['images_per_second']:,.0f}"]
            for r in run.metrics]
    return Section("curves", "Training curves", [
        _img("curves", fig, f"train (dashed) and validation (solid) per epoch; best epoch {best_epoch} circled"),
        Table(["epoch", "train loss", "train acc", "val loss", "val acc", "lr", "seconds", "img/s"], rows,
              "every epoch (metrics.csv)", collapsed=len(rows) > 12)])


def _splits(run: Run) -> list[tuple[str, dict]]:
    s = run.summary or {}
    return [(name, s[name]) for name in ("val", "test") if s.get(name)]


def _metrics(run: Run) -> Section:
    splits = _splits(run)
    if not splits:
        return Section("metrics", "Final metrics", [Note(UNFINISHED)])
    rows = [[name, m["images"], pct(m["accuracy"]), f"{m['loss']:.4f}", f"{m['macro_f1']:.4f}"] for name, m in splits]
    return Section("metrics", "Final metrics", [
        Table(["split", "images", "accuracy", "loss", "macro F1"], rows),
        Note("With the best epoch's weights. The validation split chose that epoch, so its accuracy is optimistic; "
             "the test split (where the dataset has one) was evaluated once, at the end.")])


def _per_class(run: Run) -> Section:
    splits = _splits(run)
    if not splits:
        return Section("per-class", "Per-class accuracy", [Note(UNFINISHED)])
    classes = splits[0][1]["classes"]
    cols, rows = ["class"], [[c] for c in classes]
    for name, m in splits:
        cols += [f"{name} accuracy", f"{name} images"]
        for i, c in enumerate(classes):
            rows[i] += [pct(m["per_class_accuracy"][c]), sum(m["confusion_matrix"][i])]
    return Section("per-class", "Per-class accuracy", [Table(cols, rows)])


def _confusion(run: Run) -> Section:
    splits = _splits(run)
    if not splits:
        return Section("confusion", "Confusion matrix", [Note(UNFINISHED)])
    return Section("confusion", "Confusion matrix", [
        _img(f"confusion-{name}", plots.plot_confusion(m["confusion_matrix"], m["classes"], f"{name} split"),
             f"{name}: rows are the true class, columns the prediction; numbers are image counts")
        for name, m in splits])


def _misclassified(ckpt: dict, model, data) -> list:
    from cifarlab.train.evaluate import predict
    if data is None:
        from cifarlab.data.loader import PreparedData
        from cifarlab.schema import validate_config
        data = PreparedData(validate_config(ckpt["config"]).data, torch.device("cpu"))
    device = data.val.x.device
    logits, labels = predict(model.to(device), data.eval_batches(data.val, 500), device)
    conf, pred = logits.softmax(1).max(1)
    wrong = pred != labels
    order = conf.masked_fill(~wrong, -1.0).argsort(descending=True)[: min(MISCLASSIFIED, int(wrong.sum()))]
    if len(order) == 0:
        return [Note("no validation image is misclassified")]
    images = data.val.x[order.to(device)].cpu().permute(0, 2, 3, 1).float().div(255).numpy()  # raw pixels, not normalised
    classes = ckpt["classes"]
    titles = [f"{classes[labels[i]]} → {classes[pred[i]]}\n{conf[i]:.1%}" for i in order.tolist()]
    fig = plots.plot_image_grid(images, titles, cols=8)
    return [_img("misclassified", fig, f"the {len(order)} most confidently wrong of {int(wrong.sum())} misclassified "
                                       f"validation images ({len(labels)} in all): true → predicted, confidence")]


def _filters(ckpt: dict, model) -> list:
    spec = ckpt["model"]
    shape = (spec["in_channels"], spec["image_size"], spec["image_size"])
    first = next((m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))), None)
    if isinstance(first, torch.nn.Linear) and first.in_features != shape[0] * shape[1] * shape[2]:
        first = None
    if first is None:
        return [Note("the first layer is neither a convolution nor a linear layer on the pixels: nothing to draw")]
    w = first.weight.detach().cpu().numpy()
    images = plots.filters_as_images(w, shape)
    kind = f"{w.shape[-2]}x{w.shape[-1]} convolution filters" if w.ndim == 4 else "weights of units on the pixels"
    fig = plots.plot_image_grid(images, cols=16 if len(images) > 32 else 8, cell=0.7)
    return [_img("filters", fig, f"first layer: {len(images)} of {w.shape[0]} {kind}, each scaled to its own range")]


def _model_summary(ckpt: dict, model) -> list:
    spec = ckpt["model"]
    rows = layer_table(model, (spec["in_channels"], spec["image_size"], spec["image_size"]))
    tot = table_totals(rows, model)
    table = [[r["layer"], r["type"], "x".join(map(str, r["output_shape"])), f"{r['parameters']:,}", f"{r['macs']:,}"]
             for r in rows]
    return [Note(f"{spec['name']}: {tot['parameters']:,} parameters, {format_count(tot['macs'])} multiply-adds per "
                 f"{spec['in_channels']}x{spec['image_size']}x{spec['image_size']} image"),
            Table(["layer", "type", "output shape", "parameters", "multiply-adds"], table, "layers in call order",
                  collapsed=len(table) > 25)]


def _timing(run: Run) -> Section:
    s, env, m = run.summary or {}, run.environment, run.metrics
    secs = [r["epoch_seconds"] for r in m]
    ips = s.get("train_images_per_second") or (statistics.fmean(r["images_per_second"] for r in m) if m else None)
    rows = [["training images per second", f"{ips:,.0f}" if ips else ""],
            ["seconds per epoch (mean)", f"{statistics.fmean(secs):.1f}" if secs else ""],
            ["seconds per epoch (fastest, slowest)", f"{min(secs):.1f}, {max(secs):.1f}" if secs else ""],
            ["training time", format_seconds(s.get("train_seconds", sum(r["train_seconds"] for r in m)))]]
    if s.get("wall_seconds") is not None:
        rows.append(["wall time of the last session", format_seconds(s["wall_seconds"])])
    rows += [["device", f"{env.get('device', '')} {env.get('precision', '')}".strip()],
             ["hardware", env.get("gpu") or f"{env.get('cpu', '')}, {env.get('torch_threads', '?')} threads"]]
    return Section("timing", "Timing", [Table(["", ""], rows)])


def run_report(run: Run, data=None, trust_code: bool = False) -> Report:
    """The sections of one run's report; `data` (a PreparedData) saves rebuilding the validation split;
    `trust_code`: a model named `package.module:callable` may be imported (train.checkpoint)."""
    loaded: list = []

    def with_model(make):
        def go():
            if not loaded:
                loaded.extend(load_model(run.path / "best.pt", trust_code))
            return make(*loaded)
        return go

    sections = [_overview(run), _curves(run), _metrics(run), _per_class(run), _confusion(run),
                _guarded("misclassified", "Most confidently misclassified validation images",
                         with_model(lambda ckpt, model: _misclassified(ckpt, model, data))),
                _guarded("filters", "First-layer filters", with_model(_filters)),
                _guarded("model", "Model summary", with_model(_model_summary)),
                _timing(run),
                Section("config", "Configuration", [Table(["key", "value"], _flatten(run.config),
                                                          "config.yaml (re-run with `cifarlab train --config`)")]),
                Section("environment", "Environment", [Table(["key", "value"], _flatten(run.environment))])]
    return Report(f"{run.name}: {run.setting('model.name')} on {run.setting('data.dataset')}",
                  f"cifarlab run report, {run.status}", sections)


@contextlib.contextmanager
def _no_empty_folder_on_failure(out: str | Path | None):
    """A report that fails (a damaged run, a bad path) leaves no empty output folder behind: the caller may
    have created `out` just before (the CLI checks and creates it first). A folder that held anything when
    the report began, or holds anything now, stays as it is."""
    folder = Path(out) if out is not None else None
    was_empty = folder is not None and folder.is_dir() and not any(folder.iterdir())
    try:
        yield
    except BaseException:
        if was_empty and folder.is_dir() and not any(folder.iterdir()):
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def build_run_report(run_dir: str | Path, out: str | Path | None = None, data=None, trust_code: bool = False) -> Path:
    """Write RUN_DIR/report.html and report.md (or into `out`); returns the HTML path."""
    with _no_empty_folder_on_failure(out):
        run = load_run(run_dir)
        return write_report(run_report(run, data, trust_code), Path(out) if out else run.path)


# ------------------------------------------------------------------ several runs

def _labels(runs: list[Run]) -> list[str]:
    names = [r.path.name for r in runs]
    return [n if names.count(n) == 1 else f"{n} ({r.path.parent.name})" for n, r in zip(names, runs)]


def comparison_report(runs: list[Run]) -> Report:
    labels = _labels(runs)
    rows = [format_row(run_row(r)) for r in runs]
    overview = [[label] + [row[c] for c in COLUMNS[1:]] for label, row in zip(labels, rows)]
    sections = [Section("runs", "Runs", [Table(COLUMNS, overview)])]
    flat = [dict(_flatten(r.config)) for r in runs]
    keys = [k for k in dict.fromkeys(k for f in flat for k in f) if k not in ("name", "description")
            and len({f.get(k) for f in flat}) > 1]
    sections.append(Section("differences", "Configuration differences", [
        Table(["key"] + labels, [[k] + [f.get(k, "") for f in flat] for k in keys])] if keys else
        [Note("the runs share one configuration (apart from their names)")]))
    best = {label: r.best["epoch"] for label, r in zip(labels, runs) if r.best}
    sections.append(Section("curves", "Training curves", [
        _img("curves", plots.plot_curves({lb: r.metrics for lb, r in zip(labels, runs)}, best),
             "one colour per run: train dashed, validation solid, best epoch circled")]))
    finished = [(lb, r.summary["val"]) for lb, r in zip(labels, runs) if r.summary and r.summary.get("val")]
    classes = finished[0][1]["classes"] if finished else None
    if finished and all(v["classes"] == classes for _, v in finished):
        table = [[c] + [pct(v["per_class_accuracy"][c]) for _, v in finished] for c in classes]
        sections.append(Section("per-class", "Per-class validation accuracy",
                                [Table(["class"] + [lb for lb, _ in finished], table)]))
    sections.append(Section("significance", "Is the difference real?", [Note(
        "One run per configuration shows one draw of the seed. Repeat each configuration and test the "
        "difference with `cifarlab compare` (from the studies commands) before believing a gap of a point or two.")]))
    return Report(f"Comparison of {len(runs)} runs", "cifarlab comparison report", sections)


def collect_runs(paths: list[str | Path]) -> list[Run]:
    """Each path is a run directory, or a folder (a study) whose runs are all taken."""
    runs: list[Run] = []
    for p in map(Path, paths):
        if not p.exists():
            raise UserError(f"run directory '{p}' does not exist: check the path (`cifarlab runs` lists runs)")
        found = [load_run(p)] if is_run_dir(p) else [r for r in find_runs(p) if r.metrics]
        if not found:
            raise UserError(f"'{p}' holds no runs with metrics.csv: give run directories or a folder of runs")
        runs += found
    return runs


def build_comparison_report(paths: list[str | Path], out: str | Path) -> Path:
    with _no_empty_folder_on_failure(out):
        return write_report(comparison_report(collect_runs(paths)), Path(out))
