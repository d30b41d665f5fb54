"""MLflow tracking against a real `mlflow server` (SQLite backend, loopback, one per module) and a
file store: params, per-epoch metric history, artifacts and tags read back with MlflowClient; a study
as a parent run with its trials as children; a server that is down costs one warning line only."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import tiny_overrides

mlflow = pytest.importorskip("mlflow", reason="mlflow missing: pip install 'cifarlab[mlflow]'")
pytestmark = [pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning"), pytest.mark.filterwarnings("ignore::DeprecationWarning")]
TINY = ["--data", "sample", "--model", "mlp", "--set", "data.train_limit=300", "--set", "data.val_size=100",
        "--epochs", "2", "--batch-size", "32", "--threads", "1", "--schedule", "constant", "--no-progress"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`mlflow server` on a free loopback port, SQLite backend and proxied artifacts in a temp folder."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    exe = Path(sys.executable).with_name("mlflow")
    cmd = [str(exe) if exe.exists() else "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
           "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    logf = open(folder / "server.log", "w")
    proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, cwd=folder, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"mlflow server did not start: {(folder / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, 9)  # the server and its workers: the process group this fixture started
        proc.wait(10)
        logf.close()


@pytest.fixture(autouse=True)
def _no_env_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 reads file:// stores only when asked to


def _check_run(client, run_id: str, run_dir: Path, epochs: int = 2):
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    p = run.data.params
    assert p["model.name"] == "mlp" and p["train.epochs"] == str(epochs) and p["data.train_limit"] == "300"
    assert p["optimizer.lr"] and "track.mlflow" in p
    history = client.get_metric_history(run_id, "val_accuracy")
    assert sorted(m.step for m in history) == list(range(1, epochs + 1))  # one point per epoch
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == list(range(1, epochs + 1))
    import json
    summary = json.loads((run_dir / "summary.json").read_text())
    assert run.data.metrics["best_val_accuracy"] == pytest.approx(summary["best_val_accuracy"])
    assert "final_val_accuracy" in run.data.metrics
    tags = run.data.tags
    assert tags["cifarlab.model"] == "mlp" and tags["cifarlab.seed"] == "0" and tags["cifarlab.version"]
    assert tags["cifarlab.machine"] and tags["cifarlab.recipe"] and tags["cifarlab.run_dir"] == str(run_dir.resolve())
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "summary.json", "report.html"} <= names
    return run


def test_train_logs_a_run_to_a_real_server(server, cli, tmp_path):
    run_dir = tmp_path / "run"
    code, out, err = cli("train", *TINY, "--mlflow", server, "--out", run_dir)
    assert code == 0, err
    assert "warning" not in out + err
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    client = mlflow.MlflowClient(server)
    run = _check_run(client, run_id, run_dir)
    assert client.get_experiment(run.info.experiment_id).name == "run"
    local = client.download_artifacts(run_id, "config.yaml", str(tmp_path))
    assert yaml.safe_load(Path(local).read_text())["model"]["name"] == "mlp"


def test_file_store_and_config_key(cli, tmp_path):
    """A file:// store set by the config (track section), checkpoints included."""
    store = tmp_path / "mlruns"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"name": "filestore", "track": {"mlflow": store.as_uri(), "experiment": "exp-a",
                                                                  "log_checkpoints": True}}))
    run_dir = tmp_path / "run"
    code, out, err = cli("train", "--config", cfg, *TINY, "--out", run_dir)
    assert code == 0, err
    client = mlflow.MlflowClient(store.as_uri())
    exp = client.get_experiment_by_name("exp-a")
    [run] = client.search_runs([exp.experiment_id])
    _check_run(client, run.info.run_id, run_dir)
    assert {"best.pt", "last.pt"} <= {a.path for a in client.list_artifacts(run.info.run_id)}


def test_sweep_is_a_parent_run_with_one_child_per_trial(server, cli, tmp_path):
    f = tmp_path / "s.yaml"
    over = tiny_overrides(**{"model.name": "mlp", "train.epochs": 2})
    f.write_text(yaml.safe_dump({"name": "mlf-sweep", "base": "quickstart", "method": "grid", "set": over,
                                 "space": {"optimizer.lr": [0.01, 0.03]}}))
    code, out, err = cli("sweep", "--config", f, "--out", tmp_path / "study", "--mlflow", server)
    assert code == 0, err
    client = mlflow.MlflowClient(server)
    exp = client.get_experiment_by_name("mlf-sweep")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].data.tags["cifarlab.kind"] == "study"
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2 and len(runs) == 3
    assert sorted(r.data.params["optimizer.lr"] for r in children) == ["0.01", "0.03"]
    assert sorted(r.data.tags["cifarlab.trial"] for r in children) == ["0", "1"]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert all(len(client.get_metric_history(r.info.run_id, "val_accuracy")) == 2 for r in children)
    assert parent.data.metrics["best_val_accuracy"] == pytest.approx(max(r.data.metrics["best_val_accuracy"]
                                                                         for r in children))
    assert "results.csv" in {a.path for a in client.list_artifacts(parent.info.run_id)}


def test_repeat_groups_its_seeds_under_one_parent(tmp_path):
    from cifarlab.studies.repeats import repeat

    store = tmp_path / "mlruns"
    repeat("quickstart", 2, tiny_overrides(**{"model.name": "mlp", "train.epochs": 1}), out=tmp_path / "rep",
           log=lambda _l: None, mlflow=store.as_uri())
    client = mlflow.MlflowClient(store.as_uri())
    runs = client.search_runs([client.get_experiment_by_name("repeat-quickstart").experiment_id])
    [parent] = [r for r in runs if r.data.tags.get("cifarlab.kind") == "repeat"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.params["train.seed"] for r in children) == ["0", "1"]


def test_server_down_is_one_warning_and_the_run_goes_on(cli, tmp_path):
    url = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    run_dir = tmp_path / "run"
    t0 = time.time()
    code, out, err = cli("train", *TINY, "--mlflow", url, "--out", run_dir)
    assert code == 0, err
    lines = [ln for ln in (out + err).splitlines() if "warning" in ln.lower() or "mlflow" in ln.lower()]
    assert len(lines) == 1 and "MLflow" in lines[0] and str(run_dir) in lines[0], lines
    assert {"summary.json", "best.pt", "last.pt", "metrics.csv", "report.html"} <= {p.name for p in run_dir.iterdir()}
    assert time.time() - t0 < 60


def test_env_uri_is_honoured(cli, tmp_path, monkeypatch):
    store = tmp_path / "mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    code, out, err = cli("train", *TINY, "--epochs", "1", "--out", tmp_path / "run")
    assert code == 0, err
    client = mlflow.MlflowClient(store.as_uri())
    assert len(client.search_runs([client.get_experiment_by_name("run").experiment_id])) == 1


def test_missing_mlflow_is_one_line_naming_the_extra(cli, tmp_path, monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    code, out, err = cli("train", *TINY, "--mlflow", "http://127.0.0.1:1", "--out", tmp_path / "run")
    assert code == 2 and err.count("\n") == 1 and "cifarlab[mlflow]" in err
    assert not (tmp_path / "run").exists()
