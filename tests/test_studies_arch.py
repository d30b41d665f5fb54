"""The studies' seams: sweep methods and pruners as registries (a new method end to end), Optuna's
internals behind one adapter (pop without creating, beat before RUNNING, retries), no import-time
side effects, and the one log-scale rule of the plots."""
from __future__ import annotations

import subprocess
import sys
import time
import warnings
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from cifarlab.cli.main import run
from cifarlab.studies import optuna_adapter as adapter
from cifarlab.studies.methods import Grid, enqueue_missing, get_method, method_names, register_method
from cifarlab.studies.pruners import build_pruner, pruner_names
from cifarlab.studies.runner import open_storage, sweep
from cifarlab.studies.space import build_study

TINY = {"data.dataset": "sample", "data.train_limit": 300, "data.val_size": 100, "train.epochs": 1,
        "train.batch_size": 32, "train.threads": 1, "schedule.name": "constant", "model.name": "mlp"}
SRC = str(Path(__file__).resolve().parents[1] / "src")


@register_method("first-two-of-grid")
class FirstTwoOfGrid(Grid):
    """A toy method, registered the way a plugin would: only the first two grid points."""

    def enqueue(self, study, s):
        enqueue_missing(s, [(p, {"slot": f"first-{i}"}) for i, p in enumerate(study.grid()[:2])])


