"""cifarlab: define, train, evaluate, sweep, repeat and report image-classification experiments.

The library in a few calls (heavy modules load on first use, so `import cifarlab` is instant):

    import cifarlab
    result = cifarlab.train(recipe="quickstart", overrides={"train.epochs": 5})
    result.best_val_accuracy, result.test_accuracy, result.run_dir, result.metrics[-1]

Overrides are always one dict of dotted config keys, as `--set` takes them on the command line:
`overrides={"train.epochs": 5, "optimizer.lr": 0.02, "data.augment.flip": True}`.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    import torch.nn as nn

    from cifarlab.schema import ExperimentConfig

__all__ = ["RunResult", "train", "evaluate", "build_model", "list_models", "register_model", "load_config",
           "sweep", "find_batch_size", "__version__"]


@dataclass
class RunResult:
    """What a training run left: its figures and where its files are (summary.json, metrics.csv, report.html)."""
    run_dir: Path
    summary: dict
    metrics: list[dict] = field(default_factory=list)  # the rows of metrics.csv, one per epoch

    @property
    def best_val_accuracy(self) -> float | None:
        return self.summary.get("best_val_accuracy")

    @property
    def test_accuracy(self) -> float | None:
        return self.summary.get("test_accuracy")

    @property
    def best_epoch(self) -> int | None:
        return self.summary.get("best_epoch")

    @property
    def report(self) -> Path | None:
        """report.html, when the run wrote one (train(..., report=True))."""
        path = self.run_dir / "report.html"
        return path if path.is_file() else None

    def __repr__(self) -> str:
        test = "none" if self.test_accuracy is None else f"{self.test_accuracy:.2%}"
        return (f"RunResult(best_val_accuracy={self.best_val_accuracy:.2%}, test_accuracy={test}, "
                f"epochs={len(self.metrics)}, run_dir='{self.run_dir}')")


def _in_notebook() -> bool:
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def load_config(recipe: str | None = None, config: str | Path | Mapping | None = None,
                overrides: Mapping[str, Any] | None = None) -> "ExperimentConfig":
    """A validated config: a shipped recipe name, or a YAML file / a dict (raw config), then `overrides`
    (dotted keys: {"train.epochs": 5}). A wrong key or value raises cifarlab.errors.UserError, one line."""
    from cifarlab import config as c

    if isinstance(config, Mapping):
        if recipe:
            raise c.UserError("give either recipe or config, not both")
        raw = c._resolve_extends(dict(config))
        raw.setdefault("name", "run")
        for key, value in (overrides or {}).items():
            c.set_key(raw, key, value, merge=True)
        return c.validate_config(raw)
    return c.load_config(recipe, config, dict(overrides or {}))


def _config(recipe, config, overrides) -> "ExperimentConfig":
    from cifarlab.schema import ExperimentConfig

    if isinstance(config, ExperimentConfig):
        if overrides:
            return load_config(config=config.to_dict(), overrides=overrides)
        return config
    return load_config(recipe, config, overrides)


def _train(recipe: str | None = None, config: "str | Path | Mapping | ExperimentConfig | None" = None,
          out: str | Path | None = None, report: bool = True, overrides: Mapping[str, Any] | None = None, *,
          mlflow: str | None = None, progress: bool | None = None, callbacks: Sequence[Any] = (),
          log: Callable[[str], None] | None = print) -> RunResult:
    """Train a recipe or config (plus `overrides`, dotted keys) into a new run directory (`out`, default
    runs/NAME-TIME) and return its RunResult.

    report: write report.html/report.md at the end, as `cifarlab train` does. mlflow: a tracking URI (else
    the config's track.mlflow, else $MLFLOW_TRACKING_URI). progress: a per-epoch progress bar; by default
    on in a terminal and in Jupyter. callbacks: more trainer callbacks (cifarlab.train.callbacks.Callback).
    log: where the epoch lines go (None: nowhere; they are in RUN_DIR/train.log anyway)."""
    from cifarlab.report.mlflow_hook import MlflowCallback
    from cifarlab.train.entry import train as train_run

    cfg = _config(recipe, config, overrides)
    hooks = [*callbacks]
    if report:
        from cifarlab.report.hooks import WriteReport
        hooks.insert(0, WriteReport())
    tracker = MlflowCallback(mlflow)
    hooks.append(tracker)
    if progress is None:
        progress = sys.stderr.isatty() or _in_notebook()  # rich renders its bar in Jupyter too
    try:
        summary = train_run(cfg, out, log=log or (lambda _line: None), progress=progress, callbacks=hooks)
    except BaseException as err:
        tracker.abort("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    return _result(summary)


def _result(summary: dict) -> RunResult:
    from cifarlab.train.rundir import RunDir, read_metrics

    run = RunDir(summary["run_dir"])
    return RunResult(run.path, summary, read_metrics(run.metrics) if run.metrics.is_file() else [])


def evaluate(checkpoint: str | Path | RunResult, data: str = "sample", split: str = "auto", batch_size: int = 1000,
             device: str = "auto", tta: int | bool | None = None, trust_code: bool = False) -> dict:
    """Evaluate a checkpoint (a .pt file, a run directory, or a RunResult) on a dataset spec ("cifar10",
    "folder:PATH", ...): {"accuracy", "loss", "macro_f1", "per_class_accuracy", "confusion_matrix", ...}.
    split: auto (test if the dataset has one, else all images) | test | val | train | all.
    tta: the test-time augmentation level (0 none, 1 + mirror, 2 + 1-pixel shifts; True is 1, False 0);
    default: the level the checkpoint's run validated with, as `cifarlab eval`.
    trust_code: allow a checkpoint whose model is `package.module:callable` (your own code) to import it."""
    from cifarlab.train.evaluate import evaluate_checkpoint

    path = checkpoint.run_dir if isinstance(checkpoint, RunResult) else checkpoint
    level = int(tta) if isinstance(tta, bool) else tta
    return evaluate_checkpoint(str(path), data, split, batch_size, device, level, trust_code)


def build_model(name: str, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, **options) -> "nn.Module":
    """A model of the zoo (or `package.module:callable`) with its options, e.g. build_model("resnet18", width=32)."""
    from cifarlab.models import build_model as build

    return build(name, num_classes=num_classes, in_channels=in_channels, image_size=image_size, **options)


def list_models() -> list[str]:
    """The registered model names (`cifarlab models` shows them with parameter counts)."""
    from cifarlab.models import model_names

    return model_names()


def register_model(name: str | None = None, family: str = "user") -> Callable:
    """Decorator registering your own factory or nn.Module class under `name`, trainable by config
    (`model: {name: NAME, options: {...}}`) in this process:

        @cifarlab.register_model("my_net")
        def my_net(num_classes=10, in_channels=3, image_size=32, width=64): ...

    It is called with num_classes, in_channels and image_size (those it accepts) and the config's options.
    For other processes (`--nproc`, sweep `--jobs`), name it `package.module:callable` in the config instead."""
    import cifarlab.models  # noqa: F401  (the built-ins first, so a clash with one is refused)
    from cifarlab.models.registry import register_model as register

    return register(name, family)


def sweep(study: str | Path | Mapping, out: str | Path | None = None, storage: str | None = None, jobs: int = 1,
          overrides: Mapping[str, Any] | None = None, mlflow: str | None = None,
          log: Callable[[str], None] = print) -> dict:
    """Run (or continue) a study: a study YAML file, a preset name, or the same as a dict. `overrides` set base
    config keys for every trial. Returns the study summary (results table paths, best trial, ...)."""
    from cifarlab.studies.runner import sweep as run_sweep
    from cifarlab.studies.space import build_study, read_study_file

    if isinstance(study, Mapping):
        s = build_study(dict(study), "study", overrides=dict(overrides or {}))
    else:
        s = read_study_file(str(study), dict(overrides or {}))
    return run_sweep(s, Path(out) if out else Path("studies") / s.name, storage, jobs, log=log, mlflow=mlflow)


def find_batch_size(recipe: str | None = None, config: "str | Path | Mapping | ExperimentConfig | None" = None,
                    overrides: Mapping[str, Any] | None = None, max_memory: str | int | None = None, start: int = 2,
                    max_trials: int = 25, log: Callable[[str], None] = print) -> dict:
    """The largest batch size whose training step fits in memory (CUDA: the GPU; CPU: the available RAM, or
    `max_memory` such as "4GiB"). Returns {"batch_size", "peak_bytes", "budget_bytes", "trials", ...}."""
    from cifarlab.studies.batchfind import find_batch_size as run_find

    return run_find(_config(recipe, config, overrides), max_memory, start, max_trials, log=log)


# `cifarlab.train` is also the subpackage cifarlab/train/ (the trainer): importing any of its modules binds
# that name on this package. So the subpackage itself is made callable as the function above; every import
# path (`cifarlab.train.trainer`, `from cifarlab.train import callbacks`) stays what it was. Its
# __init__ is empty: importing it here costs nothing.
import inspect as _inspect  # noqa: E402
import types as _types  # noqa: E402

from cifarlab import train as _train_package  # noqa: E402


class _CallablePackage(_types.ModuleType):
    def __call__(self, *args, **kwargs) -> RunResult:
        return _train(*args, **kwargs)


_train_package.__class__ = _CallablePackage
_train_package.__doc__ = _train.__doc__
_train_package.__signature__ = _inspect.signature(_train)
train = _train_package
