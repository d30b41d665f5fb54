"""Run reports: every section is there, its numbers are the run's files, user text is escaped,
and a failing report never fails a finished run.

The runs train a tiny CNN on a synthetic 3-class dataset (with a test split and a class named
`<script>...`) that replaces the dataset reader for the duration of a test.
"""
from __future__ import annotations

import base64
import contextlib
import csv
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

from cifarlab.config import load_config
from cifarlab.data.types import RawDataset
from cifarlab.report.hooks import train_and_report as train  # the library default writes no report
from conftest import tiny_overrides

EVIL_RUN = '<script>alert("run")</script>'
EVIL_CLASS = "<script>alert(1)</script>"
CLASSES = ["cat", EVIL_CLASS, "ship"]
SECTIONS = ["overview", "curves", "metrics", "per-class", "confusion", "misclassified", "filters", "model",
            "timing", "config", "environment"]


def synthetic_dataset(n_train=150, n_test=60, size=16, seed=0) -> RawDataset:
    """Three classes told apart by colour, plus noise: learnable in a few epochs, never perfectly."""
    rng = np.random.default_rng(seed)

    def make(n):
        y = np.arange(n) % 3
        x = rng.integers(0, 256, (n, 3, size, size)).astype(np.float64) * 0.7
        x[np.arange(n), y] += 25
        return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)

    tx, ty = make(n_train)
    vx, vy = make(n_test)
    return RawDataset(tx, ty, list(CLASSES), vx, vy)


@contextlib.contextmanager
def synthetic_data():
    """Every dataset spec reads the synthetic dataset (the trainer and the report both go through here)."""
    ds = synthetic_dataset()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("cifarlab.data.loader.load_dataset", lambda spec, use_cache=True, size=None: ds)
        yield ds


@pytest.fixture
def synthetic():
    with synthetic_data() as ds:
        yield ds


def tiny_config(**overrides):
    """The shared tiny config on the synthetic data: all of it (no train_limit), 30 for validation, 3 epochs."""
    base = tiny_overrides(omit=("data.train_limit",), **{
        "name": EVIL_RUN, "data.dataset": "synthetic", "data.val_size": 30, "model.name": "tutorial_cnn",
        "train.epochs": 3, "optimizer.lr": 0.05})
    return load_config(overrides={**base, **overrides})


def train_tiny(out: Path, **overrides) -> dict:
    with synthetic_data():
        return train(tiny_config(**overrides), out, log=lambda line: None)


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "evil"
    train_tiny(out)
    return out


class ReportParser(HTMLParser):
    """Sections (id -> title, tables as rows of cell texts, images) of a report.html."""

    def __init__(self):
        super().__init__()
        self.sections, self.current, self.cell, self.in_h2 = {}, None, None, False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.current = self.sections[a["id"]] = {"title": "", "tables": [], "images": {}, "text": ""}
        elif self.current is None:
            return
        elif tag == "h2":
            self.in_h2 = True
        elif tag == "table":
            self.current["tables"].append([])
        elif tag == "tr":
            self.current["tables"][-1].append([])
        elif tag in ("td", "th"):
            self.cell = ""
        elif tag == "img":
            self.current["images"][a["id"]] = a["src"]

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None:
            self.current["tables"][-1][-1].append(self.cell)
            self.cell = None
        elif tag == "h2":
            self.in_h2 = False
        elif tag == "section":
            self.current = None

    def handle_data(self, data):
        if self.current is None:
            return
        self.current["text"] += data
        if self.in_h2:
            self.current["title"] += data
        if self.cell is not None:
            self.cell += data


def parse_report(path: Path) -> dict:
    p = ReportParser()
    p.feed(path.read_text())
    return p.sections


def kv(table: list[list[str]]) -> dict:
    return {row[0]: row[1] for row in table if len(row) == 2}


def pct(text: str) -> float:
    return float(text.rstrip("%")) / 100


def read_metrics_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------ the report of a finished run

def test_trainer_writes_report_with_every_section_and_image(finished_run):
    html = finished_run / "report.html"
    assert html.is_file() and (finished_run / "report.md").is_file()
    sections = parse_report(html)
    assert list(sections) == SECTIONS
    assert all(s["title"] for s in sections.values())
    images = {name: src for s in sections.values() for name, src in s["images"].items()}
    assert set(images) == {"curves", "confusion-val", "confusion-test", "misclassified", "filters"}
    for src in images.values():
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "report: " in (finished_run / "train.log").read_text()


