"""A fast-to-train CIFAR network in the style of airbench (Keller Jordan's cifar10-airbench).

Not a copy of airbench's code: the ideas, each with the reason it is here.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from cifarlab.models.helpers import check_flag, check_widths, is_whole
from cifarlab.models.registry import register_model


class ConvGroup(nn.Module):
    """conv -> pool -> BN -> GELU -> conv -> BN -> GELU: pooling early halves the cost of everything after it.

    With convs >= 3 (airbench96 uses 3) the convs after the first form a residual branch, GELU(x + BN(conv(...))),
    as in airbench96: the skip carries the signal past the added convs, so the deeper group stays easy to train."""

    def __init__(self, c_in, c_out, train_norm_weight=True, convs=2):
        super().__init__()
        self.convs = convs
        # conv1, conv2, ..., then norm1, norm2, ...: the names and parameter order airbench and older checkpoints use
        for i in range(1, convs + 1):
            self.add_module(f"conv{i}", nn.Conv2d(c_in if i == 1 else c_out, c_out, 3, padding="same", bias=False))
        for i in range(1, convs + 1):
            self.add_module(f"norm{i}", nn.BatchNorm2d(c_out, momentum=0.4))
        for i in range(1, convs + 1):
            # airbench keeps the scales at 1: only the offsets learn
            getattr(self, f"norm{i}").weight.requires_grad_(train_norm_weight)
            w = getattr(self, f"conv{i}").weight.data  # partial identity init: trains like a shallower net at first
            torch.nn.init.dirac_(w[:w.size(1)])

    def conv_norm(self, i, x):
        """BN_i(conv_i(x)), the layers by their checkpoint names."""
        return getattr(self, f"norm{i}")(getattr(self, f"conv{i}")(x))

    def forward(self, x):
        x = F.gelu(self.norm1(F.max_pool2d(self.conv1(x), 2)))
        if self.convs == 2:
            return F.gelu(self.conv_norm(2, x))
        skip = x
        for i in range(2, self.convs):
            x = F.gelu(self.conv_norm(i, x))
        return F.gelu(self.conv_norm(self.convs, x) + skip)


class SpeedrunNet(nn.Module):
    def __init__(self, num_classes=10, in_channels=3, widths=(64, 256, 256), whiten_width=24, scale=1 / 9,
                 freeze_whiten_bias_after=None, train_norm_weight=True, whiten_bias_as_norm_bias=False,
                 convs_per_group=2):
        super().__init__()
        self.freeze_whiten_bias_after = freeze_whiten_bias_after
        # 2x2 patch whitening: a fixed first layer that decorrelates pixels, set from the data
        self.whiten = nn.Conv2d(in_channels, whiten_width, 2, bias=True)
        self.whiten.weight.requires_grad_(False)
        # its bias offsets unit-variance channels, as a BatchNorm bias does: airbench gives it that LR (64x)
        self.whiten.norm_like_bias = whiten_bias_as_norm_bias
        blocks, c = [], whiten_width
        for w in widths:
            blocks.append(ConvGroup(c, w, train_norm_weight, convs_per_group))
            c = w
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c, num_classes, bias=False)
        self.scale = scale  # small logits at init: the softmax starts nearly uniform, as with a temperature

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Whitening weights from the eigenvectors of the covariance of the training images' 2x2 patches."""
        patches = images.float().unfold(2, 2, 1).unfold(3, 2, 1).permute(0, 2, 3, 1, 4, 5).flatten(3)
        patches = patches.reshape(-1, patches.size(-1)).double()
        patches = patches - patches.mean(0)
        eigval, eigvec = torch.linalg.eigh(patches.T @ patches / len(patches))
        half = self.whiten.out_channels // 2
        w = (eigvec.T.flip(0) / torch.sqrt(eigval.flip(0) + eps)[:, None])[:half]
        w = w.reshape(half, *self.whiten.weight.shape[1:]).to(self.whiten.weight.dtype)
        self.whiten.weight.copy_(torch.cat([w, -w]))  # both signs: GELU would otherwise drop half of each

    def epoch_started(self, epoch: int) -> None:
        """The trainer calls this before each epoch (numbered from 1). airbench trains the whitening bias for
        a few epochs only: it settles early, and frozen it stops moving the whole network's input (steadier)."""
        if self.freeze_whiten_bias_after is not None:
            self.whiten.bias.requires_grad_(epoch <= self.freeze_whiten_bias_after)

    def forward(self, x):
        x = F.gelu(self.whiten(x))
        x = self.blocks(x)
        x = F.adaptive_max_pool2d(x, 1).flatten(1)
        return self.head(x) * self.scale


@register_model("speedrun_net", family="speedrun")
def speedrun_net(num_classes=10, in_channels=3, image_size=32, widths=(64, 256, 256), whiten_width=24,
                 freeze_whiten_bias_after=None, train_norm_weight=True, whiten_bias_as_norm_bias=False,
                 convs_per_group=2):
    """airbench-style net: whitened 2x2 stem, three conv groups, dirac init; fast time-to-accuracy.

    freeze_whiten_bias_after: train the whitening layer's bias for this many epochs only (airbench: 3).
    train_norm_weight: false keeps the BatchNorm scales at 1, training only their biases (airbench).
    whiten_bias_as_norm_bias: the whitening bias learns at the BatchNorm biases' rate
    (optimizer.norm_bias_lr_mult) and decay, as in airbench, instead of the base rate.
    convs_per_group: 2 as airbench94; 3 or more as airbench96, the convs after the first in a residual branch."""
    widths = check_widths("widths", widths, what="positive channel counts such as [64, 256, 256]")
    if not is_whole(whiten_width, low=2) or whiten_width % 2:
        raise ValueError(f"whiten_width must be a positive even number (filters come in +/- pairs), got {whiten_width!r}")
    if freeze_whiten_bias_after is not None and not is_whole(freeze_whiten_bias_after, low=0):
        raise ValueError(f"freeze_whiten_bias_after must be a whole number of epochs (0 or more), "
                         f"got {freeze_whiten_bias_after!r}")
    if not is_whole(convs_per_group, low=2, high=16):
        raise ValueError(f"convs_per_group must be a whole number from 2 to 16, got {convs_per_group!r}")
    return SpeedrunNet(num_classes, in_channels, widths, whiten_width, freeze_whiten_bias_after=freeze_whiten_bias_after,
                       convs_per_group=convs_per_group,
                       train_norm_weight=check_flag("train_norm_weight", train_norm_weight),
                       whiten_bias_as_norm_bias=check_flag("whiten_bias_as_norm_bias", whiten_bias_as_norm_bias))
