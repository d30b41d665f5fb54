"""Damaged run directories reach `cifarlab runs` and `cifarlab report`: a config.yaml, summary.json,
environment.json or metrics.csv whose values have the wrong type (a list for the config, text for an
accuracy, a number for a section), that does not parse, or that is an alias bomb. `runs` lists the
others and names the damaged one in one warning line; `report` on it exits 2 with one line naming the
run, the file and the key, and leaves no output folder behind. Runs are written by hand (no training)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from cifarlab.cli.main import run
from cifarlab.config import load_config
from cifarlab.train.rundir import RunDir
from conftest import assert_user_error, tiny_overrides

CLASSES = ["cat", "dog", "frog"]
WARNING = "cifarlab: warning: "


def cli(capsys, *args) -> tuple[int, str, str]:
    code = run([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _split(accuracy: float) -> dict:
    return {"accuracy": accuracy, "loss": 1.05, "macro_f1": 0.41, "images": 30, "classes": list(CLASSES),
            "per_class_accuracy": {"cat": 0.5, "dog": 0.4, "frog": 0.3}, "confusion_matrix": [[5, 3, 2], [2, 4, 4], [3, 4, 3]]}


def write_run(path: Path, name: str = "good") -> Path:
    """A finished run as the trainer leaves it (minus the checkpoints, whose report sections then say so)."""
    path.mkdir(parents=True)
    rd = RunDir(path)
    rd.config.write_text(load_config(recipe="quickstart", overrides=tiny_overrides(name=name)).to_yaml())
    rd.write_metrics([{"epoch": e, "train_loss": 2.0 / e, "train_accuracy": 0.2 * e, "val_loss": 1.5 / e,
                       "val_accuracy": 0.3 + 0.1 * e, "lr": 0.05, "epoch_seconds": 1.5, "train_seconds": 1.2 * e,
                       "images_per_second": 250.0, "peak_memory_mb": 0.0} for e in (1, 2)])
    rd.write_json(rd.summary, {"name": name, "status": "completed", "stopped_reason": None, "model": "tutorial_cnn",
                               "parameters": 62006, "epochs_run": 2, "best_epoch": 2, "best_val_accuracy": 0.5,
                               "test_accuracy": 0.45, "test_loss": 1.1, "train_images_per_second": 250.0,
                               "train_seconds": 2.4, "wall_seconds": 3.0, "device": "cpu", "precision": "fp32",
                               "run_dir": str(path), "val": _split(0.5), "test": _split(0.45)})
    rd.write_json(rd.environment, {"device": "cpu", "precision": "fp32", "cpu": "test cpu", "torch_threads": 1})
    return path


def _edit(key: str, value, load, dump):
    """An edit of one dotted key of a run's file, read with `load` and written back with `dump`."""
    def edit(path: Path):
        obj = load(path.read_text())
        node = obj
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
        path.write_text(dump(obj))
    return edit


def _edit_yaml(key: str, value):
    return _edit(key, value, yaml.safe_load, yaml.safe_dump)


def _edit_json(key: str, value):
    return _edit(key, value, json.loads, json.dumps)


def _text(text: str):
    return lambda path: path.write_text(text)


def _metrics_cell(column: str, value: str):
    def edit(path: Path):
        header, *rows = path.read_text().splitlines()
        i = header.split(",").index(column)
        rows = [",".join(value if j == i else c for j, c in enumerate(r.split(","))) for r in rows]
        path.write_text("\n".join([header, *rows]) + "\n")
    return edit


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi"))

