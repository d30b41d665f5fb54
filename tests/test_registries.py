"""The plug-in registries (model, dataset, optimizer, schedule): an entry registered from outside the
package, here from this file only, is built by name from a config and trains end to end; an unknown
name is one line naming the known ones, and never silently becomes another entry."""
from contextlib import contextmanager

import numpy as np
import pytest
import torch
import torch.nn as nn

from cifarlab.config import load_config
from cifarlab.data.registry import DATASETS, register_dataset, spec_help
from cifarlab.data.sources import load_dataset
from cifarlab.data.types import RawDataset
from cifarlab.errors import UserError
from cifarlab.models import build_model, register_model
from cifarlab.models.registry import MODELS
from cifarlab.registry import Registry
from cifarlab.schema import OptimizerConfig, ScheduleConfig
from cifarlab.train.entry import train
from cifarlab.train.optim import (
    OPTIMIZERS,
    SCHEDULES,
    build_optimizer,
    build_scheduler,
    lr_factor,
    optimizer_states,
    register_optimizer,
    register_schedule,
)
from cifarlab.train.rundir import read_metrics
from conftest import class_pattern, tiny_overrides


def quiet(_line):
    pass


@contextmanager
def registered(registry: Registry, name: str):
    """Unregister `name` afterwards, so other tests see only the built-in entries."""
    try:
        yield
    finally:
        registry.remove(name)


