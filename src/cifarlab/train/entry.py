"""The ways into training: train a config into a new run directory, resume one, and what each
process of `cifarlab train --nproc N` runs. The loop itself is `Trainer.fit` (train/trainer.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import yaml

from cifarlab.config import load_yaml
from cifarlab.errors import Interrupted, UserError, short
from cifarlab.schema import ExperimentConfig, validate_config
from cifarlab.train.callbacks import CallbackLike
from cifarlab.train.checkpoint import check_resume_state, load_checkpoint
from cifarlab.train.distributed import from_env
from cifarlab.train.resume_rules import apply_overrides, record_changes
from cifarlab.train.rundir import RunDir, default_run_dir
from cifarlab.train.runtime import resolve_device
from cifarlab.train.trainer import Trainer


def train(cfg: ExperimentConfig, out: str | Path | None = None, log: Callable[[str], None] = print,
          progress: bool = False, callbacks: Sequence[CallbackLike] = ()) -> dict:
    """Train a config into a new run directory; returns the summary (also in summary.json).

    `callbacks`: `Callback` objects (train/callbacks.py) or plain `fn(trainer, row)` epoch functions.
    By default none: the run directory gets checkpoints, metrics.csv and summary.json only, so a script
    or sweep pays for no plots it did not ask for. `cifarlab train` attaches `WriteReport()` (the run's
    HTML and Markdown summary, defined a layer above train/); pass it here to get the same.

    Under torchrun (or `--nproc`) every process calls this; rank 0 alone writes and returns the summary."""
    dist = from_env(resolve_device(cfg.train.device).type)
    run = RunDir(dist.broadcast(str(out or default_run_dir(cfg.name))))
    created = not run.path.exists()
    try:
        if dist.is_main:
            run.open(new=True)
        trainer = Trainer(cfg, run, log, progress, callbacks=callbacks, dist=dist)
    except UserError:
        run.close()
        if created and dist.is_main:  # refused before anything was written: leave no empty run directory
            run.discard_if_empty()
        raise
    try:
        summary = trainer.fit()
        dist.barrier()  # rank 0 evaluates and runs the end-of-run hooks while the others wait
        return summary
    except KeyboardInterrupt:  # every checkpoint is whole: say where the run is and how to go on
        raise Interrupted(run.path, trainer.saved_epoch) from None
    finally:
        run.close()


def resume(run_dir: str | Path, overrides: dict | None = None, log: Callable[[str], None] = print,
           progress: bool = False, callbacks: Sequence[CallbackLike] = ()) -> dict:
    """Continue an interrupted run exactly, or extend a finished one (`overrides={"train.epochs": N}`).
    `callbacks` as for `train` (none by default)."""
    run = RunDir(run_dir)
    if not run.last.exists():
        raise UserError(f"'{run.path}' holds no run to resume (no last.pt): check the path")
    trainer = None
    try:
        raw = read_run_config(run)
        cfg, changed = apply_overrides(raw, overrides)  # refuses what resume cannot honour, before the lock
        dist = from_env(resolve_device(cfg.train.device).type)
        if dist.is_main:
            run.open(new=False)
        state = load_checkpoint(run.last)
        check_resume_state(state, run.last)
        cfg, changed = apply_overrides(raw, overrides, epochs_done=state["epoch"])
        # a run killed after its last epoch but before its summary resumes into the final evaluation;
        # a finished one only by more epochs (a new thread count or time limit alone would just redo its summary)
        if state["epoch"] >= cfg.train.epochs and "train.epochs" not in changed and run.summary.exists():
            raise UserError(f"run '{run.path}' already finished its {cfg.train.epochs} epochs: "
                            "extend it with --resume DIR --epochs N (N > the epochs done)")
        if state["best"]["epoch"] >= 1 and not run.best.is_file():  # its final evaluation needs that epoch's weights
            raise UserError(f"run '{run.path}' has lost its best.pt (the weights of its best epoch, "
                            f"{state['best']['epoch']}), so it cannot finish: start a new run (--out)")
        trainer = Trainer(cfg, run, log, progress, state, callbacks, dist)
        if dist.is_main:
            record_changes(run.path, changed, state["epoch"])
        summary = trainer.fit()
        dist.barrier()  # rank 0 evaluates and runs the end-of-run hooks while the others wait
        return summary
    except KeyboardInterrupt:
        raise Interrupted(run.path, trainer.saved_epoch if trainer is not None else _epochs_on_disk(run)) from None
    finally:
        run.close()


def read_run_config(run: RunDir) -> dict:
    """A run's config.yaml as a raw mapping (through the bounded YAML loader); damage is one line."""
    try:
        raw = load_yaml(run.config.read_text(), f"'{run.config}'")
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise UserError(f"cannot read '{run.config}' ({short(err, 120, plain=True)}): the run directory is damaged") from None
    if not isinstance(raw, dict):
        raise UserError(f"'{run.config}' holds no config mapping: the run directory is damaged")
    return raw


def _epochs_on_disk(run: RunDir) -> int:
    try:
        return max(0, len(run.metrics.read_text().splitlines()) - 1)
    except OSError:
        return 0


def process_entry(cfg_dict: dict | None, out: str, overrides: dict | None, progress: bool, log_to_stderr: bool,
                  callbacks: Sequence[CallbackLike] = ()) -> None:
    """What each process of `cifarlab train --nproc N` runs (a module-level function, so it can be spawned).
    `callbacks` travel to every process by pickle: give instances of module-level classes."""
    import sys
    stream = sys.stderr if log_to_stderr else sys.stdout
    log = lambda line: print(line, file=stream, flush=True)  # noqa: E731
    if cfg_dict is None:
        resume(out, overrides, log=log, progress=progress, callbacks=callbacks)
    else:
        train(validate_config(cfg_dict), out, log=log, progress=progress, callbacks=callbacks)
