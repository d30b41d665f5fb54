"""Faults injected for real: kill -9 during training and during a checkpoint write, kill -9 of a sweep
worker, a disk that fills up mid-run, a read-only output directory, two commands on one run directory.

Each test runs `python -m cifarlab` in child processes, exactly as a user's shell would.
"""
from __future__ import annotations

import contextlib
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
import yaml

from cifarlab.train.checkpoint import load_checkpoint
from cifarlab.train.rundir import read_metrics
from conftest import assert_user_error, tiny_overrides

# every test here trains in child processes and waits for them to reach a point: tens of seconds to minutes each
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")]
SRC = str(Path(__file__).resolve().parents[1] / "src")
ENV = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
# An MLP whose checkpoints are large (last.pt ~34 MB with momentum): writing one takes long enough to be caught
BIG_CHECKPOINTS = {"model.name": "mlp", "model.options.hidden": [1024, 1024], "model.options.dropout": 0.1,
                   "data.dataset": "sample", "data.train_limit": 1000, "data.val_size": 200,
                   "data.augment.flip": True, "data.augment.crop_padding": 2, "schedule.name": "cosine",
                   "optimizer.lr": 0.02, "train.batch_size": 50, "train.threads": 1, "train.seed": 3}
SMALL = tiny_overrides(omit=("train.epochs",))  # the recipe's epochs unless a test says


def config_file(tmp_path: Path, overrides: dict, name: str) -> Path:
    from cifarlab.config import load_config
    f = tmp_path / f"{name}.yaml"
    f.write_text(load_config(recipe="quickstart", overrides=overrides).to_yaml())
    return f


def start(*args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cifarlab", *map(str, args)], env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill9(proc)  # a hung command fails the test and does not outlive it
        raise
    return proc.returncode, out, err


def epochs_done(run: Path) -> int:
    try:
        return len(read_metrics(run / "metrics.csv"))
    except (OSError, ValueError, KeyError):
        return 0


def wait_for(condition, proc: subprocess.Popen, timeout: float = 120, poll: float = 0.05):
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended early: {proc.communicate()[1]}"
        assert time.time() < deadline, "timed out waiting"
        time.sleep(poll)


def kill9(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def assert_checkpoints_whole(run: Path) -> None:
    """Every checkpoint on disk after a kill loads (a half-written one would fail to unzip)."""
    for f in run.glob("*.pt"):
        assert load_checkpoint(f)["epoch"] >= 1, f


def comparable(run: Path) -> tuple:
    rows = [{k: v for k, v in r.items() if "second" not in k and "memory" not in k}  # measurements, not results
            for r in read_metrics(run / "metrics.csv")]
    return rows, load_checkpoint(run / "last.pt")["state_dict"], load_checkpoint(run / "best.pt")["epoch"]


# ---------------------------------------------------------------------- kill -9 during training

def test_kill_9_anywhere_then_resume_gives_the_uninterrupted_result(tmp_path):
    epochs = 6
    cfg = config_file(tmp_path, {**BIG_CHECKPOINTS, "train.epochs": epochs}, "big")
    code, out, err = finish(start("train", "--config", cfg, "--out", tmp_path / "whole", "--json"))
    assert code == 0, err

    whole = read_metrics(tmp_path / "whole" / "metrics.csv")
    best = max(whole, key=lambda r: r["val_accuracy"])["epoch"]  # the last best.pt write of the run
    assert 3 <= best < epochs, "the config should improve mid-run and not after (pick another seed)"
    run, rng = tmp_path / "cut", random.Random(7)
    temps = lambda name: list(run.glob(f".{name}.*.tmp"))  # noqa: E731
    # 1) a kill at a random moment inside an epoch
    proc = start("train", "--config", cfg, "--out", run)
    wait_for(lambda: epochs_done(run) >= 1, proc)
    time.sleep(rng.uniform(0.0, 0.5))
    kill9(proc)
    assert_checkpoints_whole(run)
    # 2) a kill while the last best.pt is written: no later epoch would hide a best.pt that lags last.pt
    proc = start("train", "--resume", run)
    wait_for(lambda: epochs_done(run) >= best - 1 and temps("best.pt"), proc, poll=0.0005)
    kill9(proc)
    assert temps("best.pt"), "the kill was meant to land during the write"
    assert_checkpoints_whole(run)
    # 3) a kill while last.pt is written
    proc = start("train", "--resume", run)
    wait_for(lambda: epochs_done(run) >= best and temps("last.pt"), proc, poll=0.0005)
    kill9(proc)
    assert temps("last.pt"), "the kill was meant to land during the write"
    assert_checkpoints_whole(run)
    # 4) resume to the end
    code, out, err = finish(start("train", "--resume", run, "--json"))
    assert code == 0, err
    assert not temps("*"), "stale temp files of the killed writes are cleaned up on resume"

    rows_a, last_a, best_a = comparable(tmp_path / "whole")
    rows_b, last_b, best_b = comparable(run)
    assert len(rows_b) == epochs and rows_a == rows_b and best_a == best_b
    assert all(torch.equal(last_a[k], last_b[k]) for k in last_a)


def test_two_commands_on_one_run_directory(tmp_path):
    run = tmp_path / "r"
    cfg = config_file(tmp_path, {**SMALL, "train.epochs": 40}, "long")
    first = start("train", "--config", cfg, "--out", run)
    try:
        wait_for(lambda: epochs_done(run) >= 1, first)
        code, _, err = finish(start("train", "--resume", run, "--epochs", 50))
        assert_user_error((code, err), f"is in use by cifarlab pid {first.pid}", after_output=True)
        code, _, err = finish(start("train", "--config", cfg, "--out", run))
        assert_user_error((code, err), "already holds a run", after_output=True)
        assert first.poll() is None  # the first run was not disturbed
    finally:
        kill9(first)
    assert_checkpoints_whole(run)


# ---------------------------------------------------------------------- disk full, read-only

@contextlib.contextmanager
def small_disk(path: Path, mib: int):
    """A real, tiny file system (tmpfs) so that 'disk full' is the kernel's ENOSPC, not a mock."""
    path.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(path)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.decode().strip()}); the RLIMIT_FSIZE test covers writes")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "wb") as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 2**16)
    return filler


