"""The fast-training options wired into the lab: each is a config key whose default changes nothing,
a one-line refusal of bad values, and a run that shows it does what it says (tiny runs, seconds each)."""
import json

import pytest
import torch

from cifarlab.config import load_config
from cifarlab.data.augment import BatchTransform
from cifarlab.data.loader import PreparedData
from cifarlab.errors import UserError
from cifarlab.schema import OptimizerConfig, ScheduleConfig
from cifarlab.train.checkpoint import load_checkpoint
from cifarlab.train.entry import resume, train
from cifarlab.train.evaluate import evaluate_checkpoint
from cifarlab.train.optim import build_optimizer, build_scheduler, lr_factor
from cifarlab.train.rundir import read_metrics
from cifarlab.train.trainer import Trainer
from conftest import tiny_overrides


def quiet(_line):
    pass


def cfg_with(**extra):
    return load_config(recipe="quickstart", overrides=tiny_overrides(**extra))


def kill_after(epoch):
    def callback(trainer, row):
        if row["epoch"] == epoch:
            raise KeyboardInterrupt  # as if killed right after this epoch's checkpoint
    return callback


def assert_resumes_exactly(tmp_path, **extra):
    """An uninterrupted 3-epoch run and one killed after epoch 2 then resumed end bit-identical."""
    full = train(cfg_with(**extra), tmp_path / "full", log=quiet)
    with pytest.raises(KeyboardInterrupt):
        train(cfg_with(**extra), tmp_path / "cut", log=quiet, callbacks=[kill_after(2)])
    resumed = resume(tmp_path / "cut", log=quiet)
    assert resumed["val"]["loss"] == full["val"]["loss"] and resumed["best_epoch"] == full["best_epoch"]
    for name in ("last.pt", "best.pt"):
        a, b = (load_checkpoint(tmp_path / r / name) for r in ("full", "cut"))
        assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"]), name
    return full


# ---------------------------------------------------------------------- validation

@pytest.mark.parametrize("key, value, says", [
    ("optimizer.norm_bias_lr_mult", 0, "greater than 0"),
    ("optimizer.reference_batch_size", 0, "greater than or equal to 1"),
    ("optimizer.muon_aux", "adam", "'sgd' or 'adamw'"),
    ("optimizer.muon_ns_dtype", "fp16", "'auto', 'bf16' or 'fp32'"),
    ("train.ema", {"decay": 1.0}, "train.ema.decay"),
    ("train.tta_level", 3, "0, 1 or 2"),
    ("train.val_every", 0, "greater than or equal to 1"),
    ("schedule.start_factor", 1.5, "less than or equal to 1"),
    ("schedule.end_factor", -0.1, "greater than or equal to 0"),
    ("train.accumulate_steps", 0, "greater than or equal to 1"),
    ("data.augment.flip", "sideways", "'alternate'"),
    ("data.augment.crop_mode", "wrap", "'zeros' or 'reflect'"),
    ("data.mix.prob", 1.5, "less than or equal to 1"),
    ("schedule.fit_time_limit", True, "needs train.time_limit_minutes"),
])
def test_bad_values_are_refused_in_one_line(key, value, says):
    with pytest.raises(UserError) as err:
        load_config(overrides={key: value})
    assert says in str(err.value) and "\n" not in str(err.value)


def test_tta_flip_and_level_must_agree():
    assert load_config(overrides={"train.tta_flip": True}).train.tta == 1
    assert load_config(overrides={"train.tta_flip": True, "train.tta_level": 2}).train.tta == 2
    with pytest.raises(UserError, match="set only one of them"):
        load_config(overrides={"train.tta_flip": True, "train.tta_level": 0})


# ---------------------------------------------------------------------- parameter groups, Muon

def _conv_bn():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 6 * 6, 2))


def test_optimizer_gets_groups_from_the_model_and_lr_per_reference_batch():
    model = _conv_bn()
    plain = build_optimizer(OptimizerConfig(lr=0.1, weight_decay=5e-4), model, 512)
    assert len(plain.param_groups) == 1 and len(plain.param_groups[0]["params"]) == len(list(model.parameters()))
    cfg = OptimizerConfig(lr=0.1, weight_decay=5e-4, no_decay_norm_and_bias=True, norm_bias_lr_mult=64,
                          reference_batch_size=256)
    groups = build_optimizer(cfg, model, 512).param_groups
    by_id = {id(p): g for g in groups for p in g["params"]}
    assert by_id[id(model[0].weight)]["lr"] == pytest.approx(0.2) and by_id[id(model[0].weight)]["weight_decay"] == 5e-4
    assert by_id[id(model[0].bias)]["weight_decay"] == 0.0 and by_id[id(model[1].weight)]["weight_decay"] == 0.0
    assert by_id[id(model[1].bias)]["lr"] == pytest.approx(0.2 * 64)


