"""The end-of-run hook that writes a run's report: `train(cfg, out, callbacks=[WriteReport()])`.

`cifarlab train` (every path: new, --resume, --nproc) and study trials attach it; the trainer itself
knows nothing of reports. This module is light on purpose: matplotlib and the report's sections load
only when a run ends, not when the hook is made (the CLI makes it before training starts).
"""
from __future__ import annotations

from cifarlab.report.runs import figure_to_compare
from cifarlab.train.callbacks import Callback


class WriteReport(Callback):
    """report.html and report.md in the run directory once summary.json is written. The run is
    finished by then: a report that fails to build is a warning in the log, never a failed run.
    A module-level class with no state, so `--nproc` can pickle it to every process."""

    def on_fit_end(self, trainer, summary: dict) -> None:
        from cifarlab.report import build
        try:
            # the run has just built its model from its own config: importing it again trusts nothing new
            path = build.build_run_report(trainer.run.path, data=trainer.data, trust_code=True)
            trainer.log(f"report: {path}")
        except Exception as err:  # noqa: BLE001  (whatever it is, the run's results must stand)
            trainer.log(f"warning: the report could not be written ({type(err).__name__}: {str(err)[:200]}); "
                        f"rebuild it with `cifarlab report {trainer.run.path}`")


def train_and_report(cfg, out=None, log=print, progress: bool = False, callbacks=()) -> dict:
    """`train` as `cifarlab train` runs it, report included, for scripts and notebooks."""
    from cifarlab.train.entry import train
    return train(cfg, out, log=log, progress=progress, callbacks=[*callbacks, WriteReport()])


class CompareWithReported(Callback):
    """One line at the end of a run of a recipe that says what its seed report reached (`reported:`):
    the seed's figure beside this run's, and which split each was measured on."""

    def on_fit_end(self, trainer, summary: dict) -> None:
        line = reported_line(trainer.cfg.reported, summary)
        if line:
            trainer.log(line)


def reported_line(reported, summary: dict) -> str | None:
    """'seed 004: 55.0% (test, 10 epochs); this run: 48.6% best validation (epoch 10 of 10), -6.4 points'."""
    if reported is None or reported.accuracy is None or summary.get("best_val_accuracy") is None:
        return None
    source = reported.source or "the seed report"
    epochs = f", {reported.epochs} epochs" if reported.epochs else ""
    ours, split = figure_to_compare(reported.split, summary.get("best_val_accuracy"), summary.get("test_accuracy"))
    caveat = ("" if split.endswith(reported.split) else
              f" ({split}, not the {reported.split} split the figure was measured on: expect a point or so of difference)")
    return (f"{source}: {reported.accuracy:.1%} ({reported.split}{epochs}); this run: {ours:.1%} {split} "
            f"(epoch {summary.get('best_epoch')} of {summary.get('epochs_run')}), "
            f"{100 * (ours - reported.accuracy):+.1f} points{caveat}")
