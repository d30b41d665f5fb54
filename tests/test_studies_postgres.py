"""Two workers on one PostgreSQL study lose and duplicate nothing.

The `postgres_url` fixture starts a throwaway server on loopback from Debian's `postgresql`
package (initdb refuses root, so it runs as the `postgres` user) and skips, saying why, only
where the server binaries or that user are absent.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from conftest import tiny_overrides

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")]
SRC = str(Path(__file__).resolve().parents[1] / "src")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url():
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not bins:
        pytest.skip("PostgreSQL server binaries not found (apt-get install postgresql)")
    pytest.importorskip("psycopg2", reason="psycopg2 missing: pip install 'cifarlab[postgres]'")
    bindir = Path(bins[-1]).parent
    as_user: list[str] = []
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user for initdb")
        as_user = ["runuser", "-u", "postgres", "--"]
    data = Path(tempfile.mkdtemp(prefix="cifarlab-pg-"))
    if as_user:
        shutil.chown(data, "postgres", "postgres")
    port = _free_port()
    run = lambda *cmd: subprocess.run([*as_user, *map(str, cmd)], check=True, capture_output=True)  # noqa: E731
    run(bindir / "initdb", "-D", data / "db", "-U", "postgres", "-A", "trust", "--no-sync")
    run(bindir / "pg_ctl", "-D", data / "db", "-l", data / "log", "-w", "-o",
        f"-c listen_addresses=127.0.0.1 -p {port} -k {data} -c fsync=off", "start")
    try:
        run(bindir / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "postgres", "cifarlab")
        yield f"postgresql://postgres@127.0.0.1:{port}/cifarlab"  # as a user types it
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data / "db"), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


def test_two_workers_on_one_postgres_study(postgres_url, tmp_path):
    import optuna

    from cifarlab.studies.runner import _driver
    url = _driver(postgres_url)  # this process talks to the server too, with the driver installed here
    f = tmp_path / "pg.yaml"
    f.write_text(yaml.safe_dump({
        "name": "pg", "base": "quickstart", "method": "grid",
        "set": tiny_overrides(**{"train.epochs": 1, "model.name": "mlp"}),
        "space": {"optimizer.lr": [0.003, 0.01, 0.03], "optimizer.momentum": [0.0, 0.9]}}))
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "cifarlab"]
    sweep = subprocess.Popen([*cmd, "sweep", "--config", str(f), "--storage", postgres_url, "--out",
                              str(tmp_path / "a"), "--heartbeat", "2"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    # the second worker joins as soon as the study exists, from its own directory (as another machine would)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            optuna.load_study(study_name="pg", storage=url)
            break
        except KeyError:
            time.sleep(0.2)
    worker = subprocess.run([*cmd, "worker", "--study", "pg", "--storage", postgres_url, "--out",
                             str(tmp_path / "b"), "--worker-index", "1", "--heartbeat", "2", "--json"],
                            env=env, capture_output=True, text=True, timeout=240)
    out, err = sweep.communicate(timeout=240)
    assert sweep.returncode == 0 and worker.returncode == 0, err + worker.stderr
    trials = optuna.load_study(study_name="pg", storage=url).get_trials()
    assert len(trials) == 6 and all(t.state.name == "COMPLETE" for t in trials)
    points = sorted((t.params["optimizer.lr"], t.params["optimizer.momentum"]) for t in trials)
    assert points == sorted((lr, m) for lr in (0.003, 0.01, 0.03) for m in (0.0, 0.9))  # each once
    ran_b = int(worker.stdout.strip().splitlines()[-1].split('"trials_run": ')[1].rstrip("}"))
    dirs_a = list((tmp_path / "a" / "trials").glob("*/seed*/summary.json"))
    dirs_b = list((tmp_path / "b" / "trials").glob("*/seed*/summary.json")) if ran_b else []
    assert len(dirs_a) + len(dirs_b) == 6 and len(dirs_b) == ran_b  # every trial trained exactly once
    assert ran_b >= 1, "the second worker got no trial: the test did not exercise two workers"
    assert "results" in out and (tmp_path / "a" / "results.md").read_text().count("| COMPLETE |") == 6
