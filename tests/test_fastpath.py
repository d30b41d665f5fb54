"""The fast path's options give the same learning as the plain path: bf16 autocast against fp32,
torch.compile against eager, and the GPU speedrun recipe run (shrunk) on the CPU."""
from __future__ import annotations

import time

import pytest
import torch

from cifarlab.config import load_config
from cifarlab.train.entry import train
from cifarlab.train.rundir import read_metrics
from conftest import tiny_overrides


def quiet(_line):
    pass


@pytest.mark.slow
def test_bf16_and_fp32_reach_the_same_accuracy(tmp_path):
    """bf16 autocast changes rounding, not learning: both runs land within noise of each other."""
    extra = {"data.train_limit": 1500, "data.val_size": 500, "train.epochs": 4, "schedule.name": "onecycle",
             "optimizer.lr": 0.05}
    runs = {p: train(load_config(recipe="quickstart", overrides=tiny_overrides(**{**extra, "train.precision": p})),
                     tmp_path / p, log=quiet) for p in ("fp32", "bf16")}
    assert runs["bf16"]["precision"] == "bf16" and runs["fp32"]["precision"] == "fp32"
    acc = {p: r["best_val_accuracy"] for p, r in runs.items()}
    assert min(acc.values()) > 0.25, acc  # both learn (chance is 10%)
    # 500 validation images: one run's accuracy has a binomial sd of ~2.2 points, a difference ~3.1
    assert abs(acc["bf16"] - acc["fp32"]) < 0.07, acc
    loss = {p: read_metrics(tmp_path / p / "metrics.csv")[0]["train_loss"] for p in runs}
    assert loss["bf16"] == pytest.approx(loss["fp32"], rel=0.05)  # the same first-epoch curve


# compiled against eager on the same device; on CUDA, Triton's fused bf16 kernels round apart from cuDNN's a little more
@pytest.mark.slow
@pytest.mark.parametrize("device,rel", [("cpu", 1e-2), pytest.param("cuda", 2e-2, marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))])
def test_gpu_speedrun_recipe_with_compile_matches_eager(tmp_path, device, rel):
    """speedrun-gpu turns on torch.compile; shrunk, it must train on a CPU (and on a GPU where there is one)
    and match eager mode."""
    shrink = tiny_overrides(**{"model.options.widths": [16, 32, 32], "optimizer.lr": 0.5, "train.batch_size": 64,
                               "train.eval_batch_size": 200, "train.epochs": 1, "train.device": device})
    cfg = load_config(recipe="speedrun-gpu", overrides=shrink)
    assert cfg.train.compile and cfg.train.precision == "auto"
    t0 = time.time()
    compiled = train(cfg, tmp_path / "compiled", log=quiet)
    eager = train(load_config(recipe="speedrun-gpu", overrides={**shrink, "train.compile": False}),
                  tmp_path / "eager", log=quiet)
    assert compiled["status"] == "completed" and time.time() - t0 < 240
    a, b = (read_metrics(tmp_path / r / "metrics.csv") for r in ("compiled", "eager"))
    assert a[0]["train_loss"] == pytest.approx(b[0]["train_loss"], rel=rel)  # same maths, fused kernels
    assert abs(compiled["best_val_accuracy"] - eager["best_val_accuracy"]) <= 0.05
