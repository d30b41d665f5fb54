"""The fast-training building blocks: weight EMA, parameter groups, Mixup/CutMix, TTA levels."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from cifarlab.data.mix import BatchMix
from cifarlab.train.ema import WeightEMA
from cifarlab.train.param_groups import param_groups, scaled_for_batch
from cifarlab.train.tta import tta_logits


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, bias=True), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 2))


# ---------------------------------------------------------------------- EMA

@pytest.mark.parametrize("decay", [0.5, 0.9, 0.99])
def test_ema_follows_the_closed_form(decay):
    model = _net()
    ema = WeightEMA(model, decay, warmup=False)
    expected = [p.detach().clone() for p in model.parameters()]
    for step in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(step + 1.0)
        ema.update(model)
        if step == 0:  # the first update copies the model (AveragedModel's n_averaged == 0)
            expected = [p.detach().clone() for p in model.parameters()]
        else:
            expected = [decay * e + (1 - decay) * p.detach() for e, p in zip(expected, model.parameters())]
    for e, a in zip(expected, ema.module.parameters()):
        torch.testing.assert_close(a, e)


def test_ema_warmup_starts_with_a_small_decay_and_averages_batchnorm_statistics():
    model = _net()
    ema = WeightEMA(model, 0.999, warmup=True)
    ema.update(model)  # copy
    before = next(ema.module.parameters()).detach().clone()
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
        model[1].running_mean.add_(2.0)
        model[1].num_batches_tracked.add_(7)
    ema.update(model)  # n_averaged = 1: decay min(0.999, 2/11)
    d = 2 / 11
    torch.testing.assert_close(next(ema.module.parameters()), before * d + (before + 1) * (1 - d))
    torch.testing.assert_close(ema.module[1].running_mean, torch.full((4,), 2.0 * (1 - d)))
    assert int(ema.module[1].num_batches_tracked) == int(model[1].num_batches_tracked)


def test_ema_state_round_trips_so_a_resumed_average_continues_exactly():
    a_model, b_model = _net(), _net()
    a = WeightEMA(a_model, 0.9, every=2)
    for _ in range(5):
        a.update(a_model)
    b = WeightEMA(b_model, 0.9, every=2)
    b.load_state_dict(a.state_dict())
    for _ in range(3):
        with torch.no_grad():
            for m in (a_model, b_model):
                for p in m.parameters():
                    p.mul_(1.1)
        a.update(a_model)
        b.update(b_model)
    for x, y in zip(a.module.state_dict().values(), b.module.state_dict().values()):
        assert torch.equal(x, y)


# ---------------------------------------------------------------------- parameter groups

def test_default_param_groups_are_one_group_of_every_parameter():
    model = _net()
    groups = param_groups(model, 0.1, 5e-4)
    assert len(groups) == 1 and groups[0]["lr"] == 0.1 and groups[0]["weight_decay"] == 5e-4
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in model.parameters()}


def test_norm_weights_and_biases_get_no_decay_and_norm_biases_their_own_rate():
    model = _net()
    groups = param_groups(model, 0.1, 5e-4, no_decay_norm_and_bias=True, norm_bias_lr_mult=64)
    by_id = {id(p): g for g in groups for p in g["params"]}
    conv, bn, lin = model[0], model[1], model[5]
    assert by_id[id(conv.weight)]["weight_decay"] == 5e-4 and by_id[id(lin.weight)]["weight_decay"] == 5e-4
    for p in (conv.bias, lin.bias, bn.weight):
        assert by_id[id(p)]["weight_decay"] == 0.0 and by_id[id(p)]["lr"] == 0.1
    assert by_id[id(bn.bias)]["lr"] == pytest.approx(6.4) and by_id[id(bn.bias)]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    torch.optim.SGD(groups, lr=0.1)  # torch accepts the groups as they are


def test_lr_stated_per_reference_batch_scales_linearly():
    assert scaled_for_batch(0.1, 512, None) == 0.1
    assert scaled_for_batch(0.1, 512, 256) == pytest.approx(0.2)
    assert scaled_for_batch(0.4, 64, 256) == pytest.approx(0.1)


# ---------------------------------------------------------------------- Mixup / CutMix

def test_mix_off_returns_the_batch_and_one_hot_targets():
    x, y = torch.rand(8, 3, 8, 8), torch.arange(8) % 4
    mx, t = BatchMix(4)(x, y)
    assert torch.equal(mx, x) and torch.equal(t.argmax(1), y) and torch.equal(t.sum(1), torch.ones(8))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_mixup_blends_images_and_labels_by_the_same_lambda(seed):
    torch.manual_seed(seed)
    x, y = torch.rand(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1])
    mx, t = BatchMix(4, mixup_alpha=0.4)(x, y)
    lam = t[0, 0].item() if y[0] != y[-1] else None
    assert torch.allclose(t.sum(1), torch.ones(6))
    if lam is not None:
        torch.testing.assert_close(mx[0], x[0] * lam + x[-1] * (1 - lam))


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_cutmix_mixes_labels_by_the_area_pasted(seed):
    torch.manual_seed(seed)
    x = torch.zeros(4, 1, 16, 16)
    x[1::2] = 1.0  # images alternate black and white: the pasted box is visible
    y = torch.tensor([0, 1, 0, 1])
    mx, t = BatchMix(2, cutmix_alpha=1.0)(x, y)
    kept = (mx[0] == x[0]).float().mean().item()  # image 0 (black) got a box of image 3 (white)
    assert t[0, 0].item() == pytest.approx(kept)
    assert torch.allclose(t.sum(1), torch.ones(4))


def test_mixing_is_reproducible_from_the_seed():
    x, y = torch.rand(8, 3, 8, 8), torch.arange(8) % 4
    mix = BatchMix(4, mixup_alpha=0.2, cutmix_alpha=1.0, prob=0.8)
    torch.manual_seed(5)
    a = mix(x, y)
    torch.manual_seed(5)
    b = mix(x, y)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# ---------------------------------------------------------------------- TTA

class _Counting(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x.mean(dim=(2, 3))  # invariant to flips; a constant image is invariant to shifts too


@pytest.mark.parametrize("level,views", [(0, 1), (1, 2), (2, 6)])
def test_tta_levels_average_their_views_with_weights_summing_to_one(level, views):
    model = _Counting()
    x = torch.full((2, 3, 8, 8), 0.7)
    out = tta_logits(model, x, level)
    assert model.calls == views
    torch.testing.assert_close(out, torch.full((2, 3), 0.7))


def test_tta_flip_averages_an_image_with_its_mirror():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    x = torch.rand(3, 3, 4, 4)
    torch.testing.assert_close(tta_logits(model, x, 1), (model(x) + model(x.flip(3))) / 2)


# ---------------------------------------------------------------------- Muon

def _muon_for(model):
    from cifarlab.train.muon import MuonWithAuxiliary, muon_split

    matrices, rest = muon_split(model)
    return MuonWithAuxiliary([{"params": matrices, "lr": 0.05}], [{"params": rest, "lr": 0.05}],
                             lambda groups: torch.optim.SGD(groups, momentum=0.9), momentum=0.9)


def test_muon_takes_conv_kernels_and_hidden_matrices_but_not_the_head():
    from cifarlab.train.muon import muon_split

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 8), nn.Linear(8, 2))
    matrices, rest = muon_split(model)
    assert [tuple(p.shape) for p in matrices] == [(4, 3, 3, 3), (8, 144)]
    assert {id(p) for p in rest} == {id(model[0].bias), id(model[2].bias), id(model[3].weight), id(model[3].bias)}


def test_muon_trains_a_conv_net_under_a_scheduler_and_resumes_exactly():
    torch.manual_seed(0)
    x = torch.randn(64, 3, 8, 8)
    y = (x[:, 0].mean((1, 2)) > 0).long()  # learnable from the first channel

    def run(model, opt, sched, steps):
        losses = []
        for _ in range(steps):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        return losses

    a = _net()
    kernel0 = a[0].weight.detach().clone()
    opt_a = _muon_for(a)
    sched_a = torch.optim.lr_scheduler.LambdaLR(opt_a, lambda s: 1 - s / 40)
    losses = run(a, opt_a, sched_a, 20)
    assert losses[-1] < 0.85 * losses[0]  # it learns
    assert not torch.equal(a[0].weight, kernel0)  # Muon's update of the 2-D view moved the 4-D kernel
    assert opt_a.muon.param_groups[0]["lr"] == pytest.approx(0.05 * (1 - 20 / 40))  # the scheduler reached Muon
    b = _net()
    b.load_state_dict(a.state_dict())
    opt_b = _muon_for(b)
    sched_b = torch.optim.lr_scheduler.LambdaLR(opt_b, lambda s: 1 - s / 40)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # as from a checkpoint: no shared buffers
    sched_b.load_state_dict(sched_a.state_dict())
    assert run(a, opt_a, sched_a, 5) == run(b, opt_b, sched_b, 5)
    assert opt_b.muon.param_groups[0]["lr"] == pytest.approx(0.05 * (1 - 25 / 40))
