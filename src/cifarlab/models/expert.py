"""Seed 003's expert-branch network (90.53% on CIFAR-10 after 100 epochs).

    stem        conv 3x3 (in -> channels) -> BatchNorm -> ReLU
    N blocks    expert branch: a = softmax(FC2(ReLU(FC1(avg-pool(X))))), FC1: channels -> channels/r,
                FC2 -> K; conv branch: K convs 3x3 (channels -> channels), each -> BatchNorm -> ReLU;
                out = sum_k a_k * conv_k(X)
    classifier  global average pool -> Linear(channels, classes), or an MLP (classifier_hidden)

The seed's settings are the defaults: N=8 blocks, K=3 branches, reduction r=8, 64 channels. The
report (no code) follows its coursework brief for the expert branch (pool, FC reducing by r, a
non-linearity, FC to K, softmax) and says it added BatchNorm and ReLU to each branch conv
(`bn_relu=false` gives the brief's plain convs); everything stays at the input resolution, as
nothing in the report downsamples. Softmax over the classes is left to the loss, as the seed did.
Convs keep PyTorch's default bias, as the seed's would have.
"""
import torch.nn as nn

from cifarlab.models.helpers import check_whole, check_widths
from cifarlab.models.registry import register_model


class ExpertBlock(nn.Module):
    def __init__(self, channels, k, reduction, bn_relu=True):
        super().__init__()
        self.k = k
        self.expert = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, channels // reduction),
                                    nn.ReLU(), nn.Linear(channels // reduction, k), nn.Softmax(dim=1))
        # The K branch convs as one conv with K x channels outputs: the same K convs (and per-channel
        # BatchNorms), computed in one matrix multiply instead of K.
        self.convs = nn.Conv2d(channels, k * channels, 3, padding=1)
        self.post = nn.Sequential(nn.BatchNorm2d(k * channels), nn.ReLU()) if bn_relu else nn.Identity()

    def forward(self, x):
        a = self.expert(x)  # (B, K): this softmax mixes branches; it is not the output softmax
        y = self.post(self.convs(x))
        y = y.view(x.shape[0], self.k, -1, *x.shape[2:])
        return (a[:, :, None, None, None] * y).sum(1)


class ExpertNet(nn.Module):
    def __init__(self, num_classes=10, in_channels=3, channels=64, num_blocks=8, k=3, reduction=8, bn_relu=True,
                 classifier_hidden=()):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU())
        self.backbone = nn.Sequential(*[ExpertBlock(channels, k, reduction, bn_relu) for _ in range(num_blocks)])
        head, width = [nn.AdaptiveAvgPool2d(1), nn.Flatten()], channels
        for h in classifier_hidden:
            head += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.classifier = nn.Sequential(*head, nn.Linear(width, num_classes))

    def forward(self, x):
        return self.classifier(self.backbone(self.stem(x)))


@register_model("expert_net", family="expert")
def expert_net(num_classes=10, in_channels=3, image_size=32, channels=64, num_blocks=8, k=3, reduction=8,
               bn_relu=True, classifier_hidden=()):
    """Seed 003's expert-branch net: stem, N blocks of K convs mixed by a reduction-r expert; 90.53% in 100 epochs."""
    for name, v in (("channels", channels), ("num_blocks", num_blocks), ("k", k), ("reduction", reduction)):
        check_whole(name, v)
    if channels // reduction < 1:
        raise ValueError(f"reduction {reduction} leaves no expert features from {channels} channels: use reduction <= channels")
    hidden = check_widths("classifier_hidden", classifier_hidden, at_least=0)
    return ExpertNet(num_classes, in_channels, channels, num_blocks, k, reduction, bool(bn_relu), hidden)