def test_param_group_keys_reach_a_training_run(tmp_path):
    extra = {"optimizer.reference_batch_size": 16, "optimizer.no_decay_norm_and_bias": True,
             "model.options": {"batchnorm": True}, "optimizer.norm_bias_lr_mult": 4.0, "train.epochs": 1}
    train(cfg_with(**extra), tmp_path / "r", log=quiet)
    assert read_metrics(tmp_path / "r" / "metrics.csv")[0]["lr"] == pytest.approx(0.05 * 32 / 16)


def test_muon_splits_a_conv_model_and_trains(tmp_path):
    opt = build_optimizer(OptimizerConfig(name="muon", lr=0.05, muon_lr=0.02, muon_aux="adamw"), _conv_bn())
    assert opt.muon.param_groups[0]["lr"] == 0.02 and isinstance(opt.aux, torch.optim.AdamW)
    assert [tuple(p.shape) for p in opt.muon.param_groups[0]["params"]] == [(4, 27)]
    s = train(cfg_with(**{"optimizer.name": "muon", "optimizer.muon_lr": 0.05, "train.epochs": 1}),
              tmp_path / "m", log=quiet)
    assert s["status"] == "completed" and s["best_val_accuracy"] > 0


def test_muon_with_ema_resumes_exactly(tmp_path):
    assert_resumes_exactly(tmp_path, **{"train.epochs": 3, "optimizer.name": "muon", "optimizer.muon_lr": 0.02,
                                        "train.ema": {"decay": 0.9}, "schedule.name": "cosine"})


@pytest.mark.parametrize("ns_dtype", ["bf16", "fp32"])  # torch's Muon, and the lab's fp32 orthogonalisation
def test_muon_with_fixed_norms_resumes_exactly(tmp_path, ns_dtype):  # the rescaling is part of the step, not of the state
    assert_resumes_exactly(tmp_path, **{"train.epochs": 3, "optimizer.name": "muon", "optimizer.muon_lr": 0.05,
                                        "optimizer.muon_fixed_norm": True, "schedule.name": "cosine",
                                        "optimizer.muon_ns_dtype": ns_dtype})


# ---------------------------------------------------------------------- EMA

def test_ema_weights_are_validated_and_kept_in_best_pt(tmp_path):
    s = train(cfg_with(**{"train.ema": {"decay": 0.9}, "train.epochs": 2}), tmp_path / "e", log=quiet)
    best, last = load_checkpoint(tmp_path / "e" / "best.pt"), load_checkpoint(tmp_path / "e" / "last.pt")
    ema_weights = {k.removeprefix("module."): v for k, v in last["ema"]["averaged"].items() if k.startswith("module.")}
    if best["epoch"] == 2:
        assert all(torch.equal(best["state_dict"][k], ema_weights[k]) for k in best["state_dict"])
    assert any(not torch.equal(last["state_dict"][k], ema_weights[k]) for k in last["state_dict"])  # raw != average
    again = evaluate_checkpoint(str(tmp_path / "e"), "sample", split="val", device="cpu")
    assert again["accuracy"] == pytest.approx(s["val"]["accuracy"])  # the summary's val numbers are the EMA's


# ---------------------------------------------------------------------- alternating flip, reflect crops

def test_alternate_flip_mirrors_each_image_every_other_epoch_from_the_seed():
    cfg = cfg_with(**{"data.augment.flip": "alternate", "data.augment.crop_padding": 0}).data
    flips = {}

    def capture(x, train, keep_original=None, flip=None):
        flips.setdefault(epoch, []).append(flip)
        return x.float()

    data = PreparedData(cfg, torch.device("cpu"), seed=3)
    data.transform = capture
    order = lambda: torch.Generator().manual_seed(0)  # noqa: E731  (the same order every epoch)
    for epoch in (1, 2, 3):
        list(data.train_batches(50, order(), epoch=epoch))
    one, two, three = (torch.cat(flips[e]) for e in (1, 2, 3))
    assert torch.equal(one, ~two) and torch.equal(one, three) and 0.3 < one.float().mean() < 0.7
    again = PreparedData(cfg, torch.device("cpu"), seed=3)
    assert torch.equal(again.flip_base, data.flip_base)
    assert not torch.equal(PreparedData(cfg, torch.device("cpu"), seed=4).flip_base, data.flip_base)