def _colour_classes(alloc, classes=3, per_class=30, size=16):
    """`per_class` images of each colour class, decoded into the arrays `alloc` hands out."""
    n = classes * per_class
    x = alloc("train_x", (n, 3, size, size))
    for i in range(n):
        x[i] = class_pattern(i % classes, i, size).transpose(2, 0, 1)
    return RawDataset(x, np.arange(n, dtype=np.int64) % classes, [f"c{c}" for c in range(classes)])


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A dataset kind `toy:PATH` registered from here (PATH: any file; its bytes key the cache); yields
    (the spec, the paths its reader was called with)."""
    reads = []
    source = tmp_path_factory.mktemp("toy") / "toy.txt"
    source.write_text("3 colour classes\n")
    with registered(DATASETS, "toy"):
        @register_dataset("toy", path="required")
        def read_toy(path, alloc):
            """Colour classes, made up on the spot."""
            reads.append(path)
            return _colour_classes(alloc)
        yield f"toy:{source}", reads


def tiny_run(tmp_path, spec, **extra) -> tuple[dict, list[dict]]:
    """One epoch of a small MLP on the toy data, unless `extra` says otherwise."""
    base = {"data.dataset": spec, "data.train_limit": None, "data.val_size": 30, "train.epochs": 1,
            "model.name": "mlp", "model.options": {"hidden": [16]}, "data.augment.crop_padding": 0}
    cfg = load_config(recipe="quickstart", overrides=tiny_overrides(**{**base, **extra}))
    summary = train(cfg, tmp_path / "run", log=quiet)
    return summary, read_metrics(tmp_path / "run" / "metrics.csv")


def test_a_registered_model_trains(tmp_path, toy):
    with registered(MODELS, "toy_linear"):
        @register_model("toy_linear", family="toy")
        def toy_linear(num_classes=10, in_channels=3, image_size=32, bias=True):
            """A linear classifier on the pixels."""
            return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, num_classes, bias=bias))

        _, rows = tiny_run(tmp_path, toy[0], **{"model.name": "toy_linear", "model.options": {"bias": False}})
        assert len(rows) == 1 and 0 <= rows[0]["val_accuracy"] <= 1
        with pytest.raises(UserError, match="model 'toy_linear' has no option 'depth': its options are bias"):
            build_model("toy_linear", depth=3)
    with pytest.raises(UserError, match="unknown model 'toy_linear'"):
        build_model("toy_linear")


def test_a_registered_dataset_trains_and_is_cached(tmp_path, toy):
    spec, reads = toy
    assert "toy:PATH" in spec_help()  # what the config's description and `train --help` show
    s, rows = tiny_run(tmp_path, spec)
    assert len(rows) == 1 and s["val"]["per_class_accuracy"].keys() == {"c0", "c1", "c2"}
    assert load_dataset(spec).train_x.shape == (90, 3, 16, 16)
    assert len(reads) == 1  # decoded once; every later load came from the cache
    with pytest.raises(UserError, match="dataset 'toy' needs a path: give toy:PATH"):
        load_dataset("toy")


def test_a_registered_optimizer_trains(tmp_path, toy):
    built = []
    with registered(OPTIMIZERS, "plain_sgd"):
        @register_optimizer("plain_sgd", states=lambda cfg: 0)
        def plain_sgd(cfg, params):
            """SGD without momentum, whatever the config says."""
            built.append(cfg.name)
            return torch.optim.SGD(params, lr=cfg.lr)

        assert optimizer_states(OptimizerConfig(name="plain_sgd")) == 0
        s, rows = tiny_run(tmp_path, toy[0], **{"optimizer.name": "plain_sgd", "optimizer.lr": 0.02})
        assert built == ["plain_sgd"] and len(rows) == 1 and rows[0]["lr"] == pytest.approx(0.02)
    with pytest.raises(UserError, match="unknown optimizer 'plain_sgd'"):
        load_config(overrides={"optimizer.name": "plain_sgd"})


def test_a_registered_schedule_trains(tmp_path, toy):
    with registered(SCHEDULES, "halving"):
        @register_schedule("halving")
        def halving(cfg, at):
            """Halve the LR every epoch."""
            return 0.5 ** int(at.epoch)

        assert lr_factor(ScheduleConfig(name="halving", warmup_epochs=1), 0, 10, 5, 0.1) == pytest.approx(0.1)
        s, rows = tiny_run(tmp_path, toy[0], **{"schedule.name": "halving", "optimizer.lr": 0.04})
        assert rows[0]["lr"] == pytest.approx(0.02)  # after the first epoch's steps: one halving


@pytest.mark.parametrize("key, name, says", [
    ("optimizer.name", "adm", "unknown optimizer 'adm': did you mean 'adam'? the optimizers are adam, adamw, muon, rmsprop, sgd"),
    ("optimizer.name", "lbfgs", "the optimizers are adam, adamw, muon, rmsprop, sgd"),
    ("schedule.name", "cosnie", "unknown schedule 'cosnie': did you mean 'cosine'? the schedules are constant, cosine, "
                                "multistep, onecycle, step"),
])
def test_unknown_optimizer_or_schedule_is_one_line_naming_the_known_ones(key, name, says):
    with pytest.raises(UserError) as err:
        load_config(overrides={key: name})
    msg = str(err.value)
    assert msg.startswith(f"config key '{key}': ") and says in msg and "\n" not in msg
    assert msg.count(repr(name)) == 1  # named once, not again as "(got ...)"


def test_unknown_dataset_is_one_line_naming_the_known_kinds():
    with pytest.raises(UserError) as err:
        load_dataset("imagenet:/data")
    msg = str(err.value)  # (a test's own kinds, registered for the module, may follow the built-in ones)
    assert msg.startswith("unknown dataset 'imagenet': did you mean 'tinyimagenet'? the datasets are "
                          "cifar10[:PATH], folder:PATH, sample, tinyimagenet:PATH") and "\n" not in msg


def test_an_unknown_name_never_becomes_another_entry():
    # a config built without validation (as a hand-edited checkpoint could give) still cannot reach RMSprop
    bad_opt = OptimizerConfig.model_construct(**{**OptimizerConfig().model_dump(), "name": "adamx"})
    with pytest.raises(UserError, match="unknown optimizer 'adamx'"):
        build_optimizer(bad_opt, [nn.Parameter(torch.ones(2))])
    with pytest.raises(UserError, match="unknown optimizer 'adamx'"):
        optimizer_states(bad_opt)
    bad_sched = ScheduleConfig.model_construct(**{**ScheduleConfig().model_dump(), "name": "cosin"})
    opt = torch.optim.SGD([nn.Parameter(torch.ones(2))], lr=0.1)
    with pytest.raises(UserError, match="unknown schedule 'cosin': did you mean 'cosine'"):
        build_scheduler(bad_sched, opt, 10, 2, 0.1)


def test_a_name_cannot_be_registered_twice():
    with pytest.raises(ValueError, match="optimizer 'sgd' registered twice"):
        register_optimizer("sgd", states=lambda cfg: 0)(lambda cfg, params: None)
    with pytest.raises(ValueError, match="dataset 'folder' registered twice"):
        register_dataset("folder")(lambda path, alloc: None)
    with pytest.raises(ValueError, match="a default source is needed exactly when"):
        register_dataset("nowhere", path="optional")(lambda path, alloc: None)
    assert "nowhere" not in DATASETS


def test_builtin_optimizer_states_per_parameter():
    """What last.pt holds per parameter besides the weight: momentum buffers, squared averages."""
    states = lambda name, momentum: optimizer_states(OptimizerConfig(name=name, momentum=momentum))  # noqa: E731
    assert [states("sgd", 0.0), states("sgd", 0.9), states("rmsprop", 0.0), states("rmsprop", 0.9)] == [0, 1, 1, 2]
    assert states("adam", 0.9) == states("adamw", 0.0) == 2
