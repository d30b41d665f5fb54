"""The model zoo: every model builds, runs forward and backward, and the seed architectures have the
parameter counts their printed structures imply (the arithmetic is written out by each number)."""
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from cifarlab.errors import UserError
from cifarlab.models import build_model, count_parameters, model_names

SEED_FAMILIES = {"mlp", "tutorial_cnn", "lenet5", "vgg_arch2", "vgg_arch8", "vgg_arch13", "vgg_arch14", "vgg_arch15",
                 "cifarnet", "cifarnet_tiny", "cifarnet_tiny_deep", "deep_residual", "expert_net", "resnet18", "layers"}


def test_every_seed_family_is_registered():
    assert SEED_FAMILIES <= set(model_names())


def _step(model, num_classes, size):
    x = torch.randn(2, 3, size, size)
    y = model(x)
    assert y.shape == (2, num_classes)
    # Logits, not probabilities: no model ends in a softmax (the loss applies it).
    assert not ((y > 0).all() and torch.allclose(y.sum(1), torch.ones(2)))
    nn.functional.cross_entropy(y, torch.tensor([0, 1])).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", model_names())
def test_forward_backward_cifar10(name):
    _step(build_model(name), 10, 32)


@pytest.mark.parametrize("name", model_names())
def test_forward_backward_tinyimagenet_shape(name):
    _step(build_model(name, num_classes=200, image_size=64), 200, 64)


def n(name, **kw):
    return count_parameters(build_model(name, **kw))


# A conv has out*(in*k*k + 1) parameters, a Linear out*(in + 1), a BatchNorm 2*channels.
def test_tutorial_cnn_counts():
    # conv1 6*(3*25+1)=456, conv2 16*(6*25+1)=2416, fc1 120*(400+1)=48120, fc2 84*121=10164, fc3 10*85=850
    assert n("tutorial_cnn") == 62_006
    # seed 001's best, fc1 240 wide: 456 + 2416 + 240*401=96240 + 84*241=20244 + 850
    assert n("tutorial_cnn", hidden=[240, 84]) == 120_206
    # its printed "batchnorm" net registered one BatchNorm1d(84) (168, never called); intended: both, 2*240+2*84
    assert n("tutorial_cnn", hidden=[240, 84], batchnorm=True) == 120_206 + 480 + 168
    # "depth": hidden=[120] -> fc3 120->10: 456 + 2416 + 48120 + 1210; hidden=[] -> fc1 400->10: 4010
    assert n("tutorial_cnn", hidden=[120]) == 52_202
    assert n("tutorial_cnn", hidden=[]) == 6_882
    # first conv 3x3: conv1 6*(27+1)=168; 32->30->15->11->5 keeps fc1 at 400
    assert n("tutorial_cnn", kernel_size=[3, 5]) == 62_006 - 456 + 168


def test_mlp_counts():
    # seed 004 Model 2, printed: 256*(3072+1)=786688, 2 x 256*257=65792, 10*257=2570
    assert n("mlp", hidden=[256, 256, 256]) == 920_842
    # Model 1: 512*3073=1573376, 2 x 512*513=262656, 10*513=5130
    assert n("mlp", hidden=[512, 512, 512]) == 2_103_818
    # seed 000 arch 5: 128*3073=393344, 64*129=8256, 10*65=650
    assert n("mlp", hidden=[128, 64]) == 402_250


def test_lenet5_count():
    # seed 004 Model 3, printed: conv1 64*(27+1)=1792, conv2 128*(576+1)=73856,
    # dense1 512*(4608+1)=2359808, dense2 512*513=262656, dense3 10*513=5130
    assert n("lenet5") == 2_703_242
    assert build_model("lenet5").dense1.in_features == 4608  # 128x6x6, inferred


def test_cifarnet_counts():
    # seed 002 printed CifarNet: convs conv1 64*28=1792, conv2_0 128*577=73856, conv2_1/2_2 2 x 128*1153=147584,
    # conv3_0 256*1153=295168, conv4_0/4_1/4_2 3 x 256*2305=590080 -> 2436224; BatchNorms 2*(64+3*128+4*256)=2944;
    # ff5_1 Linear(256, 10, bias=False) = 2560
    assert n("cifarnet") == 2_441_728
    # Tiny ImageNet best: same convs and BatchNorms, printed Linear(4096, 200, bias=False) = 819200
    assert n("cifarnet_tiny", num_classes=200, image_size=64) == 2_439_168 + 819_200
    # deeper Tiny net: + conv5_0 512*2305=1180160, conv6_0/6_1/6_2 3 x 512*4609=2359808, BatchNorms 4 x 1024,
    # Linear(512, 200, bias=False) = 102400
    assert n("cifarnet_tiny_deep", num_classes=200, image_size=64) == 2_439_168 + 1_180_160 + 7_079_424 + 4_096 + 102_400


# The module tree seed 002 printed for its CifarNet, verbatim (less the enclosing "CifarNet(" and ")").
SEED_002_CIFARNET = Path(__file__).with_name("data") / "seed002_cifarnet.txt"


