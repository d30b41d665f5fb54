"""Checkpoints: written atomically, read with `weights_only=True` (no pickle code ever runs).

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts. `best.pt` holds what
evaluation and export need; `last.pt` adds optimizer, scheduler and history so a run can resume.
"""
from __future__ import annotations

import io
import os
import pickle
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

from cifarlab.errors import UserError, WriteFailed
from cifarlab.models import build_model

FORMAT = "cifarlab-checkpoint-1"
TEMP_SUFFIX = ".tmp"
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: Path, write) -> None:
    """Call write(file_object) on a temp file beside `path`, fsync, then rename over `path`.

    A crash (or kill -9) at any moment leaves either the old file or the new one, never half of one.
    """
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
        _fsync_dir(path.parent)  # the rename itself survives a power cut, not just a killed process
    except OSError as err:  # disk full, read-only, quota: the old file is untouched, say so in one line
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        raise WriteFailed.from_os_error(path, err) from None
    except BaseException:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temps(folder: Path) -> None:
    """Temp files of writes a kill -9 cut short; only call while holding the folder's lock."""
    for p in Path(folder).glob(f".*{TEMP_SUFFIX}"):
        p.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a directory; the rename is still atomic
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


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


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():  # a run directory stands for its best checkpoint
        path = path / "best.pt"
    if not path.is_file():
        raise UserError(f"checkpoint '{path}' does not exist: give a .pt file or a run directory")
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
    return ckpt


def model_from_checkpoint(ckpt: dict, where: str = "checkpoint") -> nn.Module:
    """Rebuild the model the checkpoint describes and load its weights (strictly)."""
    spec = ckpt["model"]
    model = build_model(spec["name"], num_classes=spec["num_classes"], in_channels=spec["in_channels"],
                        image_size=spec["image_size"], **spec["options"])
    load_weights(model, ckpt["state_dict"], where)
    return model


def load_weights(model: nn.Module, state_dict: dict, where: str) -> None:
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as err:
        detail = next((line.strip() for line in str(err).splitlines()[1:] if line.strip()), str(err))[:160]
        raise UserError(f"{where} does not fit this model ({detail}): "
                        "use a checkpoint of the same model, options and number of classes") from None
