"""Studies: study-file validation, OFAT and TPE end to end, failures, kill -9 and resume, repeats,
statistics, the LR range test. Every trial is 1-2 epochs on a few hundred bundled images."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from scipy import stats as st

from cifarlab.cli.main import run
from cifarlab.config import load_config
from cifarlab.studies.stats import summarize, welch

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
TINY = {"data.dataset": "sample", "data.train_limit": 300, "data.val_size": 100, "train.epochs": 1,
        "train.batch_size": 32, "train.threads": 1, "schedule.name": "constant"}
SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(autouse=True, scope="module")
def _cache(tmp_path_factory):
    """A private dataset cache unless the suite's conftest already set one."""
    if "CIFARLAB_CACHE" not in os.environ:
        os.environ["CIFARLAB_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield


def cli(capsys, *args):
    code = run([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def study_file(tmp_path: Path, space: dict, name: str = "s", **keys) -> Path:
    f = tmp_path / f"{name}.yaml"
    f.write_text(yaml.safe_dump({"name": name, "base": "quickstart", "set": {**TINY, **keys.pop("set", {})},
                                 "space": space, **keys}))
    return f


def trials_of(directory: Path, name: str):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{directory / 'study.db'}").get_trials()


# ---------------------------------------------------------------------- bad study files

BAD = [
    ({"spaec": {}}, "unknown study key 'spaec'"),
    ({"space": {}}, "the space is empty"),
    ({"space": {"optimizer.lrr": [0.1]}}, "unknown config key 'optimizer.lrr'"),
    ({"space": {"optimizer.lr": []}}, "empty list of values"),
    ({"space": {"optimizer.lr": [0.1, -1.0]}}, "optimizer.lr"),
    ({"method": "random", "trials": 3, "space": {"optimizer.lr": {"log_uniform": [0.1, 0.01]}}}, "low < high"),
    ({"method": "random", "trials": 3, "space": {"optimizer.lr": {"log_uniform": [0, 0.1]}}}, "positive low end"),
    ({"method": "tpe", "trials": 3, "space": {"optimizer.lr": {"between": [0.1, 0.2]}}}, "must be a list of values"),
    ({"method": "grid", "space": {"optimizer.lr": {"uniform": [0.1, 0.2]}}}, "needs a list of values"),
    ({"method": "tpe", "space": {"optimizer.lr": [0.1]}}, "needs 'trials: N'"),
    ({"method": "anneal", "space": {"optimizer.lr": [0.1]}}, "study key 'method'"),
    ({"repeats": 2, "space": {"train.seed": [1, 2]}}, "train.seed"),
    ({"space": {"model.options.width": [8]}}, "width"),
    ({"base": "no-such-recipe", "space": {"optimizer.lr": [0.1]}}, "unknown recipe"),
    ({"name": "..", "space": {"optimizer.lr": [0.1]}}, "names the study directory"),  # studies/.. escapes
    ({"name": "a/../../b", "space": {"optimizer.lr": [0.1]}}, "names the study directory"),
]


@pytest.mark.parametrize("keys,message", BAD)
def test_bad_study_file_is_one_line_before_any_training(tmp_path, capsys, keys, message):
    raw = {"name": "bad", "base": "quickstart", "method": "grid", **keys}
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(raw))
    code, out, err = cli(capsys, "sweep", "--config", f, "--out", tmp_path / "study")
    assert code == 2 and message in err
    assert err.startswith("cifarlab: error: ") and err.count("\n") == 1
    assert not (tmp_path / "study").exists()  # nothing was created, let alone trained


@pytest.mark.parametrize("args,message", [
    (["sweep", "--config", "missing.yaml"], "does not exist"),
    (["sweep", "--config", "PRESET", "--set", "train.epochz=1"], "unknown config key 'train.epochz'"),
    (["sweep", "--config", "PRESET", "--storage", "nosuchdb://x"], "cannot open study storage"),
    (["worker", "--study", "nope", "--storage", "sqlite:///WORK/empty.db"], "no study named 'nope'"),
    (["repeat", "quickstart", "--seeds", "1"], "at least 2"),
    (["compare", "no-such-recipe", "quickstart"], "unknown recipe"),
    (["lr-find", "-r", "quickstart", "--start-lr", "1", "--end-lr", "0.1"], "--start-lr"),
    (["lr-find"], "--recipe"),
])
def test_bad_command_lines(tmp_path, capsys, args, message):
    args = [a.replace("PRESET", "lr-seed000-short").replace("WORK", str(tmp_path)) for a in args]
    code, out, err = cli(capsys, *args, *(["--out", tmp_path / "o"] if args[0] in ("sweep", "lr-find") else []))
    assert code == 2 and message in err and err.count("\n") == 1


def test_presets_are_valid():
    from cifarlab.studies.space import preset_dir, read_study_file
    names = sorted(f.name[:-5] for f in preset_dir().iterdir() if f.name.endswith(".yaml"))
    assert {"ofat-seed001", "ofat-seed001-short", "lr-seed000", "lr-seed000-short", "batch-seed000",
            "batch-seed000-short"} <= set(names)
    for name in names:
        assert read_study_file(name).params


# ---------------------------------------------------------------------- end to end

def test_ofat_walks_keys_in_order_keeps_the_best_and_resumes(tmp_path, capsys):
    f = study_file(tmp_path, {"optimizer.lr": [0.002, 0.05], "train.batch_size": [32, 64]}, "ofat", method="ofat",
                   set={"model.name": "mlp"})
    code, out, err = cli(capsys, "sweep", "--config", f, "--out", tmp_path / "st", "--json")
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    trials = trials_of(tmp_path / "st", "ofat")
    assert [t.user_attrs["step"] for t in trials] == [0, 0, 1, 1]
    assert all(t.state.name == "COMPLETE" for t in trials)
    step0 = max(trials[:2], key=lambda t: (t.value, -t.number))
    assert all(t.params["optimizer.lr"] == step0.params["optimizer.lr"] for t in trials[2:])  # the kept value
    carried = [t for t in trials if "same_as" in t.user_attrs]  # the kept configuration is not trained again
    assert len(carried) == 1 and carried[0].user_attrs["same_as"] == step0.number and carried[0].value == step0.value
    assert len(list((tmp_path / "st" / "trials").iterdir())) == 3
    best = max(trials, key=lambda t: (t.value, -t.number))
    assert summary["best"]["trial"] == best.number and summary["best"]["val_accuracy"] == best.value
    cfg = load_config(config_file=tmp_path / "st" / "best.yaml")
    assert cfg.optimizer.lr == best.params["optimizer.lr"] and cfg.model.name == "mlp"
    table = (tmp_path / "st" / "results.md").read_text()
    assert table.count("| COMPLETE |") == 4 and "| step | varies |" in table and table.count("kept") == 2
    assert len((tmp_path / "st" / "results.csv").read_text().splitlines()) == 5
    assert {Path(p).name for p in summary["plots"]} == {"optimizer.lr.png", "train.batch_size.png"}
    # rerunning continues the study: nothing left, nothing trained again
    code, out, err = cli(capsys, "sweep", "--config", f, "--out", tmp_path / "st")
    assert code == 0 and "4 trials finished before" in out
    assert len(trials_of(tmp_path / "st", "ofat")) == 4
    # the same name with another space is refused, not mixed in
    g = study_file(tmp_path, {"optimizer.lr": [0.003]}, "ofat", method="ofat")
    code, out, err = cli(capsys, "sweep", "--config", g, "--out", tmp_path / "st")
    assert code == 2 and "another base or space" in err


def test_tpe_with_pruning_and_a_failed_trial(tmp_path, capsys, monkeypatch):
    f = study_file(tmp_path, {"optimizer.lr": {"log_uniform": [1e-3, 1e-1]}, "optimizer.momentum": [0.0, 0.9]},
                   "tpe", method="tpe", trials=5, pruner="median", set={"train.epochs": 2})
    code, out, err = cli(capsys, "sweep", "--config", f, "--out", tmp_path / "st", "--json")
    assert code == 0, err
    trials = trials_of(tmp_path / "st", "tpe")
    assert len(trials) == 5 and all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    assert all(1e-3 <= t.params["optimizer.lr"] <= 1e-1 for t in trials)
    assert all(len(t.intermediate_values) >= 1 for t in trials)  # per-epoch reports fed the pruner
    # a diverging configuration fails with its reason and the study goes on (here with a second local worker)
    g = study_file(tmp_path, {"optimizer.lr": [1e9, 0.01, 0.02]}, "div", set={"model.name": "mlp"})
    monkeypatch.setenv("PYTHONPATH", SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))  # for the worker process
    code, out, err = cli(capsys, "sweep", "--config", g, "--out", tmp_path / "div", "--jobs", "2")
    assert code == 0, err
    a, b, c = trials_of(tmp_path / "div", "div")
    assert sorted(t.params["optimizer.lr"] for t in (a, b, c)) == [0.01, 0.02, 1e9]
    assert (tmp_path / "div" / "worker-1.log").read_text().startswith("worker 1 joined")
    assert a.state.name == "FAIL" and "diverged" in a.user_attrs["fail_reason"]
    assert b.state.name == "COMPLETE"
    assert "diverged" in (tmp_path / "div" / "results.md").read_text()


def _db_states(db: Path, name: str) -> list[str]:
    try:
        return [t.state.name for t in optuna.load_study(study_name=name, storage=f"sqlite:///{db}").get_trials()]
    except Exception:  # not created yet
        return []


def test_kill_9_mid_study_then_restart_loses_and_duplicates_nothing(tmp_path, capsys):
    f = study_file(tmp_path, {"optimizer.lr": [0.01, 0.02, 0.03, 0.04]}, "kill",
                   set={"train.epochs": 3, "data.train_limit": 600})
    out = tmp_path / "st"
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "cifarlab", "sweep",
                             "--config", str(f), "--out", str(out), "--heartbeat", "1"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 90
    while time.time() < deadline:
        states = _db_states(out / "study.db", "kill")
        if "COMPLETE" in states and "RUNNING" in states:
            break
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.2)
    time.sleep(0.5)  # well inside the running trial
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    states = _db_states(out / "study.db", "kill")
    assert "RUNNING" in states and "WAITING" in states, states
    code, o, err = cli(capsys, "sweep", "--config", f, "--out", out, "--heartbeat", "1")
    assert code == 0, err
    trials = trials_of(out, "kill")
    done = [t for t in trials if t.state.name == "COMPLETE"]
    assert sorted(t.params["optimizer.lr"] for t in done) == [0.01, 0.02, 0.03, 0.04]  # each point once
    killed = [t for t in trials if t.state.name == "FAIL"]
    assert len(killed) == 1 and len(trials) == 5
    retry = [t for t in done if t.system_attrs.get("failed_trial") == killed[0].number]
    assert len(retry) == 1 and retry[0].params == killed[0].params
    assert "retry of trial" in (out / "results.md").read_text()


