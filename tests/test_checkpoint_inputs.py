"""Checkpoints and run directories a user was handed, or that were damaged: a model named by
`module:callable` inside a checkpoint is never imported without --trust-code; odd fields, a lost best.pt,
a damaged optimizer state, classes named otherwise, a finished run resumed without more epochs: each one
line, exit 2, before anything is written."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch

import cifarlab
from cifarlab.config import load_config
from cifarlab.errors import UserError
from conftest import assert_user_error, tiny_overrides, write_image_folder

QUIET = lambda _l: None  # noqa: E731


def digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from cifarlab.train.entry import train
    out = tmp_path_factory.mktemp("runs") / "r1"
    train(load_config(overrides=tiny_overrides(**{"train.epochs": 1})), out, log=QUIET)
    return out


def edited(run_dir: Path, dest: Path, edit, name: str = "best.pt") -> Path:
    ckpt = torch.load(run_dir / name, weights_only=True)
    edit(ckpt)
    torch.save(ckpt, dest)
    return dest


# ---------------------------------------------------------------- code named by a checkpoint

HOSTILE = [("os:system", {"command": "touch {marker}"}), ("subprocess:call", {"args": ["touch", "{marker}"]}),
           ("builtins:exec", {"source": "open('{marker}', 'w')"}), ("shutil:rmtree", {"path": "{marker}"})]


@pytest.mark.parametrize("name,options", HOSTILE)
def test_a_checkpoint_never_runs_code_it_names(cli, run_dir, tmp_path, name, options):
    marker = tmp_path / "PWNED"

    def plant(c):
        c["model"]["name"] = name
        c["model"]["options"] = {k: (v.format(marker=marker) if isinstance(v, str) else [s.format(marker=marker) for s in v])
                                 for k, v in options.items()}
    bad = edited(run_dir, tmp_path / "evil.pt", plant)
    image = tmp_path / "x.png"
    write_image_folder(tmp_path / "imgs", classes=("a",), per_class=1)
    shutil.copy(next((tmp_path / "imgs" / "a").iterdir()), image)
    for args in (("eval", "--checkpoint", bad, "--data", "sample", "--split", "all"),
                 ("predict", image, "--checkpoint", bad),
                 ("export", "--checkpoint", bad, "--format", "torchscript", "-o", tmp_path / "m.pt2"),
                 ("summary", "--checkpoint", bad)):
        assert_user_error(cli(*args), ["not in cifarlab's zoo", "--trust-code"])
        assert not marker.exists(), args
    with pytest.raises(UserError, match="trust_code=True"):
        cifarlab.evaluate(bad, data="sample", split="all")
    assert not marker.exists()


def own_model_run(tmp_path, monkeypatch, module: str, report: bool):
    """A one-epoch run of a user's own model, `module:net` (a conv, so the report has first-layer filters)."""
    (tmp_path / f"{module}.py").write_text(
        "import torch.nn as nn\n"
        "def net(num_classes, in_channels=3, image_size=32):\n"
        "    return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.Flatten(),\n"
        "                         nn.Linear(4 * (image_size - 2) ** 2, num_classes))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return cifarlab.train(config={"model": {"name": f"{module}:net"}}, overrides=tiny_overrides(**{"train.epochs": 1}),
                          out=tmp_path / "run", report=report, log=None)


def test_trust_code_lets_your_own_model_back_in(cli, tmp_path, monkeypatch):
    r = own_model_run(tmp_path, monkeypatch, "mynets_ckpt", report=False)
    assert_user_error(cli("eval", "--checkpoint", r.run_dir, "--data", "sample", "--split", "val"), "--trust-code")
    code, out, _ = cli("eval", "--checkpoint", r.run_dir, "--data", "sample", "--split", "val", "--trust-code")
    assert code == 0 and "accuracy" in out
    code, out, _ = cli("summary", "--checkpoint", r.run_dir, "--trust-code")
    assert code == 0 and "mynets_ckpt:net" in out
    assert cifarlab.evaluate(r, data="sample", split="val", trust_code=True)["images"] == 100


# ---------------------------------------------------------------- fields evaluation relies on

@pytest.mark.parametrize("norm", [{}, {"mean": [0.5, 0.5], "std": [1.0, 1.0]}, {"mean": "abc", "std": [1, 1, 1]},
                                  {"mean": [0.5] * 3, "std": [0, 0, 0]}, {"mean": [float("nan")] * 3, "std": [1] * 3},
                                  {"mean": [True] * 3, "std": [1] * 3}, {"mean": [0.5] * 3, "std": [1, -1, 1]},
                                  {"mean": [0.5] * 3}])