def test_flip_given_per_image_is_applied_and_reflect_crops_leave_no_black_border():
    cfg = load_config(overrides={"data.augment.crop_padding": 4}).data.augment
    x = torch.full((16, 3, 8, 8), 200, dtype=torch.uint8)
    zeros = BatchTransform(torch.zeros(3), torch.ones(3), cfg, 8)(x, train=True)
    reflect = BatchTransform(torch.zeros(3), torch.ones(3), cfg.model_copy(update={"crop_mode": "reflect"}), 8)
    assert (zeros == 0).any() and not (reflect(x, train=True) == 0).any()
    ramp = torch.arange(8, dtype=torch.uint8).repeat(2, 3, 8, 1)
    out = BatchTransform(torch.zeros(3), torch.ones(3), None, 8)(ramp, train=True, flip=torch.tensor([True, False]))
    assert torch.equal(out[0], out[1].flip(2))


def test_alternate_flip_and_reflect_crops_resume_exactly(tmp_path):
    assert_resumes_exactly(tmp_path, **{"train.epochs": 3, "data.augment.flip": "alternate",
                                        "data.augment.crop_mode": "reflect", "data.augment.crop_padding": 2})


# ---------------------------------------------------------------------- TTA levels

def test_eval_and_predict_use_the_runs_tta_level_unless_told(tmp_path, cli):
    s = train(cfg_with(**{"train.tta_level": 2, "train.epochs": 1}), tmp_path / "t", log=quiet)
    assert evaluate_checkpoint(str(tmp_path / "t"), "sample", split="val", device="cpu")["accuracy"] == \
        pytest.approx(s["val"]["accuracy"])
    code, out, _ = cli("eval", "--checkpoint", tmp_path / "t", "--data", "sample", "--split", "val", "--json")
    default = json.loads(out.strip().splitlines()[-1])
    code0, out0, _ = cli("eval", "--checkpoint", tmp_path / "t", "--data", "sample", "--split", "val", "--tta", "0",
                         "--json")
    plain = json.loads(out0.strip().splitlines()[-1])
    assert code == code0 == 0 and default["tta_level"] == 2 and plain["tta_level"] == 0
    assert default["loss"] != plain["loss"]
    code, _, err = cli("eval", "--checkpoint", tmp_path / "t", "--data", "sample", "--tta", "5")
    assert code == 2 and err.strip().count("\n") == 0


def test_predict_files_follows_the_level(tmp_path):
    from PIL import Image

    from cifarlab.report.predict import predict_files
    train(cfg_with(**{"train.tta_flip": True, "train.epochs": 1}), tmp_path / "t", log=quiet)
    img = tmp_path / "x.png"
    Image.fromarray((torch.rand(32, 32, 3) * 255).byte().numpy()).save(img)
    run_level, none = (predict_files(tmp_path / "t", [img], tta=t)[0]["top"] for t in (None, 0))
    assert run_level == predict_files(tmp_path / "t", [img], tta=1)[0]["top"] and run_level != none


# ---------------------------------------------------------------------- whitening bias

def test_whitening_bias_stops_changing_after_n_epochs(tmp_path):
    biases = []
    extra = {"model.name": "speedrun_net", "model.options": {"widths": [8, 16, 16], "freeze_whiten_bias_after": 2},
             "train.epochs": 4, "optimizer.lr": 0.1}
    train(cfg_with(**extra), tmp_path / "w", log=quiet,
          callbacks=[lambda tr, row: biases.append(tr.model.whiten.bias.detach().clone())])
    assert not torch.equal(biases[0], biases[1])  # it trained in epoch 2
    assert torch.equal(biases[1], biases[2]) and torch.equal(biases[2], biases[3])  # and not after
    with pytest.raises(UserError, match="freeze_whiten_bias_after"):
        train(cfg_with(**{**extra, "model.options": {"freeze_whiten_bias_after": -1}}), tmp_path / "bad", log=quiet)