# (file, damage, what the one line says besides "run directory '...' is damaged")
DAMAGE = {
    "config-list": ("config.yaml", _text("- a\n- b\n"), "config.yaml holds a list, not a mapping"),
    "config-scalar": ("config.yaml", _text("5\n"), "config.yaml holds a number"),
    "config-augment-int": ("config.yaml", _edit_yaml("data.augment", 5), "config.yaml's data.augment is 5, not a mapping"),
    "config-data-list": ("config.yaml", _edit_yaml("data", [1, 2]), "config.yaml's data is [1, 2], not a mapping"),
    "config-lr-text": ("config.yaml", _edit_yaml("optimizer.lr", "fast"), "optimizer.lr is 'fast', not a number"),
    "config-batch-list": ("config.yaml", _edit_yaml("train.batch_size", [64]), "train.batch_size is [64], not a whole"),
    "config-model-name-dict": ("config.yaml", _edit_yaml("model.name", {"a": 1}), "model.name is {'a': 1}, not text"),
    "config-reported-acc": ("config.yaml", _edit_yaml("reported", {"accuracy": "high"}), "reported.accuracy"),
    "config-not-yaml": ("config.yaml", _text("model: [unclosed\n"), "config.yaml is not valid YAML"),
    "config-not-utf8": ("config.yaml", lambda p: p.write_bytes(b"\xff\xfe\x00junk"), "config.yaml is not valid YAML"),
    "config-alias-bomb": ("config.yaml", _text(BOMB), "config.yaml uses more than"),
    "summary-best-text": ("summary.json", _edit_json("best_val_accuracy", "high"), "best_val_accuracy is 'high', not a number"),
    "summary-test-acc-list": ("summary.json", _edit_json("test_accuracy", [0.4]), "test_accuracy is [0.4]"),
    "summary-epochs-float": ("summary.json", _edit_json("epochs_run", 2.5), "epochs_run is 2.5, not a whole number"),
    "summary-params-text": ("summary.json", _edit_json("parameters", "many"), "parameters is 'many'"),
    "summary-wall-inf": ("summary.json", _edit_json("wall_seconds", float("inf")), "wall_seconds is inf"),
    "summary-train-seconds-nan": ("summary.json", _edit_json("train_seconds", float("nan")), "train_seconds is nan"),
    "summary-val-list": ("summary.json", _edit_json("val", [1]), "summary.json's val is [1], not a mapping"),
    "summary-test-f1-text": ("summary.json", _edit_json("test.macro_f1", "x"), "summary.json's test.macro_f1 is 'x'"),
    "summary-classes-ints": ("summary.json", _edit_json("val.classes", [1, 2, 3]), "val.classes is [1, 2, 3]"),
    "summary-confusion-short": ("summary.json", _edit_json("val.confusion_matrix", [[1, 2, 3]]), "not 3 rows of 3 counts"),
    "summary-per-class-missing": ("summary.json", _edit_json("val.per_class_accuracy", {"cat": 1.0}), "per_class_accuracy"),
    "summary-list": ("summary.json", _text("[1, 2]"), "summary.json holds a list, not a JSON object"),
    "summary-not-json": ("summary.json", _text("{oops"), "summary.json is not valid JSON"),
    "summary-deep": ("summary.json", _text("[" * 100_000 + "]" * 100_000), "summary.json is not valid JSON"),
    "environment-text": ("environment.json", _text('"cpu"'), "environment.json holds text"),
    "metrics-no-column": ("metrics.csv", lambda p: p.write_text(p.read_text().replace("epoch_seconds", "secs")),
                          "metrics.csv has no column 'epoch_seconds'"),
    "metrics-text-cell": ("metrics.csv", _metrics_cell("val_accuracy", "high"), "metrics.csv is not a table of numbers"),
    "metrics-short-row": ("metrics.csv", lambda p: p.write_text(p.read_text() + "3,1.0\n"), "metrics.csv is not a table"),
    "metrics-inf-seconds": ("metrics.csv", _metrics_cell("epoch_seconds", "inf"), "epoch_seconds inf"),
}


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return write_run(tmp_path_factory.mktemp("good") / "good")


def damaged(root: Path, case: str, good: Path) -> Path:
    file, damage, _ = DAMAGE[case]
    path = root / case
    shutil.copytree(good, path)
    damage(path / file)
    return path


