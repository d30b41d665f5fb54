"""Recipes that reproduce a seed report: the end-of-run line that compares the two, and the seed
study presets (issue: seed reproductions you can trust)."""
from __future__ import annotations

import json

import pytest
import yaml

from cifarlab.config import list_recipes, load_config
from cifarlab.report.hooks import reported_line
from cifarlab.report.runs import figure_to_compare
from cifarlab.schema import ReportedFigure
from cifarlab.studies.space import read_study_file


def test_the_line_names_both_figures_their_splits_and_the_gap():
    seed = ReportedFigure(accuracy=0.55, epochs=10, source="seed 004")
    val_only = reported_line(seed, {"best_val_accuracy": 0.4862, "best_epoch": 9, "epochs_run": 10, "test_accuracy": None})
    assert val_only.startswith("seed 004: 55.0% (test, 10 epochs); this run: 48.6% best validation (epoch 9 of 10)")
    assert "-6.4 points" in val_only and "best validation, not the test split the figure was measured on" in val_only
    with_test = reported_line(seed, {"best_val_accuracy": 0.50, "best_epoch": 3, "epochs_run": 10, "test_accuracy": 0.561})
    assert "56.1% test" in with_test and "+1.1 points" in with_test and "validation" not in with_test
    assert reported_line(None, {"best_val_accuracy": 0.5}) is None
    assert reported_line(ReportedFigure(note="no figure"), {"best_val_accuracy": 0.5}) is None


def test_a_target_stated_on_validation_is_met_or_missed_on_validation():
    target = ReportedFigure(accuracy=0.90, split="validation", source="issue 14 target")
    for test in (None, 0.95):  # a test split beside it changes nothing: the target is a validation figure
        line = reported_line(target, {"best_val_accuracy": 0.9002, "best_epoch": 16, "epochs_run": 16, "test_accuracy": test})
        assert line == "issue 14 target: 90.0% (validation); this run: 90.0% best validation (epoch 16 of 16), +0.0 points"
    below = reported_line(target, {"best_val_accuracy": 0.8977, "best_epoch": 26, "epochs_run": 26})
    assert below.endswith("-0.2 points") and "expect" not in below
    assert figure_to_compare("validation", 0.9, 0.95) == (0.9, "best validation")
    assert figure_to_compare("test", 0.9, 0.95) == (0.95, "test")
    assert figure_to_compare("test", 0.9, None) == (0.9, "best validation")
    for name in ("speedrun-cpu", "speedrun-cpu-bf16"):  # issue 14's targets are validation figures
        assert load_config(recipe=name).reported.split == "validation"
    with pytest.raises(ValueError):
        ReportedFigure(accuracy=0.9, split="val")


def test_every_full_recipe_with_a_seed_figure_says_where_it_came_from():
    for name, raw in list_recipes().items():
        rep = raw.get("reported")
        if rep and rep.get("accuracy") is not None:
            cfg = load_config(recipe=name)
            assert 0 < cfg.reported.accuracy < 1 and cfg.reported.source, name
            if not name.startswith("speedrun"):  # the speedrun recipes carry targets, not seed figures
                assert cfg.reported.source.startswith("seed"), name


def test_seed_presets_walk_the_seeds_own_networks_and_knobs():
    ofat = read_study_file("ofat-seed001")
    keys = [p.key for p in ofat.params]
    # the report's order: batch size, then the architecture knobs, then the optimiser and the rest
    assert keys[:7] == ["train.batch_size", "model.options.hidden", "model.options.kernel_size",
                        "model.options.dropout", "model.options.batchnorm", "model.options.pool",
                        "model.options.activation"]
    assert keys.index("optimizer.name") < keys.index("model.options.init") < keys.index("optimizer.weight_decay")
    for name in ("lr-seed000", "batch-seed000"):
        study = read_study_file(name)
        assert study.config(study.grid()[0])["model"]["name"] == "vgg_arch13", name
    unstated = read_study_file("seed004-mlp-unstated")
    assert {p.key for p in unstated.params} == {"train.batch_size", "data.normalize"} and len(unstated.grid()) == 12
    lenet = read_study_file("seed004-lenet5-unstated")
    # the unstated settings first, at the stated lr 0.1; the report's preferred lr 0.01 last, as a check
    assert lenet.method == "ofat" and [p.key for p in lenet.params] == ["data.normalize", "train.batch_size", "optimizer.lr"]
    assert lenet.config({})["optimizer"]["lr"] == 0.1 and lenet.config({})["optimizer"]["momentum"] == 0.9


def test_a_run_of_a_recipe_with_a_seed_figure_ends_with_the_comparison(cli, tmp_path):
    from conftest import set_args, tiny_overrides

    code, out, err = cli("train", "--recipe", "mlp", *set_args(tiny_overrides(**{"train.epochs": 1})),
                         "--out", str(tmp_path / "run"))
    assert code == 0, err
    last = [line for line in out.splitlines() if line.strip()]
    line = next(x for x in last if x.startswith("seed 004: 55.0% (test"))
    assert "best validation" in line and "points" in line
    assert line in (tmp_path / "run" / "train.log").read_text()
    # and `cifarlab runs` shows the same gap in its vs_seed column (table, CSV, JSON)
    code, out, err = cli("runs", str(tmp_path), "--json")
    row = json.loads(out.strip().splitlines()[-1])[0]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert row["vs_seed"] == pytest.approx(summary["best_val_accuracy"] - 0.55) and row["vs_split"] == "val"
    code, out, err = cli("runs", str(tmp_path))
    assert f"{100 * row['vs_seed']:+.1f} pts val" in out and "vs_seed" in out.splitlines()[0]


def test_vs_seed_uses_the_test_split_when_a_run_has_one_and_is_empty_without_a_seed_figure(tmp_path):
    from cifarlab.report.runs import format_row, load_run, run_row

    run = tmp_path / "r"
    run.mkdir()
    (run / "metrics.csv").write_text("epoch,train_loss,train_accuracy,val_loss,val_accuracy,lr,epoch_seconds,"
                                     "train_seconds,images_per_second,peak_memory_mb\n1,1,0.5,1,0.6,0.1,1,1,100,10\n")
    cases = [(0.55, 0.58, 0.03, "test"), (0.70, None, -0.10, "val"), (None, 0.58, None, "test"),
             ({"accuracy": 0.55, "split": "validation"}, 0.58, 0.05, "val")]  # a validation target: validation's
    for reported, test, want, split in cases:
        if isinstance(reported, float):
            reported = {"accuracy": reported}
        cfg = {"name": "x", "model": {"name": "mlp"}, **({"reported": reported} if reported else {})}
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))
        (run / "summary.json").write_text(json.dumps({"best_val_accuracy": 0.6, "test_accuracy": test, "epochs_run": 1}))
        row = run_row(load_run(run))
        assert (row["vs_seed"] is None) if want is None else row["vs_seed"] == pytest.approx(want), (reported, test)
        shown = format_row(row)["vs_seed"]
        assert shown == ("" if want is None else f"{100 * want:+.1f} pts {split}")
