"""The seed recipes: each parses, names a registered model with valid options, carries the seed's figure,
and has a -short variant that trains (here cut further, to a few dozen images and one epoch)."""
import math

import pytest

from cifarlab.config import list_recipes, load_config
from cifarlab.models import build_model

RECIPES = sorted(list_recipes())
SEED_RECIPES = ["cifarnet", "cifarnet-tiny", "expert-net", "lenet5", "mlp", "tutorial-cnn", "vgg-arch13"]


def _shape_of(dataset):
    """(classes, image size) of a dataset spec, for building a recipe's model without reading the data."""
    return (200, 64) if dataset.startswith("tinyimagenet") else (10, 32)


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_parses_and_builds_its_model(name):
    cfg = load_config(recipe=name)
    classes, size = _shape_of(cfg.data.dataset)
    build_model(cfg.model.name, num_classes=classes, image_size=size, **cfg.model.options)


@pytest.mark.parametrize("name", SEED_RECIPES)
def test_seed_recipe_carries_the_seed_figure_and_a_short_variant(name):
    cfg = load_config(recipe=name)
    assert cfg.reported and 0 < cfg.reported.accuracy < 1 and cfg.reported.source.startswith("seed 00")
    assert cfg.reported.epochs == cfg.train.epochs
    short = load_config(recipe=f"{name}-short")
    assert short.data.dataset == "sample" and short.train.epochs <= 10 and short.reported is None
    assert (short.model, short.optimizer, short.schedule) == (cfg.model, cfg.optimizer, cfg.schedule)


def test_tiny_imagenet_recipe_needs_a_path():
    assert load_config(recipe="cifarnet-tiny").data.dataset == "tinyimagenet"  # the user adds :PATH


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "cifarnet" else n  # ~60 s, 2.4M params
                                  for n in SEED_RECIPES])
def test_short_recipe_trains(name, cache, tmp_path, monkeypatch):
    from cifarlab.train.entry import train

    monkeypatch.setenv("CIFARLAB_CACHE", str(cache))
    cfg = load_config(recipe=f"{name}-short", overrides={
        "data.train_limit": 20, "data.val_size": 20, "train.epochs": 1, "train.eval_batch_size": 20})
    summary = train(cfg, out=tmp_path / "run", log=lambda line: None)
    assert summary["status"] == "completed" and summary["epochs_run"] == 1
    assert 0 <= summary["best_val_accuracy"] <= 1 and math.isfinite(summary["val"]["loss"])
    # the best weights, evaluated again on the 20 validation images, give the epoch's figure: k/20
    assert summary["val"]["images"] == 20
    assert summary["val"]["accuracy"] == pytest.approx(summary["best_val_accuracy"], abs=1e-6)
    assert round(20 * summary["best_val_accuracy"], 6) == round(20 * summary["best_val_accuracy"])
    assert (tmp_path / "run" / "best.pt").is_file()
