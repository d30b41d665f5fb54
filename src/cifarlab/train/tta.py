"""Test-time augmentation: average the logits of a few views of each image.

Levels, as airbench's `infer(level)`: 0 = the image alone; 1 = and its mirror image (CIFAR's classes
are mirror-symmetric: ~0.5 points for a 2x evaluation); 2 = the image and its mirror, each also
shifted by one pixel up-left and down-right (~0.2 more points, 6x evaluation cost).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

LEVELS = {0: "none", 1: "flip", 2: "flip + 1-pixel translations"}


def shifted(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """The batch moved by dy rows and dx columns, the border reflected (as airbench)."""
    pad = max(abs(dy), abs(dx))
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    h, w = x.shape[-2:]
    return padded[..., pad + dy:pad + dy + h, pad + dx:pad + dx + w]


def tta_logits(model, x: torch.Tensor, level: int) -> torch.Tensor:
    if level == 0:
        return model(x)
    both = model(x) + model(x.flip(3))
    if level == 1:
        return both / 2
    # airbench's weights: half on the two plain views, half on the four translated ones
    moved = sum(model(v) + model(v.flip(3)) for v in (shifted(x, -1, -1), shifted(x, 1, 1)))
    return (both + moved / 2) / 4
