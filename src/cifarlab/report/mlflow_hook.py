"""MLflow tracking as a trainer callback: the run directory stays the record, MLflow gets a copy.

`cifarlab train --mlflow URI` (or `track.mlflow: URI` in a config, or $MLFLOW_TRACKING_URI) logs one
MLflow run per training run: the resolved config as params (dotted keys), every epoch's metrics at
step = epoch, the final validation/test metrics, tags (recipe, model, seed, cifarlab version,
machine, run dir) and config.yaml, summary.json, report.html (optionally the checkpoints) as
artifacts. A study logs one parent run and each trained run as its child (`start_study` below).

Tracking is a guest: a server that is down or refuses a write gives one warning line in the run's
log and training goes on untouched. Under `--nproc` only rank 0 logs. `mlflow` is optional
(`pip install 'cifarlab[mlflow]'`) and imported only when a run is tracked.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import platform
from pathlib import Path

from cifarlab.errors import UserError, short
from cifarlab.schema import check_tracking_uri
from cifarlab.train.callbacks import Callback

EXTRA = "pip install 'cifarlab[mlflow]'"
FINAL = ("best_val_accuracy", "best_epoch", "epochs_run", "test_accuracy", "test_loss", "train_images_per_second",
         "train_seconds", "wall_seconds")
ARTIFACTS = ("config.yaml", "summary.json", "report.html", "report.md", "metrics.csv")


def require_mlflow(flag: str = "--mlflow") -> None:
    if importlib.util.find_spec("mlflow") is None:
        raise UserError(f"{flag} needs the mlflow package, which is not installed: {EXTRA}")


def checked_uri(uri: str | None, where: str = "--mlflow") -> str | None:
    """`uri` if MLflow has a store for its scheme, else a one-line UserError naming where it came from."""
    try:
        return check_tracking_uri(uri)
    except ValueError as err:
        raise UserError(f"{where} {short(uri, 120)}: {err}") from None


def resolve_uri(explicit: str | None = None, configured: str | None = None) -> str | None:
    """The tracking URI in force: the command line's, else the config's, else $MLFLOW_TRACKING_URI."""
    return explicit or configured or os.environ.get("MLFLOW_TRACKING_URI") or None


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    """{"train": {"epochs": 5}} -> {"train.epochs": "5"} (lists and None as text, as MLflow params are)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)[:6000]
    return out


def _quiet_http() -> None:
    """Fail fast and quietly: a few short retries (not MLflow's minutes of backoff), no urllib3 retry lines."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    for name in ("urllib3.connectionpool", "mlflow.utils.rest_utils", "mlflow.tracking._tracking_service.client",
                 "mlflow.store.db.utils", "alembic"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _probe(uri: str) -> None:
    """An HTTP server that is down fails here in seconds, before any retrying client call."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.request
    with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as r:  # noqa: S310 (the user's server)
        r.read()


def client(uri: str):
    _quiet_http()
    if uri.startswith("file:") or "://" not in uri:
        # MLflow 3 keeps its file store in maintenance mode behind this switch; a user who names one wants it
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    _probe(uri)
    from mlflow.tracking import MlflowClient
    return MlflowClient(tracking_uri=uri)


def experiment_id(c, name: str) -> str:
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return c.create_experiment(name)
    except Exception:  # created meanwhile by another worker
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def _version() -> str:
    from cifarlab import __version__
    return __version__


def _short(err: Exception) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"


