"""`cifarlab predict`: top-k classes for image files (or folders of them), with a trained checkpoint.

Any image PIL reads works: it is converted to RGB and fitted to the model's input size (shorter side
resized, centre cropped, as data.image_size fits a dataset), then normalised with the statistics the
checkpoint was trained with.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from cifarlab.data.images import decode, is_image_name
from cifarlab.data.normalize import Normalize, to_unit
from cifarlab.errors import UserError


def load_model(checkpoint: str | Path, trust_code: bool = False) -> tuple[dict, nn.Module]:
    """(checkpoint dict, its model with the weights loaded, in eval mode, on the CPU). `trust_code`: see
    train.checkpoint.model_from_checkpoint (a model named by `package.module:callable` is imported only then)."""
    from cifarlab.train.checkpoint import load_checkpoint, model_from_checkpoint
    ckpt = load_checkpoint(checkpoint)
    return ckpt, model_from_checkpoint(ckpt, f"checkpoint '{checkpoint}'", trust_code).eval()


PREDICT_BATCH = 256  # images decoded and classified at a time: memory stays flat for a folder of any size


def image_files(paths: list[str | Path]) -> list[Path]:
    """The files to classify: each file given, and every image file (by its name) below each folder
    given, in sorted order; hidden files and folders are left out."""
    out = []
    for p in map(Path, paths):
        if not p.is_dir():
            out.append(p)
            continue
        found = sorted(f for f in p.rglob("*") if is_image_name(f.name) and f.is_file()
                       and not any(part.startswith(".") for part in f.relative_to(p).parts))
        if not found:
            raise UserError(f"folder '{p}' holds no image files (.jpg, .png, ...): give image files or a folder of them")
        out += found
    return out


def read_images(paths: list[str | Path], size: int) -> torch.Tensor:
    """uint8 (N, 3, size, size) from image files; a missing or unreadable file is a UserError."""
    out = []
    for p in map(Path, paths):  # folders already stand for their image files (image_files)
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
    paths, level, classes = image_files(paths), checkpoint_tta(ckpt, tta), ckpt["classes"]
    results = []
    for i in range(0, len(paths), PREDICT_BATCH):
        chunk = paths[i:i + PREDICT_BATCH]
        x = normalise(read_images(chunk, ckpt["model"]["image_size"]), ckpt)
        probs = tta_logits(model, x, level).float().softmax(1)
        p, idx = probs.topk(min(top_k, probs.shape[1]), dim=1)
        results += [{"image": str(path), "top": [{"class": classes[j], "probability": round(q, 6)}
                                                 for q, j in zip(pi.tolist(), ii.tolist())]}
                    for path, pi, ii in zip(chunk, p, idx)]
    return results