def test_a_damaged_normalisation_is_one_line(cli, run_dir, tmp_path, norm):
    bad = edited(run_dir, tmp_path / "bad.pt", lambda c: c.update(normalization=norm))
    assert_user_error(cli("eval", "--checkpoint", bad, "--data", "sample", "--split", "all"), ["damaged", "normalization"])
    assert_user_error(cli("export", "--checkpoint", bad, "--format", "torchscript", "-o", tmp_path / "m.pt2"), "normalization")
    assert not (tmp_path / "m.pt2").exists()


def test_a_checkpoint_without_its_run_config(cli, run_dir, tmp_path):
    bad = edited(run_dir, tmp_path / "noconfig.pt", lambda c: c.pop("config"))
    for split in ("val", "train"):
        assert_user_error(cli("eval", "--checkpoint", bad, "--data", "sample", "--split", split), ["no run config", "--split all"])
    code, out, _ = cli("eval", "--checkpoint", bad, "--data", "sample", "--split", "all")
    assert code == 0 and "4000 images" in out
    odd = edited(run_dir, tmp_path / "oddconfig.pt", lambda c: c.update(config=["a"]))
    assert_user_error(cli("eval", "--checkpoint", odd, "--data", "sample"), ["damaged", "config"])


def test_eval_refuses_classes_named_otherwise(cli, tmp_path):
    from cifarlab.train.entry import train
    good = write_image_folder(tmp_path / "good", classes=("a", "b", "c"), per_class=12)
    train(load_config(overrides=tiny_overrides(omit=("data.train_limit",), **{"data.dataset": f"folder:{good}",
                                                  "data.val_size": 6, "train.epochs": 1})), tmp_path / "g", log=QUIET)
    for names in (("x", "y", "z"), ("a", "b", "d"), ("A", "b", "c")):
        other = write_image_folder(tmp_path / "-".join(names), classes=names, per_class=4)
        assert_user_error(cli("eval", "--checkpoint", tmp_path / "g", "--data", f"folder:{other}"), "class names")
    same = write_image_folder(tmp_path / "same", classes=("a", "b", "c"), per_class=4)
    code, out, _ = cli("eval", "--checkpoint", tmp_path / "g", "--data", f"folder:{same}")
    assert code == 0 and "12 images" in out


def test_eval_names_the_channels_that_differ(cli, run_dir, tmp_path):
    def gray(c):
        c["model"].update(in_channels=1)
        c.update(normalization={"mean": [0.5], "std": [0.5]})
    bad = edited(run_dir, tmp_path / "gray.pt", gray)
    assert_user_error(cli("eval", "--checkpoint", bad, "--data", "sample"), ["1x32x32", "3x32x32"])


def test_predict_classifies_every_image_in_a_folder_in_batches(cli, run_dir, tmp_path, monkeypatch):
    import json

    from PIL import Image

    from cifarlab.report import predict
    empty = tmp_path / "empty"
    (empty / ".hidden").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(empty / ".hidden" / "x.png")  # hidden folders are not looked in
    (empty / "notes.txt").write_text("no image")
    assert_user_error(cli("predict", empty, "--checkpoint", run_dir), ["folder", "holds no image files"])
    photos = tmp_path / "photos"
    for i, sub in enumerate(["", "b", "b/c", "", "b"]):
        (photos / sub).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (10 + i, 12), (40 * i, 0, 0)).save(photos / sub / f"{i}.png")
    (photos / "README").write_text("skipped: not an image by its name")
    single = tmp_path / "one.jpg"
    Image.new("RGB", (30, 20)).save(single)
    monkeypatch.setattr(predict, "PREDICT_BATCH", 2)  # several batches: results in order, none lost
    code, out, err = cli("predict", photos, single, "--checkpoint", run_dir, "--json")
    assert code == 0, err
    got = json.loads(out.splitlines()[-1])["predictions"]
    want = sorted(p for p in photos.rglob("*.png")) + [single]
    assert [g["image"] for g in got] == [str(p) for p in want]
    monkeypatch.setattr(predict, "PREDICT_BATCH", 256)
    code, out, _ = cli("predict", photos, single, "--checkpoint", run_dir, "--json")
    whole = json.loads(out.splitlines()[-1])["predictions"]  # one batch: the same answers (to float rounding)
    assert [[t["class"] for t in g["top"]] for g in whole] == [[t["class"] for t in g["top"]] for g in got]
    assert [t["probability"] for g in whole for t in g["top"]] == pytest.approx(
        [t["probability"] for g in got for t in g["top"]], abs=1e-5)


NOT_TORCH = {"image.png": b"\x89PNG\r\n\x1a\n" + bytes(64), "train.log": b"epoch  1/20  train loss 1.38\n",
             "metrics.csv": b"epoch,train_loss\n1,1.38\n", "config.yaml": b"model: {name: mlp}\n",
             "noise.pt": bytes(range(7, 255))}