def test_cifarnet_prints_as_the_seed_printed_it():
    def norm(line):  # newer PyTorch prints BatchNorm's bias flag and Flatten's dims
        return line.strip().replace(" bias=True,", "").replace("(start_dim=1, end_dim=-1)", "()")
    ours = [norm(line) for line in repr(build_model("cifarnet")).splitlines()[1:-1]]
    assert ours == [line.strip() for line in SEED_002_CIFARNET.read_text().splitlines()]


def test_deep_residual_count_and_names():
    # seed 002 "worst" net, printed: conv1 10*(3*25+1)=760; resblock1_* 4 x 2 x 10*91=7280; conv2 100*91=9100;
    # resblock2_* 4 x 2 x 100*901=720800; conv3 256*901=230656; resblock3_* 4 x 2 x 256*2305=4720640;
    # conv4 512*2305=1180160; ff_1 512*513=262656, ff_2 500*513=256500, ff_2_2 500*501=250500, ff_3 100*501=50100,
    # ff_4/ff_5 2 x 100*101=20200, ff_6 10*101=1010; batchnorm_1..4 2*(10+100+256+512)=1756
    assert n("deep_residual") == 7_712_118
    names = [k for k, _ in build_model("deep_residual").named_children()]
    assert names[:6] == ["conv1", "resblock1_1", "resblock1_2", "resblock1_3", "resblock1_4", "conv2"]
    assert names[-11:] == ["ff_1", "ff_2", "ff_2_2", "ff_3", "ff_4", "ff_5", "ff_6",
                           "batchnorm_1", "batchnorm_2", "batchnorm_3", "batchnorm_4"]


# seed 000 (code printed, not module trees). Convs: c1 64*28=1792, c2 128*577=73856, c3 256*1153=295168,
# c4 512*2305=1180160, c5 512*4609=2359808 (sum 3910784); head 128*8193=1048704 + 64*129=8256 + 10*65=650
# (sum 1057610); BatchNorms bn1..bn5 2*(64+128+256+512+512)=2944. Literal: layer5 (and batchnorm5) shared by its
# three calls; intended: two more c5 and BatchNorm5, 2 x (2359808 + 1024) = 4721664.
CONVS, HEAD, BNS, TWO_MORE_C5 = 3_910_784, 1_057_610, 2_944, 4_721_664


def test_vgg_counts():
    # arch 2: c1-c4, then Linear(512*8*8=32768, 128) 128*32769=4194432 + 8256 + 650
    assert n("vgg_arch2") == 3_910_784 - 2_359_808 + 4_194_432 + 8_256 + 650
    assert n("vgg_arch6") == CONVS + HEAD
    assert n("vgg_arch6", literal=False) == CONVS + HEAD + 2 * 2_359_808
    assert n("vgg_arch8") == CONVS + HEAD + BNS
    assert n("vgg_arch8", literal=False) == CONVS + HEAD + BNS + TWO_MORE_C5
    # arch 13 defines batchnorm2 but its forward never calls it: left out (256)
    assert n("vgg_arch13") == CONVS + HEAD + BNS - 256
    assert n("vgg_arch13", literal=False) == CONVS + HEAD + BNS - 256 + TWO_MORE_C5
    # arch 14: one ResidualBlock(128, 128), two convs 2 x 128*1153=295168 (its unused batch_norm left out),
    # called twice: shared literally, two blocks intended
    assert n("vgg_arch14") == CONVS + HEAD + BNS - 256 + 295_168
    assert n("vgg_arch14", literal=False) == CONVS + HEAD + BNS - 256 + TWO_MORE_C5 + 2 * 295_168
    # arch 15: residual blocks of 64 (2 x 64*577=73856), 256 (2 x 590080) and 512 (2 x 2359808) channels, each
    # called 3 times; residual2 (128) is called with its output discarded, so literally it computes nothing
    res64, res128, res256, res512 = 73_856, 295_168, 1_180_160, 4_719_616
    assert n("vgg_arch15") == CONVS + HEAD + BNS + res64 + res256 + res512
    assert n("vgg_arch15", literal=False) == CONVS + HEAD + BNS + TWO_MORE_C5 + 3 * (res64 + res128 + res256 + res512)


def test_expert_net_count():
    # seed 003 (described, not printed): stem 64*28=1792 + BN 128; per block: expert FC1 8*(64+1)=520,
    # FC2 3*(8+1)=27, three convs 3 x 64*577=110784 + their BNs 3 x 128=384; 8 blocks; Linear(64, 10) 650
    assert n("expert_net") == 1_920 + 8 * (520 + 27 + 110_784 + 384) + 650
    assert n("expert_net", k=2, num_blocks=3) == 1_920 + 3 * (520 + 18 + 73_856 + 256) + 650


def test_resnet18_count():
    assert n("resnet18") == 11_173_962  # the usual CIFAR ResNet-18 figure


def test_literal_forms_reuse_weights():
    lit = build_model("vgg_arch13")
    # the shared block's conv appears once in the parameters but runs three times
    convs = [m for m in lit.modules() if isinstance(m, nn.Conv2d) and m.in_channels == m.out_channels == 512]
    assert len(convs) == 1
    calls = []
    convs[0].register_forward_hook(lambda *a: calls.append(1))
    lit(torch.randn(2, 3, 32, 32))
    assert len(calls) == 3


