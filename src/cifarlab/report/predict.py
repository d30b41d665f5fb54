"""`cifarlab predict`: top-k classes for image files, with a trained checkpoint.

Any image PIL reads works: it is converted to RGB and fitted to the model's input size (shorter side
resized, centre cropped, as data.image_size fits a dataset), then normalised with the statistics the
checkpoint was trained with.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from cifarlab.data.images import decode
from cifarlab.data.normalize import Normalize, to_unit
from cifarlab.errors import UserError


def load_model(checkpoint: str | Path, trust_code: bool = False) -> tuple[dict, nn.Module]:
    """(checkpoint dict, its model with the weights loaded, in eval mode, on the CPU). `trust_code`: see
    train.checkpoint.model_from_checkpoint (a model named by `package.module:callable` is imported only then)."""
    from cifarlab.train.checkpoint import load_checkpoint, model_from_checkpoint
    ckpt = load_checkpoint(checkpoint)
    return ckpt, model_from_checkpoint(ckpt, f"checkpoint '{checkpoint}'", trust_code).eval()


def read_images(paths: list[str | Path], size: int) -> torch.Tensor:
    """uint8 (N, 3, size, size) from image files; a missing or unreadable file is a UserError."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            raise UserError(f"'{p}' is a folder, not an image: give image files (e.g. {p}/*.jpg)")
        if not p.is_file():
            raise UserError(f"image '{p}' does not exist: check the path")
        try:
            data = p.read_bytes()
        except OSError as err:
            raise UserError(f"cannot read image '{p}' ({err.strerror})") from None
        out.append(decode(data, str(p), size))  # fitted as data.image_size fits a dataset's images
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def normalise(x: torch.Tensor, ckpt: dict) -> torch.Tensor:
    """uint8 RGB images -> what the checkpoint's model was trained on."""
    x = to_unit(x)
    if ckpt["model"]["in_channels"] == 1:  # a grayscale model: the luminance of the RGB image
        x = x.mean(1, keepdim=True)
    return Normalize.of_checkpoint(ckpt)(x)


@torch.inference_mode()
def predict_files(checkpoint: str | Path, paths: list[str | Path], top_k: int = 3, tta: int | None = None,
                  trust_code: bool = False) -> list[dict]:
    """For each image: its path and the top-k classes with their probabilities. `tta`: the TTA level
    (0, 1, 2); default: the level the checkpoint's run validated with."""
    from cifarlab.train.evaluate import checkpoint_tta
    from cifarlab.train.tta import tta_logits

    ckpt, model = load_model(checkpoint, trust_code)
    x = normalise(read_images(paths, ckpt["model"]["image_size"]), ckpt)
    probs = tta_logits(model, x, checkpoint_tta(ckpt, tta)).float().softmax(1)
    p, idx = probs.topk(min(top_k, probs.shape[1]), dim=1)
    classes = ckpt["classes"]
    return [{"image": str(path), "top": [{"class": classes[j], "probability": round(q, 6)}
                                         for q, j in zip(pi.tolist(), ii.tolist())]}
            for path, pi, ii in zip(paths, p, idx)]
