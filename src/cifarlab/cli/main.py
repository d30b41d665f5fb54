"""The `cifarlab` command. Each command is a thin layer over the Python API.

Errors a user can cause (UserError, bad flags) print one line `cifarlab: error: ...` and exit 2;
a traceback means a bug in cifarlab.
"""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import List, Optional

import typer
from typer.exceptions import TyperException

from cifarlab.cli.app import _say, app, emit_json, trust_code_option  # noqa: F401  (one app shared by every command module)
from cifarlab.data.registry import spec_help
from cifarlab.errors import CifarlabWarning, Interrupted, InterruptedExit, UserError, short


@app.command()
def train(
    recipe: Optional[str] = typer.Option(None, "--recipe", "-r", help="a recipe shipped with cifarlab (see `cifarlab recipes`)"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="a YAML config file"),
    model: Optional[str] = typer.Option(None, help="model name (see `cifarlab models`)"),
    data: Optional[str] = typer.Option(None, help=spec_help()),
    epochs: Optional[int] = typer.Option(None, help="number of epochs (with --resume: the new total)"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b"),
    lr: Optional[float] = typer.Option(None, "--lr", help="base learning rate"),
    optimizer: Optional[str] = typer.Option(None, help="sgd | adam | adamw | rmsprop | muon"),
    schedule: Optional[str] = typer.Option(None, help="constant | step | multistep | cosine | onecycle"),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay"),
    seed: Optional[int] = typer.Option(None),
    val_size: Optional[float] = typer.Option(None, "--val-size", help="validation images: a count or a fraction"),
    time_limit: Optional[float] = typer.Option(None, "--time-limit", help="minutes of training time at most"),
    precision: Optional[str] = typer.Option(None, help="auto | bf16 | fp16 | fp32"),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda | cuda:N | mps"),
    threads: Optional[int] = typer.Option(None, help="CPU threads for torch"),
    set_: List[str] = typer.Option([], "--set", "-s", help="any config key: --set train.label_smoothing=0.1"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="the run directory (default runs/NAME-TIME)"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="continue (or extend) the run in this directory"),
    nproc: int = typer.Option(1, "--nproc", min=1, max=64, help="data-parallel processes on this machine (DDP: gloo on CPU, NCCL on GPU)"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as one JSON line at the end"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="a progress bar during each epoch (terminal only)"),
    tensorboard: bool = typer.Option(False, "--tensorboard", help="live curves: TensorBoard event files in RUN_DIR/tensorboard"),
    mlflow: Optional[str] = typer.Option(None, "--mlflow", help="log to this MLflow tracking URI (default: the config's "
                                         "track.mlflow, else $MLFLOW_TRACKING_URI); needs cifarlab[mlflow]"),
):
    """Train a model: a recipe or config file, plus overrides."""
    from cifarlab.config import combine_overrides, load_config
    from cifarlab.report.hooks import CompareWithReported, WriteReport
    from cifarlab.train.entry import resume as resume_run
    from cifarlab.train.entry import train as train_run

    given = {("model.name", "--model"): model, ("data.dataset", "--data"): data, ("train.epochs", "--epochs"): epochs,
             ("train.batch_size", "--batch-size"): batch_size, ("optimizer.lr", "--lr"): lr,
             ("optimizer.name", "--optimizer"): optimizer, ("schedule.name", "--schedule"): schedule,
             ("optimizer.weight_decay", "--weight-decay"): weight_decay, ("train.seed", "--seed"): seed,
             ("data.val_size", "--val-size"): val_size, ("train.time_limit_minutes", "--time-limit"): time_limit,
             ("train.precision", "--precision"): precision, ("train.device", "--device"): device,
             ("train.threads", "--threads"): threads}
    flags, names = {k: v for (k, _), v in given.items()}, dict(given.keys())
    overrides = combine_overrides(flags, set_, names)  # a flag and a --set that disagree are refused, not overruled
    say = _say(as_json)
    show_bar = progress and sys.stderr.isatty()
    # every run the CLI trains writes report.html and report.md at its end, and a recipe that
    # reproduces a seed report ends with one line comparing the two figures
    callbacks = [WriteReport(), CompareWithReported()]
    if tensorboard:
        if nproc > 1:
            raise UserError("--tensorboard works with --nproc 1 only: drop one of them")
        from cifarlab.report.live import TensorBoardCallback
        callbacks.append(TensorBoardCallback())
    from cifarlab.report.mlflow_hook import MlflowCallback
    tracker = MlflowCallback(mlflow)  # after the report, which it uploads; off unless a URI is given or configured
    callbacks.append(tracker)
    if resume is not None and (recipe or config or out):
        raise UserError("--resume continues a run with its own config: drop --recipe/--config/--out")
    try:
        if nproc > 1:
            summary = _train_processes(nproc, recipe, config, overrides, out, resume, show_bar, as_json, callbacks)
        elif resume is not None:
            summary = resume_run(resume, overrides, log=say, progress=show_bar, callbacks=callbacks)
        else:
            cfg = load_config(recipe, config, overrides)
            summary = train_run(cfg, out, log=say, progress=show_bar, callbacks=callbacks)
    except Interrupted as err:  # a KeyboardInterrupt too, which click would swallow into its own "Aborted"
        tracker.abort("KILLED")  # the MLflow run says so too
        raise InterruptedExit(str(err)) from None
    except BaseException:  # diverged, crashed: the MLflow run says so too
        tracker.abort("FAILED")
        raise
    if as_json:
        emit_json(summary)


def _train_processes(nproc, recipe, config, overrides, out, resume, progress, as_json, callbacks) -> dict:
    """Check everything here first (a bad flag should not cost N process starts), then spawn the ranks.
    The callbacks are pickled to every rank; end-of-run hooks run on rank 0 only."""
    from cifarlab.config import load_config
    from cifarlab.data.sources import load_dataset
    from cifarlab.train.distributed import launch
    from cifarlab.train.entry import process_entry
    from cifarlab.train.rundir import RunDir, default_run_dir

    if resume is not None:
        if not RunDir(resume).last.exists():
            raise UserError(f"'{resume}' holds no run to resume (no last.pt): check the path")
        from cifarlab.train.entry import read_run_config
        from cifarlab.train.resume_rules import apply_overrides
        apply_overrides(read_run_config(RunDir(resume)), overrides)  # refused here, not in N processes
        path, cfg_dict = Path(resume), None
    else:
        cfg = load_config(recipe, config, overrides)
        path, cfg_dict, overrides = Path(out or default_run_dir(cfg.name)), cfg.to_dict(), None
        if RunDir(path).holds_run():
            raise UserError(f"'{path}' already holds a run: continue it with --resume {path} or choose another --out")
        RunDir(path).check_new_folder()
        load_dataset(cfg.data.dataset, size=cfg.data.image_size)  # decode once here, not N times in parallel
    try:
        launch(nproc, process_entry, cfg_dict, str(path), overrides, progress, as_json, callbacks)
    except KeyboardInterrupt:  # the ranks got the Ctrl-C too and stopped at a whole checkpoint
        from cifarlab.train.entry import _epochs_on_disk
        raise Interrupted(path, _epochs_on_disk(RunDir(path))) from None
    return json.loads((path / "summary.json").read_text())


@app.command("find-batch-size")
def find_batch_size(
    recipe: Optional[str] = typer.Option(None, "--recipe", "-r"),
    config: Optional[Path] = typer.Option(None, "--config", "-c"),
    data: Optional[str] = typer.Option(None, help=spec_help()),
    set_: List[str] = typer.Option([], "--set", "-s", help="any config key: --set model.name=resnet18"),
    max_memory: Optional[str] = typer.Option(None, "--max-memory", help="memory budget, e.g. 4GiB (default: CUDA: the "
                                             "GPU's memory; CPU: this process's RAM plus what is available, less 10%)"),
    start: int = typer.Option(2, "--start", min=1, help="the first batch size to try (doubled from there)"),
    as_json: bool = typer.Option(False, "--json"),
):
    """The largest batch size whose training step fits in memory (doubling, then binary search)."""
    from cifarlab.config import combine_overrides, load_config
    from cifarlab.studies.batchfind import find_batch_size as run_find

    if not recipe and not config:
        raise UserError("give --recipe NAME or --config FILE: the model and data to size the batch for")
    overrides = combine_overrides({"data.dataset": data}, set_, {"data.dataset": "--data"})
    result = run_find(load_config(recipe, config, overrides), max_memory, start, log=_say(as_json))
    if as_json:
        emit_json(result)


@app.command("eval")
def evaluate(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="a .pt file, or a run directory (its best.pt)"),
    data: str = typer.Option(..., "--data", help="dataset spec, as for train"),
    split: str = typer.Option("auto", help="auto (test if the dataset has one, else all) | test | val | train | all"),
    batch_size: int = typer.Option(1000, "--batch-size", min=1),
    device: str = typer.Option("auto"),
    tta: Optional[int] = typer.Option(None, "--tta", min=0, max=2, help="test-time augmentation level: 0 none, "
                                      "1 + mirror, 2 + mirror and 1-pixel shifts (default: the run's train.tta_level)"),
    trust_code: bool = trust_code_option(),
    as_json: bool = typer.Option(False, "--json"),
):
    """Evaluate a checkpoint: accuracy, loss, per-class accuracy, macro F1, confusion matrix."""
    from cifarlab.train.evaluate import evaluate_checkpoint

    res = evaluate_checkpoint(str(checkpoint), data, split, batch_size, device, tta, trust_code)
    say = _say(as_json)
    say(f"{res['data']} [{res['split']}], {res['images']} images, TTA level {res['tta_level']}: accuracy {res['accuracy']:.2%}, "
        f"loss {res['loss']:.4f}, macro F1 {res['macro_f1']:.4f}")
    for c, a in res["per_class_accuracy"].items():
        say(f"  accuracy of {c:>12}: {a:6.2%}")
    if as_json:
        emit_json(res)


@app.command()
def models(as_json: bool = typer.Option(False, "--json")):
    """List the registered models with their parameter counts (at 10 classes, 3x32x32)."""
    from cifarlab.models import build_model, count_parameters, get_entry, model_names

    rows = []
    for name in model_names():
        e = get_entry(name)
        rows.append({"name": name, "family": e.family, "parameters": count_parameters(build_model(name)),
                     "summary": e.summary})
    if as_json:
        return emit_json(rows)
    w = max(len(r["name"]) for r in rows)
    for r in rows:
        print(f"{r['name']:<{w}}  {r['parameters']:>12,}  {r['family']:<12}  {r['summary']}")


@app.command()
def recipes(as_json: bool = typer.Option(False, "--json")):
    """List the recipes shipped with cifarlab (use one with `cifarlab train --recipe NAME`)."""
    from cifarlab.config import list_recipes, load_config

    rows = []
    for name in list_recipes():
        cfg = load_config(recipe=name)
        rep = cfg.reported
        rows.append({"name": name, "model": cfg.model.name, "data": cfg.data.dataset, "epochs": cfg.train.epochs,
                     "reported_accuracy": rep.accuracy if rep else None, "source": rep.source if rep else "",
                     "description": cfg.description})
    if as_json:
        return emit_json(rows)
    w = max(len(r["name"]) for r in rows)
    for r in rows:
        rep = f"{r['reported_accuracy']:.1%} ({r['source']})" if r["reported_accuracy"] else ""
        print(f"{r['name']:<{w}}  {r['model']:<14} {r['epochs']:>4} ep  {rep:<22} {r['description']}")


@app.command()
def keys(
    prefix: Optional[str] = typer.Argument(None, help="only the keys that start with this, e.g. train or data.augment"),
    recipe: Optional[str] = typer.Option(None, "--recipe", "-r", help="show the values of this recipe"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="show the values of this config file"),
    set_: List[str] = typer.Option([], "--set", "-s", help="an override, as for train"),
    as_yaml: bool = typer.Option(False, "--yaml", help="print the whole resolved config as the YAML train would run"),
    as_json: bool = typer.Option(False, "--json"),
):
    """Every config key with its type, value and meaning: the defaults, or a recipe's or file's with overrides."""
    from cifarlab.config import combine_overrides, get_key, load_config
    from cifarlab.schema import config_keys

    if as_yaml and as_json:
        raise UserError("give --yaml or --json, not both")
    cfg = load_config(recipe, config, combine_overrides({}, set_))
    values = cfg.to_dict()
    rows = [{**k, "value": get_key(values, k["key"])} for k in config_keys()
            if not prefix or k["key"] == prefix or k["key"].startswith(prefix.rstrip(".") + ".")]
    if not rows:
        raise UserError(f"no config key starts with '{prefix}': `cifarlab keys` lists them all")
    if as_yaml:  # the whole config, or the part under PREFIX nested as in a config file
        import yaml
        part = values
        if prefix:
            *above, last = prefix.rstrip(".").split(".")
            part = {last: get_key(values, prefix.rstrip("."))}
            for name in reversed(above):
                part = {name: part}
        return print(yaml.safe_dump(part, sort_keys=False), end="")
    if as_json:
        return emit_json(rows)
    for r in rows:
        section = r["key"].rsplit(".", 1)[0]
        if r["value"] is None and "." in r["key"] and get_key(values, section) is None:  # e.g. train.ema: null
            value = f"(off: {section} is null; " + ("required" if r["required"] else f"default {json.dumps(r['default'])}") + ")"
        else:
            value = json.dumps(r["value"])
        print(f"{r['key']} = {value}  [{r['type']}]" + (f"  {r['description']}" if r["description"] else ""))


# Their commands register on the shared `app` (cli/app.py); they import app.py, never this module, so
# `python -m cifarlab.cli.main` (where this module is __main__) lists every command too.
from cifarlab.cli import reports, studies  # noqa: E402,F401

# Libraries whose warnings (torch's pickle-protocol and non-writable-array notes, numpy's, the exporters')
# speak of their internals, not of anything the user gave: the CLI keeps them off the terminal.
_QUIET_ORIGINS = ("torch", "numpy", "kornia", "PIL", "onnx", "onnxruntime", "onnxscript", "optuna", "sqlalchemy",
                  "matplotlib", "pydantic", "typer", "click", "yaml")


def _third_party(filename: str) -> bool:
    parts = Path(str(filename)).parts
    return any(p in ("site-packages", "dist-packages") for p in parts) or any(p in _QUIET_ORIGINS for p in parts)


def _show_warning(message, category, filename, lineno, file=None, line=None, _default=warnings.showwarning):
    if issubclass(category, CifarlabWarning):  # ours: one line, like errors
        print(f"cifarlab: warning: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
    elif _third_party(filename):  # a library's note about its internals: not the user's business
        return
    else:
        _default(message, category, filename, lineno, file, line)


def _fail(message: str, code: int, as_json: bool, prefix: str = "cifarlab: error: ") -> int:
    """The one line of a failure on stderr; with --json also the last stdout line {"error", "exit_code"}."""
    text = " ".join(str(message).split())
    print(f"{prefix}{text}", file=sys.stderr, flush=True)
    if as_json:
        emit_json({"error": text, "exit_code": code})
    return code


def run(argv: list[str] | None = None) -> int:
    """Entry point: every user error becomes one line on stderr and exit code 2 (with --json, also a last
    stdout line {"error": ..., "exit_code": ...}); Ctrl-C is one line and exit code 130."""
    args = sys.argv[1:] if argv is None else list(argv)
    as_json = "--json" in args[: args.index("--")] if "--" in args else "--json" in args
    warnings.showwarning = _show_warning
    interrupted = "interrupted; checkpoints written so far are kept (continue with --resume)"
    try:
        code = app(args=args or ["--help"], prog_name="cifarlab", standalone_mode=False)
        if isinstance(code, int) and code == 130:  # typer turns Ctrl-C into a returned 130, not an exception
            return _fail(interrupted, 130, as_json, "cifarlab: ")
        if isinstance(code, int) and code:
            return code
    except (Interrupted, InterruptedExit) as err:  # names the run directory and the --resume command
        return _fail(str(err), err.exit_code, as_json, "cifarlab: ")
    except UserError as err:
        return _fail(str(err), err.exit_code, as_json)
    except typer.Exit as err:
        return err.exit_code
    except typer.Abort:
        return _fail("interrupted", 130, as_json, "cifarlab: ")
    except TyperException as err:  # typer's (vendored click) usage errors: unknown flag, bad value
        if type(err).__name__ == "NoArgsIsHelpError":
            return 0
        ctx = getattr(err, "ctx", None)
        where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        msg = err.format_message() if hasattr(err, "format_message") else str(err)
        return _fail(f"{short(' '.join(msg.split()), 400, plain=True)}{where}", 2, as_json)
    except KeyboardInterrupt:
        return _fail(interrupted, 130, as_json, "cifarlab: ")
    return 0


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
