"""Real CIFAR-10 images (the shared JPEG re-encoding of the 50,000 training images); skipped without them."""
import pytest

from cifarlab.config import load_config
from cifarlab.train.entry import train
from conftest import SHARED_CIFAR

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not SHARED_CIFAR.is_file(), reason=f"shared CIFAR-10 images not found at {SHARED_CIFAR}")]


def test_tutorial_cnn_learns_real_cifar10(tmp_path):
    cfg = load_config(recipe="quickstart", overrides={
        "data.dataset": f"folder:{SHARED_CIFAR}", "data.val_size": 2000, "data.train_limit": 12000,
        "train.epochs": 3, "train.batch_size": 64})
    s = train(cfg, tmp_path / "run", log=lambda _: None)
    assert s["val"]["images"] == 2000
    assert s["best_val_accuracy"] > 0.35, s["best_val_accuracy"]  # chance is 0.10
