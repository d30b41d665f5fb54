"""Parameter groups: which weights get weight decay and which learning rate.

One group is what a tutorial does; fast recipes split it (airbench, timm's `param_groups_weight_decay`):
- normalisation weights and all biases get no weight decay: they set scales and offsets, and
  shrinking them towards zero only fights BatchNorm (no regularising effect, slower training);
- BatchNorm biases may learn faster (airbench trains them at 64x the base rate), since a
  normalised layer's offset moves on a different scale from its weights. A model marks any other
  module whose bias plays that part (an offset on whitened inputs) with `norm_like_bias = True`.
"""
from __future__ import annotations

import torch.nn as nn

NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def param_groups(model: nn.Module, lr: float, weight_decay: float, no_decay_norm_and_bias: bool = False,
                 norm_bias_lr_mult: float = 1.0) -> list[dict]:
    """Groups for torch.optim: `decay` (weights), `no_decay` (other biases, norm weights), `norm_bias`.

    With the defaults this is one group holding every parameter, as `model.parameters()` would be."""
    decay, no_decay, norm_bias, seen = [], [], [], set()
    for module in model.modules():
        is_norm = isinstance(module, NORM_LAYERS)
        norm_like_bias = is_norm or getattr(module, "norm_like_bias", False)
        for name, p in module.named_parameters(recurse=False):
            # frozen parameters stay in (torch skips a parameter without a gradient), so the default
            # groups hold exactly model.parameters() and old checkpoints' optimizer states still load
            if id(p) in seen:
                continue
            seen.add(id(p))
            if norm_like_bias and name == "bias" and norm_bias_lr_mult != 1.0:
                norm_bias.append(p)
            elif no_decay_norm_and_bias and (is_norm or name == "bias" or p.ndim <= 1):
                no_decay.append(p)
            else:
                decay.append(p)
    groups = [{"params": decay, "lr": lr, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0})
    if norm_bias:  # SGD decays by lr x weight_decay per step: divided by the multiplier, the faster biases
        # shrink per step as much as the weights do (airbench), rather than 64x as fast
        groups.append({"params": norm_bias, "lr": lr * norm_bias_lr_mult,
                       "weight_decay": 0.0 if no_decay_norm_and_bias else weight_decay / norm_bias_lr_mult})
    return [g for g in groups if g["params"]]


def scaled_for_batch(lr: float, batch_size: int, reference_batch_size: int | None) -> float:
    """The linear scaling rule (Goyal et al. 2017): an LR stated for `reference_batch_size` images per step.

    Steps per epoch fall as the batch grows, so the per-step LR grows with it and one epoch moves the
    weights about as far at any batch size; with SGD's coupled decay the weight decay per epoch follows."""
    return lr if not reference_batch_size else lr * batch_size / reference_batch_size
