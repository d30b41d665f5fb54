"""Evaluation: loss and accuracy every epoch; the full set (per-class, macro F1, confusion) at the end."""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from cifarlab.train.runtime import autocast
from cifarlab.train.tta import tta_logits


@torch.inference_mode()
def predict(model: nn.Module, batches: Iterable, device: torch.device, precision: str = "fp32",
            channels_last: bool = False, tta_level: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits as float32 on CPU, labels) over all batches; tta_level > 0 averages over views (train/tta.py)."""
    model.eval()
    logits, labels = [], []
    for xb, yb in batches:
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            out = tta_logits(model, xb, tta_level)
        logits.append(out.float().cpu())
        labels.append(yb.cpu())
    return torch.cat(logits), torch.cat(labels)


def loss_and_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    return F.cross_entropy(logits, labels).item(), (logits.argmax(1) == labels).float().mean().item()


def full_metrics(logits: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict:
    from torchmetrics.functional.classification import multiclass_confusion_matrix, multiclass_f1_score

    k = len(classes)
    preds = logits.argmax(1)
    confusion = multiclass_confusion_matrix(preds, labels, num_classes=k)
    support = confusion.sum(1).clamp(min=1)
    loss, acc = loss_and_accuracy(logits, labels)
    return {
        "accuracy": acc,
        "loss": loss,
        "macro_f1": multiclass_f1_score(preds, labels, num_classes=k, average="macro").item(),
        "per_class_accuracy": {c: (confusion[i, i] / support[i]).item() for i, c in enumerate(classes)},
        "confusion_matrix": confusion.tolist(),
        "classes": list(classes),
        "images": len(labels),
    }


def checkpoint_tta(ckpt: dict, tta: int | None = None) -> int:
    """The TTA level to evaluate a checkpoint with: `tta` if given, else the level its run validated with."""
    if tta is not None:
        return tta
    from cifarlab.schema import validate_config
    return validate_config(ckpt["config"]).train.tta if "config" in ckpt else 0


def _shape(chw) -> str:
    """3x32x32 images (channels first), as the checkpoint and the dataset state them."""
    return "x".join(map(str, chw))


def evaluate_checkpoint(checkpoint: str, data_spec: str, split: str = "auto", batch_size: int = 1000,
                        device: str = "auto", tta: int | None = None, trust_code: bool = False) -> dict:
    """Evaluate a checkpoint on a dataset split: auto = the test split if the dataset has one, else all images;
    val = the validation split the checkpoint's run carved (same seed and size). `tta`: the TTA level
    (0, 1, 2); default: the level of the checkpoint's run, so eval reproduces the run's own numbers."""
    import numpy as np

    from cifarlab.data.loader import Split, split_rows
    from cifarlab.data.normalize import Normalize, to_unit
    from cifarlab.data.sources import load_dataset, parse_spec, read_rows
    from cifarlab.errors import UserError, short
    from cifarlab.schema import validate_config
    from cifarlab.train.checkpoint import load_checkpoint, model_from_checkpoint
    from cifarlab.train.runtime import resolve_device

    ckpt = load_checkpoint(checkpoint)
    dev = resolve_device(device)
    spec = ckpt["model"]
    fit = spec["image_size"] if parse_spec(data_spec)[0].resizes else None  # arrays: their own size, checked below
    raw = load_dataset(data_spec, size=fit)  # image files fitted to the model's input, as predict and image_size do
    want = (spec["in_channels"], spec["image_size"], spec["image_size"])
    if raw.image_shape != want or raw.num_classes != spec["num_classes"]:
        raise UserError(f"checkpoint '{checkpoint}' is for {spec['num_classes']} classes of {_shape(want)} images, "
                        f"but '{data_spec}' has {raw.num_classes} classes of {_shape(raw.image_shape)}: "
                        "evaluate on the dataset it was trained for")
    if list(raw.classes) != list(ckpt["classes"]):  # same count, other names or order: every label would mean another class
        differ = next(i for i, (a, b) in enumerate(zip(ckpt["classes"], raw.classes)) if a != b)
        raise UserError(f"checkpoint '{checkpoint}' was trained on other class names than '{data_spec}' has "
                        f"(class {differ}: {short(ckpt['classes'][differ], 40)} against {short(raw.classes[differ], 40)}): "
                        "evaluate on the dataset it was trained for, or name the folders as its classes")
    if split == "auto":
        split = "test" if raw.test_x is not None else "all"
    if split == "test":
        if raw.test_x is None:
            raise UserError(f"dataset '{data_spec}' has no test split: use --split all, val or train")
        x, y = read_rows(raw.test_x), np.array(raw.test_y)
    elif split in ("val", "train"):  # the rows the checkpoint's run selected or trained on
        if "config" not in ckpt:
            raise UserError(f"checkpoint '{checkpoint}' holds no run config, so the {split} split its run carved "
                            "cannot be rebuilt: use --split all or test")
        x, y = split_rows(raw, validate_config(ckpt["config"]).data, split)
    elif split == "all":
        x, y = read_rows(raw.train_x), np.array(raw.train_y)
    else:
        raise UserError(f"unknown split '{split}': use auto, test, val, train or all")
    model = model_from_checkpoint(ckpt, f"checkpoint '{checkpoint}'", trust_code).to(dev)
    normalize = Normalize.of_checkpoint(ckpt).to(dev)
    data = Split(torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev))
    batches = ((normalize(to_unit(data.x[i:i + batch_size])), data.y[i:i + batch_size])
               for i in range(0, len(data), batch_size))
    level = checkpoint_tta(ckpt, tta)
    out = full_metrics(*predict(model, batches, dev, tta_level=level), ckpt["classes"])
    return {"checkpoint": str(checkpoint), "data": data_spec, "split": split, "tta_level": level, **out}
