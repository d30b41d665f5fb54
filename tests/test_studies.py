"""Studies: study-file validation, OFAT and TPE end to end, failures, kill -9 and resume, repeats,
statistics, the LR range test. Every trial is 1-2 epochs on a few hundred bundled images."""
from __future__ import annotations

import csv
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from scipy import stats as st

from cifarlab.cli.main import run
from cifarlab.config import load_config
from cifarlab.studies import optuna_adapter as adapter
from cifarlab.studies.stats import summarize, welch
from conftest import assert_user_error, set_args, tiny_overrides

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
TINY = tiny_overrides(**{"train.epochs": 1})
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
    assert_user_error((code, err), message)
    assert not (tmp_path / "study").exists()  # nothing was created, let alone trained


@pytest.mark.parametrize("args,message", [
    (["sweep", "--config", "missing.yaml"], "does not exist"),
    (["sweep", "--config", "PRESET", "--set", "train.epochz=1"], "unknown config key 'train.epochz'"),
    (["sweep", "--config", "PRESET", "--storage", "nosuchdb://x"], "cannot open study storage"),
    (["worker", "--study", "nope", "--storage", "sqlite:///WORK/empty.db"], "no study storage at"),
    (["repeat", "quickstart", "--seeds", "1"], "at least 2"),
    (["compare", "no-such-recipe", "quickstart"], "unknown recipe"),
    (["lr-find", "-r", "quickstart", "--start-lr", "1", "--end-lr", "0.1"], "--start-lr"),
    (["lr-find"], "--recipe"),
])
def test_bad_command_lines(tmp_path, capsys, args, message):
    args = [a.replace("PRESET", "lr-seed000-short").replace("WORK", str(tmp_path)) for a in args]
    code, out, err = cli(capsys, *args, *(["--out", tmp_path / "o"] if args[0] in ("sweep", "lr-find") else []))
    assert_user_error((code, err), message)


def test_presets_are_valid():
    from cifarlab.studies.space import preset_dir, read_study_file
    names = sorted(f.name[:-5] for f in preset_dir().iterdir() if f.name.endswith(".yaml"))
    assert {"ofat-seed001", "ofat-seed001-short", "lr-seed000", "lr-seed000-short", "batch-seed000",
            "batch-seed000-short"} <= set(names)
    for name in names:
        assert read_study_file(name).params


# ---------------------------------------------------------------------- end to end

@pytest.mark.slow
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
    assert_user_error((code, err), "another base or space")


@pytest.mark.slow
def test_tpe_with_pruning_and_a_failed_trial(tmp_path, capsys, monkeypatch):
    f = study_file(tmp_path, {"optimizer.lr": {"log_uniform": [1e-3, 1e-1]}, "optimizer.momentum": [0.0, 0.9]},
                   "tpe", method="tpe", trials=5, pruner="median", set={"train.epochs": 2})
    code, out, err = cli(capsys, "sweep", "--config", f, "--out", tmp_path / "st", "--json")
    assert code == 0, err
    trials = trials_of(tmp_path / "st", "tpe")
    assert len(trials) == 5 and all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    assert all(1e-3 <= t.params["optimizer.lr"] <= 1e-1 for t in trials)
    for t in trials:  # and each sampled point is what that trial's run trained with
        (run_config,) = (tmp_path / "st" / "trials" / f"{t.number:04d}").glob("seed*/config.yaml")
        used = load_config(config_file=run_config)
        assert (used.optimizer.lr, used.optimizer.momentum) == (t.params["optimizer.lr"], t.params["optimizer.momentum"])
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


@pytest.mark.slow
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
    assert len(retry) == 1 and retry[0].params == adapter.point(killed[0])  # killed before or after suggesting
    results = (out / "results.md").read_text()
    assert "retry of trial" in results and f"continued by trial {retry[0].number}" in results
    rows = {int(r["trial"]): r for r in csv.DictReader((out / "results.csv").open())}
    assert float(rows[killed[0].number]["optimizer.lr"]) == retry[0].params["optimizer.lr"]  # its own point


# ---------------------------------------------------------------------- repeats and statistics

