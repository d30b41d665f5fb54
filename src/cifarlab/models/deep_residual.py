"""Seed 002's "worst" network: a deep, narrow residual CNN (84% in 20 epochs, vs CifarNet's 87%).

The seed printed the module tree only (its class was also called CifarNet). The modules here carry
the printed names in the printed order; the forward is a reconstruction that the printed shapes
pin down: with conv1's 5x5/padding 3 the 32x32 input becomes 34x34, and only max-pooling after
each of the three stages (34 -> 17 -> 8 -> 4), then conv4 (3x3, no padding: 2x2) and its own pool
give the 1x1x512 that the printed Linear(512, 512) takes. Each stage is its conv, then residual
blocks x + f(x) (f = conv-ReLU-conv as printed, ReLU after the sum), then its BatchNorm, ReLU and
pool. The fully connected stack has ReLU between its seven layers. Where the seed's forward put
the BatchNorms and activations the report does not show; these are the usual places.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from cifarlab.models.helpers import check_whole, check_widths
from cifarlab.models.registry import register_model

SEED_FC_NAMES = ["ff_1", "ff_2", "ff_2_2", "ff_3", "ff_4", "ff_5", "ff_6"]


def _resblock(c):
    return nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1))


class DeepResidual(nn.Module):
    def __init__(self, num_classes=10, in_channels=3, image_size=32, channels=(10, 100, 256, 512), blocks=4,
                 hidden=(512, 500, 500, 100, 100, 100)):
        super().__init__()
        self.stages = len(channels) - 1
        c = in_channels
        for s, width in enumerate(channels[:-1], 1):
            first = nn.Conv2d(c, width, 5, padding=3) if s == 1 else nn.Conv2d(c, width, 3, padding=1)
            self.add_module(f"conv{s}", nn.Sequential(first))
            for b in range(1, blocks + 1):
                self.add_module(f"resblock{s}_{b}", _resblock(width))
            c = width
        s = self.stages + 1
        self.add_module(f"conv{s}", nn.Sequential(nn.Conv2d(c, channels[-1], 3), nn.MaxPool2d(2)))
        for s in range(1, self.stages + 1):
            self.add_module(f"maxpool_{s}", nn.MaxPool2d(2))
        self.flatten = nn.Flatten()
        self.blocks = blocks
        with torch.no_grad():  # the BatchNorms are registered last (the printed order), so not used here
            flat = self.features(torch.zeros(1, in_channels, image_size, image_size), bn=False).shape[1]
        widths = [flat, *hidden, num_classes]
        n = len(widths) - 1
        self.fc_names = SEED_FC_NAMES if n == len(SEED_FC_NAMES) else [f"ff_{i}" for i in range(1, n + 1)]
        for name, (a, b) in zip(self.fc_names, zip(widths, widths[1:])):
            self.add_module(name, nn.Linear(a, b))
        for s, width in enumerate(channels, 1):
            self.add_module(f"batchnorm_{s}", nn.BatchNorm2d(width))

    def features(self, x, bn=True):
        for s in range(1, self.stages + 1):
            x = getattr(self, f"conv{s}")(x)
            for b in range(1, self.blocks + 1):
                x = F.relu(x + getattr(self, f"resblock{s}_{b}")(x))
            x = getattr(self, f"batchnorm_{s}")(x) if bn else x
            x = getattr(self, f"maxpool_{s}")(F.relu(x))
        x = getattr(self, f"conv{self.stages + 1}")(x)
        x = getattr(self, f"batchnorm_{self.stages + 1}")(x) if bn else x
        return self.flatten(F.relu(x))

    def forward(self, x):
        x = self.features(x)
        for name in self.fc_names[:-1]:
            x = F.relu(getattr(self, name)(x))
        return getattr(self, self.fc_names[-1])(x)


@register_model("deep_residual", family="deep_residual")
def deep_residual(num_classes=10, in_channels=3, image_size=32, channels=(10, 100, 256, 512), blocks=4,
                  hidden=(512, 500, 500, 100, 100, 100)):
    """Seed 002's "worst" net: 3 stages of 4 residual blocks (10-100-256 ch), conv 512, 7 FC layers; 84%."""
    channels = check_widths("channels", channels, at_least=2, what="positive widths (stages..., final conv)")
    hidden = check_widths("hidden", hidden, at_least=0, what="positive widths of the fully connected layers")
    return DeepResidual(num_classes, in_channels, image_size, channels, check_whole("blocks", blocks, low=0), hidden)
