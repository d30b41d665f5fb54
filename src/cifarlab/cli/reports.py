"""CLI commands of the "Reports" issue: report, runs, summary, predict, export."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from cifarlab.cli.app import _say, app, emit_json, trust_code_option
from cifarlab.errors import UserError
from cifarlab.fileio import check_output_dir


@app.command()
def report(
    paths: List[Path] = typer.Argument(..., help="a run directory; or several runs / a study folder to compare"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="where to write report.html and report.md "
                                       "(default: the run directory; for a comparison runs/compare-TIME)"),
    trust_code: bool = trust_code_option("a run whose model"),
    as_json: bool = typer.Option(False, "--json"),
):
    """Build report.html (self-contained) and report.md for a run, or one comparison report for several."""
    from cifarlab.report.build import build_comparison_report, build_run_report
    from cifarlab.report.runs import is_run_dir, load_run
    from cifarlab.train.rundir import default_run_dir

    if len(paths) == 1 and is_run_dir(paths[0]):
        load_run(paths[0])  # a damaged run is refused before any output folder is made
        check_output_dir(out or paths[0], owner=paths[0])  # its own run, or a folder that is no other run's
        html = build_run_report(paths[0], out, trust_code=trust_code)
    else:
        html = build_comparison_report(paths, check_output_dir(out or default_run_dir("compare")))
    _say(as_json)(f"report: {html}")
    if as_json:
        emit_json({"html": str(html), "markdown": str(html.with_suffix(".md"))})


@app.command()
def runs(
    root: Path = typer.Argument(Path("runs"), help="the folder to search for runs (default runs/)"),
    sort: Optional[str] = typer.Option(None, "--sort", help="a column: run, model, optimizer, lr, batch_size, epochs, "
                                       "augment, best_val, test, vs_seed, time, status"),
    desc: bool = typer.Option(False, "--desc", help="sort descending (e.g. --sort best_val --desc: best first)"),
    filters: List[str] = typer.Option([], "--filter", help="KEY=VALUE, a column or config key: model=tutorial_cnn, "
                                      "train.batch_size=64 (repeat to combine)"),
    as_json: bool = typer.Option(False, "--json"),
    fmt: str = typer.Option("table", "--format", help="table | csv | markdown (to paste into a report)"),
):
    """A table of the runs below a folder: model, key hyperparameters, accuracies, epochs, time, status."""
    from cifarlab.report.format import text_table
    from cifarlab.report.runs import COLUMNS, FORMATS, find_runs, format_row, render_rows, select_rows

    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got '{fmt}'")
    rows = select_rows(find_runs(root), root, filters, sort, desc)
    if as_json:
        return emit_json(rows)
    if fmt != "table":
        return print(render_rows(rows, fmt), end="")
    if not rows:
        print(f"no runs below '{root}'" + (" match the filters" if filters else ""))
        return
    shown = [format_row(r) for r in rows]
    numeric = {COLUMNS.index(c) for c in ("lr", "batch_size", "epochs", "best_val", "test", "vs_seed", "time")}
    print(text_table(COLUMNS, [[r[c] for c in COLUMNS] for r in shown], right=numeric))


def _model_options(options: list[str]) -> dict:
    from cifarlab.config import parse_assignment
    out = {}
    for text in options:
        if "=" not in text:
            raise UserError(f"--option takes NAME=VALUE (e.g. --option width=32), got '{text}'")
        out.update([parse_assignment(text)])
    return out


@app.command()
def summary(
    model: Optional[str] = typer.Argument(None, help="a model name (see `cifarlab models`)"),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="summarise a trained checkpoint instead"),
    option: List[str] = typer.Option([], "--option", help="a model option NAME=VALUE (repeatable)"),
    num_classes: int = typer.Option(10, "--num-classes", min=1, max=100_000),
    in_channels: int = typer.Option(3, "--in-channels", min=1, max=64),
    image_size: int = typer.Option(32, "--image-size", min=1, max=1024),
    weights: bool = typer.Option(False, "--weights", help="also each parameter's shape, statistics and first values"),
    trust_code: bool = trust_code_option(),
    as_json: bool = typer.Option(False, "--json"),
):
    """The layer table of a model (output shapes, parameters, multiply-adds) without training."""
    from cifarlab.models import build_model
    from cifarlab.report.format import format_count, text_table
    from cifarlab.report.predict import load_model
    from cifarlab.report.summary import layer_table, table_totals, weight_stats

    if (model is None) == (checkpoint is None):
        raise UserError("give a model name or --checkpoint PATH (one of them)")
    if checkpoint is not None:
        ckpt, net = load_model(checkpoint, trust_code)
        spec = ckpt["model"]
        name, shape = spec["name"], (spec["in_channels"], spec["image_size"], spec["image_size"])
    else:
        net = build_model(model, num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                          **_model_options(option))
        name, shape = model, (in_channels, image_size, image_size)
    try:
        rows = layer_table(net, shape)
    except RuntimeError as err:  # e.g. an image size the architecture cannot shrink that far
        raise UserError(f"model '{name}' cannot run on {shape[0]}x{shape[1]}x{shape[2]} images "
                        f"({str(err).splitlines()[0][:120]}): try another --image-size") from None
    totals = table_totals(rows, net)
    stats = weight_stats(net) if weights else None
    if as_json:
        return emit_json({"model": name, "input": list(shape), "layers": rows, **totals,
                          **({"weights": stats} if stats else {})})
    print(text_table(["layer", "type", "output shape", "parameters", "multiply-adds"],
                     [[r["layer"], r["type"], "x".join(map(str, r["output_shape"])), f"{r['parameters']:,}",
                       f"{r['macs']:,}"] for r in rows], right={3, 4}))
    print(f"\n{name}: {totals['parameters']:,} parameters ({totals['trainable']:,} trainable), "
          f"{format_count(totals['macs'])} multiply-adds per {'x'.join(map(str, shape))} image")
    if stats:
        print()
        print(text_table(["parameter", "shape", "count", "mean", "std", "min", "max", "zeros", "first values"],
                         [[s["name"], "x".join(map(str, s["shape"])), f"{s['count']:,}", f"{s['mean']:+.4f}",
                           f"{s['std']:.4f}", f"{s['min']:+.4f}", f"{s['max']:+.4f}", f"{s['zeros']:.0%}",
                           " ".join(f"{v:+.4f}" for v in s["first"])] for s in stats], right={2, 3, 4, 5, 6, 7}))


@app.command()
def predict(
    images: List[Path] = typer.Argument(..., help="image files, or folders of them (any size; converted to RGB, "
                                        "fitted: shorter side resized, centre cropped)"),
    checkpoint: Path = typer.Option(..., "--checkpoint", help="a .pt file, or a run directory (its best.pt)"),
    top_k: int = typer.Option(3, "--top-k", min=1, max=100_000, help="how many classes to show per image"),
    tta: Optional[int] = typer.Option(None, "--tta", min=0, max=2, help="test-time augmentation level: 0 none, "
                                      "1 + mirror, 2 + mirror and 1-pixel shifts (default: the run's train.tta_level)"),
    trust_code: bool = trust_code_option(),
    as_json: bool = typer.Option(False, "--json"),
):
    """Classify image files (or every image in a folder) with a trained checkpoint: the top-k classes."""
    from cifarlab.report.predict import predict_files

    results = predict_files(checkpoint, images, top_k, tta, trust_code)
    say = _say(as_json)
    for r in results:
        say(f"{r['image']}: " + ", ".join(f"{t['class']} {t['probability']:.1%}" for t in r["top"]))
    if as_json:
        emit_json({"checkpoint": str(checkpoint), "predictions": results})


@app.command()
def export(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="a .pt file, or a run directory (its best.pt)"),
    fmt: str = typer.Option(..., "--format", help="onnx | torchscript"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="the file to write (default: beside the checkpoint)"),
    trust_code: bool = trust_code_option(),
    as_json: bool = typer.Option(False, "--json"),
):
    """Export a checkpoint to ONNX or TorchScript, then check it gives PyTorch's outputs."""
    from cifarlab.report.export import ATOL, export_checkpoint

    res = export_checkpoint(checkpoint, fmt, out, trust_code)
    say = _say(as_json)
    say(f"wrote {res['out']} ({res['format']}, {res['exporter']} exporter); input: {res['input']}")
    say(f"check: max abs difference to PyTorch on a batch of {res['checked_batch']}: {res['max_abs_diff']:.2e} "
        f"(tolerance {ATOL:g}) ok")
    if as_json:
        emit_json(res)
