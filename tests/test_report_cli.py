"""The report commands through the CLI: report, runs, summary, predict, export, train --tensorboard;
each bad input gives exit code 2 and one line on stderr."""
from __future__ import annotations

import fcntl
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from cifarlab.cli.main import run
from conftest import assert_user_error
from test_report import CLASSES, EVIL_RUN, finished_run, parse_report, synthetic, synthetic_data, train_tiny  # noqa: F401


def cli(capsys, *args) -> tuple[int, str, str]:
    code = run([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def fails(capsys, *args, says: str) -> None:
    assert_user_error(cli(capsys, *args), says)


def last_json(out: str):
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory, finished_run) -> Path:  # noqa: F811
    """A folder of three runs: the finished one, one with another lr, and an interrupted one."""
    root = tmp_path_factory.mktemp("lab")
    shutil.copytree(finished_run, root / "a")
    train_tiny(root / "study" / "b", **{"optimizer.lr": 0.01, "train.epochs": 2, "name": "b"})
    shutil.copytree(root / "a", root / "c", ignore=shutil.ignore_patterns("report*"))
    (root / "c" / "summary.json").unlink()
    return root


# ------------------------------------------------------------------ runs

def test_runs_table_sort_filter_json(capsys, runs_root):
    code, out, _ = cli(capsys, "runs", runs_root)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["run", "model", "optimizer"] and len(lines) == 5
    assert [ln.split()[0] for ln in lines[2:]] == ["a", "c", "study/b"]

    code, out, _ = cli(capsys, "runs", runs_root, "--json")
    rows = {r["run"]: r for r in last_json(out)}
    summary_a = json.loads((runs_root / "a" / "summary.json").read_text())
    assert rows["a"]["best_val"] == summary_a["best_val_accuracy"] and rows["a"]["test"] == summary_a["test_accuracy"]
    assert rows["a"]["status"] == "completed" and rows["c"]["status"] == "interrupted"
    assert rows["c"]["test"] is None and rows["c"]["best_val"] == summary_a["best_val_accuracy"]  # from metrics.csv
    assert rows["study/b"]["lr"] == 0.01 and rows["study/b"]["epochs"] == "2/2"
    assert rows["a"]["augment"] == "off" and rows["a"]["batch_size"] == 32

    code, out, _ = cli(capsys, "runs", runs_root, "--json", "--sort", "best_val", "--desc")
    vals = [r["best_val"] for r in last_json(out)]
    assert vals == sorted(vals, reverse=True)
    code, out, _ = cli(capsys, "runs", runs_root, "--json", "--filter", "optimizer.lr=0.01")
    assert [r["run"] for r in last_json(out)] == ["study/b"]
    code, out, _ = cli(capsys, "runs", runs_root, "--json", "--filter", "model=tutorial_cnn", "--filter", "status=interrupted")
    assert [r["run"] for r in last_json(out)] == ["c"]
    code, out, _ = cli(capsys, "runs", runs_root, "--filter", "model=resnet18")
    assert code == 0 and "no runs" in out


def test_runs_shows_a_locked_run_as_running(capsys, runs_root):
    with open(runs_root / "c" / ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _, out, _ = cli(capsys, "runs", runs_root, "--json", "--filter", "run=c")
    assert last_json(out)[0]["status"] == "running"


def test_runs_bad_input(capsys, runs_root, tmp_path):
    fails(capsys, "runs", tmp_path / "nowhere", says="is not a directory")
    fails(capsys, "runs", runs_root, "--sort", "accuracy", says="cannot sort by 'accuracy'")
    fails(capsys, "runs", runs_root, "--filter", "model", says="--filter takes KEY=VALUE")
    fails(capsys, "runs", runs_root, "--filter", "colour=red", says="unknown filter key 'colour'")


# ------------------------------------------------------------------ report

def test_report_rebuilds_a_run(capsys, runs_root, synthetic, tmp_path):  # noqa: F811
    out_dir = tmp_path / "rebuilt"
    code, out, _ = cli(capsys, "report", runs_root / "a", "--out", out_dir, "--json")
    assert code == 0
    res = last_json(out)
    assert res["html"] == str(out_dir / "report.html") and Path(res["markdown"]).is_file()
    sections = parse_report(out_dir / "report.html")
    assert "misclassified" in sections["misclassified"]["images"]


def test_report_compares_runs_and_study_folders(capsys, runs_root, tmp_path):
    out_dir = tmp_path / "cmp"
    code, _, _ = cli(capsys, "report", runs_root / "a", runs_root / "study", "--out", out_dir)
    assert code == 0
    sections = parse_report(out_dir / "report.html")
    assert list(sections) == ["runs", "differences", "curves", "per-class", "significance"]
    table = sections["runs"]["tables"][0]
    assert [r[0] for r in table[1:]] == ["a", "b"]
    diffs = {r[0]: r[1:] for r in sections["differences"]["tables"][0][1:]}
    assert diffs["optimizer.lr"] == ["0.05", "0.01"] and diffs["train.epochs"] == ["3", "2"]
    assert "curves" in sections["curves"]["images"]
    assert [r[0] for r in sections["per-class"]["tables"][0][1:]] == CLASSES
    html = (out_dir / "report.html").read_text()
    assert "<script" not in html.lower()

    code, _, _ = cli(capsys, "report", runs_root, "--out", tmp_path / "all")  # a folder of runs: all of them
    assert [r[0] for r in parse_report(tmp_path / "all" / "report.html")["runs"]["tables"][0][1:]] == ["a", "c", "b"]


def test_report_bad_input(capsys, runs_root, tmp_path):
    fails(capsys, "report", tmp_path / "missing", says="does not exist")
    (tmp_path / "empty").mkdir()
    fails(capsys, "report", tmp_path / "empty", says="holds no runs")
    nometrics = tmp_path / "nometrics"
    nometrics.mkdir()
    (nometrics / "summary.json").write_text(json.dumps({"name": "x", "status": "diverged"}))
    fails(capsys, "report", nometrics, says="has no metrics.csv")
    broken = tmp_path / "broken"
    shutil.copytree(runs_root / "c", broken)
    (broken / "metrics.csv").write_text("epoch,train_loss\n1,abc\n")
    fails(capsys, "report", broken, says="is damaged")


# ------------------------------------------------------------------ summary

def test_summary_of_a_model_and_a_checkpoint(capsys, runs_root):
    code, out, _ = cli(capsys, "summary", "tutorial_cnn", "--json")
    res = last_json(out)
    assert res["parameters"] == 62006 == sum(r["parameters"] for r in res["layers"])
    assert [r["output_shape"] for r in res["layers"] if r["type"] == "Conv2d"] == [[6, 28, 28], [16, 10, 10]]
    code, out, _ = cli(capsys, "summary", "mlp", "--option", "hidden=[64]", "--image-size", "8", "--weights")
    assert code == 0 and "0.weight" not in out and "1.weight" in out and "64x192" in out
    code, out, _ = cli(capsys, "summary", "--checkpoint", runs_root / "a", "--weights", "--json")
    res = last_json(out)
    state = torch.load(runs_root / "a" / "best.pt", weights_only=True)["state_dict"]
    w = {s["name"]: s for s in res["weights"]}
    assert w["conv1.weight"]["mean"] == pytest.approx(state["conv1.weight"].mean().item(), abs=1e-6)
    assert w["fc3.bias"]["first"][0] == pytest.approx(state["fc3.bias"][0].item(), abs=1e-4)


def test_summary_bad_input(capsys, tmp_path):
    fails(capsys, "summary", "resnet19", says="unknown model 'resnet19'")
    fails(capsys, "summary", says="give a model name or --checkpoint")
    fails(capsys, "summary", "mlp", "--option", "width", says="--option takes NAME=VALUE")
    fails(capsys, "summary", "mlp", "--option", "colour=3", says="has no option 'colour'")
    fails(capsys, "summary", "tutorial_cnn", "--image-size", "8", says="image size 8 is too small")
    fails(capsys, "summary", "--checkpoint", tmp_path / "none.pt", says="does not exist")


# ------------------------------------------------------------------ predict

def test_predict_any_image_size_and_mode(capsys, runs_root, tmp_path, synthetic):  # noqa: F811
    from cifarlab.report.predict import load_model, normalise
    ckpt, model = load_model(runs_root / "a")
    img = synthetic.test_x[1]  # 16x16, class index 1
    files = [tmp_path / "exact.png", tmp_path / "big.jpg", tmp_path / "gray.png", tmp_path / "rgba.png"]
    Image.fromarray(img.transpose(1, 2, 0)).save(files[0])
    Image.fromarray(img.transpose(1, 2, 0)).resize((50, 30)).save(files[1])
    Image.fromarray(img.transpose(1, 2, 0)).convert("L").save(files[2])
    Image.fromarray(img.transpose(1, 2, 0)).convert("RGBA").save(files[3])
    code, out, _ = cli(capsys, "predict", "--checkpoint", runs_root / "a", "--top-k", "2", "--json", *files)
    assert code == 0
    preds = last_json(out)["predictions"]
    assert [p["image"] for p in preds] == [str(f) for f in files]
    for p in preds:
        probs = [t["probability"] for t in p["top"]]
        assert len(probs) == 2 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
        assert all(t["class"] in CLASSES for t in p["top"])
    with torch.no_grad():
        want = model(normalise(torch.from_numpy(img[None]), ckpt)).softmax(1)[0]
    top = preds[0]["top"][0]
    assert top["class"] == CLASSES[int(want.argmax())] and top["probability"] == pytest.approx(want.max().item(), abs=1e-5)
    code, out, _ = cli(capsys, "predict", "--checkpoint", runs_root / "a", "--top-k", "10", files[0])
    assert out.count("%") == len(CLASSES)  # k beyond the classes shows every class once


def test_predict_bad_input(capsys, runs_root, tmp_path):
    good = tmp_path / "ok.png"
    Image.new("RGB", (20, 20)).save(good)
    fails(capsys, "predict", "--checkpoint", runs_root / "a", tmp_path / "nope.png", says="does not exist")
    (tmp_path / "text.png").write_text("not an image")
    fails(capsys, "predict", "--checkpoint", runs_root / "a", tmp_path / "text.png", says="is not a readable image")
    fails(capsys, "predict", "--checkpoint", tmp_path / "none.pt", good, says="does not exist")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    fails(capsys, "predict", "--checkpoint", tmp_path / "other.pt", good, says="is not a cifarlab checkpoint")
    data = (runs_root / "a" / "best.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    fails(capsys, "predict", "--checkpoint", tmp_path / "cut.pt", good, says="damaged or not a torch file")
    ckpt = torch.load(runs_root / "a" / "best.pt", weights_only=True)
    ckpt["model"] = {**ckpt["model"], "name": "mlp"}  # another model's checkpoint: the weights do not fit
    torch.save(ckpt, tmp_path / "mlp.pt")
    fails(capsys, "predict", "--checkpoint", tmp_path / "mlp.pt", good, says="does not fit this model")
    fails(capsys, "predict", "--checkpoint", runs_root / "a", "--top-k", "0", good, says="--top-k")


# ------------------------------------------------------------------ export

@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_matches_pytorch(capsys, runs_root, tmp_path, fmt):
    out_file = tmp_path / f"model.{fmt}"
    code, out, err = cli(capsys, "export", "--checkpoint", runs_root / "a" / "best.pt", "--format", fmt,
                         "--out", out_file, "--json")
    assert code == 0, err
    res = last_json(out)
    assert res["out"] == str(out_file) and out_file.stat().st_size > 0
    assert [p.name for p in tmp_path.iterdir()] == [out_file.name]  # one self-contained file, no temp or NAME.data
    assert res["max_abs_diff"] < 1e-4
    # the exported file on an input of our own: raw [0, 1] pixels in, the checkpoint's logits out
    from cifarlab.report.predict import load_model, normalise
    ckpt, model = load_model(runs_root / "a")
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        want = model(normalise((x * 255).round().to(torch.uint8), ckpt))
    x8 = (x * 255).round() / 255
    if fmt == "onnx":
        import onnxruntime as ort
        sess = ort.InferenceSession(str(out_file), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(sess.run(None, {"images": x8.numpy()})[0])
    else:
        got = torch.jit.load(str(out_file))(x8)
    assert torch.allclose(got, want, atol=1e-4)


def test_export_default_path_and_bad_input(capsys, runs_root, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    shutil.copytree(runs_root / "a", run_dir)
    code, out, _ = cli(capsys, "export", "--checkpoint", run_dir, "--format", "torchscript")
    assert code == 0 and (run_dir / "best.torchscript.pt").is_file() and "max abs difference" in out
    fails(capsys, "export", "--checkpoint", run_dir, "--format", "tflite", says="unknown export format 'tflite'")
    fails(capsys, "export", "--checkpoint", tmp_path / "no.pt", "--format", "onnx", says="does not exist")
    fails(capsys, "export", "--checkpoint", run_dir, "--format", "onnx", "--out", tmp_path / "no" / "m.onnx",
          says="does not exist")
    monkeypatch.setattr("cifarlab.report.export._run_onnx", lambda path, x: torch.zeros(len(x), len(CLASSES)) + 5)
    fails(capsys, "export", "--checkpoint", run_dir, "--format", "onnx", says="disagrees with PyTorch")
    assert (run_dir / "best.rejected.onnx").is_file() and not (run_dir / "best.onnx").exists()


def test_export_never_replaces_what_is_no_export(capsys, runs_root, tmp_path):
    mine, other, photo, notes = (tmp_path / n for n in ("mine.pt", "other.pt", "photo.png", "notes.txt"))
    shutil.copy(runs_root / "a" / "best.pt", mine)
    shutil.copy(runs_root / "a" / "best.pt", other)
    Image.new("RGB", (4, 4)).save(photo)
    notes.write_text("my notes")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for fmt, out, says in [("torchscript", mine, "is the checkpoint being exported"),
                           ("onnx", photo, "does not end in .onnx"), ("onnx", notes, "does not end in .onnx"),
                           ("torchscript", photo, "does not end in .pt or"),
                           ("torchscript", other, "is not a TorchScript export")]:
        fails(capsys, "export", "--checkpoint", mine, "--format", fmt, "--out", out, says=says)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing lost, nothing added
    for fmt, name in [("onnx", "m.onnx"), ("torchscript", "m.ts"), ("torchscript", "m.torchscript")]:
        for _ in range(2):  # an export of the same kind is replaced: a command run again
            code, _, err = cli(capsys, "export", "--checkpoint", mine, "--format", fmt, "--out", tmp_path / name)
            assert code == 0, err


def _crash(*args, **kwargs):
    raise RuntimeError("the exporter crashed half-way")


def _disk_full(path, *args, **kwargs):
    Path(path).write_bytes(b"half an export")
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
@pytest.mark.parametrize("failure", ["crash", "disk full", "disagrees"])
def test_a_failed_export_leaves_the_file_that_was_there(capsys, runs_root, tmp_path, monkeypatch, fmt, failure):
    out_file = tmp_path / f"model.{fmt}"
    assert cli(capsys, "export", "--checkpoint", runs_root / "a", "--format", fmt, "--out", out_file)[0] == 0
    last_week = out_file.read_bytes()  # a good export, which only another good export may replace
    writer = "torch.jit.trace" if fmt == "torchscript" else "cifarlab.report.export._export_onnx"
    if failure == "crash":
        monkeypatch.setattr(writer, _crash)
    elif failure == "disk full":
        if fmt == "onnx":
            monkeypatch.setattr(writer, lambda model, example, path: _disk_full(path))
        else:
            monkeypatch.setattr(torch.jit.ScriptModule, "save", lambda self, path, *a, **k: _disk_full(path))
    else:
        monkeypatch.setattr(torch, "allclose", lambda *a, **k: False)
    if failure == "crash":  # a bug, not the user's doing: it propagates, and still leaves the old file
        from cifarlab.report.export import export_checkpoint
        with pytest.raises(RuntimeError, match="crashed half-way"):
            export_checkpoint(runs_root / "a" / "best.pt", fmt, out_file)
    else:
        fails(capsys, "export", "--checkpoint", runs_root / "a" / "best.pt", "--format", fmt, "--out", out_file,
              says="No space left" if failure == "disk full" else "disagrees with PyTorch")
    assert out_file.read_bytes() == last_week
    kept = {f"model.{fmt}"} | ({f"model.rejected.{fmt}"} if failure == "disagrees" else set())
    assert {p.name for p in tmp_path.iterdir()} == kept  # and no temp file left behind


# ------------------------------------------------------------------ train --tensorboard

def test_train_tensorboard_writes_event_files(capsys, tmp_path, synthetic):  # noqa: F811
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from cifarlab.train.rundir import read_metrics
    out = tmp_path / "tb"
    code, _, err = cli(capsys, "train", "--data", "synthetic", "--model", "tutorial_cnn", "--epochs", "2",
                       "--val-size", "30", "--threads", "1", "--out", out, "--no-progress", "--tensorboard")
    assert code == 0, err
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    metrics = read_metrics(out / "metrics.csv")
    val = [(e.step, e.value) for e in acc.Scalars("accuracy/val")]
    assert val == [(m["epoch"], pytest.approx(m["val_accuracy"])) for m in metrics]
    assert {"loss/train", "loss/val", "accuracy/train", "lr"} <= set(acc.Tags()["scalars"])


def test_train_tensorboard_missing_package(capsys, monkeypatch, tmp_path):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    fails(capsys, "train", "--recipe", "quickstart", "--out", tmp_path / "x", "--tensorboard",
          says="pip install cifarlab[tensorboard]")
    assert not (tmp_path / "x").exists()  # refused before any training


def test_train_tensorboard_with_several_processes_is_refused(capsys, tmp_path):
    fails(capsys, "train", "--recipe", "quickstart", "--out", tmp_path / "x", "--tensorboard", "--nproc", "2",
          says="--tensorboard works with --nproc 1 only")
    assert not (tmp_path / "x").exists()