def test_disk_fills_up_mid_run_then_resume(tmp_path):
    with small_disk(tmp_path / "disk", 24) as disk:
        run = disk / "r"
        cfg = config_file(tmp_path, {**SMALL, "train.epochs": 60}, "long")
        proc = start("train", "--config", cfg, "--out", run)
        wait_for(lambda: epochs_done(run) >= 2, proc)
        filler = fill(disk)
        code, _, err = finish(proc)
        line = assert_user_error((code, err), "No space left on device", after_output=True)
        assert f"continue it with --resume {run}" in line
        done = epochs_done(run)
        assert done >= 2 and load_checkpoint(run / "last.pt")["epoch"] == done
        assert f"up to epoch {done} is intact" in line
        assert_checkpoints_whole(run)
        filler.unlink()
        code, _, err = finish(start("train", "--resume", run, "--epochs", done + 1))
        assert code == 0, err
        assert epochs_done(run) == done + 1


def test_too_little_space_is_refused_before_training(tmp_path):
    with small_disk(tmp_path / "disk", 4) as disk:
        code, out, err = finish(start("train", "--config", config_file(tmp_path, SMALL, "s"), "--out", disk / "r"))
        assert_user_error((code, err), "MiB free on the disk of", after_output=True)
        assert "epoch" not in out and not (disk / "r").exists()


