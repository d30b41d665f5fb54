"""Options a time-budgeted speed run needs: validating only every Nth epoch (train.val_every), airbench's
triangle schedule, and the faster BatchNorm biases decaying per step as the weights do."""
import math

import pytest
import torch
import torch.nn as nn

from cifarlab.report.build import build_run_report
from cifarlab.report.runs import load_run
from cifarlab.schema import ScheduleConfig
from cifarlab.train.checkpoint import load_checkpoint
from cifarlab.train.entry import train
from cifarlab.train.evaluate import evaluate_checkpoint
from cifarlab.train.optim import lr_factor
from cifarlab.train.param_groups import param_groups
from cifarlab.train.rundir import read_metrics
from cifarlab.train.trainer import Trainer
from conftest import assert_user_error, set_args, tiny_overrides
from test_fast_wiring import assert_resumes_exactly, cfg_with, quiet


@pytest.mark.parametrize("epochs, every, validated", [(5, 2, [2, 4, 5]), (3, 1, [1, 2, 3]), (4, 10, [4]), (6, 3, [3, 6])])
def test_val_every_validates_every_nth_epoch_and_the_last(tmp_path, epochs, every, validated):
    s = train(cfg_with(**{"train.epochs": epochs, "train.val_every": every}), tmp_path / "r", log=quiet)
    rows = read_metrics(tmp_path / "r" / "metrics.csv")
    assert [r["epoch"] for r in rows if not math.isnan(r["val_accuracy"])] == validated
    assert all(math.isnan(r["val_loss"]) for r in rows if r["epoch"] not in validated)
    best = max((r for r in rows if r["epoch"] in validated), key=lambda r: r["val_accuracy"])
    assert s["best_epoch"] == best["epoch"] == load_checkpoint(tmp_path / "r" / "best.pt")["epoch"]
    assert s["val"]["accuracy"] == pytest.approx(s["best_val_accuracy"])
    assert load_run(tmp_path / "r").best["epoch"] == best["epoch"]  # `cifarlab runs` skips the unvalidated rows
    build_run_report(tmp_path / "r")  # the report's table and curves take the gaps
    assert "not validated" in (tmp_path / "r" / "train.log").read_text() or validated == list(range(1, epochs + 1))


def test_val_every_validates_the_epoch_a_time_limit_stops(tmp_path, monkeypatch):
    now = [0.0]

    def fake_clock():  # every reading is 10 ms later: the budget runs out after a fixed number of steps
        now[0] += 0.01
        return now[0]
    monkeypatch.setattr(Trainer, "clock", staticmethod(fake_clock))
    s = train(cfg_with(**{"train.epochs": 50, "train.val_every": 50, "train.time_limit_minutes": 0.002}),
              tmp_path / "t", log=quiet)
    rows = read_metrics(tmp_path / "t" / "metrics.csv")
    assert s["status"] == "stopped" and 1 < len(rows) < 50
    assert not math.isnan(rows[-1]["val_accuracy"]) and all(math.isnan(r["val_accuracy"]) for r in rows[:-1])
    assert s["best_epoch"] == rows[-1]["epoch"]


def test_val_every_resumes_exactly(tmp_path):
    assert_resumes_exactly(tmp_path, **{"train.epochs": 3, "train.val_every": 2})


def test_early_stopping_counts_only_validated_epochs(tmp_path):
    s = train(cfg_with(**{"train.epochs": 4, "train.val_every": 3, "train.early_stopping_patience": 1}),
              tmp_path / "e", log=quiet)
    assert s["epochs_run"] >= 3  # epochs 1 and 2 carry no validation, so they cannot look like a stall


def test_the_end_of_a_run_does_not_predict_the_best_epoch_again(tmp_path, monkeypatch):
    calls = []
    original = Trainer._predict
    monkeypatch.setattr(Trainer, "_predict", lambda self, split: calls.append(1) or original(self, split))
    # fp32: `eval` predicts in fp32, so a bf16 run's own validation loss differs from it in the 5th digit
    s = train(cfg_with(**{"train.epochs": 3, "train.precision": "fp32"}), tmp_path / "p", log=quiet)
    assert len(calls) == 3  # one validation per epoch; the summary reuses the best epoch's predictions
    again = evaluate_checkpoint(str(tmp_path / "p"), "sample", split="val", device="cpu")
    assert s["val"]["accuracy"] == pytest.approx(s["best_val_accuracy"]) == pytest.approx(again["accuracy"])
    assert s["val"]["loss"] == pytest.approx(again["loss"], rel=1e-5)  # the reused figures are best.pt's


@pytest.mark.parametrize("start, end, pct", [(0.2, 0.07, 0.23), (0.0, 0.0, 0.5), (1.0, 0.5, 0.1)])
def test_triangle_rises_linearly_to_the_peak_then_falls_linearly_to_the_end(start, end, pct):
    cfg = ScheduleConfig(name="triangle", start_factor=start, end_factor=end, pct_start=pct)
    total, peak = 200, int(pct * 200)
    f = [lr_factor(cfg, step, 20, 10, 1.0) for step in range(total + 1)]
    assert f[0] == pytest.approx(start) and f[peak] == pytest.approx(1.0) and f[total] == pytest.approx(end)
    assert f[peak // 2] == pytest.approx((start + 1) / 2, abs=0.01)  # halfway up
    mid = (peak + total) // 2
    assert f[mid] == pytest.approx(1 + (end - 1) * (mid - peak) / (total - peak))
    assert max(f) == pytest.approx(1.0)


@pytest.mark.parametrize("mult", [2.0, 64.0, 0.5])
def test_faster_norm_biases_shrink_per_step_as_much_as_the_weights(mult):
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    groups = param_groups(model, lr=0.5, weight_decay=1e-3, norm_bias_lr_mult=mult)
    by_id = {id(p): g for g in groups for p in g["params"]}
    weight, bias = by_id[id(model[0].weight)], by_id[id(model[1].bias)]
    assert bias["lr"] == pytest.approx(0.5 * mult)
    assert bias["lr"] * bias["weight_decay"] == pytest.approx(weight["lr"] * weight["weight_decay"])
    # and SGD does shrink both by that amount in a step without gradient signal
    b = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([{"params": [b], "lr": bias["lr"], "weight_decay": bias["weight_decay"]}])
    b.grad = torch.zeros(3)
    opt.step()
    assert b.detach() == pytest.approx(torch.full((3,), 1 - 0.5 * 1e-3))


@pytest.mark.parametrize("key, value, says", [
    ("train.val_every", "two", "train.val_every"), ("train.val_every", 1.5, "train.val_every"),
    ("train.val_every", -3, "greater than or equal to 1"), ("train.val_every", 10**9, "train.val_every"),
    ("schedule.start_factor", "high", "schedule.start_factor"), ("schedule.start_factor", 2, "less than or equal to 1"),
    ("schedule.end_factor", -1, "greater than or equal to 0"), ("schedule.name", "triangel", "triangle"),
])
def test_wrong_speed_run_keys_are_one_line_errors_and_write_nothing(cli, tmp_path, key, value, says):
    out = tmp_path / "run"
    assert_user_error(cli("train", *set_args(tiny_overrides(**{key: value})), "--out", out), says)
    assert not out.exists()  # refused before a run directory is made