@pytest.mark.parametrize("optimizer", ["sgd", "muon"])
def test_fixed_norm_scales_stay_at_one_while_their_biases_learn(tmp_path, optimizer):
    extra = {"model.name": "speedrun_net", "model.options": {"widths": [8, 16, 16], "train_norm_weight": False},
             "train.epochs": 2, "optimizer.name": optimizer, "optimizer.lr": 0.1, "optimizer.weight_decay": 0.01,
             "optimizer.norm_bias_lr_mult": 4.0}
    def trained_model(cfg, out):
        models = []
        train(cfg, out, log=quiet, callbacks=[lambda tr, row: models.append(tr.model)])
        return models[-1]

    norms = [m for m in trained_model(cfg_with(**extra), tmp_path / "f").modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 6 and all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in norms)  # no step, no decay
    assert all(m.bias.abs().sum() > 0 for m in norms)  # the offsets trained
    trained = trained_model(cfg_with(**{**extra, "model.options": {"widths": [8, 16, 16]}}), tmp_path / "t")
    assert any(not torch.equal(m.weight, torch.ones_like(m.weight))
               for m in trained.modules() if isinstance(m, torch.nn.BatchNorm2d))  # the default still trains them
    with pytest.raises(UserError, match="train_norm_weight"):
        train(cfg_with(**{**extra, "model.options": {"train_norm_weight": "no"}}), tmp_path / "bad", log=quiet)


def test_whitening_bias_learns_at_the_norm_bias_rate_only_when_asked():
    from cifarlab.models import build_model
    from cifarlab.train.param_groups import param_groups

    def group_lr_of_whiten_bias(**options):
        model = build_model("speedrun_net", widths=[8, 16, 16], **options)
        groups = param_groups(model, 0.1, 0.01, norm_bias_lr_mult=64.0)
        return next(g for g in groups if any(p is model.whiten.bias for p in g["params"]))

    default = group_lr_of_whiten_bias()
    assert default["lr"] == pytest.approx(0.1) and default["weight_decay"] == pytest.approx(0.01)
    fast = group_lr_of_whiten_bias(whiten_bias_as_norm_bias=True)  # beside the BatchNorm biases, decay per step kept
    assert fast["lr"] == pytest.approx(6.4) and fast["weight_decay"] == pytest.approx(0.01 / 64)
    assert len(fast["params"]) == 1 + 6  # the whitening bias and the six BatchNorm biases
    with pytest.raises(UserError, match="whiten_bias_as_norm_bias must be true or false"):
        build_model("speedrun_net", whiten_bias_as_norm_bias="yes")


def _matrix_norms(opt):
    return [(v.norm().item(), v.size(0) ** 0.5) for _, v in opt._views]


def test_muon_fixed_norm_holds_each_matrix_at_sqrt_rows_and_drops_its_decay():
    torch.manual_seed(0)
    x, y = torch.randn(64, 3, 8, 8), torch.randint(0, 2, (64,))

    def trained(fixed_norm):
        torch.manual_seed(1)
        net = _conv_bn()
        opt = build_optimizer(OptimizerConfig(name="muon", lr=0.05, muon_lr=0.2, weight_decay=0.5,
                                              muon_fixed_norm=fixed_norm), net)
        for _ in range(30):
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
            opt.zero_grad()
        return net, opt

    net, opt = trained(True)
    assert opt.muon.param_groups[0]["weight_decay"] == 0.0  # the norm, not decay, holds the scale
    assert opt.aux.param_groups[0]["weight_decay"] == 0.5  # the rest keeps the configured decay
    # after 30 steps of LR 0.2 the kernel is one update away from its held norm: an orthogonalised update's
    # norm is at most sqrt(rows) x its largest singular value (< 1.3 after Newton-Schulz) x the LR
    for norm, want in _matrix_norms(opt):
        assert abs(norm - want) <= 0.2 * 1.3 * want
    # a step with no LR shows the rescaling alone: exactly sqrt(rows), and BatchNorm's output unchanged
    net.train()
    before = net(x).detach()
    for g in opt.param_groups:
        g["lr"] = 0.0
    torch.nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
    assert all(norm == pytest.approx(want, rel=1e-5) for norm, want in _matrix_norms(opt))
    assert torch.allclose(net(x), before, atol=1e-4)
    _, plain = trained(False)  # without it nothing holds the norm: under decay (lr x 0.5 a step) it still drifts away
    assert plain.muon.param_groups[0]["weight_decay"] == 0.5
    assert all(abs(norm - want) > 0.2 * 1.3 * want for norm, want in _matrix_norms(plain))


# ---------------------------------------------------------------------- time-budget schedule

def test_schedule_over_a_time_budget_ends_at_the_budget():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1)
    spent = [0.0]
    cfg = ScheduleConfig(name="cosine", min_lr=0.001, fit_time_limit=True)
    sched = build_scheduler(cfg, opt, 10, 5, 0.1, lambda: spent[0])
    for fraction in (0.5, 1.0, 1.7):
        spent[0] = fraction
        opt.step()
        sched.step()
        want = lr_factor(cfg, min(50, int(fraction * 50)), 10, 5, 0.1) * 0.1
        assert opt.param_groups[0]["lr"] == pytest.approx(want)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.001)


