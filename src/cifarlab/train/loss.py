"""The training loss: cross-entropy on hard labels or mixed (soft) targets, with label smoothing and,
for an imbalanced training split, per-class weights (train.class_weights: balanced).

Weights enter as a per-image weight averaged over the batch (sklearn's sample_weight), not torch's
weighted mean: that way the micro-batches of train.accumulate_steps still add up to the whole batch's
loss, mixed targets weigh by their mix, and the loss keeps the plain loss's scale (so the LR stays).
A balanced split needs no weights: the trainer then uses the plain loss, the same run bit for bit.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

IMBALANCED = 3.0  # a training split whose largest class is this many times its smallest is worth a note


def balanced_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """n / (classes x count) per class (sklearn's compute_class_weight('balanced'), over the classes the
    split holds): a rare class's images weigh as much in all as a common class's, and an image weighs 1
    on average. A class absent from the split (never a target) gets weight 1."""
    counts = torch.bincount(labels.cpu(), minlength=num_classes).double()
    weights = len(labels) / (int((counts > 0).sum()) * counts.clamp(min=1))
    return torch.where(counts > 0, weights, torch.ones_like(weights)).float()


def imbalance(labels: torch.Tensor, num_classes: int) -> float:
    """Largest class count over smallest (among the classes present) of a split."""
    counts = torch.bincount(labels.cpu(), minlength=num_classes)
    present = counts[counts > 0]
    return (present.max() / present.min()).item() if len(present) else 1.0


def classification_loss(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0,
                        class_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy over the batch; `target` is class indices or a (batch, classes) distribution."""
    if class_weight is None:
        return F.cross_entropy(logits, target, label_smoothing=label_smoothing)
    per_image = F.cross_entropy(logits, target, label_smoothing=label_smoothing, reduction="none")
    weight = class_weight[target] if target.dim() == 1 else target @ class_weight  # a mixed image: its mix of weights
    return (per_image * weight).mean()
