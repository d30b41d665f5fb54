"""Property-based tests (hypothesis): random and malformed YAML, keys, values and command lines reach
the config loader, the study loader and the CLI. Each either works or says one line (exit 2): never a
traceback, never another exception, and never a training start on input it refuses.

Derandomised (the same examples every run), so CI is reproducible; to dig, run with
CIFARLAB_FUZZ_EXAMPLES=5000 (random examples, a different search every run).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cifarlab.cli.main import run
from cifarlab.config import load_config, parse_assignment
from cifarlab.errors import UserError
from cifarlab.schema import ExperimentConfig, _known_keys
from cifarlab.studies.space import read_study_file
from conftest import assert_user_error

DIG = int(os.environ.get("CIFARLAB_FUZZ_EXAMPLES", 0))  # e.g. 5000: random (not derandomised) examples
FUZZ = settings(max_examples=DIG or 120, deadline=None, database=None, derandomize=not DIG,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
KNOWN = sorted(_known_keys(ExperimentConfig)) + ["model.options.channels", "model.options.hidden",
                                                "model.options.widths", "model.options.dropout"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**9, 10**9), st.floats(), st.text(max_size=12),
                    st.sampled_from(["sample", "cifar10:/nope", "folder:", "sgd", "onecycle", "fp16", "1e-3",
                                     "-1", "0", "nan", "inf", "[1, 2]", "{a: 1}", "quickstart", "..", "/"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
key_parts = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", min_size=0, max_size=10)
keys = st.one_of(st.sampled_from(KNOWN), st.lists(key_parts, min_size=1, max_size=4).map(".".join),
                 st.text(max_size=20))


def one_line(err: UserError) -> None:
    msg = str(err)
    assert msg and "\n" not in msg, msg


def outcome(call) -> ExperimentConfig | None:
    """Run a loader: a config or a one-line UserError; anything else fails the property."""
    try:
        return call()
    except UserError as err:
        one_line(err)
        return None


# ---------------------------------------------------------------------- the config loader

@FUZZ
@given(st.dictionaries(keys, values, max_size=4))
def test_overrides_give_a_config_or_one_line(overrides):
    cfg = outcome(lambda: load_config(recipe="quickstart", overrides=overrides))
    if cfg is not None:  # accepted: a whole config, whose resolved YAML re-reads as itself (runs re-run from it)
        assert isinstance(cfg, ExperimentConfig)
        assert load_config(config_file=_write(cfg.to_yaml())).to_yaml() == cfg.to_yaml()


@FUZZ
@given(st.text(max_size=40))
def test_set_assignments_parse_or_one_line(text):
    outcome(lambda: parse_assignment(text))


def _write(text: str) -> Path:
    f = Path(tempfile.mkdtemp()) / "c.yaml"
    f.write_text(text)
    return f


@FUZZ
@given(st.one_of(st.text(max_size=200), st.binary(max_size=100).map(lambda b: b.decode("latin-1")),
                 values.map(lambda v: yaml.safe_dump(v, allow_unicode=True))))
def test_any_yaml_file_gives_a_config_or_one_line(text):
    outcome(lambda: load_config(config_file=_write(text)))


@FUZZ
@given(st.dictionaries(st.sampled_from(["model", "data", "optimizer", "schedule", "train", "name", "extends",
                                        "description", "reported", "bogus"]), values, min_size=1, max_size=4))
def test_mangled_sections_give_a_config_or_one_line(sections):
    base = load_config(recipe="quickstart").to_dict()
    base.update(sections)  # whole sections replaced by junk, extends: pointing anywhere
    outcome(lambda: load_config(config_file=_write(yaml.safe_dump(base, allow_unicode=True))))


def test_extends_cycles_and_missing_files_are_one_line(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    (tmp_path / "self.yaml").write_text("extends: self.yaml\n")
    (tmp_path / "gone.yaml").write_text("extends: nowhere.yaml\n")
    for name in ("a", "self", "gone"):
        with pytest.raises(UserError) as err:
            load_config(config_file=tmp_path / f"{name}.yaml")
        one_line(err.value)


# ---------------------------------------------------------------------- study files

study_keys = st.sampled_from(["name", "description", "base", "set", "method", "trials", "repeats", "seed",
                              "pruner", "space", "bogus"])


@FUZZ
@given(st.dictionaries(study_keys, values, max_size=5), st.dictionaries(keys, values, max_size=3))
def test_study_files_give_a_study_or_one_line(top, space):
    raw = {"base": "quickstart", "space": space, **top}
    try:
        read_study_file(str(_write(yaml.safe_dump(raw, allow_unicode=True))), {})
    except UserError as err:
        one_line(err)


# ---------------------------------------------------------------------- the command line

class TrainingStarted(Exception):
    pass


@pytest.fixture
def no_training(monkeypatch, tmp_path):
    """Anything that would start training raises TrainingStarted instead (and nothing is written in the repo)."""
    from cifarlab.studies import runner
    from cifarlab.train import distributed, trainer

    def started(*_a, **_k):
        raise TrainingStarted

    monkeypatch.setattr(trainer.Trainer, "__init__", started)
    monkeypatch.setattr(distributed, "launch", started)
    monkeypatch.setattr(runner, "sweep", started)
    monkeypatch.setattr(runner, "join", started)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")


def invoke(capsys, argv: list[str]) -> tuple[int | None, str]:
    try:
        code = run(argv)
    except TrainingStarted:
        code = None
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    if code is not None and code != 0:
        assert_user_error((code, err), context=argv)
    return code, err


FLAGS = ["--recipe", "--config", "--model", "--data", "--epochs", "--batch-size", "--lr", "--optimizer",
         "--schedule", "--weight-decay", "--seed", "--val-size", "--time-limit", "--precision", "--device",
         "--threads", "--set", "--out", "--resume", "--nproc", "--bogus", "-b", "-s"]
tokens = st.one_of(st.sampled_from(["1", "0", "-3", "2.5", "abc", "sample", "quickstart", "tutorial_cnn",
                                    "optimizer.lr=0.1", "train.epochs=x", "=", "a.b=c", "nope.yaml", ".", "",
                                    "--json", "--no-progress", "--help-me", "nan", "inf", "1e400"]),
                   st.text(max_size=10))
train_args = st.lists(st.tuples(st.sampled_from(FLAGS), tokens), max_size=5).map(
    lambda pairs: [x for pair in pairs for x in pair])


@FUZZ
@given(train_args)
def test_train_command_line(no_training, capsys, args):
    code, _ = invoke(capsys, ["train", *args])
    assert code in (None, 0, 2)  # 0: only --help-like exits; None: valid input reached the trainer


@FUZZ
@given(values.map(lambda v: yaml.safe_dump(v, allow_unicode=True)), st.lists(tokens, max_size=2))
def test_train_with_a_random_config_file(no_training, capsys, text, extra):
    f = _write(text)
    code, _ = invoke(capsys, ["train", "--config", str(f), *extra])
    assert code in (None, 2)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["--checkpoint", "--data", "--split", "--batch-size", "--device",
                                           "--tta", "--json", "--zzz"]), tokens), max_size=4))
def test_eval_command_line(no_training, capsys, pairs):
    code, _ = invoke(capsys, ["eval", *[x for p in pairs for x in p]])
    assert code in (0, 2)


@FUZZ
@given(st.dictionaries(study_keys, values, max_size=4), st.lists(tokens, max_size=3))
def test_sweep_command_line(no_training, capsys, top, extra):
    f = _write(yaml.safe_dump({"base": "quickstart", "space": {"optimizer.lr": [0.1]}, **top}, allow_unicode=True))
    code, _ = invoke(capsys, ["sweep", "--config", str(f), *extra])
    assert code in (None, 2)


def test_the_fixture_detects_a_training_start(no_training, capsys):
    """The properties above mean something only if a valid command would be caught starting."""
    code, _ = invoke(capsys, ["train", "--recipe", "quickstart", "--epochs", "1", "--out", "r"])
    assert code is None
    assert not os.path.exists("r") or not os.listdir("r") or set(os.listdir("r")) <= {".lock"}


# ---------------------------------------------------------------------- issue 13: bounds, aliases, resume

NUMERIC = ["train.epochs", "train.batch_size", "train.eval_batch_size", "train.seed", "train.threads",
           "train.time_limit_minutes", "train.early_stopping_patience", "train.label_smoothing", "train.grad_clip",
           "data.val_size", "data.split_seed", "data.train_limit", "data.augment.crop_padding", "data.augment.rotation",
           "data.augment.cutout", "optimizer.lr", "optimizer.momentum", "optimizer.weight_decay", "optimizer.eps",
           "optimizer.alpha", "schedule.warmup_epochs", "schedule.step_size", "schedule.gamma", "schedule.min_lr",
           "schedule.pct_start"]
huge = st.one_of(st.integers(-2**80, 2**80), st.floats(allow_nan=True, allow_infinity=True),
                 st.sampled_from([10**6, 10**9, 2**31, 2**32, 2**63, -1, -2**63, 1e300, -0.0]))


@FUZZ
@given(st.dictionaries(st.sampled_from(NUMERIC + ["optimizer.betas"]), huge | st.lists(huge, max_size=3), max_size=3))
def test_any_number_is_in_range_or_one_line(overrides):
    """Every number accepted lies within the schema's sane bounds: finite, and small enough for torch."""
    cfg = outcome(lambda: load_config(recipe="quickstart", overrides=overrides))
    if cfg is not None:
        from cifarlab.schema import MAX_SEED, MAX_THREADS
        t = cfg.train
        assert 1 <= t.epochs <= 100_000 and 0 <= t.seed <= MAX_SEED and (t.threads is None or t.threads <= MAX_THREADS)
        assert all(0 <= b < 1 for b in cfg.optimizer.betas) and 0 < cfg.optimizer.lr < float("inf")


@FUZZ
@given(st.integers(1, 12), st.integers(1, 12))
def test_yaml_aliases_are_bounded(levels, width):
    """Nested aliases of any shape: parsed when few, else one short line; never expanded without bound."""
    text = "a0: &a0 [x]\n" + "".join(f"a{i}: &a{i} [{', '.join(['*a' + str(i - 1)] * width)}]\n"
                                     for i in range(1, levels + 1))
    try:
        load_config(config_file=_write(text))
    except UserError as err:
        one_line(err)
        assert len(str(err)) < 400


@FUZZ
@given(st.dictionaries(st.sampled_from(KNOWN), values, min_size=1, max_size=3))
def test_resume_overrides_are_honoured_or_one_line(overrides):
    """On resume a change either lies in the keys resume can honour, or is refused in one line."""
    from cifarlab.train.resume_rules import RESUMABLE, apply_overrides
    raw = load_config(recipe="quickstart").to_dict()
    try:
        _cfg, changed = apply_overrides(raw, overrides, epochs_done=1)
    except UserError as err:
        one_line(err)
        return
    assert set(changed) <= set(RESUMABLE)
