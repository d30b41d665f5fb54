"""The trainer: run directory contents, reproducibility, resume, stopping rules, divergence."""
import json
import math

import pytest
import torch

from cifarlab.config import load_config
from cifarlab.errors import TrainingDiverged, UserError
from cifarlab.schema import OptimizerConfig, ScheduleConfig
from cifarlab.train.checkpoint import load_checkpoint, model_from_checkpoint
from cifarlab.train.entry import resume, train
from cifarlab.train.optim import build_optimizer, lr_factor
from cifarlab.train.rundir import RunDir, read_metrics
from conftest import tiny_overrides, write_cifar10_archive


def quiet(_line):
    pass


def cfg_with(**extra):
    return load_config(recipe="quickstart", overrides=tiny_overrides(**extra))


def test_run_directory_holds_everything(tmp_path):
    s = train(cfg_with(), tmp_path / "run", log=quiet)
    run = tmp_path / "run"
    for f in ("config.yaml", "environment.json", "metrics.csv", "best.pt", "last.pt", "summary.json", "train.log"):
        assert (run / f).is_file(), f
    rows = read_metrics(run / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2]
    assert s["best_val_accuracy"] == max(r["val_accuracy"] for r in rows)
    assert s["test_accuracy"] is None and s["train_images_per_second"] > 0
    assert set(s["val"]["per_class_accuracy"]) == set(load_checkpoint(run)["classes"])
    env = json.loads((run / "environment.json").read_text())
    assert env["packages"]["torch"] and env["device"] == "cpu"
    # the resolved config re-runs as it is
    again = train(load_config(config_file=run / "config.yaml"), tmp_path / "again", log=quiet)
    assert again["best_val_accuracy"] == s["best_val_accuracy"]


def test_same_seed_same_numbers_other_seed_other_numbers(tmp_path):
    a = read_metrics(tmp_path / "a" / "metrics.csv") if train(cfg_with(), tmp_path / "a", log=quiet) else None
    b = read_metrics(tmp_path / "b" / "metrics.csv") if train(cfg_with(), tmp_path / "b", log=quiet) else None
    c = read_metrics(tmp_path / "c" / "metrics.csv") if train(cfg_with(**{"train.seed": 1}), tmp_path / "c",
                                                             log=quiet) else None
    strip = lambda rows: [{k: v for k, v in r.items() if "second" not in k and "memory" not in k}  # noqa: E731
                          for r in rows]  # timings and memory are measurements, not results
    assert strip(a) == strip(b)
    assert strip(a) != strip(c)


def test_interrupted_run_resumes_exactly(tmp_path):
    extra = {"train.epochs": 3, "schedule.name": "cosine", "data.augment.flip": True, "data.augment.crop_padding": 2}
    full = train(cfg_with(**extra), tmp_path / "full", log=quiet)

    def crash_after_two(trainer, row):
        if row["epoch"] == 2:
            raise KeyboardInterrupt  # as if killed after epoch 2's checkpoint
    with pytest.raises(KeyboardInterrupt):
        train(cfg_with(**extra), tmp_path / "cut", log=quiet, callbacks=[crash_after_two])
    resumed = resume(tmp_path / "cut", log=quiet)
    assert resumed["epochs_run"] == 3
    assert resumed["best_val_accuracy"] == full["best_val_accuracy"]
    assert resumed["val"]["loss"] == full["val"]["loss"]
    w_full = load_checkpoint(tmp_path / "full" / "last.pt")["state_dict"]
    w_cut = load_checkpoint(tmp_path / "cut" / "last.pt")["state_dict"]
    assert all(torch.equal(w_full[k], w_cut[k]) for k in w_full)


def test_extend_a_finished_run(tmp_path):
    train(cfg_with(), tmp_path / "r", log=quiet)
    with pytest.raises(UserError, match="already finished"):
        resume(tmp_path / "r", log=quiet)
    s = resume(tmp_path / "r", {"train.epochs": 4}, log=quiet)
    assert s["epochs_run"] == 4 and len(read_metrics(tmp_path / "r" / "metrics.csv")) == 4


def test_run_killed_before_its_summary_resumes_into_the_final_evaluation(tmp_path):
    first = train(cfg_with(), tmp_path / "r", log=quiet)
    (tmp_path / "r" / "summary.json").unlink()  # as if killed after the last checkpoint, before the summary
    again = resume(tmp_path / "r", log=quiet)
    assert again["epochs_run"] == 2 and again["val"] == first["val"]
    assert len(read_metrics(tmp_path / "r" / "metrics.csv")) == 2


def test_divergence_stops_with_the_likely_cause_and_keeps_checkpoints(tmp_path):
    lines = []

    def blow_up(trainer, row):  # from epoch 2 on, an absurd LR
        for g in trainer.optimizer.param_groups:
            g["initial_lr"] = 1e12
        trainer.scheduler.base_lrs = [1e12]
    with pytest.raises(TrainingDiverged, match="learning rate .* too high") as err:
        train(cfg_with(**{"train.epochs": 3, "optimizer.weight_decay": 0.5}), tmp_path / "d", log=lines.append,
              callbacks=[blow_up])
    assert "weight decay 0.5 too large" in str(err.value) and "\n" not in str(err.value)
    assert load_checkpoint(tmp_path / "d" / "last.pt")["epoch"] == 1  # epoch 1's checkpoint survives
    assert json.loads((tmp_path / "d" / "summary.json").read_text())["status"] == "diverged"


