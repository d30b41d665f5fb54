"""Test-time augmentation: average the logits of a few views of each image.

Levels, as airbench's `infer(level)`: 0 = the image alone; 1 = and its mirror image (CIFAR's classes
are mirror-symmetric: ~0.5 points for a 2x evaluation); 2 = the image and its mirror, each also
shifted by one pixel up-left and down-right (~0.2 more points, 6x evaluation cost).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

LEVELS = {0: "none", 1: "flip", 2: "flip + 1-pixel translations"}


def _shifted(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch moved one pixel up-left and one pixel down-right, the border reflected (as airbench)."""
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    h, w = x.shape[-2:]
    return padded[..., 0:h, 0:w], padded[..., 2:h + 2, 2:w + 2]


def tta_logits(model, x: torch.Tensor, level: int) -> torch.Tensor:
    if level == 0:
        return model(x)
    both = model(x) + model(x.flip(3))
    if level == 1:
        return both / 2
    # airbench's weights: half on the two plain views, half on the four translated ones
    up_left, down_right = _shifted(x)
    shifted = sum(model(v) + model(v.flip(3)) for v in (up_left, down_right))
    return (both + shifted / 2) / 4
