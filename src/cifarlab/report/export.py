"""`cifarlab export`: a checkpoint as ONNX or TorchScript, checked against PyTorch before it is trusted.

The exported model takes what a user has: RGB floats in [0, 1], shape (batch, C, H, W), any batch
size; normalisation is built in. It returns logits (apply softmax for probabilities).
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import warnings
import zipfile
from pathlib import Path

import torch
import torch.nn as nn

from cifarlab.data.normalize import Normalize
from cifarlab.errors import UserError
from cifarlab.fileio import check_output_file, replaced_when_done
from cifarlab.report.predict import load_model
from cifarlab.train.checkpoint import checkpoint_file

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
# the names an existing file must have to be replaced by an export (an image or a config named by mistake is not)
REPLACEABLE = {"onnx": (".onnx",), "torchscript": (".pt", ".pth", ".ts", ".torchscript")}
ATOL, RTOL = 1e-4, 1e-4


class Normalised(nn.Module):
    """The trained model with its input normalisation (the training run's, data/normalize.py) in front."""

    def __init__(self, model: nn.Module, normalize: Normalize):
        super().__init__()
        self.model = model
        self.normalize = normalize

    def forward(self, x):
        return self.model(self.normalize(x))


@contextlib.contextmanager
def _quiet():
    """The exporters warn about deprecations and absent torchvision ops; none of it concerns the user."""
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            log.setLevel(level)


def _export_onnx(model: nn.Module, example: torch.Tensor, out: Path) -> str:
    for name in ("onnx", "onnxscript", "onnxruntime"):
        if importlib.util.find_spec(name) is None:
            raise UserError(f"--format onnx needs the {name} package: pip install cifarlab[export]")
    batch = torch.export.Dim("batch", min=1)
    try:  # the torch.export-based exporter (torch's default since 2.9)
        # external_data=False: one self-contained file (the weights inside, not in a NAME.data beside it
        # that would have to travel with it); fine below ONNX's 2 GB limit, far above any model here
        torch.onnx.export(model, (example,), str(out), input_names=["images"], output_names=["logits"],
                          dynamic_shapes=({0: batch},), dynamo=True, external_data=False, verbose=False)
        return "torch.export"
    except Exception:  # noqa: BLE001  (some models only trace: fall back to the TorchScript-based exporter)
        torch.onnx.export(model, (example,), str(out), input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
        return "torchscript-based"


def _run_onnx(path: Path, x: torch.Tensor) -> torch.Tensor:
    import onnxruntime as ort
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


def _refuse_overwriting_what_is_no_export(out: Path, fmt: str, checkpoint: Path) -> None:
    if not out.is_file():
        return
    if out.samefile(checkpoint):
        raise UserError(f"'{out}' is the checkpoint being exported: give another -o/--out")
    if not out.name.lower().endswith(REPLACEABLE[fmt]):
        raise UserError(f"'{out}' exists and does not end in {' or '.join(REPLACEABLE[fmt])} as {fmt} exports do: "
                        "give another -o/--out, or remove that file first if it may go")
    if fmt == "torchscript" and not _is_torchscript(out):  # e.g. another checkpoint, also a .pt
        raise UserError(f"'{out}' exists and is not a TorchScript export (a checkpoint or other file): give "
                        "another -o/--out, or remove that file first if it may go")


def _is_torchscript(path: Path) -> bool:
    # both are zip archives; only a TorchScript one holds its model's code (ARCHIVE/code/...), a torch.save has none
    try:
        with zipfile.ZipFile(path) as z:
            return any("/code/" in name for name in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def export_checkpoint(checkpoint: str | Path, fmt: str, out: str | Path | None = None, trust_code: bool = False) -> dict:
    """Write the exported model, reload it with its own runtime, compare outputs on a random batch.

    The file at `out` is replaced only by an export that loaded and agreed: one that fails or crashes
    half-way leaves what was there. A difference beyond tolerance is a UserError, and the disagreeing
    export is kept beside it (model.rejected.onnx) for inspection."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format '{fmt}': use onnx or torchscript")
    ckpt, model = load_model(checkpoint, trust_code)
    spec = ckpt["model"]
    model = Normalised(model, Normalize.of_checkpoint(ckpt)).eval()
    out = Path(out) if out else checkpoint_file(checkpoint).with_suffix(FORMATS[fmt])
    check_output_file(out)  # never over a run's checkpoints or record; a folder or read-only place is one line
    _refuse_overwriting_what_is_no_export(out, fmt, checkpoint_file(checkpoint))
    shape = (spec["in_channels"], spec["image_size"], spec["image_size"])
    gen = torch.Generator().manual_seed(0)
    example, check = torch.rand(2, *shape, generator=gen), torch.rand(5, *shape, generator=gen)  # another batch size
    with replaced_when_done(out) as tmp, _quiet(), torch.no_grad():
        if fmt == "onnx":
            exporter = _export_onnx(model, example, tmp)
            got = _run_onnx(tmp, check)
        else:
            exporter = "torch.jit.trace"
            torch.jit.trace(model, example).save(str(tmp))
            got = torch.jit.load(str(tmp))(check)
        want = model(check)
        diff = (got - want).abs().max().item()
        if not torch.allclose(got, want, atol=ATOL, rtol=RTOL):
            rejected = out.with_name(f"{out.stem}.rejected{out.suffix}")
            os.replace(tmp, rejected)
            raise UserError(f"the exported model disagrees with PyTorch (max abs diff {diff:.3g} > {ATOL:g}): "
                            f"it is in '{rejected}' for inspection, do not use it; please report this model")
    return {"checkpoint": str(checkpoint), "format": fmt, "out": str(out), "exporter": exporter,
            "input": f"float RGB in [0, 1], shape (batch, {', '.join(map(str, shape))})",
            "classes": ckpt["classes"], "max_abs_diff": diff, "checked_batch": len(check)}
