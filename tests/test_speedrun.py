"""The airbench-style speedrun network: whitening from data, and a short run of its recipe."""
import torch

from cifarlab.config import load_config
from cifarlab.models import build_model
from cifarlab.train.entry import train
from conftest import assert_user_error, tiny_overrides


def test_whitening_layer_decorrelates_patches():
    torch.manual_seed(0)
    base = torch.randn(64, 3, 8, 8)
    images = torch.nn.functional.interpolate(base, size=32, mode="bilinear")  # smooth: neighbours correlate strongly
    net = build_model("speedrun_net", widths=[16, 16, 16])
    net.init_from_data(images)
    out = net.whiten(images)[:, :12] - net.whiten.bias[:12, None, None]
    feats = out.permute(0, 2, 3, 1).reshape(-1, 12)
    cov = torch.cov(feats.T)
    off_diagonal = cov - torch.diag(cov.diag())
    assert off_diagonal.abs().max() < 1e-3  # decorrelated
    assert (cov.diag() > 0.75).all() and (cov.diag() < 1.01).all()  # unit variance, less where eps dominates
    assert torch.equal(net.whiten.weight[:12], -net.whiten.weight[12:])
    assert not net.whiten.weight.requires_grad


def test_speedrun_recipe_trains(tmp_path):
    cfg = load_config(recipe="speedrun-cpu", overrides=tiny_overrides(**{"model.options.widths": [16, 32, 32],
                                                                         "optimizer.lr": 0.5}))
    s = train(cfg, tmp_path / "r", log=lambda _: None)
    assert s["status"] == "completed" and s["best_val_accuracy"] > 0.15


def test_bad_options_are_one_line_errors(cli):
    for opts, says in [("{widths: [-1]}", "widths must be a list of positive"), ("{widths: 5}", "widths must be"),
                       ("{whiten_width: 7}", "positive even number")]:
        assert_user_error(cli("train", "--model", "speedrun_net", "--set", f"model.options={opts}", "--epochs", "1"),
                          says)


def test_third_conv_per_group_is_a_residual_branch():
    net = build_model("speedrun_net", widths=[8, 16, 16], convs_per_group=3).eval()
    assert all(hasattr(g, "conv3") and hasattr(g, "norm3") and not hasattr(g, "conv4") for g in net.blocks)
    group, x = net.blocks[1], torch.randn(2, 8, 16, 16)
    first = torch.nn.functional.gelu(group.norm1(torch.nn.functional.max_pool2d(group.conv1(x), 2)))
    with torch.no_grad():
        group.conv3.weight.zero_()  # the branch now adds BN(0) = its bias, 0 at init: only the skip is left
        assert torch.allclose(group(x), torch.nn.functional.gelu(first), atol=1e-6)
        group.conv3.weight.normal_()
        assert not torch.allclose(group(x), torch.nn.functional.gelu(first), atol=1e-3)
    four = build_model("speedrun_net", widths=[8, 16, 16], convs_per_group=4)
    assert four(torch.randn(2, 3, 32, 32)).shape == (2, 10) and hasattr(four.blocks[2], "conv4")
    two = build_model("speedrun_net", widths=[8, 16, 16])  # the default: airbench94's two convs, no skip
    assert [n for n, _ in two.blocks[0].named_children()] == ["conv1", "conv2", "norm1", "norm2"]


def test_bad_convs_per_group_is_a_one_line_error(cli):
    for value in ["1", "0", "2.5", "true", "x", "17"]:
        assert_user_error(cli("train", "--model", "speedrun_net", "--set", f"model.options.convs_per_group={value}",
                              "--epochs", "1"), "convs_per_group must be a whole number from 2 to 16")