class MlflowCallback(Callback):
    """Log a run to MLflow. `uri=None`: the config's `track.mlflow`, else $MLFLOW_TRACKING_URI, else off.

    Holds only strings until the first event, so `--nproc` can pickle it to every process; only the
    main process (rank 0) ever talks to the server."""

    def __init__(self, uri: str | None = None, experiment: str | None = None, parent_run_id: str | None = None,
                 log_checkpoints: bool | None = None, tags: dict | None = None, run_name: str | None = None):
        if uri:
            require_mlflow()
        checked_uri(uri)  # here, not at the first epoch's end where tracking would just stop with a warning
        checked_uri(None if uri else os.environ.get("MLFLOW_TRACKING_URI"), "$MLFLOW_TRACKING_URI")
        self.uri, self.experiment, self.parent_run_id = uri, experiment, parent_run_id
        self.log_checkpoints, self.tags, self.run_name = log_checkpoints, dict(tags or {}), run_name
        self.run_id: str | None = None
        self._client = None
        self._off = False  # nothing to track, or tracking failed once (and said so)
        self._ended = False

    def __getstate__(self):  # a live client does not travel to other processes
        return {**self.__dict__, "_client": None}

    # ------------------------------------------------------------------ events
    def on_epoch_end(self, trainer, row: dict) -> None:
        if not self._active(trainer):
            return
        self._guard(trainer, lambda: self._log_epoch(row))

    def on_fit_end(self, trainer, summary: dict) -> None:
        if not self._active(trainer):
            return
        self._guard(trainer, lambda: self._log_end(trainer, summary))

    def abort(self, status: str = "FAILED") -> None:
        """The run stopped with an exception (diverged, pruned, interrupted): close the MLflow run so."""
        if self.run_id is None or self._ended or self._client is None:
            return
        try:
            self._client.set_terminated(self.run_id, status)
        except Exception:  # noqa: BLE001  (the run's own error is what the user must see)
            pass
        self._ended = True

    # ------------------------------------------------------------------ internals
    def _active(self, trainer) -> bool:
        if self._off or not getattr(getattr(trainer, "dist", None), "is_main", True):
            return False  # under DDP every rank sees the same rows; rank 0 logs them
        if self._client is None and self.run_id is None:
            track = getattr(trainer.cfg, "track", None)
            self.uri = resolve_uri(self.uri, getattr(track, "mlflow", None))
            if not self.uri:
                self._off = True
                return False
            if importlib.util.find_spec("mlflow") is None:
                self._warn(trainer, f"mlflow is not installed ({EXTRA})")
                return False
            return self._guard(trainer, lambda: self._start(trainer))
        return self._client is not None

    def _guard(self, trainer, fn) -> bool:
        try:
            fn()
            return True
        except Exception as err:  # noqa: BLE001  (tracking must never cost the run)
            self._warn(trainer, _short(err))
            return False

    def _warn(self, trainer, why: str) -> None:
        self._off = True
        trainer.log(f"warning: MLflow tracking to {self.uri} stopped ({why}); training goes on and "
                    f"the run directory {trainer.run.path} keeps everything")

    def _start(self, trainer) -> None:
        cfg = trainer.cfg
        track = getattr(cfg, "track", None)
        if self.log_checkpoints is None:
            self.log_checkpoints = bool(getattr(track, "log_checkpoints", False))
        c = client(self.uri)
        exp = experiment_id(c, self.experiment or getattr(track, "experiment", None) or cfg.name)
        tags = {"cifarlab.recipe": cfg.name, "cifarlab.model": cfg.model.name, "cifarlab.seed": str(cfg.train.seed),
                "cifarlab.version": _version(), "cifarlab.machine": platform.node(),
                "cifarlab.run_dir": str(Path(trainer.run.path).resolve()), "mlflow.source.name": "cifarlab",
                **{k: str(v) for k, v in self.tags.items()}}
        if self.parent_run_id:
            tags["mlflow.parentRunId"] = self.parent_run_id
        previous = _previous_run(trainer.run.path)
        if previous:  # --resume: continue the same MLflow run
            self.run_id = previous
            c.update_run(previous, status="RUNNING")
        else:
            run = c.create_run(exp, tags=tags, run_name=self.run_name or Path(trainer.run.path).name)
            self.run_id = run.info.run_id
            _remember_run(trainer.run.path, self.run_id)
            from mlflow.entities import Param
            params = [Param(k, v) for k, v in flatten(cfg.to_dict()).items()]
            for i in range(0, len(params), 100):
                c.log_batch(self.run_id, params=params[i:i + 100])
        self._client = c
        trainer.log(f"mlflow: run {self.run_id} at {self.uri}")

    def _log_epoch(self, row: dict) -> None:
        import time

        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, int(row["epoch"])) for k, v in row.items()
                   if k != "epoch" and isinstance(v, (int, float)) and v == v]  # NaN: not validated
        self._client.log_batch(self.run_id, metrics=metrics)

    def _log_end(self, trainer, summary: dict) -> None:
        import time

        from mlflow.entities import Metric
        now, step = int(time.time() * 1000), int(summary.get("epochs_run") or 0)
        final = {k: summary[k] for k in FINAL if isinstance(summary.get(k), (int, float))}
        for split in ("val", "test"):
            for k in ("accuracy", "loss", "macro_f1"):
                if isinstance((summary.get(split) or {}).get(k), (int, float)):
                    final[f"final_{split}_{k}"] = summary[split][k]
        self._client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in final.items()])
        self._client.set_tag(self.run_id, "cifarlab.status", str(summary.get("status")))
        path = Path(trainer.run.path)
        names = list(ARTIFACTS) + (["best.pt", "last.pt"] if self.log_checkpoints else [])
        for name in names:
            if (path / name).is_file():
                self._client.log_artifact(self.run_id, str(path / name))
        self._client.set_terminated(self.run_id, "FINISHED")
        self._ended = True


