"""Configs and recipes: validation, overrides, extends, and the one-line messages for mistakes."""
import pytest

from cifarlab.config import list_recipes, load_config, parse_assignment
from cifarlab.errors import UserError
from cifarlab.schema import validate_config


def test_defaults_and_overrides():
    cfg = load_config(overrides={"train.epochs": 3, "optimizer.lr": 0.1, "data.augment.flip": True})
    assert cfg.train.epochs == 3 and cfg.optimizer.lr == 0.1 and cfg.data.augment.flip
    assert validate_config(cfg.to_dict()) == cfg  # the resolved config round-trips


def test_every_recipe_validates():
    names = list(list_recipes())
    assert "quickstart" in names
    for name in names:
        assert load_config(recipe=name).name


def test_extends_deep_merges(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("extends: quickstart\ntrain: {epochs: 2}\noptimizer: {lr: 0.2}\n")
    cfg = load_config(config_file=f)
    base = load_config(recipe="quickstart")
    assert cfg.train.epochs == 2 and cfg.optimizer.lr == 0.2
    assert cfg.train.batch_size == base.train.batch_size and cfg.optimizer.name == base.optimizer.name


def test_changing_the_model_drops_the_other_models_options():
    cfg = load_config(overrides={"model.options": {"hidden": [64]}, "model.name": "mlp"})
    assert cfg.model.options == {"hidden": [64]}
    raw_cfg = load_config(overrides={"model.name": "mlp"})
    assert raw_cfg.model.options == {}


@pytest.mark.parametrize("overrides,match", [
    ({"train.epoch": 3}, r"unknown config key 'train.epoch' \(did you mean 'train.epochs'\?\)"),
    ({"train.batch_size": 0}, "train.batch_size': Input should be greater than or equal to 1"),
    ({"optimizer.lr": -0.1}, "optimizer.lr': Input should be greater than 0"),
    ({"optimizer.name": "adm"}, "optimizer.name'"),
    ({"train.epochs": "many"}, "train.epochs'"),
    ({"data.val_size": 12.5}, "whole count"),
    ({"data.normalize": [[0.5], [0.5, 0.5]]}, "normalize"),
    ({"schedule.name": "cosnie"}, "schedule.name'"),
])
def test_bad_values_are_one_line_errors(overrides, match):
    with pytest.raises(UserError, match=match) as err:
        load_config(overrides=overrides)
    assert "\n" not in str(err.value)


def test_bad_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(config_file=tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("train: {epochs: [1, 2}\n")
    with pytest.raises(UserError, match="not valid YAML at line 1"):
        load_config(config_file=tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(UserError, match="mapping"):
        load_config(config_file=tmp_path / "list.yaml")
    (tmp_path / "loop.yaml").write_text("extends: loop-does-not-exist\n")
    with pytest.raises(UserError, match="unknown recipe"):
        load_config(config_file=tmp_path / "loop.yaml")
    with pytest.raises(UserError, match="did you mean 'quickstart'"):
        load_config(recipe="quickstrat")
    with pytest.raises(UserError, match="either --recipe or --config"):
        load_config(recipe="quickstart", config_file=tmp_path / "x.yaml")


def test_parse_assignment():
    assert parse_assignment("train.epochs=5") == ("train.epochs", 5)
    assert parse_assignment("data.augment.flip=true") == ("data.augment.flip", True)
    assert parse_assignment("schedule.milestones=[9, 20]") == ("schedule.milestones", [9, 20])
    assert parse_assignment("name=my run") == ("name", "my run")
    with pytest.raises(UserError, match="KEY=VALUE"):
        parse_assignment("train.epochs")
