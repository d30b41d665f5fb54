"""Checkpoints: written atomically, read with `weights_only=True` (no pickle code ever runs).

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts. `best.pt` holds what
evaluation and export need; `last.pt` adds optimizer, scheduler and history so a run can resume.
"""
from __future__ import annotations

import io
import math
import pickle
import shutil
from pathlib import Path

import torch
import torch.nn as nn

from cifarlab.errors import UserError, short
from cifarlab.fileio import atomic_write
from cifarlab.models import build_model, model_names

FORMAT = "cifarlab-checkpoint-1"
OUTPUT_BYTES = 16 * 2**20  # room for logs, metrics and what end-of-run hooks write (plots, HTML)


def save_checkpoint(path: Path, state: dict) -> None:
    # serialise in memory first: a full disk then fails in our own write with its errno, where
    # torch.save would raise an opaque "PytorchStreamWriter failed writing file" RuntimeError
    buf = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buf)
    atomic_write(path, lambda f: f.write(buf.getbuffer()))


def checkpoint_bytes(model: nn.Module, optimizer_states: int) -> tuple[int, int]:
    """Approximate sizes of best.pt (weights) and last.pt (weights + optimizer state per parameter)."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    return params + buffers, params * (1 + optimizer_states) + buffers


def check_free_space(run_path: Path, model: nn.Module, optimizer_states: int) -> None:
    """Refuse before training when the disk cannot hold the checkpoints (each write needs a temp copy)."""
    best, last = checkpoint_bytes(model, optimizer_states)
    need = 2 * (best + last) + OUTPUT_BYTES
    free = shutil.disk_usage(run_path).free
    if free < need:
        raise UserError(f"only {free / 2**20:.1f} MiB free on the disk of '{run_path}' but this run needs "
                        f"about {need / 2**20:.1f} MiB for its checkpoints and outputs: free space or choose another --out")


def _refuse_other_formats(path: Path) -> None:
    """A file that is no torch file at all (an image, a log, a CSV given by mistake) said as such, before
    torch.load reads it as a legacy pickle and calls it unsafe or fails deep inside."""
    with path.open("rb") as f:
        head = f.read(4)
    # torch.save writes a zip archive; files from torch < 1.6 start with a pickle's protocol byte
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return
    what = "empty (0 bytes)" if not head else "not a torch file (it does not start as one)"
    raise UserError(f"checkpoint '{path}' is {what}: give a .pt file that cifarlab wrote, or a run directory")


def checkpoint_file(path: str | Path) -> Path:
    """The file a --checkpoint names: a run directory stands for its best checkpoint."""
    path = Path(path)
    return path / "best.pt" if path.is_dir() else path


def load_checkpoint(path: str | Path) -> dict:
    path = checkpoint_file(path)
    if not path.is_file():
        raise UserError(f"checkpoint '{path}' does not exist: give a .pt file or a run directory")
    _refuse_other_formats(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0][:160]
        raise UserError(f"checkpoint '{path}' holds objects that are not plain weights and was refused unexecuted "
                        f"({first}): only load checkpoints cifarlab wrote") from None
    except Exception as err:  # any other failure to parse a user's file means the file is bad, not us
        err = err if str(err) else type(err).__name__
        raise UserError(f"checkpoint '{path}' is damaged or not a torch file ({str(err).splitlines()[0][:120]}): "
                        "use another checkpoint") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"'{path}' is not a cifarlab checkpoint: train one with `cifarlab train`")
    _check_fields(ckpt, WEIGHT_FIELDS, path)
    _check_fields(ckpt["model"], MODEL_FIELDS, path, "model.")
    spec = ckpt["model"]
    if not all(isinstance(k, str) for k in spec["options"]):
        _damaged(path, "model.options", "has keys that are not names")
    if not all(isinstance(c, str) for c in ckpt["classes"]) or len(ckpt["classes"]) != spec["num_classes"]:
        _damaged(path, "classes", f"are not {spec['num_classes']} class names")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in ckpt["state_dict"].items()):
        _damaged(path, "state_dict", "holds something other than named tensors")
    _check_normalization(ckpt["normalization"], spec["in_channels"], path)
    if not isinstance(ckpt.get("config", {}), dict):
        _damaged(path, "config", f"has the wrong type ({type(ckpt['config']).__name__})")
    return ckpt


def _check_normalization(norm: dict, channels: int, path) -> None:
    """Evaluation divides by these: each a list of one finite number per channel, the stds positive."""
    for key in ("mean", "std"):
        v = norm.get(key)
        if not (isinstance(v, list) and len(v) == channels and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)):
            _damaged(path, f"normalization.{key}", f"is not a list of {channels} finite numbers (one per channel)")
    if not all(x > 0 for x in norm["std"]):
        _damaged(path, "normalization.std", "has a std that is not positive")


def _whole(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


# what every cifarlab checkpoint holds, and how each field is checked (evaluation, export, predict, resume)
WEIGHT_FIELDS = {"model": dict, "classes": list, "state_dict": dict, "normalization": dict}
MODEL_FIELDS = {"name": str, "num_classes": _whole, "in_channels": _whole, "image_size": _whole, "options": dict}
RESUME_FIELDS = {"optimizer": dict, "scheduler": dict, "scaler": dict, "history": list, "best": dict,
                 "train_seconds": (int, float)}


def _damaged(path, field: str, what: str):
    raise UserError(f"checkpoint '{path}' is damaged: its field '{field}' {what}: use another checkpoint")


def _check_fields(d: dict, fields: dict, path, prefix: str = "") -> None:
    for name, want in fields.items():
        if name not in d:
            _damaged(path, prefix + name, "is missing")
        v = d[name]
        ok = want(v) if callable(want) and not isinstance(want, type) else (
            isinstance(v, want) and not (want is int and isinstance(v, bool)))
        if not ok:
            _damaged(path, prefix + name, f"has the wrong type ({type(v).__name__})")


def check_resume_state(state: dict, path) -> None:
    """last.pt must also hold what --resume restores; a damaged one is one line before anything trains."""
    _check_fields(state, {"epoch": int, **RESUME_FIELDS}, path)
    if state["epoch"] < 0 or not all(isinstance(r, dict) for r in state["history"]) or len(state["history"]) != state["epoch"]:
        _damaged(path, "history", f"does not list the {state['epoch']} epochs done")
    best = state["best"]
    if not isinstance(best.get("epoch"), int) or not isinstance(best.get("val_accuracy"), (int, float)):
        _damaged(path, "best", "lacks its epoch or val_accuracy")


def model_from_checkpoint(ckpt: dict, where: str = "checkpoint", trust_code: bool = False) -> nn.Module:
    """Rebuild the model the checkpoint describes and load its weights (strictly).

    A checkpoint is data: a model it names as `package.module:callable` (code outside the zoo) would be
    imported and called with options from the file, so that happens only with `trust_code=True`."""
    _check_fields(ckpt, WEIGHT_FIELDS, where)  # also for a dict that did not come through load_checkpoint
    _check_fields(ckpt["model"], MODEL_FIELDS, where, "model.")
    spec = ckpt["model"]
    if spec["name"] not in model_names() and not trust_code:
        raise UserError(f"{where} names model {short(spec['name'], 80)}, which is not in cifarlab's zoo: code it "
                        "names is imported and run only on request; add --trust-code (Python: trust_code=True) "
                        "if you trust whoever made this file")
    model = build_model(spec["name"], num_classes=spec["num_classes"], in_channels=spec["in_channels"],
                        image_size=spec["image_size"], **spec["options"])
    load_weights(model, ckpt["state_dict"], where)
    return model


def load_weights(model: nn.Module, state_dict: dict, where: str) -> None:
    try:
        model.load_state_dict(state_dict)
    except (RuntimeError, TypeError, AttributeError, ValueError) as err:
        detail = next((line.strip() for line in str(err).splitlines()[1:] if line.strip()), str(err))[:160]
        raise UserError(f"{where} does not fit this model ({detail}): "
                        "use a checkpoint of the same model, options and number of classes") from None
