"""Data-parallel training in 2 CPU processes (gloo): the same code path NCCL takes on GPUs."""
import json

import pytest
import torch

from cifarlab.data.loader import PreparedData
from cifarlab.schema import DataConfig
from conftest import assert_user_error, write_image_folder


def test_shards_are_disjoint_equal_and_cover_the_epoch():
    data = PreparedData(DataConfig(dataset="sample", train_limit=301, val_size=100), torch.device("cpu"))
    shards = []
    for rank in range(2):
        ys = [yb for _, yb in data.train_batches(50, torch.Generator().manual_seed(7), rank, 2)]
        shards.append(sum(len(y) for y in ys))
    assert shards == [150, 150]  # 301 images: one is left out so both ranks take the same steps


@pytest.mark.slow
def test_two_processes_train_resume_and_write_once(cli, tmp_path):
    root = write_image_folder(tmp_path / "imgs", per_class=40)
    out = tmp_path / "run"
    code, stdout, err = cli("train", "--data", f"folder:{root}", "--val-size", "0.25", "--epochs", "2", "-b", "16",
                            "--lr", "0.01", "--nproc", "2", "--out", out, "--json")
    assert code == 0, err
    s = json.loads(stdout.strip().splitlines()[-1])
    assert s["epochs_run"] == 2 and s["best_val_accuracy"] > 0.5
    log = (out / "train.log").read_text()
    assert log.count("epoch 1/2") == 1 and "x 2 processes" in log  # rank 0 alone writes
    assert json.loads((out / "environment.json").read_text())["processes"] == 2
    code, stdout, err = cli("train", "--resume", out, "--epochs", "3", "--nproc", "2", "--json")
    assert code == 0, err
    assert json.loads(stdout.strip().splitlines()[-1])["epochs_run"] == 3


def test_errors_in_processes_are_one_line(cli, tmp_path):
    assert_user_error(cli("train", "--data", "sample", "--set", "data.train_limit=200", "--val-size", "50",
                          "-b", "1", "--nproc", "2", "--out", tmp_path / "r"), "smaller than the 2 processes")
