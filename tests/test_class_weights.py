"""train.class_weights: balanced: the loss of an imbalanced training split weighs each class alike
(sklearn's 'balanced' weights), composes exactly over micro-batches and mixed targets, equals the plain
loss on a balanced split, and a run on an imbalanced folder says so and trains on the weighted loss."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cifarlab.train.loss import balanced_weights, classification_loss, imbalance
from conftest import png_bytes


@pytest.mark.parametrize("counts", [[90, 10], [5, 5, 5], [50, 30, 15, 5], [7, 0, 3]])
def test_weights_are_sklearns_balanced(counts):
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    w = balanced_weights(labels, len(counts))
    n, k = sum(counts), len([c for c in counts if c])
    assert w.tolist() == pytest.approx([n / (k * c) if c else 1.0 for c in counts])
    present = [c for c in counts if c]
    assert imbalance(labels, k) == pytest.approx(max(present) / min(present))
    assert sum(w[c].item() * counts[c] for c in range(len(counts))) == pytest.approx(n)  # each image weighs 1 on average


def test_the_weighted_loss_is_the_mean_of_weighted_image_losses():
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(12, 3, generator=g), torch.tensor([0] * 8 + [1] * 3 + [2])
    w = balanced_weights(y, 3)
    for smoothing in (0.0, 0.1):
        each = F.cross_entropy(logits, y, label_smoothing=smoothing, reduction="none")
        assert classification_loss(logits, y, smoothing, w).item() == pytest.approx((each * w[y]).mean().item())
    # micro-batches weighted by their share of the batch add up to the whole batch's loss (accumulate_steps)
    parts = sum(classification_loss(logits[i:i + 4], y[i:i + 4], 0.0, w) * 4 / 12 for i in (0, 4, 8))
    assert parts.item() == pytest.approx(classification_loss(logits, y, 0.0, w).item())
    # a mixed target weighs its image by its mix of class weights; a one-hot target is its hard label
    one_hot = F.one_hot(y, 3).float()
    assert classification_loss(logits, one_hot, 0.0, w).item() == pytest.approx(classification_loss(logits, y, 0.0, w).item())
    mixed = 0.7 * one_hot + 0.3 * one_hot.roll(1, 0)
    each = F.cross_entropy(logits, mixed, reduction="none")
    assert classification_loss(logits, mixed, 0.0, w).item() == pytest.approx((each * (mixed @ w)).mean().item())


def test_a_balanced_split_needs_no_weights_and_trains_bit_for_bit_alike(tmp_path):
    from cifarlab.config import load_config
    from cifarlab.train.entry import train
    assert torch.equal(balanced_weights(torch.arange(30) % 3, 3), torch.ones(3))
    runs = []
    for weights in ("none", "balanced"):  # the sample is 400 images of each class; a stratified subset stays so
        cfg = load_config(recipe="quickstart", overrides={"data.train_limit": 300, "data.val_size": 60,
                                                          "train.epochs": 1, "train.class_weights": weights})
        train(cfg, tmp_path / weights, log=lambda _l: None)
        runs.append(torch.load(tmp_path / weights / "last.pt", weights_only=True)["state_dict"])
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def imbalanced_folder(root, counts=(60, 6), size=16):
    rng = np.random.default_rng(0)
    for c, (name, n) in enumerate(zip(("common", "rare"), counts)):
        (root / name).mkdir(parents=True)
        for i in range(n):  # a class is told by its colour, plus noise
            a = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            a[..., c] += 150
            (root / name / f"{i:03d}.png").write_bytes(png_bytes(a))
    return root


def test_a_run_on_an_imbalanced_folder_notes_it_and_weighs_the_rare_class(cli, tmp_path):
    import json
    root = imbalanced_folder(tmp_path / "f")
    common = ["train", "--recipe", "quickstart", "--data", f"folder:{root}", "--epochs", "2", "--set", "data.val_size=0.25",
              "--set", "model.name=mlp"]
    code, out, err = cli(*common, "--out", tmp_path / "plain")
    assert code == 0, err
    assert "note: the largest class has 9.0x the training images of the smallest" in out  # 45 and 5 of them
    assert "train.class_weights: balanced weighs them alike" in out
    code, out, err = cli(*common, "--set", "train.class_weights=balanced", "--out", tmp_path / "weighted")
    assert code == 0, err
    assert "the loss weighs classes alike (train.class_weights: balanced; its larger steps" in out
    config = (tmp_path / "weighted" / "config.yaml").read_text()
    assert "class_weights: balanced" in config  # config.yaml is what ran
    first = [(tmp_path / r / "metrics.csv").read_text().splitlines()[1].split(",") for r in ("plain", "weighted")]
    assert first[0][0] == first[1][0] == "1" and first[0][1] != first[1][1]  # epoch 1's train loss: weighted
    assert json.loads((tmp_path / "weighted" / "summary.json").read_text())["status"] == "completed"


def test_the_key_takes_only_its_values(cli, tmp_path):
    from conftest import assert_user_error
    assert_user_error(cli("train", "--recipe", "quickstart", "--set", "train.class_weights=inverse", "--out",
                          tmp_path / "r"), ["train.class_weights", "'none' or 'balanced'"])
