"""The end-of-run hook that writes a run's report: `train(cfg, out, callbacks=[WriteReport()])`.

`cifarlab train` (every path: new, --resume, --nproc) and study trials attach it; the trainer itself
knows nothing of reports. This module is light on purpose: matplotlib and the report's sections load
only when a run ends, not when the hook is made (the CLI makes it before training starts).
"""
from __future__ import annotations

from cifarlab.train.callbacks import Callback


class WriteReport(Callback):
    """report.html and report.md in the run directory once summary.json is written. The run is
    finished by then: a report that fails to build is a warning in the log, never a failed run.
    A module-level class with no state, so `--nproc` can pickle it to every process."""

    def on_fit_end(self, trainer, summary: dict) -> None:
        from cifarlab.report import build
        try:
            path = build.build_run_report(trainer.run.path, data=trainer.data)
            trainer.log(f"report: {path}")
        except Exception as err:  # noqa: BLE001  (whatever it is, the run's results must stand)
            trainer.log(f"warning: the report could not be written ({type(err).__name__}: {str(err)[:200]}); "
                        f"rebuild it with `cifarlab report {trainer.run.path}`")


def train_and_report(cfg, out=None, log=print, progress: bool = False, callbacks=()) -> dict:
    """`train` as `cifarlab train` runs it, report included, for scripts and notebooks."""
    from cifarlab.train.trainer import train
    return train(cfg, out, log=log, progress=progress, callbacks=[*callbacks, WriteReport()])
