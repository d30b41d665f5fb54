"""Search spaces that the space parser must refuse before anything is written: a step that is zero once made
whole, infinite, NaN, text or true, larger than the range, or so small Optuna's decimals overflow; a range
wider than a float; a float range over a whole-number key; a range over a true/false key; true among
numbers; a range valid at its ends only. Each is one line (exit 2) and no study directory or storage.
And the converse: every space the parser accepts gives trials whose configs validate."""
from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cifarlab.cli.main import run
from cifarlab.errors import UserError
from cifarlab.schema import validate_config
from cifarlab.studies.space import build_study
from conftest import assert_user_error

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
SET = {"train.epochs": 1, "data.train_limit": 200, "data.val_size": 100}


def study_file(folder: Path, space: dict, **keys) -> Path:
    f = folder / "st.yaml"
    f.write_text(yaml.safe_dump({"base": "quickstart", "set": SET, "trial_reports": False, "method": "random",
                                 "trials": 2, "space": space, **keys}))
    return f


BAD = [
    # the step
    ({"train.batch_size": {"int": [16, 64], "step": 0.5}}, "step must be a whole number for an int range, got 0.5"),
    ({"train.batch_size": {"int": [16, 64], "step": 2.5}}, "whole number for an int range"),
    ({"optimizer.lr": {"uniform": [0.01, 0.02], "step": float("inf")}}, "step must be a finite positive number, got inf"),
    ({"optimizer.lr": {"uniform": [0.01, 0.02], "step": float("-inf")}}, "finite positive number"),
    ({"optimizer.lr": {"uniform": [0.01, 0.02], "step": float("nan")}}, "finite positive number, got nan"),
    ({"optimizer.lr": {"uniform": [0.01, 0.02], "step": 0}}, "finite positive number, got 0"),
    ({"optimizer.lr": {"uniform": [0.01, 0.02], "step": -0.001}}, "finite positive number"),
    ({"optimizer.lr": {"uniform": [0.01, 0.02], "step": True}}, "finite positive number, got True"),
    ({"optimizer.lr": {"uniform": [0.01, 0.02], "step": "0.001"}}, "finite positive number, got '0.001'"),
    ({"optimizer.lr": {"uniform": [0.01, 0.02], "step": [0.001]}}, "finite positive number"),
    ({"optimizer.lr": {"uniform": [0.01, 0.02], "step": 0.5}}, "step 0.5 is larger than the range [0.01, 0.02]"),
    ({"train.batch_size": {"int": [16, 64], "step": 64}}, "give a step of at most 48"),
    ({"optimizer.lr": {"uniform": [0.01, 0.02], "step": 1e-300}}, "steps: give a larger step"),
    ({"optimizer.momentum": {"uniform": [0.0, 0.9], "step": 5e-324}}, "give a larger step"),
    ({"optimizer.lr": {"log_uniform": [0.01, 0.1], "step": 0.01}}, "log ranges have no step"),
    ({"train.batch_size": {"log_int": [16, 64], "step": 2}}, "log ranges have no step"),
    # the bounds
    ({"optimizer.lr": {"uniform": [-1e308, 1e308]}}, "spans more than a float can hold"),
    ({"optimizer.lr": {"uniform": [0.01, float("inf")]}}, "low < high"),
    ({"train.batch_size": {"int": [16, float("nan")]}}, "low < high"),
    # the schema: a float range over a whole-number key, a range over a true/false key, true among numbers
    ({"train.batch_size": {"uniform": [16, 64]}}, "'train.batch_size' takes whole numbers, and uniform draws floats: "
                                                  "use {int: [16, 64]}"),
    ({"train.batch_size": {"log_uniform": [16, 64]}}, "use {log_int: [16, 64]}"),
    ({"train.batch_size": {"uniform": [16, 64], "step": 8}}, "use {int: [16, 64], step: 8}"),
    ({"train.epochs": {"uniform": [1.5, 3.5]}}, "use whole ends, e.g. {int: [2, 3]}"),
    ({"data.augment.cutout": {"uniform": [0, 8]}}, "'data.augment.cutout' takes whole numbers"),
    ({"model.options.channels": {"uniform": [4, 8]}}, "'model.options.channels' takes whole numbers, and uniform draws "
                                                      "floats (such as 4.0): use {int: [4, 8]}"),
    ({"data.val_size": {"uniform": [50, 150]}}, "'data.val_size' takes whole numbers"),  # valid at its ends only
    ({"train.channels_last": {"int": [0, 1]}}, "'train.channels_last' is a true/false setting, which has no range"),
    ({"train.tta_flip": {"uniform": [0, 1]}}, "is a true/false setting, which has no range"),
    ({"data.augment.flip": {"int": [0, 1]}}, "'data.augment.flip' is a true/false setting"),
    ({"train.batch_size": [32, True]}, "'train.batch_size' takes numbers, and true is not one"),
    ({"optimizer.lr": [0.01, False]}, "'optimizer.lr' takes numbers, and false is not one"),
    ({"train.channels_last": [True, 1]}, "'train.channels_last' is a true/false setting, and 1 is not true or false"),
    ({"train.batch_size": [32, "big"]}, "train.batch_size"),
    ({"train.batch_size": [32, 64.5]}, "fractional part"),
    # a value drawn from inside the range: both ends are valid, the middle is not
    ({"data.val_size": {"uniform": [0.05, 50]}}, "data.val_size=18.5"),
    ({"optimizer.momentum": {"uniform": [0.5, 1.5]}}, "optimizer.momentum=1.5 (a value uniform [0.5, 1.5] can draw)"),
]