def cli(capsys, *args):
    code = run([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


# ---------------------------------------------------------------------- registries

def test_builtin_methods_and_pruners_are_registered():
    assert {"grid", "ofat", "random", "tpe", "first-two-of-grid"} <= set(method_names())
    assert pruner_names() == ["halving", "median", "none"]
    assert isinstance(build_pruner("median"), optuna.pruners.MedianPruner)
    assert get_method("tpe").asks and get_method("tpe").takes_ranges and not get_method("grid").asks
    assert get_method("ofat").stepwise and not get_method("ofat").fixed_queue
    with pytest.raises(ValueError, match="registered twice"):
        register_method("grid")(Grid)


@pytest.mark.parametrize("key,value,message", [
    ("method", "anneal", "unknown sweep method 'anneal': use one of "),
    ("method", "gird", "did you mean 'grid'?"),
    ("pruner", "medain", "unknown pruner 'medain': did you mean 'median'? use one of halving, median, none"),
])
def test_unknown_method_or_pruner_is_one_line_naming_the_known_ones(tmp_path, capsys, key, value, message):
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump({"name": "s", "base": "quickstart", "set": TINY, "space": {"optimizer.lr": [0.1]},
                                 key: value}))
    code, out, err = cli(capsys, "sweep", "--config", f, "--out", tmp_path / "st")
    assert code == 2 and err.count("\n") == 1 and f"study key '{key}'" in err and message in err, err
    if key == "method":
        assert "grid, ofat, random, tpe" in err
    assert not (tmp_path / "st").exists()


def test_a_registered_method_runs_a_sweep_end_to_end_without_optuna_warning_noise(tmp_path):
    study = build_study({"name": "toy", "base": "quickstart", "set": TINY, "method": "first-two-of-grid",
                         "space": {"optimizer.lr": [0.003, 0.01, 0.03]}}, "toy study")
    lines: list[str] = []
    verbosity = optuna.logging.get_verbosity()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = sweep(study, tmp_path / "st", log=lines.append)
    noise = [w for w in caught if issubclass(w.category, (optuna.exceptions.ExperimentalWarning, FutureWarning))]
    assert not noise, [str(w.message) for w in noise]
    assert optuna.logging.get_verbosity() == verbosity  # a library call leaves the caller's logging alone
    trials = optuna.load_study(study_name="toy", storage=f"sqlite:///{tmp_path / 'st' / 'study.db'}").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert [t.params["optimizer.lr"] for t in trials] == [0.003, 0.01]
    assert summary["method"] == "first-two-of-grid" and summary["trials"]["COMPLETE"] == 2
    assert "# Study toy (first-two-of-grid)" in (tmp_path / "st" / "results.md").read_text()
    assert [Path(p).name for p in summary["plots"]] == ["optimizer.lr.png"]
    assert any("0 trials finished before" in x for x in lines)


# ---------------------------------------------------------------------- no side effects on import

def test_importing_the_studies_leaves_warning_filters_and_optuna_logging_alone():
    # torch, scipy and numpy add filters of their own when imported: judge only the ones about optuna
    code = ("import warnings, optuna\n"
            "about_optuna = lambda: [f for f in warnings.filters if 'optuna' in str(getattr(f[3], 'pattern', f[3])) "
            "or f[2].__module__.startswith('optuna')]\n"
            "before, level = about_optuna(), optuna.logging.get_verbosity()\n"
            "import cifarlab.studies.runner, cifarlab.studies.outputs, cifarlab.studies.repeats, "
            "cifarlab.studies.lrfind, cifarlab.studies.ofat, cifarlab.cli.studies\n"
            "assert about_optuna() == before, about_optuna()\n"
            "assert optuna.logging.get_verbosity() == level\n"
            "from cifarlab.studies.optuna_adapter import quiet_optuna\n"
            "quiet_optuna()\n"  # and the command line's switch does change them
            "assert optuna.logging.get_verbosity() == optuna.logging.WARNING and len(about_optuna()) == 2\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------------- the Optuna adapter

@pytest.fixture
def study_on_disk(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'a.db'}", heartbeat=1)
    return optuna.create_study(study_name="a", storage=storage, direction="maximize")


def _open_and_report(url: str, results) -> None:
    try:
        open_storage(url, heartbeat=1)
        results.put("ok")
    except BaseException as err:  # noqa: BLE001 - the parent reports what a child saw
        results.put(repr(err)[:200])


@pytest.mark.parametrize("openers", [2, 4])
def test_processes_opening_one_fresh_storage_at_once_all_get_it(tmp_path, openers):
    # A sweep, its workers and a dashboard may all open a new study.db in the same instant; Optuna
    # creates its tables one by one, so without retrying the losers saw 'table studies already exists'.
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    for round_ in range(4):
        url = f"sqlite:///{tmp_path / f'fresh-{round_}.db'}"
        results = ctx.Queue()
        procs = [ctx.Process(target=_open_and_report, args=(url, results)) for _ in range(openers)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [results.get(timeout=5) for _ in procs] == ["ok"] * openers


def test_pop_waiting_takes_each_queued_trial_once_and_never_creates_one(study_on_disk):
    s = study_on_disk
    assert adapter.pop_waiting(s) is None and s.get_trials() == []  # Study.ask would have made a trial here
    s.enqueue_trial({"x": 1})
    trial = adapter.pop_waiting(s)
    assert trial is not None and trial.number == 0
    assert s.get_trials()[0].state == TrialState.RUNNING
    assert adapter.pop_waiting(s) is None and len(s.get_trials()) == 1
    assert adapter.point(s.get_trials()[0]) == {"x": 1}


@pytest.mark.parametrize("suggested", [False, True])
def test_a_trial_killed_before_or_after_its_suggestion_keeps_its_point_and_its_retry_trains_it(study_on_disk,
                                                                                              suggested):
    s = study_on_disk  # CI once killed a sweep between a trial's start and its first suggestion
    s.enqueue_trial({"x": 3, "y": "a"})
    trial = adapter.pop_waiting(s)
    if suggested:
        trial.suggest_int("x", 0, 5)
    s.tell(trial, state=TrialState.FAIL)
    failed = s.get_trials()[0]
    assert adapter.point(failed) == {"x": 3, "y": "a"}
    adapter.retry(s, failed, max_retry=2)
    again = adapter.pop_waiting(s)
    assert adapter.retried_from(s.get_trials()[1]) == 0
    assert adapter.point(s.get_trials()[1]) == {"x": 3, "y": "a"}
    assert again.suggest_int("x", 0, 5) == 3 and again.suggest_categorical("y", ["a", "b"]) == "a"


def test_a_popped_trial_goes_stale_without_beats_and_stays_alive_with_them(study_on_disk):
    s = study_on_disk  # heartbeat 1 s, grace 3 s
    s.enqueue_trial({"x": 1})
    s.enqueue_trial({"x": 2})
    kept = adapter.pop_waiting(s)
    dropped = adapter.pop_waiting(s)  # its worker "dies": only the beat taken before RUNNING is recorded
    with adapter.heartbeat(s, kept):
        time.sleep(4.5)
        adapter.fail_stale(s)
    states = {t.number: t.state for t in s.get_trials()}
    assert states[kept.number] == TrialState.RUNNING
    assert states[dropped.number] == TrialState.FAIL  # a RUNNING trial without any beat would never go stale
    retry = s.get_trials()[-1]
    assert retry.state == TrialState.WAITING and adapter.retried_from(retry) == dropped.number
    assert adapter.retry_history(retry) == [dropped.number]


def test_retry_re_enqueues_a_failed_trial_with_its_params(study_on_disk):
    s = study_on_disk
    trial = adapter.ask(s)
    trial.suggest_float("x", 0.0, 1.0)
    s.tell(trial, state=TrialState.FAIL)
    original = s.get_trials()[0]
    assert adapter.retried_from(original) is None
    adapter.retry(s, original, max_retry=3)
    again = s.get_trials()[1]
    assert again.state == TrialState.WAITING and again.params == original.params
    assert adapter.retried_from(again) == original.number


# ---------------------------------------------------------------------- plots

@pytest.mark.parametrize("values,log_range,expected", [
    ([1e-4, 1e-3, 1e-2], False, True),   # learning rates
    ([16, 32, 64, 128, 256], False, True),  # batch sizes over a decade
    ([32, 64], False, False),
    ([0.01, 0.1], False, True),          # exactly one decade
    ([0.0, 0.5, 0.9], False, False),     # momentum: zero cannot go on a log axis
    ([-1.0, 10.0], True, False),
    ([0.02, 0.05], True, True),          # drawn from a log range: log even within a decade
    ([], False, False),
])
def test_log_scale_rule(values, log_range, expected):
    from cifarlab.report.plots import use_log_scale
    assert use_log_scale(values, log_range) is expected


def test_study_and_lr_plots_follow_the_rule():
    from cifarlab.report.plots import plot_lr_find, plot_metric_vs_param
    assert plot_metric_vs_param([16, 256, 64], [0.5, 0.6, 0.55], "batch").axes[0].get_xscale() == "log"
    assert plot_metric_vs_param([0.0, 0.9], [0.5, 0.6], "momentum").axes[0].get_xscale() == "linear"
    assert plot_metric_vs_param([0.02, 0.05], [0.5, 0.6], "lr", log_range=True).axes[0].get_xscale() == "log"
    assert plot_metric_vs_param([0.02, 0.05], [0.5, 0.6], "lr", log_x=False, log_range=True).axes[0].get_xscale() \
        == "linear"
    fig = plot_metric_vs_param([[1, 2], [3]], [0.5, 0.6], "widths", connect=True, tick_label=str, title="t")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["[1, 2]", "[3]"]
    lrs = [1e-3 * 1.5 ** i for i in range(20)]
    fig = plot_lr_find(lrs, [1.0 / (i + 1) for i in range(20)], {"valley": lrs[5], "steep": lrs[3]}, "x")
    assert fig.axes[0].get_xscale() == "log"
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()][0].startswith("valley")


@pytest.mark.parametrize("outcome", ["result", "crash", "pruned"])
def test_a_worker_whose_trial_was_handed_to_a_retry_logs_it_and_goes_on(study_on_disk, tmp_path, monkeypatch, outcome):
    """A trial failed by another worker (missed heartbeats on a busy machine) while it still trains: whatever
    its run then does, recording it must not crash the worker (optuna's UpdateFinishedTrialError)."""
    import cifarlab.studies.trial as trial_module
    from cifarlab.studies.runner import run_trial

    s = study_on_disk
    study = build_study({"name": "a", "base": "quickstart", "set": TINY, "method": "grid",
                         "space": {"optimizer.lr": [0.01]}}, "test")
    s.enqueue_trial({"optimizer.lr": 0.01})
    trial = adapter.pop_waiting(s)

    def taken_over(*_args, **_kw):
        s.tell(trial.number, state=TrialState.FAIL)  # what fail_stale does from another worker
        if outcome == "crash":
            raise RuntimeError("boom")
        if outcome == "pruned":
            raise optuna.TrialPruned()
        return {"val_accuracy": 0.5, "seeds": [0]}

    monkeypatch.setattr(trial_module, "train_seeds", taken_over)
    lines = []
    run_trial(study, s, trial, tmp_path, lines.append)  # must not raise
    assert any("handed to a retry" in line for line in lines), lines
    assert s.get_trials()[0].state == TrialState.FAIL  # the other worker's verdict stands


# ---------------------------------------------------------------------- a trial cut off mid-way

class _CutAfter:
    """Stands for kill -9 after `epoch`: the epoch's checkpoints are written before callbacks run."""

    def __init__(self, epoch):
        self.epoch = epoch

    def __call__(self, trainer, row):
        if row["epoch"] == self.epoch:
            raise SystemExit("killed")


def _metrics(run: Path) -> list[str]:
    # the figures of each epoch without its timings, which differ from run to run
    return [",".join(line.split(",")[:5]) for line in (run / "metrics.csv").read_text().splitlines()]


@pytest.mark.parametrize("cut_after", [1, 2])
def test_a_trial_cut_off_mid_way_continues_from_its_checkpoint_exactly(tmp_path, cut_after):
    from cifarlab.studies.trial import train_one
    from test_report import synthetic_data, tiny_config

    cfg = tiny_config(**{"train.epochs": 3})
    with synthetic_data():
        whole = train_one(cfg, tmp_path / "whole", report=False)
        with pytest.raises(SystemExit):
            train_one(cfg, tmp_path / "cut", [_CutAfter(cut_after)], report=False)
        assert not (tmp_path / "cut" / "summary.json").exists()
        seen = []
        again = train_one(cfg, tmp_path / "cut", [lambda trainer, row: seen.append(row["epoch"])], report=False)
    assert seen == list(range(cut_after + 1, 4))  # only the epochs left were trained
    assert _metrics(tmp_path / "cut") == _metrics(tmp_path / "whole")
    assert again["best_val_accuracy"] == whole["best_val_accuracy"]


@pytest.mark.parametrize("damage", ["other config", "damaged checkpoint", "no checkpoint"])
def test_a_cut_off_run_that_cannot_continue_is_trained_again_from_scratch(tmp_path, damage):
    from cifarlab.studies.trial import train_one
    from test_report import synthetic_data, tiny_config

    cfg = tiny_config(**{"train.epochs": 2})
    run = tmp_path / "cut"
    with synthetic_data():
        ran = tiny_config(**{"train.epochs": 2, "optimizer.lr": 0.01}) if damage == "other config" else cfg
        with pytest.raises(SystemExit):
            train_one(ran, run, [_CutAfter(1)], report=False)
        if damage == "damaged checkpoint":
            (run / "last.pt").write_bytes(b"not a checkpoint")
        elif damage == "no checkpoint":
            (run / "last.pt").unlink()
        seen = []
        train_one(cfg, run, [lambda trainer, row: seen.append(row["epoch"])], report=False)
    assert seen == [1, 2]
    assert len((run / "metrics.csv").read_text().splitlines()) == 3


# ---------------------------------------------------------------------- storage URLs

def test_a_storage_that_cannot_open_leaves_no_folder_and_never_shows_its_password(capsys, tmp_path, monkeypatch):
    from conftest import assert_user_error
    monkeypatch.chdir(tmp_path)
    for url in ("postgresql://me:s3cret@127.0.0.1:1/db", "foo://me:s3cret@host/db", "sqlite:////no/such/dir/x.db"):
        for how in ("flag", "env"):
            args = ["--storage", url] if how == "flag" else []
            if how == "env":
                monkeypatch.setenv("CIFARLAB_STORAGE", url)
            for command in (["sweep", "--config", "lr-seed000-short", "--out", "st"], ["repeat", "quickstart",
                                                                                        "--out", "st"],
                            ["worker", "--study", "x", "--out", "st"]):
                line = assert_user_error(cli(capsys, *command, *args))
                assert "cannot open study storage" in line or "no study storage at" in line, line
                assert "s3cret" not in line and "Background on this error" not in line, line
            monkeypatch.delenv("CIFARLAB_STORAGE", raising=False)
    assert list(tmp_path.iterdir()) == []
    # a worker never creates the SQLite file a mistyped URL names
    line = assert_user_error(cli(capsys, "worker", "--study", "x", "--storage", "sqlite:///typo.db"), "no study storage")
    assert "typo.db" in line and not (tmp_path / "typo.db").exists()
    optuna.create_study(study_name="mine", storage=open_storage("sqlite:///there.db", heartbeat=1))
    assert_user_error(cli(capsys, "worker", "--study", "nope", "--storage", "sqlite:///there.db"),
                      ["no study named 'nope'", "it has: mine"])


def test_local_workers_get_the_storage_url_outside_their_command_line(tmp_path, monkeypatch):
    from cifarlab.studies import runner
    seen = []
    monkeypatch.setattr(subprocess, "Popen", lambda cmd, **kw: seen.append((cmd, kw["env"])) or object())
    url = "postgresql://me:s3cret@db.example.org/studies"
    runner._spawn_workers(2, "s", url, tmp_path, heartbeat=5)
    assert len(seen) == 2
    for cmd, env in seen:  # `ps` shows argv to every user of the machine; the environment only to its owner
        assert url not in " ".join(cmd) and "--storage" not in cmd and env["CIFARLAB_STORAGE"] == url
    from cifarlab.cli import studies as commands
    assert commands.STORAGE_ENV == runner.STORAGE_ENV == "CIFARLAB_STORAGE"  # what the worker command reads


@pytest.mark.parametrize("damage", ["text", "cut", "empty-header"])
def test_a_damaged_study_database_is_named_as_such(capsys, tmp_path, damage):
    from conftest import assert_user_error
    good = tmp_path / "good.db"
    optuna.create_study(study_name="s", storage=open_storage(f"sqlite:///{good}", heartbeat=1))
    bad = tmp_path / "st" / "study.db"
    bad.parent.mkdir()
    data = good.read_bytes()
    bad.write_bytes({"text": b"not a database\n" * 100, "cut": data[:3000], "empty-header": b"SQLite format 3\0" +
                     bytes(200)}[damage])
    before = bad.read_bytes()
    for command in (["sweep", "--config", "lr-seed000-short", "--out", tmp_path / "st"],
                    ["worker", "--study", "s", "--storage", f"sqlite:///{bad}"]):
        assert_user_error(cli(capsys, *command), ["is damaged or not a study database", "restore it"])
    assert bad.read_bytes() == before  # left as it was, for the user to restore or inspect
