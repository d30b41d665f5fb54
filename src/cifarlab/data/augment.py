"""Batched augmentation on the device with kornia (one call per batch, no per-image Python).

Images enter as float in [0, 1] (before normalisation, as the AutoAugment policy expects);
cutout runs after normalisation so that the erased square is the dataset mean (zero).
Randomness comes from torch's global generator, which the trainer reseeds every epoch.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cifarlab.data.normalize import Normalize, to_unit
from cifarlab.schema import AugmentConfig


def build_augment(cfg: AugmentConfig, image_size: int) -> tuple[nn.Module | None, nn.Module | None]:
    """(before-normalisation pipeline, after-normalisation pipeline); None where nothing is on."""
    import kornia.augmentation as K
    from kornia.augmentation.auto import AutoAugment

    before: list[nn.Module] = []
    if cfg.crop_padding:
        # reflect: the padded border mirrors the image, so a crop is a translation with no black edge (airbench)
        mode = "reflect" if cfg.crop_mode == "reflect" else "constant"
        before.append(K.RandomCrop((image_size, image_size), padding=cfg.crop_padding, padding_mode=mode))
    if cfg.flip is True:  # "alternate" is not random: the loader hands each batch its flips (alternate_flips)
        before.append(K.RandomHorizontalFlip(p=0.5))
    if cfg.rotation:
        before.append(K.RandomRotation(cfg.rotation, p=1.0))
    if cfg.color_jitter:
        cj = cfg.color_jitter
        before.append(K.ColorJitter(cj.brightness, cj.contrast, cj.saturation, cj.hue, p=1.0))
    if cfg.autoaugment:
        before.append(AutoAugment(policy="cifar10"))
    after: list[nn.Module] = []
    if cfg.cutout:
        area = min(1.0, (cfg.cutout / image_size) ** 2)
        # scale == area and ratio 1: a fixed square of side `cutout`, as in DeVries & Taylor (2017)
        after.append(K.RandomErasing(scale=(area, area), ratio=(1.0, 1.0), value=0.0, p=1.0))
    return (nn.Sequential(*before) if before else None, nn.Sequential(*after) if after else None)


class BatchTransform:
    """uint8 batch on the device -> augmented, normalised float batch, ready for the model."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, augment: AugmentConfig | None, image_size: int):
        self.normalize = Normalize(mean, std)
        self.before, self.after = build_augment(augment, image_size) if augment else (None, None)
        self.train_size: int | None = None  # progressive resizing: the side training batches are shrunk to

    def __call__(self, xb: torch.Tensor, train: bool, keep_original: torch.Tensor | None = None,
                 flip: torch.Tensor | None = None) -> torch.Tensor:
        x = to_unit(xb)
        orig = x
        if flip is not None:  # given per image (data.augment.flip: alternate)
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        if train and self.before is not None:
            x = self.before(x)
        x = self.normalize(x)
        if train and self.after is not None:
            x = self.after(x)
        if keep_original is not None:  # "original + augmented copy": these rows stay un-augmented
            x = torch.where(keep_original.view(-1, 1, 1, 1), self.normalize(orig), x)
        if train and self.train_size is not None and self.train_size < x.shape[-1]:
            # after the crop, so a 2-px translation at full size stays a translation; antialiased, so a
            # shrunk image looks like a smaller photograph, not an aliased subsample
            x = F.interpolate(x, size=(self.train_size, self.train_size), mode="bilinear", antialias=True)
        return x


def progressive_size(start: int, full: int, full_at: float, progress: float) -> int | None:
    """Side of the training images at this fraction of training: `start` at 0, growing linearly to `full`
    at `full_at` (rounded down to an even side, so there are few distinct shapes); None = full size."""
    if progress >= full_at or start >= full:
        return None
    side = start + (full - start) * progress / full_at
    return min(full, max(start, int(side) // 2 * 2))


def alternate_flips(base: torch.Tensor, idx: torch.Tensor, epoch: int) -> torch.Tensor:
    """airbench's alternating flip: image i is mirrored in epoch 1 if base[i], then every other epoch.

    Over any two epochs the network sees each image both ways, where independent coin flips would
    show a quarter of them one way only; the pattern is a function of (seed, epoch), so a resumed run
    flips as the uninterrupted one did."""
    return base[idx] ^ (epoch % 2 == 0)