# ---------------------------------------------------------------------- repeats and statistics

def test_statistics_match_scipy():
    a, b = [0.61, 0.63, 0.60, 0.64], [0.66, 0.65, 0.69]
    s = summarize(a)
    lo, hi = st.t.interval(0.95, len(a) - 1, loc=s["mean"], scale=st.sem(a))
    assert s["ci_low"] == pytest.approx(lo) and s["ci_high"] == pytest.approx(hi)
    w = welch(a, b)
    ref = st.ttest_ind(b, a, equal_var=False)
    assert w["p_value"] == pytest.approx(ref.pvalue) and w["significant"] == (ref.pvalue < 0.05)
    ci = ref.confidence_interval()
    assert (w["ci_low"], w["ci_high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert not welch(a, [x + 0.001 for x in a])["significant"]


def test_repeat_and_compare(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sets = [x for k, v in {**TINY, "model.name": "mlp"}.items() for x in ("--set", f"{k}={v}")]
    (tmp_path / "slow.yaml").write_text(yaml.safe_dump({"extends": "quickstart", "optimizer": {"lr": 0.0005}}))
    code, out, err = cli(capsys, "repeat", "quickstart", "--seeds", "2", *sets, "--json")
    assert code == 0, err
    r = json.loads(out.strip().splitlines()[-1])
    assert r["seeds"] == [0, 1] and len(r["val_accuracy"]) == 2 and r["test"] is None
    assert r["val"]["ci_low"] <= r["val"]["mean"] <= r["val"]["ci_high"]
    assert Path("studies/repeat-quickstart/repeat.json").is_file()
    code, out, err = cli(capsys, "compare", "studies/repeat-quickstart", "slow.yaml", "--seeds", "2", *sets, "--json")
    assert code == 0, err
    c = json.loads(out.strip().splitlines()[-1])
    v = c["tests"]["val"]
    assert c["a"] == "quickstart" and c["b"] == "slow" and v["ci_low"] <= v["difference"] <= v["ci_high"]
    assert "val accuracy: slow - quickstart" in err


def test_lr_find(tmp_path, capsys):
    sets = [x for k, v in TINY.items() for x in ("--set", f"{k}={v}")]
    code, out, err = cli(capsys, "lr-find", "-r", "quickstart", *sets, "--steps", "40", "--start-lr", "1e-5",
                         "--end-lr", "100", "--out", tmp_path / "lr", "--json")
    assert code == 0, err
    r = json.loads(out.strip().splitlines()[-1])
    assert 1e-5 <= r["suggested_lr"] <= 100 and Path(r["plot"]).stat().st_size > 1000
    rows = (tmp_path / "lr" / "lr_find.csv").read_text().splitlines()
    assert len(rows) == r["steps"] + 1 <= 41
    lrs = [float(x.split(",")[1]) for x in rows[1:]]
    assert all(b > a for a, b in zip(lrs, lrs[1:]))  # exponentially increasing