def test_chance_accuracy_warning(tmp_path):
    lines = []
    train(cfg_with(**{"train.epochs": 3, "optimizer.lr": 1e-12}), tmp_path / "c", log=lines.append)
    assert any("stayed at chance" in line for line in lines)


def test_time_limit_and_early_stopping(tmp_path):
    s = train(cfg_with(**{"train.epochs": 50, "train.time_limit_minutes": 1e-4}), tmp_path / "t", log=quiet)
    assert s["status"] == "stopped" and "time limit" in s["stopped_reason"] and s["epochs_run"] == 1
    s = train(cfg_with(**{"train.epochs": 50, "optimizer.lr": 1e-12, "train.early_stopping_patience": 2}),
              tmp_path / "e", log=quiet)
    assert "early stopping" in s["stopped_reason"] and s["epochs_run"] <= 4


def test_test_split_is_evaluated_once_at_the_end(tmp_path):
    arc = write_cifar10_archive(tmp_path / "c.tar.gz", per_batch=40)
    s = train(cfg_with(**{"data.dataset": f"cifar10:{arc}", "data.train_limit": None, "data.val_size": 0.2}),
              tmp_path / "r", log=quiet)
    assert s["test"]["images"] == 40 and 0 <= s["test_accuracy"] <= 1
    cm = s["test"]["confusion_matrix"]  # the accuracy is the matrix's diagonal over its 40 images
    assert sum(map(sum, cm)) == 40 and s["test_accuracy"] == pytest.approx(sum(cm[i][i] for i in range(len(cm))) / 40)
    model = model_from_checkpoint(load_checkpoint(tmp_path / "r"))
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_run_directory_guards(tmp_path):
    train(cfg_with(**{"train.epochs": 1}), tmp_path / "r", log=quiet)
    before = (tmp_path / "r" / "metrics.csv").read_text()
    with pytest.raises(UserError, match="already holds a run"):
        train(cfg_with(), tmp_path / "r", log=quiet)
    assert (tmp_path / "r" / "metrics.csv").read_text() == before  # nothing written is lost
    held = RunDir(tmp_path / "r").open(new=False)
    try:
        with pytest.raises(UserError, match="in use by cifarlab pid"):
            resume(tmp_path / "r", {"train.epochs": 2}, log=quiet)
    finally:
        held.close()
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="cannot write to run directory"):
        train(cfg_with(), tmp_path / "file" / "run", log=quiet)
    with pytest.raises(UserError, match="no run to resume"):
        resume(tmp_path / "nothing", log=quiet)


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "rmsprop"])
def test_optimizers(name):
    opt = build_optimizer(OptimizerConfig(name=name, lr=0.01, weight_decay=1e-4), [torch.nn.Parameter(torch.ones(2))])
    assert opt.param_groups[0]["lr"] == 0.01 and opt.param_groups[0]["weight_decay"] == 1e-4


def test_schedules():
    f = lambda cfg, step, lr=0.1: lr_factor(cfg, step, steps_per_epoch=10, epochs=20, base_lr=lr)  # noqa: E731
    # seed 000: 0.001 for 9 epochs, then 0.0005
    ms = ScheduleConfig(name="multistep", milestones=[9], gamma=0.5)
    assert f(ms, 89) == 1.0 and f(ms, 90) == 0.5
    assert f(ScheduleConfig(name="step", step_size=5, gamma=0.1), 100) == pytest.approx(0.01)
    cos = ScheduleConfig(name="cosine", min_lr=0.001)
    assert f(cos, 0) == pytest.approx(1.0) and f(cos, 200) == pytest.approx(0.01) and f(cos, 100) == pytest.approx(0.505)
    one = ScheduleConfig(name="onecycle", pct_start=0.25)
    assert f(one, 0) == pytest.approx(1 / 25) and f(one, 50) == pytest.approx(1.0) and f(one, 200) < 1e-4
    warm = ScheduleConfig(name="constant", warmup_epochs=2)
    assert f(warm, 0) == pytest.approx(0.05) and f(warm, 19) == 1.0 and f(warm, 100) == 1.0
    assert all(math.isfinite(f(ScheduleConfig(name=n), s)) for n in ("constant", "step", "cosine", "onecycle")
               for s in range(0, 400, 7))


def test_training_options_run(tmp_path):
    """Label smoothing, clipping, nesterov, step schedule, AutoAugment and concat: all in one short run."""
    s = train(cfg_with(**{"train.label_smoothing": 0.1, "train.grad_clip": 1.0, "optimizer.nesterov": True,
                          "schedule.name": "step", "schedule.step_size": 1, "data.augment.autoaugment": True,
                          "data.augment.concat_original": True, "data.augment.cutout": 8, "train.epochs": 1}),
              tmp_path / "o", log=quiet)
    assert s["status"] == "completed"


def test_fp16_needs_cuda():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(UserError, match="fp16 needs a CUDA device"):
        from cifarlab.train.runtime import resolve_precision
        resolve_precision("fp16", torch.device("cpu"))


def test_progress_bar_run(tmp_path):
    s = train(cfg_with(**{"train.epochs": 1}), tmp_path / "p", log=quiet, progress=True)
    assert s["epochs_run"] == 1


def test_refused_config_leaves_no_run_directory(tmp_path):
    with pytest.raises(UserError, match="has no option"):
        train(cfg_with(**{"model.name": "mlp", "model.options": {"wings": 2}}), tmp_path / "never", log=quiet)
    assert not (tmp_path / "never").exists()