@pytest.mark.parametrize("space,message", BAD, ids=[json.dumps(s)[:60] for s, _ in BAD])
def test_a_bad_space_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch, space, message):
    monkeypatch.chdir(tmp_path)  # a default storage or studies/ folder would land here
    f = study_file(tmp_path, space)
    code = run(["sweep", "--config", str(f), "--out", str(tmp_path / "st" / "out")])
    out, err = capsys.readouterr()
    assert_user_error((code, err), message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["st.yaml"]  # no study directory, no storage


GOOD = [
    {"train.batch_size": {"int": [16, 64], "step": 16}},
    {"train.batch_size": {"log_int": [16, 256]}},
    {"optimizer.lr": {"uniform": [0.01, 0.02], "step": 0.001}},
    {"optimizer.lr": {"uniform": [0.01, 0.02], "step": 0.01}},  # the step equals the range: both ends
    {"optimizer.lr": {"log_uniform": [1e-4, 1e-1]}, "optimizer.momentum": {"uniform": [0.8, 0.99]}},
    {"train.label_smoothing": {"uniform": [0, 1e-12]}},
    {"data.val_size": {"int": [50, 150], "step": 10}},
    {"model.options.dropout": {"uniform": [0.0, 0.5]}},
    {"train.channels_last": [True, False], "data.augment.flip": [False, "alternate"]},
    {"train.tta_level": {"int": [0, 2]}},
]


@pytest.mark.parametrize("space", GOOD, ids=[json.dumps(s)[:60] for s in GOOD])
def test_an_accepted_space_gives_trials_that_validate(space):
    study = build_study({"base": "quickstart", "set": SET, "method": "random", "trials": 8, "space": space}, "test")
    sampler = optuna.samplers.RandomSampler(seed=0)
    s = optuna.create_study(sampler=sampler, direction="maximize")
    for _ in range(8):
        trial = s.ask()
        params = {p.key: p.suggest(trial) for p in study.params}
        validate_config(study.config(params))
        s.tell(trial, 0.5)


# ---------------------------------------------------------------------- property: accepted means it runs

# each key with ends near its limits: most ranges reach the schema checks, some pass them
NEAR = {"optimizer.lr": [1e-4, 0.01, 0.5], "optimizer.momentum": [0.0, 0.5, 0.9], "train.batch_size": [1, 16, 32],
        "train.epochs": [1, 2], "train.channels_last": [0, 1], "data.val_size": [0.05, 0.5, 50, 100],
        "train.label_smoothing": [0.0, 0.1], "model.options.dropout": [0.0, 0.3], "train.tta_level": [0, 1]}


@st.composite
def spaces(draw) -> dict:
    """One key and a mostly well-formed range (low < high, whole ends for int kinds most of the time) with
    a step both plausible (a fraction of the range, a whole number) and not (0, inf, nan, true, text)."""
    key = draw(st.sampled_from(sorted(NEAR)))
    kind = draw(st.sampled_from(["uniform", "log_uniform", "int", "log_int"]))
    low = draw(st.sampled_from(NEAR[key]) | st.floats(0, 200))
    width = draw(st.sampled_from([1, 2, 48, 0.01, 0.4, 1e-12, 1e300]) | st.floats(1e-6, 500))
    high = low + width
    if kind.endswith("int") and draw(st.integers(0, 3)):
        low, high = round(low), round(low) + max(1, round(min(width, 1e6)))
    step = draw(st.none() | st.none() | st.sampled_from([1, 2, 8, 0.5, 0, -1, float("inf"), float("nan"), True, "1", 1e-300])
                | st.floats(0, 1).map(lambda f: f * (high - low)))
    return {key: {kind: [low, high], **({} if step is None else {"step": step})}}


@settings(max_examples=150, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(spaces())
def test_a_range_is_refused_in_one_line_or_every_trial_validates(space):
    try:
        study = build_study({"base": "quickstart", "set": SET, "method": "random", "trials": 3, "space": space}, "test")
    except UserError as err:
        assert str(err) and "\n" not in str(err)
        return
    s = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1), direction="maximize")
    for _ in range(3):
        trial = s.ask()
        params = {p.key: p.suggest(trial) for p in study.params}
        cfg = validate_config(study.config(params))
        if "model.options.dropout" in space:
            from cifarlab.models import build_model
            build_model(cfg.model.name, **cfg.model.options)
        s.tell(trial, 0.5)


@pytest.mark.parametrize("make,message", [
    (lambda d: d, "is a folder: give the YAML file itself"),
    (lambda d: (d / "bin.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x94\xff") and d / "bin.yaml", "not UTF-8 text"),
    (lambda d: d / "missing.yaml", "does not exist: give a path or a preset"),
])
def test_a_study_file_that_is_no_yaml_text_is_one_line(tmp_path, capsys, make, message):
    target = make(_folder(tmp_path / "in"))
    code = run(["sweep", "--config", str(target), "--out", str(tmp_path / "out")])
    assert_user_error((code, capsys.readouterr().err), message)
    assert not (tmp_path / "out").exists()


def _folder(p: Path) -> Path:
    p.mkdir()
    return p
