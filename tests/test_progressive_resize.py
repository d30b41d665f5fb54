"""data.augment.progressive_resize: training images shrunk early, full size later; evaluation always at full size."""
import pytest
import torch

from cifarlab.config import load_config
from cifarlab.data.augment import BatchTransform, progressive_size
from cifarlab.train.entry import train
from cifarlab.train.rundir import RunDir
from cifarlab.train.trainer import Trainer
from conftest import USER_ERROR, tiny_overrides
from test_fast_wiring import assert_resumes_exactly, quiet

SPEEDRUN = {"model.name": "speedrun_net", "model.options": {"widths": [8, 16, 16]}}


def resized(start=16, full_at=0.5, **extra):
    return {**SPEEDRUN, "data.augment.progressive_resize": {"start_size": start, "full_at": full_at}, **extra}


@pytest.mark.parametrize("start, full, full_at, progress, want", [
    (16, 32, 0.5, 0.0, 16), (16, 32, 0.5, 0.25, 24), (16, 32, 0.5, 0.49, 30), (16, 32, 0.5, 0.5, None),
    (16, 32, 0.5, 0.9, None), (24, 32, 1.0, 0.5, 28), (20, 32, 0.6, 0.1, 22), (40, 64, 0.8, 0.2, 46),
    (23, 32, 0.5, 0.0, 23),  # an odd start stays as given: it is the user's side
])
def test_size_grows_linearly_in_even_steps_and_is_full_from_full_at(start, full, full_at, progress, want):
    assert progressive_size(start, full, full_at, progress) == want


def test_only_training_batches_are_shrunk():
    t = BatchTransform(torch.zeros(3), torch.ones(3), None, 32)
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    t.train_size = 20
    assert t(x, train=True).shape[-2:] == (20, 20) and t(x, train=False).shape[-2:] == (32, 32)
    flat = torch.full((2, 3, 32, 32), 77, dtype=torch.uint8)  # antialiased bilinear keeps a flat image flat
    assert torch.allclose(t(flat, train=True), torch.full((2, 3, 20, 20), 77 / 255))


@pytest.mark.parametrize("epochs, start, full_at, sizes", [
    (4, 16, 0.5, [16, 24, 32, 32]),
    (5, 24, 0.8, [24, 26, 28, 30, 32]),
    (3, 12, 1.0, [12, 18, 24]),  # 12 + 20 x 2/3 = 25.3, down to an even 24
])
def test_the_model_trains_on_the_scheduled_sizes_by_epoch(tmp_path, epochs, start, full_at, sizes):
    cfg = load_config(recipe="quickstart", overrides=tiny_overrides(**resized(start, full_at, **{"train.epochs": epochs})))
    run = RunDir(tmp_path / "r")
    run.open(new=True)
    trainer = Trainer(cfg, run, log=quiet)
    seen = []
    trainer.model.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[-1]) if m.training else None)
    trainer.fit()
    run.close()
    per_epoch = [seen[i * trainer.steps_per_epoch] for i in range(epochs)]
    assert per_epoch == sizes
    assert [r["train_size"] for r in trainer.history] == sizes
    assert " at %d px" % sizes[0] in (tmp_path / "r" / "train.log").read_text()
    val_sizes = []
    trainer.model.register_forward_pre_hook(lambda m, a: val_sizes.append(a[0].shape[-1]))
    trainer.model.eval()
    trainer.model(trainer.data.transform(trainer.data.val.x[:4], train=False))
    assert val_sizes == [32]


def test_time_limited_runs_grow_with_the_training_time(tmp_path, monkeypatch):
    now = [0.0]

    def fake_clock():  # every reading is 10 ms later: training time grows with the calls, not the machine
        now[0] += 0.01
        return now[0]
    monkeypatch.setattr(Trainer, "clock", staticmethod(fake_clock))
    extra = resized(16, 0.5, **{"train.time_limit_minutes": 0.01, "train.epochs": 50})  # a 0.6 s budget
    train(load_config(recipe="quickstart", overrides=tiny_overrides(**extra)), tmp_path / "t", log=quiet)
    log = (tmp_path / "t" / "train.log").read_text().splitlines()  # the epoch lines say each epoch's side
    sizes = [int(line.split(" at ")[1].split(" px")[0]) for line in log if line.startswith("epoch ")]
    assert sizes[0] == 16 and sizes[-1] == 32 and sizes == sorted(sizes) and len(set(sizes)) > 2


def test_a_time_limited_run_that_runs_out_of_epochs_first_still_reaches_full_size(tmp_path, monkeypatch):
    now = [0.0]

    def slow_clock():  # a 100-minute budget these 4 epochs use a sliver of: train.epochs ends the run, as the LR's decay
        now[0] += 1e-6
        return now[0]
    monkeypatch.setattr(Trainer, "clock", staticmethod(slow_clock))
    extra = resized(16, 0.5, **{"train.time_limit_minutes": 100, "train.epochs": 4})
    train(load_config(recipe="quickstart", overrides=tiny_overrides(**extra)), tmp_path / "s", log=quiet)
    log = (tmp_path / "s" / "train.log").read_text().splitlines()
    sizes = [int(line.split(" at ")[1].split(" px")[0]) for line in log if line.startswith("epoch ")]
    assert sizes == [16, 24, 32, 32]


def test_progressive_resize_resumes_exactly(tmp_path):
    assert_resumes_exactly(tmp_path, **resized(16, 0.7, **{"train.epochs": 3}))


@pytest.mark.parametrize("model", ["tutorial_cnn", "lenet5", "mlp"])
def test_a_model_with_a_fixed_input_size_is_refused_before_anything_is_written(cli, tmp_path, model):
    code, _, err = cli("train", "--recipe", "quickstart", "--set", f"model.name={model}",
                       "--set", "data.augment.progressive_resize.start_size=16", "-o", tmp_path / "r")
    assert code == 2 and err.startswith(USER_ERROR) and err.count("\n") == 1
    assert f"model {model} cannot take 16x16 images" in err and "pools adaptively" in err
    assert not (tmp_path / "r" / "config.yaml").exists()


@pytest.mark.parametrize("value, says", [
    ({"start_size": 32}, "not below the images' 32 px"),
    ({"start_size": 40, "full_at": 0.3}, "not below the images' 32 px"),
    ({"start_size": 2}, "greater than or equal to 4"),
    ({"start_size": 16, "full_at": 0}, "greater than 0"),
    ({"full_at": 0.5}, "Field required"),
    ({"start_size": 16, "until": 0.5}, "until"),
])
def test_bad_progressive_resize_values_are_one_line_errors(cli, tmp_path, value, says):
    sets = [x for k, v in value.items() for x in ("--set", f"data.augment.progressive_resize.{k}={v}")]
    code, _, err = cli("train", "--recipe", "quickstart", "--set", "model.name=speedrun_net", *sets, "-o", tmp_path / "r")
    assert code == 2 and err.startswith(USER_ERROR) and err.count("\n") == 1 and says in err