def test_statistics_match_scipy():
    a, b = [0.61, 0.63, 0.60, 0.64], [0.66, 0.65, 0.69]
    s = summarize(a)
    # by hand: mean 0.62, sample sd sqrt(0.001 / 3), t(0.975, 3 df) = 3.182446: 0.62 +- 0.029051
    assert s["n"] == 4 and s["mean"] == pytest.approx(0.62) and s["std"] == pytest.approx(math.sqrt(0.001 / 3))
    assert s["ci_low"] == pytest.approx(0.590949, abs=1e-6) and s["ci_high"] == pytest.approx(0.649051, abs=1e-6)
    lo, hi = st.t.interval(0.95, len(a) - 1, loc=np.mean(a), scale=st.sem(a))  # scipy from the data, not from s
    assert s["ci_low"] == pytest.approx(lo) and s["ci_high"] == pytest.approx(hi)
    w = welch(a, b)
    assert w["difference"] == pytest.approx(np.mean(b) - np.mean(a)) and w["difference"] == pytest.approx(0.14 / 3)
    ref = st.ttest_ind(b, a, equal_var=False)
    assert w["p_value"] == pytest.approx(ref.pvalue) and w["significant"] == (ref.pvalue < 0.05)
    ci = ref.confidence_interval()
    assert (w["ci_low"], w["ci_high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert not welch(a, [x + 0.001 for x in a])["significant"]
    assert summarize([0.5])["ci_low"] is None  # one value: no spread, no interval


def test_intervals_cover_the_true_value_at_their_level():
    """Repeated samples from a known normal: the mean's 95% interval holds the true mean ~95% of the time,
    and Welch's interval of the difference holds the true difference (and p < 0.05 exactly when it does not)."""
    rng = np.random.default_rng(0)
    trials = 1000
    xs = rng.normal(0.7, 0.03, size=(trials, 5)).tolist()
    covered = sum(s["ci_low"] <= 0.7 <= s["ci_high"] for s in map(summarize, xs)) / trials
    assert 0.93 < covered < 0.97, covered  # binomial sd 0.007 around 0.95
    pairs = 400  # scipy's t-test costs ~3 ms a call
    a, b = rng.normal(0.60, 0.01, size=(pairs, 4)).tolist(), rng.normal(0.62, 0.03, size=(pairs, 3)).tolist()
    tests = [welch(x, y) for x, y in zip(a, b)]
    covered = sum(w["ci_low"] <= 0.02 <= w["ci_high"] for w in tests) / pairs
    assert 0.92 < covered < 0.98, covered  # binomial sd 0.011
    assert all(w["significant"] == (not w["ci_low"] <= 0 <= w["ci_high"]) for w in tests)


def _interval(xs: list[float]) -> dict:
    """n, mean, sd and the 95% t interval, from scipy (one value apart: no interval)."""
    m, sd = statistics.fmean(xs), statistics.stdev(xs)
    lo, hi = st.t.interval(0.95, len(xs) - 1, loc=m, scale=st.sem(xs)) if sd > 0 else (m, m)
    return {"n": len(xs), "mean": m, "std": sd, "ci_low": lo, "ci_high": hi}


@pytest.mark.slow
def test_repeat_and_compare(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sets = set_args({**TINY, "model.name": "mlp"})
    (tmp_path / "slow.yaml").write_text(yaml.safe_dump({"extends": "quickstart", "optimizer": {"lr": 0.0005}}))
    code, out, err = cli(capsys, "repeat", "quickstart", "--seeds", "2", *sets, "--json")
    assert code == 0, err
    r = json.loads(out.strip().splitlines()[-1])
    assert r["seeds"] == [0, 1] and len(r["val_accuracy"]) == 2 and r["test"] is None
    runs = {int(f.parent.name[len("seed"):]): json.loads(f.read_text())["best_val_accuracy"]
            for f in Path("studies/repeat-quickstart/trials").glob("*/seed*/summary.json")}
    assert dict(zip(r["seeds"], r["val_accuracy"])) == runs  # each seed's figure is its own run's
    assert r["val"] == pytest.approx(_interval(r["val_accuracy"]))  # was: ci_low <= mean <= ci_high
    assert Path("studies/repeat-quickstart/repeat.json").is_file()
    code, out, err = cli(capsys, "compare", "studies/repeat-quickstart", "slow.yaml", "--seeds", "2", *sets, "--json")
    assert code == 0, err
    c = json.loads(out.strip().splitlines()[-1])
    v = c["tests"]["val"]
    assert c["a"] == "quickstart" and c["b"] == "slow"
    # was: ci_low <= difference <= ci_high (true of any interval around it); now the figures of both sides
    xa, xb = r["val_accuracy"], json.loads(Path("studies/repeat-slow/repeat.json").read_text())["val_accuracy"]
    assert len(xb) == 2 and v["difference"] == pytest.approx(statistics.fmean(xb) - statistics.fmean(xa))
    if statistics.variance(xa) + statistics.variance(xb) > 0:
        ref = st.ttest_ind(xb, xa, equal_var=False)
        ci = ref.confidence_interval()
        assert (v["ci_low"], v["ci_high"], v["p_value"]) == pytest.approx((ci.low, ci.high, ref.pvalue))
    else:  # every seed alike on both sides: no spread, the interval is the difference itself
        assert v["ci_low"] == v["ci_high"] == v["difference"]
    assert "val accuracy: slow - quickstart" in err


def test_compare_refuses_what_is_no_repeat_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    assert_user_error(cli(capsys, "compare", "empty", "quickstart"), ["'empty' is a folder", "repeat.json",
                                                                       "config.yaml"])
    good = {"name": "a", "val_accuracy": [0.5, 0.6], "test_accuracy": []}
    for i, text in enumerate(["{", "[1, 2]", "\xff", json.dumps({**good, "val_accuracy": "0.5"}),
                              json.dumps({**good, "val_accuracy": [0.5, 60]}), json.dumps({**good, "name": 3}),
                              json.dumps({**good, "test_accuracy": [True, False]}),
                              json.dumps({k: v for k, v in good.items() if k != "test_accuracy"}),
                              '{"name": "a", "val_accuracy": [NaN, 0.5], "test_accuracy": []}']):
        (tmp_path / f"r{i}").mkdir()
        (tmp_path / f"r{i}" / "repeat.json").write_text(text, encoding="latin-1")
        assert_user_error(cli(capsys, "compare", f"r{i}", f"r{i}"), [f"r{i}/repeat.json", "cifarlab repeat"],
                          context=text)
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "repeat.json").write_text(json.dumps(good))
    code, out, err = cli(capsys, "compare", "ok", "ok", "--json")
    assert code == 0 and json.loads(out.splitlines()[-1])["tests"]["val"]["difference"] == 0, err


def test_a_training_run_directory_is_repeated_as_the_config_it_ran(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(capsys, "train", "--recipe", "quickstart", *set_args({**TINY, "model.name": "mlp",
                                                                            "train.seed": 7}), "--out", "runs/mine")
    assert code == 0, err
    code, out, err = cli(capsys, "repeat", "runs/mine", "--seeds", "2", "--json")
    assert code == 0, err
    r = json.loads(out.strip().splitlines()[-1])
    assert r["name"] == "mine" and r["seeds"] == [7, 8]  # the run's own seed first, as for a recipe's
    (used,) = Path("studies/repeat-mine/trials").glob("*/seed7/config.yaml")
    assert load_config(config_file=used).model.name == "mlp"


def test_lr_find(tmp_path, capsys):
    sets = set_args(TINY)
    code, out, err = cli(capsys, "lr-find", "-r", "quickstart", *sets, "--steps", "40", "--start-lr", "1e-5",
                         "--end-lr", "100", "--out", tmp_path / "lr", "--json")
    assert code == 0, err
    r = json.loads(out.strip().splitlines()[-1])
    assert 1e-5 <= r["suggested_lr"] <= 100 and Path(r["plot"]).stat().st_size > 1000
    rows = (tmp_path / "lr" / "lr_find.csv").read_text().splitlines()
    assert len(rows) == r["steps"] + 1 <= 41
    lrs = [float(x.split(",")[1]) for x in rows[1:]]
    assert all(b > a for a, b in zip(lrs, lrs[1:]))  # exponentially increasing
    # Any LR tried lies in the range given; the suggestion must come from this run's curve and precede its
    # blow-up. (40 steps of the tiny config never get the loss off its plateau, so there is no descent to find
    # here: test_valley_suggestion_is_on_the_steep_descent checks that on a curve that has one.)
    from cifarlab.studies.lrfind import suggestions
    losses = [float(x.split(",")[2]) for x in rows[1:]]
    cut = max(5, len(lrs) - 3)  # lr_find leaves the last points (the explosion itself) out
    assert suggestions(lrs[:cut], losses[:cut]) == pytest.approx(r["suggestions"], rel=1e-4)
    assert r["suggested_lr"] == r["suggestions"]["valley"]
    at = min(range(len(lrs)), key=lambda i: abs(math.log(lrs[i] / r["suggested_lr"])))
    assert r["suggested_lr"] == pytest.approx(lrs[at], rel=1e-4)  # one of the LRs tried
    blow_up = next((i for i, v in enumerate(losses) if v > 1.01 * min(losses[:i + 1])), len(losses))
    assert blow_up < len(losses), losses  # --end-lr 100 does blow up: the check below has a point
    assert at < blow_up, (at, blow_up, losses)


# ---------------------------------------------------------------------- LR suggestions on a known curve

def _lr_range_curve(seed: int = 0) -> tuple[list[float], list[float], callable]:
    """A typical LR range test, as lr_find records it: flat (with noise) up to ~1e-4, a steep descent over
    two decades centred on 3e-3, the minimum near 0.1, then the explosion, cut where lr_find cuts it."""
    def clean(lr):
        x = math.log10(lr)
        return 0.4 + 1.9 / (1 + math.exp(3 * (x + 2.5))) + 4 * max(0.0, x + 1) ** 2

    rng = np.random.default_rng(seed)
    lrs, losses, best = [], [], math.inf
    for i in range(100):
        lr = 1e-7 * 10 ** (8 * i / 99)
        lrs.append(lr)
        losses.append(clean(lr) + rng.normal(0, 0.01))
        best = min(best, losses[-1])
        if losses[-1] > 4 * best:  # lr_find's stopping rule, then its cut of the last 3 points
            break
    cut = max(5, len(lrs) - 3)
    return lrs[:cut], losses[:cut], clean


def _in_descent(lr, clean) -> bool:
    """Between 10% and 90% of the way down from the plateau (2.3) to the floor (0.4), and before the floor."""
    return 0.4 + 0.1 * 1.9 < clean(lr) < 0.4 + 0.9 * 1.9 and lr < 0.1


def test_valley_suggestion_is_on_the_steep_descent():
    from cifarlab.studies.lrfind import suggestions, valley
    lrs, losses, clean = _lr_range_curve()
    s = suggestions(lrs, losses)
    assert s["valley"] == valley(lrs, losses)
    assert _in_descent(s["valley"], clean), s
    assert 3e-4 < s["valley"] < 1e-2, s  # the descent spans ~3e-4 (2.1) to ~2e-2 (0.6)
    lowest = lrs[min(range(len(lrs)), key=losses.__getitem__)]
    assert 0.05 < lowest < 0.2 and s["minimum"] == pytest.approx(lowest / 10)


def test_steep_suggestion_is_on_the_steep_descent():
    from cifarlab.studies.lrfind import suggestions
    lrs, losses, clean = _lr_range_curve()
    s = suggestions(lrs, losses)
    assert _in_descent(s["steep"], clean), s


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("second_fall", [0.3, 0.5, 0.7])  # per decade: steeper than the first descent, ending above it
def test_suggestions_ignore_a_fall_after_the_minimum(seed, second_fall):
    """A bounded loss (label smoothing, BatchNorm) rises past its minimum without exploding and may fall again
    at absurd LRs, as CifarNet's did (2.2 at lr 0.02, 3.1 at lr 1, 2.9 at lr 5): no suggestion may land there."""
    from cifarlab.studies.lrfind import suggestions

    def clean(lr):
        x = math.log10(lr)
        rise = 1.0 / (1 + math.exp(-4 * (x + 1)))  # up by 1.0 around lr 0.1
        fall = second_fall * max(0.0, x)  # then down again over lr 1..10
        return 0.9 + 0.5 / (1 + math.exp(1.5 * (x + 3))) + rise - fall  # a gentle first descent, as CifarNet's

    rng = np.random.default_rng(seed)
    lrs = [1e-5 * 10 ** (6 * i / 79) for i in range(80)]
    losses = [clean(lr) + rng.normal(0, 0.005) for lr in lrs]
    s = suggestions(lrs, losses)
    lowest = lrs[min(range(len(lrs)), key=losses.__getitem__)]
    assert lowest < 0.2, lowest  # the curve's own minimum is before the rise
    assert s["valley"] <= lowest and s["steep"] <= lowest, (s, lowest)
    assert s["minimum"] == pytest.approx(lowest / 10)
    assert 1e-4 < s["steep"] < 1e-2, s  # on the first descent, centred on 1e-3