@pytest.mark.parametrize("name", sorted(NOT_TORCH) + ["empty.pt"])
@pytest.mark.parametrize("command", ["predict", "summary", "eval"])
def test_a_file_that_is_no_torch_file_is_named_as_such(cli, tmp_path, name, command):
    bad = tmp_path / name
    bad.write_bytes(NOT_TORCH.get(name, b""))
    img = tmp_path / "x.png"
    img.write_bytes(b"")  # never read: the checkpoint is refused first
    args = {"predict": [img], "summary": [], "eval": ["--data", "sample"]}[command]
    said = "is empty (0 bytes)" if name == "empty.pt" else "is not a torch file"
    assert_user_error(cli(command, *args, "--checkpoint", bad), [said, "give a .pt file that cifarlab wrote"])


def test_a_torch_file_cut_short_is_damaged_not_unsafe(cli, run_dir, tmp_path):
    data = (run_dir / "best.pt").read_bytes()
    for cut in (4, 100, len(data) // 2, len(data) - 1):  # a zip archive cut at its head, middle and end
        (tmp_path / "cut.pt").write_bytes(data[:cut])
        assert_user_error(cli("summary", "--checkpoint", tmp_path / "cut.pt"), "damaged or not a torch file")


@pytest.mark.parametrize("content,said", [(b"", "it is empty, 0 bytes"), (b"GIF8" + bytes(20), "no image format"),
                                          (b"hello, not an image", "no image format")])
def test_predict_names_what_is_wrong_with_an_image(cli, run_dir, tmp_path, content, said):
    (tmp_path / "x.png").write_bytes(content)
    assert "BytesIO" not in assert_user_error(cli("predict", tmp_path / "x.png", "--checkpoint", run_dir), [said, "x.png"])


def test_the_python_eval_uses_the_runs_tta_level_by_default(run_dir):
    level = load_config(overrides=tiny_overrides()).train.tta
    assert cifarlab.evaluate(run_dir, data="sample", split="val")["tta_level"] == level
    assert cifarlab.evaluate(run_dir, data="sample", split="val", tta=2)["tta_level"] == 2
    assert cifarlab.evaluate(run_dir, data="sample", split="val", tta=False)["tta_level"] == 0


# ---------------------------------------------------------------- resume

@pytest.fixture
def resumable(run_dir, tmp_path) -> Path:
    out = tmp_path / "r"
    shutil.copytree(run_dir, out)
    (out / "summary.json").unlink()  # as if killed after the epoch, before the summary
    return out


@pytest.mark.parametrize("field,value", [("optimizer", {}), ("optimizer", {"state": {}, "param_groups": [{"lr": 1}]}),
                                         ("scheduler", {"_last_lr": "x", "lr_lambdas": 5}), ("scheduler", {})])
def test_resume_with_a_damaged_state_is_one_line(cli, resumable, field, value):
    edited(resumable, resumable / "last.pt", lambda c: c.update({field: value}), "last.pt")
    before = digest(resumable)
    assert_user_error(cli("train", "--resume", resumable, "--epochs", "2"), "damaged")
    assert digest(resumable) == before


def test_resume_without_best_pt_stops_before_training(cli, resumable):
    (resumable / "best.pt").unlink()
    before = digest(resumable)
    assert_user_error(cli("train", "--resume", resumable, "--epochs", "2"), ["lost its best.pt", "--out"])
    assert digest(resumable) == before


@pytest.mark.parametrize("flags", [("--threads", "2"), ("--set", "train.time_limit_minutes=5"), ()])
def test_a_finished_run_resumes_only_with_more_epochs(cli, run_dir, tmp_path, flags):
    out = tmp_path / "done"
    shutil.copytree(run_dir, out)
    before = digest(out)
    assert_user_error(cli("train", "--resume", out, *flags), "already finished")
    assert digest(out) == before


def test_a_report_imports_a_runs_own_code_only_when_trusted(cli, tmp_path, monkeypatch):
    """The end-of-run report of your own model has its model sections; `cifarlab report` of a run you
    were handed says what to add instead of importing the code it names."""
    r = own_model_run(tmp_path, monkeypatch, "mynets_report", report=True)
    assert "First-layer filters" in r.report.read_text() and "--trust-code" not in r.report.read_text()
    code, _, _ = cli("report", r.run_dir, "-o", tmp_path / "handed")
    assert code == 0 and "add --trust-code" in (tmp_path / "handed" / "report.md").read_text()
    code, _, _ = cli("report", r.run_dir, "-o", tmp_path / "trusted", "--trust-code")
    assert code == 0 and "--trust-code" not in (tmp_path / "trusted" / "report.md").read_text()
