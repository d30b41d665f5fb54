"""The CUDA paths, on a CUDA device: every precision trains, a GPU checkpoint evaluates on the CPU, Muon with
fp16's GradScaler, resume (torch.compile against eager: test_fastpath.py's [cuda] case). Skipped where there
is no GPU (CI, the 2-core machines); benchmarks/gpu_checks.sh runs these first on a lent GPU. On a CPU the
same paths are covered by test_fastpath.py and test_train.py."""
from __future__ import annotations

import json
import math

import pytest
import torch

from cifarlab.config import load_config
from cifarlab.train.checkpoint import load_checkpoint
from cifarlab.train.entry import resume, train
from cifarlab.train.rundir import read_metrics
from conftest import tiny_overrides

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def quiet(_line):
    pass


def cuda_run(**extra):
    return load_config(recipe="quickstart", overrides=tiny_overrides(**{"train.device": "cuda", **extra}))


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_every_precision_trains_on_cuda(tmp_path, precision):
    s = train(cuda_run(**{"train.precision": precision}), tmp_path / precision, log=quiet)
    assert s["status"] == "completed" and s["precision"] == precision
    env = json.loads((tmp_path / precision / "environment.json").read_text())
    assert env["device"].startswith("cuda") and env["gpu"] and env["cuda"]
    losses = [r["train_loss"] for r in read_metrics(tmp_path / precision / "metrics.csv")]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]


def test_auto_precision_on_cuda_is_bf16_where_supported(tmp_path):
    s = train(cuda_run(**{"train.epochs": 1}), tmp_path / "r", log=quiet)
    assert s["precision"] == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")


def test_a_gpu_checkpoint_evaluates_the_same_on_the_cpu(tmp_path, cli):
    train(cuda_run(**{"train.precision": "fp32"}), tmp_path / "r", log=quiet)
    state = load_checkpoint(tmp_path / "r" / "best.pt")["state_dict"]
    assert all(t.device.type == "cpu" for t in state.values())  # saved device-free: loads anywhere
    results = {}
    for device in ("cuda", "cpu"):
        code, out, err = cli("eval", "--checkpoint", tmp_path / "r", "--data", "sample", "--split", "all",
                             "--device", device, "--json")
        assert code == 0, err
        results[device] = json.loads(out.strip().splitlines()[-1])
    # fp32 on both; cuDNN and oneDNN sum in different orders, so at most an image or two may flip
    assert abs(results["cuda"]["accuracy"] - results["cpu"]["accuracy"]) <= 0.01


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_muon_with_channels_last_trains_on_cuda(tmp_path, precision):
    """Muon's view of a channels_last kernel and fp16's GradScaler (unscale_ before the orthogonalisation)."""
    cfg = load_config(recipe="speedrun-cpu", overrides=tiny_overrides(**{
        "train.device": "cuda", "train.precision": precision, "model.options.widths": [16, 32, 32],
        "train.batch_size": 64, "train.epochs": 2, "schedule.fit_time_limit": False, "train.time_limit_minutes": None}))
    assert cfg.optimizer.name == "muon" and cfg.train.channels_last
    s = train(cfg, tmp_path / precision, log=quiet)
    losses = [r["train_loss"] for r in read_metrics(tmp_path / precision / "metrics.csv")]
    assert s["status"] == "completed" and all(math.isfinite(x) for x in losses)


def test_an_interrupted_gpu_run_resumes(tmp_path):
    """cuDNN's kernels are not bitwise deterministic, so resume on a GPU is checked as close, not exact (on a
    CPU test_train.py checks it exact)."""
    extra = {"train.epochs": 3, "train.precision": "fp32", "schedule.name": "cosine", "data.augment.flip": True}
    full = train(cuda_run(**extra), tmp_path / "full", log=quiet)

    def crash_after_two(trainer, row):
        if row["epoch"] == 2:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train(cuda_run(**extra), tmp_path / "cut", log=quiet, callbacks=[crash_after_two])
    resumed = resume(tmp_path / "cut", log=quiet)
    assert resumed["epochs_run"] == 3
    assert resumed["val"]["loss"] == pytest.approx(full["val"]["loss"], rel=2e-2)