def test_report_numbers_equal_metrics_and_summary(finished_run):
    sections = parse_report(finished_run / "report.html")
    summary = json.loads((finished_run / "summary.json").read_text())
    metrics = read_metrics_csv(finished_run / "metrics.csv")

    epochs = sections["curves"]["tables"][0][1:]
    assert len(epochs) == len(metrics)
    for row, m in zip(epochs, metrics):
        assert int(row[0]) == int(m["epoch"])
        assert float(row[1]) == pytest.approx(float(m["train_loss"]), abs=5e-5)
        assert pct(row[2]) == pytest.approx(float(m["train_accuracy"]), abs=5e-5)
        assert float(row[3]) == pytest.approx(float(m["val_loss"]), abs=5e-5)
        assert pct(row[4]) == pytest.approx(float(m["val_accuracy"]), abs=5e-5)
        assert float(row[5]) == pytest.approx(float(m["lr"]), rel=1e-3)

    over = kv(sections["overview"]["tables"][0])
    assert int(over["best epoch"]) == summary["best_epoch"]
    assert pct(over["best validation accuracy"]) == pytest.approx(summary["best_val_accuracy"], abs=5e-5)
    assert max(float(m["val_accuracy"]) for m in metrics) == pytest.approx(summary["best_val_accuracy"])
    assert pct(over["test accuracy (evaluated once, best weights)"]) == pytest.approx(summary["test_accuracy"], abs=5e-5)
    assert int(over["parameters"].replace(",", "")) == summary["parameters"]

    final = {row[0]: row for row in sections["metrics"]["tables"][0][1:]}
    for split in ("val", "test"):
        s = summary[split]
        assert int(final[split][1]) == s["images"]
        assert pct(final[split][2]) == pytest.approx(s["accuracy"], abs=5e-5)
        assert float(final[split][3]) == pytest.approx(s["loss"], abs=5e-5)
        assert float(final[split][4]) == pytest.approx(s["macro_f1"], abs=5e-5)

    per_class = sections["per-class"]["tables"][0]
    assert per_class[0] == ["class", "val accuracy", "val images", "test accuracy", "test images"]
    assert [r[0] for r in per_class[1:]] == CLASSES
    for i, row in enumerate(per_class[1:]):
        for j, split in ((1, "val"), (3, "test")):
            assert pct(row[j]) == pytest.approx(summary[split]["per_class_accuracy"][CLASSES[i]], abs=5e-5)
            assert int(row[j + 1]) == sum(summary[split]["confusion_matrix"][i])

    layers = sections["model"]["tables"][0][1:]
    assert sum(int(r[3].replace(",", "")) for r in layers) == summary["parameters"]
    assert f"{summary['parameters']:,} parameters" in sections["model"]["text"]

    timing = kv(sections["timing"]["tables"][0])
    mean_epoch = sum(float(m["epoch_seconds"]) for m in metrics) / len(metrics)
    assert float(timing["seconds per epoch (mean)"]) == pytest.approx(mean_epoch, abs=0.05)
    assert float(timing["training images per second"].replace(",", "")) == pytest.approx(
        summary["train_images_per_second"], abs=0.5)

    config = kv(sections["config"]["tables"][0][1:])
    assert config["train.epochs"] == "3" and config["model.name"] == "tutorial_cnn"


def test_user_text_is_escaped(finished_run):
    html = (finished_run / "report.html").read_text()
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(&quot;run&quot;)&lt;/script&gt;" in html  # the run name, escaped
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # the class name, escaped
    assert "<script" not in (finished_run / "report.md").read_text().lower()


def test_markdown_links_existing_pngs(finished_run):
    md = (finished_run / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(links) == 5
    for link in links:
        assert (finished_run / link).read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((finished_run / "summary.json").read_text())
    assert f"{100 * summary['best_val_accuracy']:.2f}%" in md


def test_misclassified_grid_shows_wrong_predictions_only(finished_run, synthetic):
    from cifarlab.report.build import MISCLASSIFIED
    summary = json.loads((finished_run / "summary.json").read_text())
    wrong = summary["val"]["images"] - round(summary["val"]["accuracy"] * summary["val"]["images"])
    caption = parse_report(finished_run / "report.html")["misclassified"]["text"]
    shown = min(MISCLASSIFIED, wrong)
    assert f"the {shown} most confidently wrong of {wrong} misclassified" in caption


def test_failed_report_is_a_warning_and_the_run_stands(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("cifarlab.report.build.build_run_report", broken)
    summary = train_tiny(tmp_path / "run", **{"train.epochs": 1})
    assert summary["status"] == "completed"
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["epochs_run"] == 1
    log = (tmp_path / "run" / "train.log").read_text()
    assert "warning: the report could not be written (RuntimeError: disk on fire)" in log
    assert "done: best val" in log
    assert not (tmp_path / "run" / "report.html").exists()


def test_report_of_unfinished_run(finished_run, tmp_path, synthetic):
    from cifarlab.report.build import build_run_report
    run = tmp_path / "unfinished"
    shutil.copytree(finished_run, run, ignore=shutil.ignore_patterns("report*"))
    (run / "summary.json").unlink()
    sections = parse_report(build_run_report(run))
    assert list(sections) == SECTIONS
    for sid in ("metrics", "per-class", "confusion"):
        assert "not available yet" in sections[sid]["text"]
    assert "curves" in sections["curves"]["images"] and "filters" in sections["filters"]["images"]
    assert "interrupted" in sections["overview"]["text"]


def test_report_sections_say_what_is_missing(finished_run, tmp_path):
    """No best.pt and no readable dataset: those sections explain, the rest of the report stands."""
    from cifarlab.report.build import build_run_report
    run = tmp_path / "nockpt"
    shutil.copytree(finished_run, run, ignore=shutil.ignore_patterns("report*", "best.pt"))
    sections = parse_report(build_run_report(run))
    for sid in ("misclassified", "filters", "model"):
        assert "not available: checkpoint" in sections[sid]["text"]
    assert "confusion-test" in sections["confusion"]["images"]


# ------------------------------------------------------------------ pieces the studies reuse

def test_plot_functions_return_figures_and_png():
    from matplotlib.figure import Figure

    from cifarlab.report import plots
    rows = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "train_accuracy": 0.1 * e,
             "val_accuracy": 0.09 * e, "lr": 0.1} for e in range(1, 4)]
    fig = plots.plot_curves({"a": rows, "b": rows[:2]}, {"a": 3, "b": 2})
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert labels == ["a train", "a val", "b train", "b val"]
    for f in (plots.plot_metric_vs_param([1e-3, 1e-2, 1e-1], [0.5, 0.6, 0.55], "lr"),
              plots.plot_metric_vs_param(["sgd", "adam", "sgd"], [0.5, 0.6, 0.55], "optimizer", errors=[0.01] * 3)):
        assert isinstance(f, Figure)
        assert base64.b64decode(plots.figure_to_base64(f))[:4] == b"\x89PNG"
    assert plots.plot_metric_vs_param([1e-3, 1e-1], [0.5, 0.6], "lr").axes[0].get_xscale() == "log"
    assert plots.plot_metric_vs_param([16, 32], [0.5, 0.6], "width").axes[0].get_xscale() == "linear"


