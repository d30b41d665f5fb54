"""The PyTorch CIFAR-10 tutorial CNN and the variants seed 001 trained (and seed 004's LeNet-5 kin).

Defaults give the tutorial network exactly: conv(3->6, 5x5) -> ReLU -> max-pool -> conv(6->16, 5x5)
-> ReLU -> max-pool -> fc 400->120 -> fc 84 -> fc classes; 62,006 parameters on CIFAR-10, with the
tutorial's module names (conv1, pool, conv2, fc1, fc2, fc3). Seed 001 changed one thing at a time:

  depth            hidden=[120] (61%), hidden=[] (60%); its "depth" was the number of fc layers
  width            hidden=[240, 84] (64%, its best), also 480, 320, 180 in place of 240
  kernel size      kernel_size=[3, 5] (first conv 3x3: 61%)
  dropout          dropout=0.25 after every hidden fc (9%), 0.1 (60%), 0.01 (62%);
                   dropout_layers=1 puts it after fc1 only (0.25: 60%, 0.01: 63%)
  BatchNorm1d      batchnorm=true: fc -> BatchNorm1d -> activation. The seed's own code never ran
                   one: it assigned `self.batchnorm` twice (the 84-wide one replaced the 240-wide
                   one) and its forward did not call it, so its "batchnorm" runs (61-62%) were the
                   plain network; batchnorm=false reproduces those, true is what it meant.
  pooling          pool=avg (57%), pool=lp (LPPool2d, norm lp_norm=2: 61%)
  activation       activation=tanh (61%)
  init             init=he (kaiming_uniform_ on every conv and fc, zero bias: 59%), he_conv (convs
                   only: 61%), xavier (xavier_uniform_, zero bias), default (PyTorch's)

Sizes are inferred: the tutorial's `16 * 5 * 5` happens to stay right for a 3x3 first conv
(32 -> 30 -> 15 -> 11 -> 5) but no longer for other image sizes or channel counts.
"""
import torch
import torch.nn as nn

from cifarlab.models.helpers import check_probability, check_whole, check_widths, get_act_layer
from cifarlab.models.registry import register_model

INITS = ("default", "he", "he_conv", "xavier")


class ConvNet(nn.Module):
    """[conv -> activation -> pool] per channel width, flatten, [fc -> (BatchNorm1d) -> activation ->
    (dropout)] per hidden width, fc to classes. Layer names: conv1.., fc1.. (fc_name="dense" for LeNet)."""

    def __init__(self, num_classes=10, in_channels=3, image_size=32, channels=(6, 16), kernel_size=5,
                 hidden=(120, 84), activation="relu", pool="max", lp_norm=2.0, dropout=0.0, dropout_layers=None,
                 batchnorm=False, init="default", fc_name="fc"):
        super().__init__()
        # one number stands for a list of one, as in seed 001's edits (kernel_size=5, hidden=120)
        channels = check_widths("channels", channels, one_number=True)
        hidden = check_widths("hidden", hidden, at_least=0, one_number=True)
        kernels = check_widths("kernel_size", kernel_size, one_number=True)
        kernels = kernels * len(channels) if len(kernels) == 1 else kernels
        if len(kernels) != len(channels):
            raise ValueError(f"kernel_size must be one size or one per conv ({len(channels)}), got {kernel_size!r}")
        act = get_act_layer(activation)
        pools = {"max": lambda: nn.MaxPool2d(2, 2), "avg": lambda: nn.AvgPool2d(2, 2), "lp": lambda: nn.LPPool2d(lp_norm, 2, 2)}
        if pool not in pools:
            raise ValueError(f"pool must be one of {', '.join(pools)}, got {pool!r}")
        check_probability("dropout", dropout)
        if dropout_layers is not None:
            check_whole("dropout_layers", dropout_layers, low=0)
        if init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
        self.convs = [f"conv{i}" for i in range(1, len(channels) + 1)]
        for name, c_in, c_out, k in zip(self.convs, (in_channels, *channels), channels, kernels):
            self.add_module(name, nn.Conv2d(c_in, c_out, k))
        self.act, self.pool = act(), pools[pool]()
        try:
            with torch.no_grad():
                flat = self.features(torch.zeros(1, in_channels, image_size, image_size)).shape[1]
        except RuntimeError:
            flat = 0
        if flat == 0:
            raise ValueError(f"image size {image_size} is too small for {len(channels)} convs of {kernel_size} and 2x2 pools")
        self.fcs = [f"{fc_name}{i}" for i in range(1, len(hidden) + 2)]
        for name, a, b in zip(self.fcs, (flat, *hidden), (*hidden, num_classes)):
            self.add_module(name, nn.Linear(a, b))
        self.bns = [f"bn{i}" for i in range(1, len(hidden) + 1)] if batchnorm else []
        for name, h in zip(self.bns, hidden):
            self.add_module(name, nn.BatchNorm1d(h))
        n_drop = len(hidden) if dropout_layers is None else dropout_layers
        self.dropped = set(self.fcs[:n_drop]) if dropout else set()
        self.dropout = nn.Dropout(dropout) if dropout else None
        if init != "default":
            self._init(init)

    def _init(self, init):
        kinds = (nn.Conv2d,) if init == "he_conv" else (nn.Conv2d, nn.Linear)
        fill = nn.init.xavier_uniform_ if init == "xavier" else nn.init.kaiming_uniform_
        for m in self.modules():
            if isinstance(m, kinds):
                fill(m.weight)
                nn.init.zeros_(m.bias)

    def features(self, x):
        for name in self.convs:
            x = self.pool(self.act(getattr(self, name)(x)))
        return torch.flatten(x, 1)

    def forward(self, x):
        x = self.features(x)
        for i, name in enumerate(self.fcs[:-1]):
            x = getattr(self, name)(x)
            x = self.act(getattr(self, self.bns[i])(x) if self.bns else x)
            x = self.dropout(x) if name in self.dropped else x
        return getattr(self, self.fcs[-1])(x)


@register_model("tutorial_cnn", family="tutorial")
def tutorial_cnn(num_classes=10, in_channels=3, image_size=32, channels=(6, 16), kernel_size=5, hidden=(120, 84),
                 activation="relu", pool="max", lp_norm=2.0, dropout=0.0, dropout_layers=None, batchnorm=False,
                 init="default"):
    """The PyTorch CIFAR-10 tutorial CNN (62,006 parameters) with seed 001's knobs; its best: 65%."""
    return ConvNet(num_classes, in_channels, image_size, channels, kernel_size, hidden, activation, pool, lp_norm,
                   dropout, dropout_layers, batchnorm, init)
