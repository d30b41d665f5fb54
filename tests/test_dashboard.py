"""A cifarlab study opens in optuna-dashboard: its server, started as a user starts it (`optuna-dashboard
sqlite:///…/study.db`), serves the study's trials, their params and values, the per-epoch
intermediate values and each trial's run directory over its JSON API. PostgreSQL too, where a
throwaway server can be started (tests/test_studies_postgres.py's fixture)."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import tiny_overrides
from test_studies_postgres import postgres_url  # noqa: F401  (the fixture: a throwaway PostgreSQL server)

pytest.importorskip("optuna_dashboard", reason="optuna-dashboard missing: pip install 'cifarlab[dashboard]'")
pytestmark = [pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _wait(url: str, proc=None, seconds: float = 60):
    deadline = time.time() + seconds
    while True:
        try:
            return _get(url)
        except OSError:
            if (proc is not None and proc.poll() is not None) or time.time() > deadline:
                raise
            time.sleep(0.3)


def _sweep(cli, tmp_path, name: str, storage: str | None = None) -> Path:
    f = tmp_path / f"{name}.yaml"
    f.write_text(yaml.safe_dump({"name": name, "base": "quickstart", "method": "grid",  # pruner: none (the default)
                                 "set": tiny_overrides(**{"model.name": "mlp", "train.epochs": 2}),
                                 "space": {"optimizer.lr": [0.01, 0.03]}}))
    out = tmp_path / name
    code, _, err = cli("sweep", "--config", f, "--out", out, *(["--storage", storage] if storage else []))
    assert code == 0, err
    return out


def _check_api(base: str, name: str, out: Path):
    studies = _get(base + "/api/studies")["study_summaries"]
    [summary] = [s for s in studies if s["study_name"] == name]
    detail = _get(f"{base}/api/studies/{summary['study_id']}")
    trials = detail["trials"]
    assert len(trials) == 2 and {t["state"] for t in trials} == {"Complete"}
    assert sorted(float(p["param_external_value"]) for t in trials for p in t["params"]
                  if p["name"] == "optimizer.lr") == [0.01, 0.03]
    assert all(len(t["values"]) == 1 and 0 <= t["values"][0] <= 1 for t in trials)
    assert detail["has_intermediate_values"]
    for t in trials:
        assert [v["step"] for v in t["intermediate_values"]] == [1, 2]  # one per epoch, no pruner needed
        attrs = {a["key"]: a["value"] for a in t["user_attrs"]}
        run_dir = Path(attrs["run_dir"])
        assert run_dir.is_dir() and (run_dir / "summary.json").is_file()
        assert run_dir.resolve().is_relative_to(out.resolve())
        assert t["values"][0] == pytest.approx(json.loads((run_dir / "summary.json").read_text())["best_val_accuracy"])


def test_sqlite_study_opens_in_optuna_dashboard(cli, tmp_path):
    out = _sweep(cli, tmp_path, "dash")
    port = _free_port()
    exe = Path(sys.executable).with_name("optuna-dashboard")
    # the command docs/studies.md gives
    cmd = [str(exe) if exe.exists() else "optuna-dashboard", f"sqlite:///{out / 'study.db'}",
           "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait(base + "/api/meta", proc)
        _check_api(base, "dash", out)
    finally:
        proc.kill()
        proc.wait(10)


def test_postgres_study_opens_in_optuna_dashboard(cli, tmp_path, postgres_url):  # noqa: F811
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from optuna_dashboard import wsgi

    from cifarlab.studies.runner import _driver

    out = _sweep(cli, tmp_path, "dash-pg", postgres_url)

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):
            pass

    server = make_server("127.0.0.1", 0, wsgi(_driver(postgres_url)), handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        _check_api(f"http://127.0.0.1:{server.server_port}", "dash-pg", out)
    finally:
        server.shutdown()
        server.server_close()
