"""Input normalisation, in one place: training, evaluation, `predict` and `export` all feed the model
through these, so the numbers a checkpoint was trained on cannot drift from the numbers it serves on.

    uint8 pixels --to_unit--> floats in [0, 1] --Normalize--> (x - mean) / std per channel
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn


def to_unit(xb: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (N, C, H, W) as float32 in [0, 1]; a new tensor, the input is never changed."""
    x = xb.float()
    return x.div_(255) if x is not xb else x.div(255)  # in place on the copy .float() made: one allocation


class Normalize(nn.Module):
    """(x - mean) / std per channel, on floats in [0, 1]. A module with buffers, so it moves with `.to()`
    and an exported model carries it inside."""

    def __init__(self, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    @classmethod
    def of_checkpoint(cls, ckpt: dict) -> "Normalize":
        """The statistics the checkpoint's run trained with (its train split's per-channel mean and std)."""
        return cls(ckpt["normalization"]["mean"], ckpt["normalization"]["std"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std
