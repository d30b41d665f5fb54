"""Mixup and CutMix on a whole batch on the device (timm's `Mixup`, batch mode).

Mixup (Zhang et al. 2018) blends two images and their labels; CutMix (Yun et al. 2019) pastes a box
of one image into another and mixes the labels by the box's area. Both regularise long runs; in
short runs they cost accuracy (the model sees harder examples for fewer epochs), so they are off by
default. Randomness comes from torch's global generator, which the trainer reseeds every epoch, so
a resumed run mixes exactly as the uninterrupted one did.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class BatchMix:
    """(x, y) -> (mixed x, soft targets of shape (N, classes)); each batch pairs image i with image i-1.

    `prob` is the chance that a batch is mixed at all; with both alphas > 0, `switch_prob` is the
    chance that a mixed batch uses CutMix rather than Mixup."""

    def __init__(self, num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, prob: float = 1.0,
                 switch_prob: float = 0.5):
        self.num_classes, self.mixup_alpha, self.cutmix_alpha = num_classes, mixup_alpha, cutmix_alpha
        self.prob, self.switch_prob = prob, switch_prob

    @property
    def enabled(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        target = F.one_hot(y, self.num_classes).float()
        if not self.enabled or torch.rand(()).item() >= self.prob:
            return x, target
        cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha <= 0 or torch.rand(()).item() < self.switch_prob)
        alpha = self.cutmix_alpha if cutmix else self.mixup_alpha
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        # the batch is already shuffled, so its neighbour is a random partner (timm's flip does the same)
        partner = x.roll(1, 0)
        if cutmix:
            x, lam = _paste_box(x, partner, lam)
        else:
            x = x * lam + partner * (1 - lam)
        return x, target * lam + target.roll(1, 0) * (1 - lam)


def _paste_box(x: torch.Tensor, partner: torch.Tensor, lam: float) -> tuple[torch.Tensor, float]:
    """Paste a box of area (1 - lam) of `partner` into `x`; returns the images and lam for the area kept."""
    h, w = x.shape[-2:]
    cut = (1 - lam) ** 0.5
    bh, bw = int(h * cut), int(w * cut)
    cy, cx = torch.randint(h, ()).item(), torch.randint(w, ()).item()
    y0, y1 = max(cy - bh // 2, 0), min(cy + bh // 2, h)
    x0, x1 = max(cx - bw // 2, 0), min(cx + bw // 2, w)
    out = x.clone()
    out[..., y0:y1, x0:x1] = partner[..., y0:y1, x0:x1]
    # the box is clipped at the border, so the label mix follows the area actually pasted
    return out, 1 - (y1 - y0) * (x1 - x0) / (h * w)