def test_trainer_lr_reaches_the_schedule_end_exactly_when_the_budget_is_spent(tmp_path, monkeypatch):
    now = [0.0]

    def fake_clock():  # every reading is 10 ms later: training time grows with the calls, not with the machine
        now[0] += 0.01
        return now[0]
    monkeypatch.setattr(Trainer, "clock", staticmethod(fake_clock))
    extra = {"schedule.name": "cosine", "schedule.min_lr": 0.002, "schedule.fit_time_limit": True,
             "train.time_limit_minutes": 0.002, "train.epochs": 50}  # a 0.12 s budget
    s = train(cfg_with(**extra), tmp_path / "b", log=quiet)
    rows = read_metrics(tmp_path / "b" / "metrics.csv")
    assert s["status"] == "stopped" and "time limit" in s["stopped_reason"] and len(rows) < 50
    assert rows[0]["lr"] > rows[-1]["lr"] and rows[-1]["lr"] == pytest.approx(0.002)
    assert sum(r["train_seconds"] for r in rows) >= 0.12


@pytest.mark.parametrize("epochs,tick", [(2, 1e-6), (3, 1e-5), (4, 1e-4)])
def test_time_fitted_schedule_still_ends_its_decay_when_the_epochs_run_out_first(tmp_path, monkeypatch, epochs, tick):
    now = [0.0]

    def slow_clock():  # a budget of 100 minutes that these few epochs use a sliver of: train.epochs ends the run
        now[0] += tick
        return now[0]
    monkeypatch.setattr(Trainer, "clock", staticmethod(slow_clock))
    extra = {"schedule.name": "cosine", "schedule.min_lr": 0.002, "schedule.fit_time_limit": True,
             "train.time_limit_minutes": 100, "train.epochs": epochs}
    s = train(cfg_with(**extra), tmp_path / "e", log=quiet)
    rows = read_metrics(tmp_path / "e" / "metrics.csv")
    assert s["status"] == "completed" and len(rows) == epochs
    assert rows[-1]["lr"] == pytest.approx(0.002)  # the decay ended with the run, not at 1/1000 of the budget


# ---------------------------------------------------------------------- Mixup / CutMix

def test_mixing_trains_on_soft_targets_with_label_smoothing(tmp_path):
    plain = train(cfg_with(**{"train.epochs": 1, "train.label_smoothing": 0.1}), tmp_path / "p", log=quiet)
    mixed = train(cfg_with(**{"train.epochs": 1, "train.label_smoothing": 0.1, "data.mix.mixup_alpha": 0.4,
                              "data.mix.cutmix_alpha": 1.0}), tmp_path / "m", log=quiet)
    a, b = (read_metrics(tmp_path / r / "metrics.csv")[0] for r in ("p", "m"))
    assert a["train_loss"] != b["train_loss"] and 0 <= b["train_accuracy"] <= 1 and mixed["status"] == "completed"
    assert plain["status"] == "completed"


# ---------------------------------------------------------------------- gradient accumulation

def test_accumulating_two_batches_of_8_is_one_batch_of_16(tmp_path):
    base = {"model.name": "mlp", "model.options": {"hidden": [32]}, "train.epochs": 1, "data.train_limit": 96,
            "data.augment.flip": False, "data.augment.crop_padding": 0,
            "train.precision": "fp32"}  # bf16 autocast (auto, on a CPU with native bf16) rounds the two sums differently
    small = train(cfg_with(**base, **{"train.batch_size": 8, "train.accumulate_steps": 2}), tmp_path / "a", log=quiet)
    big = train(cfg_with(**base, **{"train.batch_size": 16}), tmp_path / "b", log=quiet)
    wa, wb = (load_checkpoint(tmp_path / r / "last.pt")["state_dict"] for r in ("a", "b"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6)
    ra, rb = (read_metrics(tmp_path / r / "metrics.csv")[0] for r in ("a", "b"))
    assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-5)
    assert small["val"]["loss"] == pytest.approx(big["val"]["loss"], rel=1e-4)


# ---------------------------------------------------------------------- resources

def test_epoch_line_and_metrics_report_peak_memory(tmp_path):
    lines = []
    train(cfg_with(**{"train.epochs": 1}), tmp_path / "r", log=lines.append)
    row = read_metrics(tmp_path / "r" / "metrics.csv")[0]
    assert row["peak_memory_mb"] > 10 and row["images_per_second"] > 0
    assert any("MiB peak" in line and "img/s" in line for line in lines)
