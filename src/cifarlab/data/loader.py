"""Splits, normalisation and batching: the whole dataset lives on the device as uint8.

A batch is a slice of a shuffled index, turned into floats and augmented on the device; no
DataLoader workers, no per-sample Python. This is what makes an epoch on 2 CPU cores spend its
time in the model rather than in data handling.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from cifarlab.data.augment import BatchTransform, alternate_flips
from cifarlab.data.sources import load_dataset, read_rows
from cifarlab.data.types import RawDataset
from cifarlab.errors import UserError
from cifarlab.schema import DataConfig


def stratified_split(y: np.ndarray, val_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, val indices): every class gives the same share to validation, reproducibly."""
    n = len(y)
    n_val = int(val_size) if val_size >= 1 else int(round(val_size * n))
    if not 0 < n_val < n:
        raise UserError(f"data.val_size={val_size:g} leaves no validation or no training images out of {n}: "
                        "use a count below the dataset size or a fraction such as 0.1")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    # largest-remainder allocation so the per-class shares add up to exactly n_val
    exact = counts * n_val / n
    take = np.floor(exact).astype(int)
    take[np.argsort(-(exact - take), kind="stable")[: n_val - take.sum()]] += 1
    val = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:k] for c, k in zip(classes, take)])
    mask = np.zeros(n, bool)
    mask[val] = True
    return np.flatnonzero(~mask), np.sort(val)


def stratified_subset(idx: np.ndarray, y: np.ndarray, limit: int, seed: int) -> np.ndarray:
    if limit >= len(idx):
        return idx
    keep, _ = stratified_split(y[idx], len(idx) - limit, seed + 1)
    return idx[keep]


def split_indices(raw: RawDataset, cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) row indices into a dataset's training images, as every run with this data config carves them."""
    train_idx, val_idx = stratified_split(np.asarray(raw.train_y), cfg.val_size, cfg.split_seed)
    if cfg.train_limit:
        train_idx = stratified_subset(train_idx, np.asarray(raw.train_y), cfg.train_limit, cfg.split_seed)
    return train_idx, val_idx


def split_rows(raw: RawDataset, cfg: DataConfig, which: str) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of the 'train' or 'val' split a run with this data config trains or selects on.
    The images are one copy of the rows: a cached dataset is a read-only memory map, which torch.from_numpy
    warns about, and indexing the map would make its pages count in this process too."""
    idx = split_indices(raw, cfg)[("train", "val").index(which)]
    return read_rows(raw.train_x, idx), np.asarray(raw.train_y)[idx]


def normalisation(cfg: DataConfig, train_x: np.ndarray) -> tuple[list[float], list[float]]:
    c = train_x.shape[1]
    if cfg.normalize == "none":
        return [0.0] * c, [1.0] * c
    if cfg.normalize == "half":
        return [0.5] * c, [0.5] * c
    if cfg.normalize == "dataset":
        # in chunks of about 16 MB of floats: a float copy of 100k 64x64 images would need 10 GB
        total, squares = np.zeros(c), np.zeros(c)
        step = max(1, (1 << 21) // max(1, train_x[0].size))
        for i in range(0, len(train_x), step):
            chunk = np.array(train_x[i:i + step], dtype=np.float64)
            chunk /= 255
            total += chunk.sum(axis=(0, 2, 3))
            squares += np.einsum("nchw,nchw->c", chunk, chunk)
        n = len(train_x) * train_x.shape[2] * train_x.shape[3]
        mean = total / n
        return mean.tolist(), np.sqrt(np.maximum(squares / n - mean ** 2, 0)).tolist()
    mean, std = cfg.normalize
    if len(mean) != c:
        raise UserError(f"data.normalize gives {len(mean)} channel means but the images have {c} channels")
    return list(mean), list(std)


@dataclass
class Split:
    x: torch.Tensor  # uint8 (N, C, H, W) on the device
    y: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.y)


class PreparedData:
    """Train / validation / (test) splits on the device, with the batch transform that feeds the model."""

    def __init__(self, cfg: DataConfig, device: torch.device, raw: RawDataset | None = None, seed: int = 0):
        raw = raw if raw is not None else load_dataset(cfg.dataset, size=cfg.image_size)
        self.classes = list(raw.classes)
        self.image_shape = raw.image_shape
        # Each split is one copy of its rows, shared with torch (from_numpy) on the CPU: the floor is one
        # copy of the dataset, since the split is a selection of rows. The cached arrays are read, not mapped.
        to = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
        train_x, train_y = split_rows(raw, cfg, "train")
        self.mean, self.std = normalisation(cfg, train_x)
        self.train = Split(to(train_x), to(train_y))
        del train_x  # on a GPU the host copy can go now
        self.val = Split(*map(to, split_rows(raw, cfg, "val")))
        self.test = None
        if raw.test_x is not None:
            self.test = Split(to(read_rows(raw.test_x)), to(np.array(raw.test_y)))
        self.concat_original = cfg.augment.concat_original
        self.flip_base = None  # data.augment.flip: alternate: which images are mirrored in epoch 1, from the seed
        if cfg.augment.flip == "alternate":
            self.flip_base = (torch.rand(len(self.train), generator=torch.Generator().manual_seed(seed)) < 0.5).to(device)
        self.transform = BatchTransform(torch.tensor(self.mean, device=device), torch.tensor(self.std, device=device),
                                        cfg.augment, self.image_shape[-1])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def train_batches(self, batch_size: int, generator: torch.Generator, rank: int = 0, world: int = 1,
                      epoch: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch (numbered from 1) of augmented training batches; `rank`/`world` give each process its share."""
        n = len(self.train)
        order = torch.randperm(n, generator=generator)
        keep = None
        if self.concat_original:  # every image twice per epoch: once as is, once augmented
            mix = torch.randperm(2 * n, generator=generator)
            order, keep = order.repeat(2)[mix], (torch.arange(2 * n) < n)[mix]
        if world > 1:  # equal shards: every rank must take the same number of steps, or DDP waits forever
            usable = len(order) // world * world
            order = order[:usable][rank::world]
            keep = keep[:usable][rank::world] if keep is not None else None
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size].to(self.train.x.device)
            if len(idx) < 2:  # a batch of one breaks BatchNorm and teaches nothing
                continue
            flag = keep[i:i + batch_size].to(idx.device) if keep is not None else None
            flip = alternate_flips(self.flip_base, idx, epoch) if self.flip_base is not None else None
            yield self.transform(self.train.x[idx], train=True, keep_original=flag, flip=flip), self.train.y[idx]

    def eval_batches(self, split: Split, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(0, len(split), batch_size):
            yield self.transform(split.x[i:i + batch_size], train=False), split.y[i:i + batch_size]