def test_read_only_output_directory(tmp_path):
    with small_disk(tmp_path / "disk", 64) as disk:
        run = disk / "r"
        code, _, err = finish(start("train", "--config", config_file(tmp_path, {**SMALL, "train.epochs": 1}, "s"),
                                    "--out", run))
        assert code == 0, err
        before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        code, _, err = finish(start("train", "--resume", run, "--epochs", 2))
        assert_user_error((code, err), "Read-only file system", after_output=True)
        code, _, err = finish(start("train", "--config", config_file(tmp_path, SMALL, "t"), "--out", disk / "new"))
        assert_user_error((code, err), "Read-only file system", after_output=True)
        assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def _limit_file_size(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG instead of killing us
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_failed_write_is_one_line_and_keeps_what_was_written(tmp_path):
    """Without privileges to mount a small disk: a file-size limit makes the kernel refuse the big write."""
    from cifarlab.data.sources import load_dataset
    load_dataset("sample")  # decoded and cached here, so the limited child only writes its run files
    run = tmp_path / "r"
    cfg = config_file(tmp_path, {**BIG_CHECKPOINTS, "model.options.hidden": [512], "model.options.dropout": 0.0,
                                 "train.epochs": 3}, "big")
    # best.pt (6.3 MB) fits under the limit, last.pt with the momentum buffers (12.6 MB) does not
    proc = start("train", "--config", cfg, "--out", run, preexec_fn=_limit_file_size(9 * 2**20))
    code, _, err = finish(proc)
    assert_user_error((code, err), "File too large", after_output=True)
    assert load_checkpoint(run / "best.pt")["epoch"] == 1  # written whole before the failure
    assert not list(run.glob(".*.tmp")) and not (run / "last.pt").exists()


# ---------------------------------------------------------------------- kill -9 of a sweep worker

def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(c) for c in f.read().split()]


def test_kill_9_of_the_sweep_stops_its_workers_and_a_rerun_finishes_the_study(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump({"name": "p", "base": "quickstart", "method": "grid",
                                 "set": {**SMALL, "train.epochs": 4, "data.train_limit": 600},
                                 "space": {"optimizer.lr": [0.01, 0.02, 0.03]}}))
    out = tmp_path / "st"
    sweep = start("sweep", "--config", f, "--out", out, "--jobs", 2, "--heartbeat", 1)
    db = f"sqlite:///{out / 'study.db'}"

    def running():
        try:
            return [t.state.name for t in optuna.load_study(study_name="p", storage=db).get_trials()].count("RUNNING")
        except Exception:  # not created yet
            return 0
    wait_for(lambda: running() == 2 and _children(sweep.pid), sweep, timeout=180, poll=0.1)
    worker = _children(sweep.pid)[0]
    os.kill(sweep.pid, signal.SIGKILL)
    sweep.wait()
    deadline = time.time() + 10
    while time.time() < deadline and os.path.exists(f"/proc/{worker}") and not _zombie(worker):
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{worker}") or _zombie(worker), "the worker outlived its sweep"
    code, _, err = finish(start("sweep", "--config", f, "--out", out, "--heartbeat", 1))
    assert code == 0, err
    trials = optuna.load_study(study_name="p", storage=db).get_trials()
    assert sorted(t.params["optimizer.lr"] for t in trials if t.state.name == "COMPLETE") == [0.01, 0.02, 0.03]


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def test_kill_9_of_one_sweep_worker_loses_nothing(tmp_path):
    f = tmp_path / "w.yaml"
    f.write_text(yaml.safe_dump({"name": "w", "base": "quickstart", "method": "grid",
                                 "set": {**SMALL, "train.epochs": 4, "data.train_limit": 600},
                                 "space": {"optimizer.lr": [0.01, 0.02, 0.03, 0.04]}}))
    out = tmp_path / "st"
    sweep = start("sweep", "--config", f, "--out", out, "--jobs", 2, "--heartbeat", 1)

    def states():
        try:
            return [t.state.name for t in optuna.load_study(study_name="w", storage=f"sqlite:///{out / 'study.db'}")
                    .get_trials()]
        except Exception:  # not created yet
            return []
    wait_for(lambda: states().count("RUNNING") == 2 and _children(sweep.pid), sweep, timeout=180, poll=0.1)
    os.kill(_children(sweep.pid)[0], signal.SIGKILL)  # the worker process, mid-trial
    code, _, err = finish(sweep)
    assert code == 0, err
    trials = optuna.load_study(study_name="w", storage=f"sqlite:///{out / 'study.db'}").get_trials()
    done = sorted(t.params["optimizer.lr"] for t in trials if t.state.name == "COMPLETE")
    assert done == [0.01, 0.02, 0.03, 0.04]  # every point once: none lost, none duplicated
    assert [t.state.name for t in trials].count("FAIL") == 1 and "RUNNING" not in [t.state.name for t in trials]