def _previous_run(path) -> str | None:
    f = Path(path) / "mlflow_run_id"
    try:
        return f.read_text().strip() or None
    except OSError:
        return None


def _remember_run(path, run_id: str) -> None:
    try:
        (Path(path) / "mlflow_run_id").write_text(run_id + "\n")
    except OSError:
        pass


# ---------------------------------------------------------------------- studies: a parent run

def start_study(uri: str | None, experiment: str | None, name: str, kind: str, stored: dict | None,
                log=print) -> dict | None:
    """The parent run of a study (created, or the stored one when a study continues): {"uri", "experiment",
    "parent_run_id"} for its trials, or None when nothing is tracked or the server is unreachable."""
    if not uri:
        return None
    require_mlflow()
    exp_name = experiment or name
    if stored and stored.get("uri") == uri and stored.get("parent_run_id"):
        try:
            client(uri).update_run(stored["parent_run_id"], status="RUNNING")
        except Exception:  # noqa: BLE001
            pass
        return stored
    try:
        c = client(uri)
        run = c.create_run(experiment_id(c, exp_name), run_name=name,
                           tags={"cifarlab.kind": kind, "cifarlab.study": name, "cifarlab.version": _version(),
                                 "cifarlab.machine": platform.node(), "mlflow.source.name": "cifarlab"})
    except Exception as err:  # noqa: BLE001
        log(f"warning: MLflow tracking to {uri} is off for this study ({_short(err)}); the study goes on")
        return None
    log(f"mlflow: parent run {run.info.run_id} at {uri}")
    return {"uri": uri, "experiment": exp_name, "parent_run_id": run.info.run_id}


def end_study(tracking: dict | None, best_value: float | None, out: Path, log=print) -> None:
    """Log the study's best value and its tables on the parent run, and close it."""
    if not tracking:
        return
    try:
        c = client(tracking["uri"])
        run_id = tracking["parent_run_id"]
        if best_value is not None:
            c.log_metric(run_id, "best_val_accuracy", float(best_value))
        for f in sorted(Path(out).glob("*")):
            if f.is_file() and f.suffix in (".csv", ".md", ".json", ".yaml", ".png") and f.stat().st_size < 20 * 2**20:
                c.log_artifact(run_id, str(f))
        c.set_terminated(run_id, "FINISHED")
    except Exception as err:  # noqa: BLE001
        log(f"warning: MLflow could not close the study's run ({_short(err)}); the study's outputs are in {out}")