@pytest.mark.parametrize("xs", [[1e-7, 1e-4, 0.1, 10.0], [1e-3, 1e-2, 1e-1], [16, 64, 256, 512], [0.0005, 0.001, 0.002]])
def test_log_axes_are_labelled_in_plain_numbers(xs):
    """Plots turn mathtext off (a '$' in a run name is text), so the log axes must not rely on it."""
    from cifarlab.report import plots
    ys = [2.5 - 0.1 * i for i in range(len(xs))]
    for fig in (plots.plot_lr_find(xs, ys, {"valley": xs[1]}), plots.plot_metric_vs_param(xs, ys, "lr", log_x=True)):
        ax = fig.axes[0]
        fig.canvas.draw()
        labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
        assert ax.get_xscale() == "log" and labels, labels
        assert all("$" not in t and "mathdefault" not in t for t in labels), labels
        assert all(float(t) > 0 for t in labels), labels  # each label reads as the number it marks


def test_filters_as_images_scales_each_filter():
    from cifarlab.report.plots import filters_as_images
    w = np.random.default_rng(0).normal(size=(5, 3, 4, 4)) * np.arange(1, 6)[:, None, None, None]
    im = filters_as_images(w)
    assert im.shape == (5, 4, 4, 3)
    assert np.allclose(im.reshape(5, -1).min(1), 0) and np.allclose(im.reshape(5, -1).max(1), 1)
    linear = filters_as_images(np.random.default_rng(1).normal(size=(7, 3 * 8 * 8)), (3, 8, 8))
    assert linear.shape == (7, 8, 8, 3)


def test_layer_table_counts_macs_and_parameters():
    from cifarlab.models import build_model, count_parameters
    from cifarlab.report.summary import layer_table, table_totals
    grouped = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1, groups=2), torch.nn.Flatten(),
                                  torch.nn.Linear(8 * 6 * 6, 5))
    rows = layer_table(grouped, (4, 6, 6))
    assert [r["output_shape"] for r in rows] == [[8, 6, 6], [288], [5]]
    assert rows[0]["macs"] == 8 * 6 * 6 * (4 // 2) * 3 * 3 and rows[2]["macs"] == 288 * 5
    tut = build_model("tutorial_cnn")
    t = table_totals(layer_table(tut, (3, 32, 32)), tut)
    assert t["macs"] == 6 * 28 * 28 * 3 * 25 + 16 * 10 * 10 * 6 * 25 + 400 * 120 + 120 * 84 + 84 * 10
    for name in ("resnet18", "mlp"):
        m = build_model(name)
        rows = layer_table(m, (3, 32, 32))
        assert sum(r["parameters"] for r in rows) == count_parameters(m) == table_totals(rows, m)["parameters"]
        assert m.training  # the summary leaves the model as it found it


def test_importing_cifarlab_leaves_the_matplotlib_backend_alone():
    """A library import must not change the caller's process (a notebook keeps its backend)."""
    import subprocess
    import sys
    code = ("import matplotlib; matplotlib.use('svg'); "
            "import cifarlab.report.plots, cifarlab.report.build, cifarlab.studies.outputs, cifarlab.studies.lrfind; "
            "print(matplotlib.get_backend())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().lower() == "svg", done.stdout