def test_tutorial_cnn_knobs():
    m = build_model("tutorial_cnn", init="he", pool="lp", activation="tanh", dropout=0.1, dropout_layers=1,
                    batchnorm=True)
    assert all((mod.bias == 0).all() for mod in m.modules() if isinstance(mod, (nn.Conv2d, nn.Linear)))
    assert isinstance(m.pool, nn.LPPool2d) and isinstance(m.act, nn.Tanh)
    assert m.dropped == {"fc1"}
    _step(m, 10, 32)
    he_conv = build_model("tutorial_cnn", init="he_conv")
    assert (he_conv.conv1.bias == 0).all() and not (he_conv.fc1.bias == 0).all()
    assert [k for k, _ in build_model("tutorial_cnn").named_parameters()][:2] == ["conv1.weight", "conv1.bias"]


@pytest.mark.parametrize("name, options", [
    ("tutorial_cnn", {"pool": "median"}), ("tutorial_cnn", {"hidden": [0]}), ("tutorial_cnn", {"init": "lecun"}),
    ("tutorial_cnn", {"kernel_size": [3, 5, 7]}), ("tutorial_cnn", {"channels": [6, 16, 32, 64]}),
    ("vgg_arch13", {"literal": "yes"}), ("vgg_arch13", {"dropout": 1.5}), ("vgg_arch15", {"res_blocks": 0}),
    ("cifarnet", {"pools": [2, 2]}), ("expert_net", {"reduction": 128}), ("expert_net", {"k": 0}),
    ("lenet5", {"channels": []}), ("deep_residual", {"blocks": -1}), ("mlp", {"dropout": 1.0}),
    ("resnet18", {"depth": 50}),
])
def test_invalid_options_are_one_line_user_errors(name, options):
    with pytest.raises(UserError) as err:
        build_model(name, **options)
    assert "\n" not in str(err.value) and name in str(err.value)


# ---------------------------------------------------------------- the layer spec

# Seed 000's first network as it meant it: three convs, pool, a fourth conv layer to 128, pool, flatten; it
# hand-wrote Linear(8192, 128) and a forward that applied that Linear to an image.
ARCH1 = [{"conv": 32, "kernel": 3, "padding": 1}, "relu", {"conv": 32, "kernel": 3, "padding": 1}, "relu",
         {"conv": 128, "kernel": 3, "padding": 1}, "relu", {"pool": "max"},
         {"conv": 128, "kernel": 3, "padding": 1}, "relu", {"pool": "max"},
         "flatten", {"linear": 128}, "relu", {"linear": 64}, "relu", {"linear": "classes"}]


def test_layer_spec_infers_the_flatten_size():
    m = build_model("layers", layers=ARCH1)
    assert m[11].in_features == 128 * 8 * 8  # 8192, found by a dummy forward
    assert build_model("layers", layers=ARCH1, image_size=64)[11].in_features == 128 * 16 * 16
    _step(m, 10, 32)


def test_layer_spec_shared_repeat():
    spec = [{"conv": 8, "padding": 1}, {"repeat": 3, "shared": True, "layers": [{"conv": 8, "padding": 1}, "bn"],
                                        "between": ["relu"]}, {"pool": "global"}, "flatten", {"linear": "classes"}]
    shared, copies = build_model("layers", layers=spec), build_model("layers", layers=[
        spec[0], {**spec[1], "shared": False}, *spec[2:]])
    block = 8 * (8 * 9 + 1) + 16
    assert count_parameters(copies) - count_parameters(shared) == 2 * block


@pytest.mark.parametrize("spec, says", [
    ([{"conv": 32, "padding": 1}, {"linear": 128}, {"linear": "classes"}], "put flatten before it"),
    ([{"conv": 8}, "flatten", {"linear": 7}], "10 classes"),
    ([{"cnv": 8}, "flatten", {"linear": "classes"}], "did you mean 'conv'"),
    ([{"conv": 8, "kernal": 3}, "flatten", {"linear": "classes"}], "did you mean 'kernel'"),
    (["flatten", {"linear": "classes"}, "softmax"], "no softmax"),
    ([{"conv": 8}] + [{"pool": "max"}] * 6 + ["flatten", {"linear": "classes"}], "cannot take an input of shape 8x1x1"),
    ([{"conv": 8}, {"residual": [{"conv": 8}]}, "flatten", {"linear": "classes"}], "must keep the shape"),
    ([{"conv": 0}, "flatten", {"linear": "classes"}], "whole number >= 1"),
    ([{"dropout": 2}, "flatten", {"linear": "classes"}], "probability"),
    ("conv", "non-empty list"),
    ([], "non-empty list"),
    ([42], "is not a layer"),
])
def test_malformed_layer_specs_are_one_line_user_errors(spec, says):
    with pytest.raises(UserError) as err:
        build_model("layers", layers=spec)
    msg = str(err.value)
    assert says in msg and "\n" not in msg and msg.startswith("model 'layers'")
