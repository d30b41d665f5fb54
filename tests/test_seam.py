"""The seams between packages: the import order, the trainer's events, the report as a hook the CLI
attaches, atomic writes below every package, one normalisation and one training step for everyone."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cifarlab.data.types import RawDataset
from cifarlab.train.callbacks import Callback
from cifarlab.train.entry import train
from test_report import synthetic_data, tiny_config

SRC = Path(__file__).resolve().parents[1] / "src" / "cifarlab"
LOW = {"errors", "config", "schema", "fileio", "registry", "yamlfile"}  # below every package
ORDER = ["data", "models", "train", "report", "studies", "cli"]


def _layer(module: str) -> int:
    return -1 if module in LOW else ORDER.index(module)


def test_no_package_imports_one_above_it():
    wrong = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC)
        if rel.parts[0] in ("__init__.py", "__main__.py"):
            continue
        here = _layer(rel.parts[0].removesuffix(".py"))
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
            for name in names:
                parts = name.split(".")
                if parts[0] == "cifarlab" and len(parts) > 1 and _layer(parts[1]) > here:
                    wrong.append(f"{rel}:{node.lineno} imports {name}")
    assert not wrong, wrong


def test_importing_the_library_sets_no_umask():
    """Reading the umask means setting it process-wide for a moment: no import may do it."""
    code = ("import os\n"
            "def refuse(*a): raise AssertionError('os.umask called at import')\n"
            "os.umask = refuse\n"
            "import cifarlab.fileio, cifarlab.train.trainer, cifarlab.report.build, cifarlab.studies.runner, "
            "cifarlab.cli.main\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(SRC.parent)})
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_get_the_callers_permissions(tmp_path, umask, mode):
    from cifarlab.fileio import atomic_write_text
    from cifarlab.train.checkpoint import save_checkpoint
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        save_checkpoint(tmp_path / "a.pt", {"epoch": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == mode
    assert (tmp_path / "a.pt").stat().st_mode & 0o777 == mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "a.txt"]  # no temp file left


# ------------------------------------------------------------------ the trainer's events

class Recorder(Callback):
    def __init__(self):
        self.epochs, self.summaries = [], []

    def on_epoch_end(self, trainer, row):
        self.epochs.append(row["epoch"])

    def on_fit_end(self, trainer, summary):
        self.summaries.append(summary)


class Broken(Callback):
    def on_fit_end(self, trainer, summary):
        raise RuntimeError("hook on fire")


def test_library_train_sends_events_and_writes_no_report(tmp_path):
    rec, plain = Recorder(), []
    with synthetic_data():
        summary = train(tiny_config(**{"train.epochs": 2}), tmp_path / "run", log=lambda line: None,
                        callbacks=[lambda trainer, row: plain.append(row["epoch"]), Broken(), rec])
    assert rec.epochs == plain == [1, 2]
    assert rec.summaries == [summary] and summary["status"] == "completed"  # after Broken failed: it still ran
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["epochs_run"] == 2
    log = (tmp_path / "run" / "train.log").read_text()
    assert "warning: end-of-run hook Broken failed (RuntimeError: hook on fire)" in log and "done: best val" in log
    assert not (tmp_path / "run" / "report.html").exists()  # the Python API's default: no report


def test_cli_train_and_resume_write_the_report(tmp_path, cli):
    out = tmp_path / "run"
    with synthetic_data():
        code, _, err = cli("train", "--data", "synthetic", "--model", "tutorial_cnn", "--epochs", "1",
                           "--val-size", "30", "--threads", "1", "--out", out, "--no-progress")
        assert code == 0, err
        assert (out / "report.html").is_file() and (out / "report.md").is_file()
        (out / "report.html").unlink()
        code, _, err = cli("train", "--resume", out, "--epochs", "2", "--no-progress")
        assert code == 0, err
    assert (out / "report.html").is_file()
    assert (out / "train.log").read_text().count("report: ") == 2


def test_cli_train_nproc_writes_the_report_once(tmp_path, cli):
    from conftest import write_image_folder
    root = write_image_folder(tmp_path / "imgs", per_class=12, size=16)
    out = tmp_path / "run"
    code, _, err = cli("train", "--data", f"folder:{root}", "--model", "tutorial_cnn", "--val-size", "9",
                       "--epochs", "1", "-b", "8", "--nproc", "2", "--threads", "1", "--out", out, "--no-progress")
    assert code == 0, err
    assert (out / "report.html").is_file()
    assert (out / "train.log").read_text().count("report: ") == 1  # rank 0 alone


def test_study_trials_report_unless_told_not_to(tmp_path):
    from cifarlab.studies.trial import train_one
    with synthetic_data():
        train_one(tiny_config(**{"train.epochs": 1}), tmp_path / "with")
        train_one(tiny_config(**{"train.epochs": 1}), tmp_path / "without", report=False)
    assert (tmp_path / "with" / "report.html").is_file()
    assert not (tmp_path / "without" / "report.html").exists()


# ------------------------------------------------------------------ one step, one normalisation

def test_lr_find_steps_with_the_trainers_step(tmp_path, monkeypatch):
    from cifarlab.studies.lrfind import lr_find
    from cifarlab.train.trainer import Trainer
    calls, step = [], Trainer.train_step

    def counted(self, xb, yb):
        calls.append(len(yb))
        return step(self, xb, yb)

    monkeypatch.setattr(Trainer, "train_step", counted)
    with synthetic_data():
        result = lr_find(tiny_config(**{"train.grad_clip": 1.0}), tmp_path / "lr", steps=12, log=lambda line: None)
    assert len(calls) == result["steps"] >= 5


def test_training_eval_predict_and_export_normalise_alike(tmp_path, monkeypatch):
    """One uint8 batch through the four ways into a model gives bit-identical tensors, equal to the formula."""
    from cifarlab.data.augment import BatchTransform
    from cifarlab.data.normalize import Normalize, to_unit
    from cifarlab.models import build_model
    from cifarlab.report.export import Normalised
    from cifarlab.report.predict import normalise
    from cifarlab.train import evaluate
    from cifarlab.train.checkpoint import save_checkpoint

    mean, std = [0.4914, 0.4822, 0.4465], [0.247, 0.2435, 0.2616]
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (6, 3, 8, 8), dtype=np.uint8))
    model = build_model("mlp", num_classes=3, in_channels=3, image_size=8, hidden=(4,))
    ckpt = {"model": {"name": "mlp", "options": {"hidden": [4]}, "num_classes": 3, "in_channels": 3, "image_size": 8},
            "classes": ["a", "b", "c"], "state_dict": model.state_dict(), "normalization": {"mean": mean, "std": std}}
    save_checkpoint(tmp_path / "best.pt", ckpt)

    want = (x.float().div(255) - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    training = BatchTransform(torch.tensor(mean), torch.tensor(std), None, 8)(x, train=False)
    predicting = normalise(x, ckpt)
    exported = Normalised(torch.nn.Identity(), Normalize.of_checkpoint(ckpt))(to_unit(x))

    seen = []

    def capture(model, batches, device, precision="fp32", channels_last=False, tta_level=0):
        xs, ys = zip(*batches)
        seen.append(torch.cat(xs))
        return torch.zeros(len(seen[0]), 3), torch.cat(ys)

    monkeypatch.setattr(evaluate, "predict", capture)
    monkeypatch.setattr("cifarlab.data.sources.parse_spec", lambda spec: (SimpleNamespace(resizes=False), None))
    monkeypatch.setattr("cifarlab.data.sources.load_dataset",
                        lambda spec, size=None: RawDataset(x.numpy(), np.zeros(6, dtype=np.int64), ["a", "b", "c"],
                                                x.numpy(), np.arange(6) % 3))
    evaluate.evaluate_checkpoint(str(tmp_path / "best.pt"), "stub", split="test", batch_size=4, device="cpu")
    for got in (training, predicting, exported, seen[0]):
        assert torch.equal(got, want)
