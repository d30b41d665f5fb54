"""The in-memory form every dataset reader returns."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class RawDataset:
    """uint8 images (N, C, H, W) and int64 labels; a test split only where the dataset has one."""
    train_x: np.ndarray
    train_y: np.ndarray
    classes: list[str]
    test_x: np.ndarray | None = None
    test_y: np.ndarray | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)