def test_the_hand_written_run_is_whole(capsys, good, tmp_path):
    """The control: the run every damaged one is made from lists and reports."""
    code, out, err = cli(capsys, "runs", good.parent, "--json")
    assert code == 0 and err == "" and [r["run"] for r in json.loads(out.splitlines()[-1])] == ["good"]
    code, _, err = cli(capsys, "report", good, "--out", tmp_path / "rep")
    assert code == 0, err
    assert (tmp_path / "rep" / "report.html").is_file()


@pytest.mark.parametrize("case", list(DAMAGE))
def test_runs_lists_the_others_and_warns_once(capsys, good, tmp_path, case):
    root = tmp_path / "lab"
    shutil.copytree(good, root / "a-good")
    bad = damaged(root, case, good)
    shutil.copytree(good, root / "z-good")
    code, out, err = cli(capsys, "runs", root)
    assert code == 0, err
    assert [line.split()[0] for line in out.splitlines()[2:]] == ["a-good", "z-good"]
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith(f"{WARNING}skipped: run directory '{bad}' is damaged: ") and DAMAGE[case][2] in err, err

    code, out, err = cli(capsys, "runs", root, "--format", "csv", "--sort", "lr")
    assert code == 0 and len(out.splitlines()) == 3, err


@pytest.mark.parametrize("case", list(DAMAGE))
def test_report_on_a_damaged_run_is_one_line_and_writes_nothing(capsys, good, tmp_path, case):
    bad = damaged(tmp_path, case, good)
    before = sorted(p.name for p in bad.iterdir())
    assert_user_error(cli(capsys, "report", bad, "--out", tmp_path / "rep"),
                      [f"run directory '{bad}' is damaged: ", DAMAGE[case][2]])
    assert not (tmp_path / "rep").exists()  # no empty output folder left behind
    assert_user_error(cli(capsys, "report", bad), "is damaged")  # into the run's own folder: nothing added
    assert sorted(p.name for p in bad.iterdir()) == before


@pytest.mark.parametrize("case", ["config-list", "summary-best-text", "metrics-inf-seconds"])
def test_comparison_with_a_damaged_run(capsys, good, tmp_path, case):
    bad = damaged(tmp_path / "lab", case, good)
    shutil.copytree(good, tmp_path / "lab" / "other")
    # named on the command line: refused, and the output folder the command made is gone again
    assert_user_error(cli(capsys, "report", good, bad, "--out", tmp_path / "cmp"), f"run directory '{bad}' is damaged")
    assert not (tmp_path / "cmp").exists()
    # found in a folder of runs: skipped with a warning, the others compared
    code, _, err = cli(capsys, "report", tmp_path / "lab", "--out", tmp_path / "cmp2")
    assert code == 0 and err.startswith(f"{WARNING}skipped: run directory '{bad}'") and len(err.splitlines()) == 1, err
    assert (tmp_path / "cmp2" / "report.html").is_file()


def test_a_failed_report_keeps_an_output_folder_that_held_files(capsys, good, tmp_path):
    bad = damaged(tmp_path, "summary-best-text", good)
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    assert_user_error(cli(capsys, "report", bad, "--out", keep), "is damaged")
    assert [p.name for p in keep.iterdir()] == ["notes.txt"]


def test_an_alias_bomb_in_a_run_config_is_not_expanded(good, tmp_path, monkeypatch):
    """config.yaml goes through the project's bounded loader: plain yaml.safe_load would build 9**9 items."""
    import cifarlab.report.runs as runs_module
    from cifarlab.errors import UserError

    bad = damaged(tmp_path, "config-alias-bomb", good)
    monkeypatch.setattr(runs_module.yaml, "safe_load", lambda *a, **k: pytest.fail("plain safe_load used"))
    with pytest.raises(UserError, match="aliases"):
        runs_module.load_run(bad)
