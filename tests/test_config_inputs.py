"""Config inputs a user can get wrong, through the CLI entry point: each is one line, exit 2, and writes nothing.

(a) a section that is not a mapping, with a flag or --set that reaches into it; (b) a key given twice in any
YAML read as a config (config files, --set values, study files, a run's config.yaml on --resume); (c) --set of a
whole section merges into it and never silently drops a flag, and a flag and a --set that disagree are refused;
(d) `sample` takes no path; (e) the wording of file and schema errors says what to do.

No test here trains: valid command lines stop at the trainer (the `captured` fixture), where the config is checked.
"""
from __future__ import annotations

import os
import stat

import pytest

from cifarlab.config import combine_overrides, load_config, load_yaml
from cifarlab.errors import UserError
from conftest import assert_user_error


class TrainingWouldStart(Exception):
    pass


@pytest.fixture
def captured(monkeypatch, tmp_path):
    """`cifarlab train` up to the trainer: the validated config it would train, and no training."""
    from cifarlab.train import entry

    seen = {}

    def fake_train(cfg, out, **_kw):
        seen["cfg"] = cfg
        raise TrainingWouldStart

    monkeypatch.setattr(entry, "train", fake_train)
    monkeypatch.chdir(tmp_path)
    return seen


@pytest.fixture
def train(cli, captured, tmp_path):
    """Run `cifarlab train ARGS --out tmp/r`: the config it would train, or (code, out, err) where refused."""
    def call(*args):
        try:
            result = cli("train", *args, "--out", tmp_path / "r", "--no-progress")
        except TrainingWouldStart:
            return captured.pop("cfg")
        assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())  # refused before writing
        return result
    return call


def refused(result, *contains) -> str:
    assert isinstance(result, tuple), f"accepted: {result}"
    return assert_user_error(result, contains)


def write(tmp_path, text: str, name: str = "c.yaml"):
    f = tmp_path / name
    f.write_text(text)
    return f


# ---------------------------------------------------------------------- (a) sections that are not mappings

NOT_MAPPINGS = ["5", "[a]", "some text", "true", "[1, 2]", "2.5"]
REACH_IN = {  # section -> command-line arguments that set a key inside it
    "model": [["--model", "mlp"], ["--set", "model.name=mlp"], ["--set", "model.options.hidden=[8]"]],
    "train": [["--epochs", "1"], ["--set", "train.seed=3"]],
    "data": [["--data", "sample"], ["--val-size", "100"]],
    "optimizer": [["--lr", "0.1"], ["--optimizer", "adam"]],
    "schedule": [["--schedule", "cosine"]],
    "track": [["--set", "track.experiment=x"]],
    "reported": [["--set", "reported.accuracy=0.5"]],
}


@pytest.mark.parametrize("section,args", [(s, a) for s, argss in REACH_IN.items() for a in argss])
@pytest.mark.parametrize("value", NOT_MAPPINGS[:3])
def test_a_section_that_is_not_a_mapping_is_one_line_with_or_without_a_flag(train, tmp_path, section, args, value):
    f = write(tmp_path, f"extends: quickstart\n{section}: {value}\n")
    want = (f"config key '{section}' must be a section", "write those keys as indented 'key: value' lines")
    line = refused(train("--config", f, *args), *want)
    assert line == refused(train("--config", f), *want)  # the same words as without the flag
    assert "instance of" not in line  # no pydantic class names


@pytest.mark.parametrize("value", NOT_MAPPINGS)
def test_nested_sections_and_options_that_are_not_mappings(train, tmp_path, value):
    f = write(tmp_path, f"extends: quickstart\ndata: {{augment: {value}}}\n")
    refused(train("--config", f, "--set", "data.augment.flip=true"), "config key 'data.augment' must be a section")
    f = write(tmp_path, f"extends: quickstart\nmodel: {{name: mlp, options: {value}}}\n")
    refused(train("--config", f, "--set", "model.options.hidden=[8]"), "config key 'model.options' must be a mapping")
    refused(train("--config", f), "config key 'model.options' must be a mapping")
    refused(train("--recipe", "quickstart", "--set", f"train.ema={value}", "--set", "train.ema.decay=0.9"),
            "config key 'train.ema' must be a section")


def test_a_key_below_a_value_says_which_part_is_a_value(train):
    refused(train("--recipe", "quickstart", "--set", "train.epochs.x=1"), "'train.epochs' is a value (20), not a section")
    refused(train("--recipe", "quickstart", "--set", "name.first=a"), "'name' is a value")


def test_an_empty_section_takes_the_flag(train, tmp_path):
    cfg = train("--config", write(tmp_path, "extends: quickstart\nmodel:\ntrain:\n"), "--model", "mlp", "--epochs", "2")
    assert cfg.model.name == "mlp" and cfg.model.options == {} and cfg.train.epochs == 2
    cfg = train("--recipe", "quickstart", "--set", "train.ema.decay=0.9")  # train.ema: null -> the section, made
    assert cfg.train.ema is not None and cfg.train.ema.decay == 0.9


# ---------------------------------------------------------------------- (b) a key given twice

@pytest.mark.parametrize("text,key,lines", [
    ("train:\n  epochs: 1\n  epochs: 2\n", "train.epochs", "on lines 2 and 3"),
    ("train: {epochs: 1}\nmodel: {name: mlp}\ntrain: {seed: 2}\n", "train", "on lines 1 and 3"),
    ("extends: quickstart\nextends: mlp\n", "extends", "on lines 1 and 2"),
    ("train: {epochs: 1, epochs: 1}\n", "train.epochs", "on line 1"),  # the same value twice is still a mistake
    ("data:\n  augment:\n    flip: true\n    cutout: 4\n    flip: false\n", "data.augment.flip", "on lines 3 and 5"),
    ("model:\n  name: mlp\n  options: {hidden: [8], hidden: [16]}\n", "model.options.hidden", "on line 3"),
    ("train:\n  epochs: 1\n  'epochs': 2\n", "train.epochs", "on lines 2 and 3"),  # quoted or not: one key
])
def test_a_config_file_with_a_key_twice_is_refused(train, tmp_path, text, key, lines):
    f = write(tmp_path, text)
    refused(train("--config", f), f"config file '{f}' gives the key '{key}' twice ({lines})", "keep one of them")


def test_a_key_twice_in_an_extended_file_and_in_a_set_value(train, tmp_path):
    f = write(tmp_path, "extends: quickstart\noptimizer:\n  lr: 0.1\n  lr: 0.2\n")
    refused(train("--config", f, "--epochs", "1"), "gives the key 'optimizer.lr' twice")
    refused(train("--recipe", "quickstart", "--set", "train={epochs: 1, epochs: 2}"),
            "--set train gives the key 'epochs' twice", "keep one")
    refused(train("--recipe", "quickstart", "--set", "model.options={a: 1, b: {c: 1, c: 2}}"),
            "--set model.options gives the key 'b.c' twice")


def test_keys_that_repeat_only_across_mappings_or_by_merge_are_fine(tmp_path):
    cfg = load_config(config_file=write(tmp_path, "extends: quickstart\nmodel: {name: mlp}\noptimizer: {name: adam}\n"
                                                  "data: {augment: {flip: true}, mix: {prob: 0.5}}\n"))
    assert (cfg.model.name, cfg.optimizer.name, cfg.data.mix.prob) == ("mlp", "adam", 0.5)
    # YAML merge keys give defaults that the mapping's own keys override: not a duplicate
    assert load_yaml("base: &b {lr: 0.1, momentum: 0.9}\nopt:\n  <<: *b\n  lr: 0.2\n", "t")["opt"] == \
        {"lr": 0.2, "momentum": 0.9}
    assert load_yaml("a: [{x: 1}, {x: 2}]\n", "t") == {"a": [{"x": 1}, {"x": 2}]}


def test_the_loader_keeps_its_alias_and_size_limits():
    bomb = "a0: &a0 [x]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}]\n" for i in range(1, 10))
    with pytest.raises(UserError, match="aliases"):
        load_yaml(bomb, "t")
    with pytest.raises(UserError, match="MiB of YAML"):
        load_yaml("a: " + "x" * (1 << 20) + "\n", "t")
    with pytest.raises(UserError, match=r"'t' gives the key 'a.b' twice \(on lines 2 and 3\)"):
        load_yaml("a:\n  b: 1\n  b: 2\n", "'t'")


def test_a_study_file_with_a_key_twice_is_refused(cli, captured, tmp_path):
    f = write(tmp_path, "base: quickstart\nspace:\n  optimizer.lr: [0.1]\n  optimizer.lr: [0.2]\n", "study.yaml")
    refused(cli("sweep", "--config", f), f"study file '{f}' gives the key 'space.optimizer.lr' twice (on lines 3 and 4)")
    f = write(tmp_path, "base: quickstart\nset: {train.epochs: 1}\nspace: {optimizer.lr: [0.1]}\nset: {}\n", "s2.yaml")
    refused(cli("sweep", "--config", f), "gives the key 'set' twice (on lines 2 and 4)")
    # the base config a study names is read by the same loader
    write(tmp_path, "extends: quickstart\ntrain:\n  seed: 1\n  seed: 2\n", "base.yaml")
    f = write(tmp_path, "base: base.yaml\nspace: {optimizer.lr: [0.1]}\n", "s3.yaml")
    refused(cli("sweep", "--config", f), "gives the key 'train.seed' twice (on lines 3 and 4)")


def test_a_run_config_with_a_key_twice_is_refused_on_resume_and_left_as_it_was(cli, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    text = load_config(recipe="quickstart").to_yaml().replace("  epochs: 20\n", "  epochs: 20\n  epochs: 3\n")
    (run / "config.yaml").write_text(text)
    (run / "last.pt").write_bytes(b"not read: the config is refused first")
    refused(cli("train", "--resume", run, "--epochs", "30"), "gives the key 'train.epochs' twice", "keep one")
    assert (run / "config.yaml").read_text() == text and (run / "last.pt").read_bytes().startswith(b"not read")
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "last.pt"]


def test_every_shipped_recipe_has_no_key_twice():
    from cifarlab.config import list_recipes
    assert "quickstart" in list_recipes()  # read through load_yaml: a duplicate would raise


# ---------------------------------------------------------------------- (c) --set of a section, and flags

def test_set_of_a_whole_section_merges_and_keeps_flags(train):
    base = load_config(recipe="quickstart")
    cfg = train("--recipe", "quickstart", "--epochs", "1", "--set", "train={}")
    assert cfg.train.epochs == 1 and cfg.train.batch_size == base.train.batch_size == 64
    cfg = train("--recipe", "quickstart", "--epochs", "1", "--batch-size", "8", "--set", "train={seed: 5}")
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.seed) == (1, 8, 5)
    cfg = train("--recipe", "quickstart", "--lr", "0.2", "--set", "optimizer={weight_decay: 0.001}")
    assert cfg.optimizer.lr == 0.2 and cfg.optimizer.weight_decay == 0.001 and cfg.optimizer.nesterov
    cfg = train("--recipe", "quickstart", "--set", "data={augment: {cutout: 8}}", "--val-size", "100")
    assert cfg.data.augment.cutout == 8 and cfg.data.augment.crop_padding == 2 and cfg.data.augment.flip is True
    assert cfg.data.val_size == 100 and cfg.data.dataset == "sample"
    cfg = train("--recipe", "quickstart", "--set", "train.ema={}")  # an empty mapping still makes an absent section
    assert cfg.train.ema is not None and cfg.train.ema.decay == 0.999


def test_set_of_the_model_section_drops_the_old_models_options(train):
    assert load_config(recipe="mlp").model.options  # the recipe's options belong to its model
    assert train("--recipe", "mlp", "--set", "model={name: lenet5}").model.options == {}
    cfg = train("--recipe", "mlp", "--set", "model={name: lenet5, options: {dropout: 0.1}}")
    assert cfg.model.name == "lenet5" and cfg.model.options == {"dropout": 0.1}
    same = train("--recipe", "mlp", "--set", "model={name: mlp}")
    assert same.model.options == load_config(recipe="mlp").model.options


@pytest.mark.parametrize("args,key,first,second", [
    (["--epochs", "1", "--set", "train={epochs: 2}"], "train.epochs", "train.epochs=1", "train={'epochs': 2}"),
    (["--lr", "0.1", "--set", "optimizer={lr: 0.2, momentum: 0.5}"], "optimizer.lr", "optimizer.lr=0.1", "optimizer={"),
    (["--model", "mlp", "--set", "model={name: lenet5}"], "model.name", "model.name='mlp'", "model={'name': 'lenet5'}"),
    (["--data", "sample", "--set", "data={dataset: 'folder:/x'}"], "data.dataset", "data.dataset='sample'", "data={"),
    (["--set", "data.augment.flip=false", "--set", "data={augment: {flip: true}}"], "data.augment.flip",
     "data.augment.flip=False", "data={'augment': {'flip': True}}"),
    (["--set", "data.augment={cutout: 4}", "--set", "data={augment: {cutout: 8}}"], "data.augment.cutout",
     "data.augment={'cutout': 4}", "data={'augment': {'cutout': 8}}"),
])
def test_a_flag_and_a_set_of_its_section_that_disagree_are_refused(train, args, key, first, second):
    # a flag against a --set: the command line names the flag; two --set: the loader names both assignments
    message = (f"{args[0]} {args[1]} and --set" if not args[0].startswith("--set") else
               f"config key '{key}' is given two values: {first}")
    refused(train("--recipe", "quickstart", *args), message, f"give {key} two values" if args[0] != "--set" else second,
            "keep one of them")


def test_a_flag_and_a_set_that_agree_are_fine(train):
    cfg = train("--recipe", "quickstart", "--epochs", "2", "--set", "train={epochs: 2, seed: 1}")
    assert (cfg.train.epochs, cfg.train.seed) == (2, 1)


def test_combine_overrides_names_the_flag_and_the_set():
    names = {"train.epochs": "--epochs", "optimizer.lr": "--lr"}
    with pytest.raises(UserError, match=r"--epochs 1 and --set train.epochs=2 give train.epochs two values"):
        combine_overrides({"train.epochs": 1}, ["train.epochs=2"], names)
    with pytest.raises(UserError, match=r"--lr 0.1 and --set optimizer=\{lr: 0.2\} give optimizer.lr"):
        combine_overrides({"optimizer.lr": 0.1, "train.epochs": None}, ["optimizer={lr: 0.2}"], names)
    with pytest.raises(UserError, match="the flag setting train.seed to 1 and --set train.seed=2 give"):
        combine_overrides({"train.seed": 1}, ["train.seed=2"])
    got = combine_overrides({"train.epochs": 1, "optimizer.lr": None}, ["train={}", "train.seed=1", "train.seed=4",
                                                                        "train.epochs=1"], names)
    assert got == {"train": {}, "train.seed": 4, "train.epochs": 1}
    assert load_config(recipe="quickstart", overrides=got).train.epochs == 1


# ---------------------------------------------------------------------- (d) sample takes no path

@pytest.mark.parametrize("spec", ["sample:/nonexistent/path", "sample:x", "sample:.", "SAMPLE:/tmp", " sample :a"])
def test_sample_with_a_path_is_refused(cli, tmp_path, monkeypatch, spec):
    monkeypatch.chdir(tmp_path)  # the real train command: the spec is parsed where the data are loaded
    refused(cli("train", "--recipe", "quickstart", "--data", spec, "--out", tmp_path / "r"),
            "dataset 'sample' takes no path", "give just 'sample'")
    assert not (tmp_path / "r").exists()


def test_sample_alone_is_the_sample():
    from cifarlab.data.sources import parse_spec
    for spec in ("sample", "sample:", "Sample"):
        kind, path = parse_spec(spec)
        assert kind.name == "sample" and path is None
    with pytest.raises(UserError, match="takes no path"):
        parse_spec("sample:/tmp")


# ---------------------------------------------------------------------- (e) wording

def test_a_folder_given_as_the_config_file(train, tmp_path):
    (tmp_path / "cfgs").mkdir()
    refused(train("--config", tmp_path / "cfgs"), "is a folder: give the YAML file itself")
    refused(train("--config", tmp_path / "nope.yaml"), "does not exist: check the path")


@pytest.mark.parametrize("data", [bytes([0x95, 0, 1, 2]) * 20, b"train: {epochs: 1}\n\xff\xfe", "\u00e9t\u00e9".encode("latin-1")])
def test_a_binary_config_file_says_to_give_a_text_file(train, tmp_path, data):
    f = tmp_path / "bin.yaml"
    f.write_bytes(data)
    refused(train("--config", f), "give a YAML text file")


def test_control_characters_in_a_config_file_say_to_give_a_text_file(train, tmp_path):
    f = write(tmp_path, "train:\n  epochs: 1\x00\x01\n")
    refused(train("--config", f), "give a YAML text file")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_pipe_as_the_config_file_is_refused_not_waited_on(train, tmp_path):
    os.mkfifo(tmp_path / "pipe.yaml")
    refused(train("--config", tmp_path / "pipe.yaml"), "not a regular file", "give a YAML file")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_config_file(train, tmp_path):
    f = write(tmp_path, "train: {epochs: 1}\n")
    f.chmod(0)
    try:
        refused(train("--config", f), "cannot read config file", "check the file and its permissions")
    finally:
        f.chmod(stat.S_IRUSR | stat.S_IWUSR)


@pytest.mark.parametrize("args,contains", [
    (["--set", "data.augment.progressive_resize={}"],
     ("'data.augment.progressive_resize.start_size': Field required when 'data.augment.progressive_resize' is given",
      "add it", "--set data.augment.progressive_resize.start_size=VALUE")),
    (["--set", "data.augment.progressive_resize={full_at: 0.5}"], ("start_size': Field required", "add it")),
    (["--set", "train=5"], ("config key 'train' must be a section", "(epochs, batch_size,", "under 'train:'")),
    (["--set", "optimizer=[sgd]"], ("config key 'optimizer' must be a section", "got ['sgd']")),
    (["--set", "data.mix=off"], ("config key 'data.mix' must be a section", "mixup_alpha")),
    (["--set", "reported=0.9"], ("config key 'reported' must be a section", "accuracy")),
    (["--set", "model.options=[1]"], ("config key 'model.options' must be a mapping", "{key: value, ...}")),
])
def test_schema_messages_say_what_to_do(train, args, contains):
    line = refused(train("--recipe", "quickstart", *args), *contains)
    assert "instance of" not in line  # no pydantic class names
    assert ("add it" if "required" in line else "under") in line  # it ends with what to do


def test_config_file_sections_wording(train, tmp_path):
    f = write(tmp_path, "model: {name: mlp}\ntrain: [1, 2]\n")
    refused(train("--config", f), "config key 'train' must be a section", "got [1, 2]")
    f = write(tmp_path, "- a\n- b\n")
    refused(train("--config", f), "must hold a YAML mapping of sections")


@pytest.mark.parametrize("flag,value,assignment", [
    ("--epochs", "1", "train.epochs=2"), ("--lr", "0.1", "optimizer={lr: 0.2}"), ("--model", "mlp", "model.name=lenet5"),
    ("--data", "sample", "data.dataset=cifar10"), ("--threads", "1", "train={threads: 2, epochs: 1}")])
def test_a_flag_and_a_set_that_disagree_are_refused_on_the_command_line(cli, tmp_path, flag, value, assignment):
    assert_user_error(cli("train", "--recipe", "quickstart", flag, value, "--set", assignment, "--out", tmp_path / "r"),
                      [f"{flag} {value}", "two values", "keep one"])
    assert not (tmp_path / "r").exists()
    if flag != "--data":
        assert_user_error(cli("find-batch-size", "--recipe", "quickstart", "--data", "sample", "--set",
                              "data.dataset=folder:/nope"), ["--data sample", "two values"])


def test_a_section_override_merges_on_every_path(tmp_path):
    """`train={...}` as an override sets those keys and keeps the others, in the Python API, in a study's
    command-line --set and on resume, as on `cifarlab train` (a study file's own `set:` still replaces)."""
    import cifarlab
    from cifarlab.studies.space import build_study
    from cifarlab.train.resume_rules import apply_overrides
    base = {"model": {"name": "mlp"}, "train": {"epochs": 2, "batch_size": 16}}
    cfg = cifarlab.load_config(config=base, overrides={"train": {"epochs": 3}})
    assert (cfg.train.epochs, cfg.train.batch_size) == (3, 16)
    study = build_study({"base": base, "method": "grid", "space": {"optimizer.lr": [0.1, 0.2]}}, "study",
                        overrides={"train": {"seed": 4}})
    assert study.base["train"] == {"epochs": 2, "batch_size": 16, "seed": 4}
    new, changed = apply_overrides(base, {"train": {"epochs": 5}}, epochs_done=2)
    assert new.train.batch_size == 16 and list(changed) == ["train.epochs"]


BAD_URIS = ["notascheme://x", "ftp://host/runs", "s3://bucket/mlruns", "postgres+psycopg2://u@h/db"]


@pytest.mark.parametrize("uri", BAD_URIS)
@pytest.mark.parametrize("given", ["flag", "config", "env"])
def test_an_mlflow_uri_no_store_takes_is_refused_before_anything_is_written(cli, tmp_path, monkeypatch, uri, given):
    args = {"flag": ["--mlflow", uri], "config": ["--set", f"track.mlflow={uri}"], "env": []}[given]
    if given == "env":
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    where = {"flag": "--mlflow", "config": "track.mlflow", "env": "$MLFLOW_TRACKING_URI"}[given]
    scheme = uri.split("://")[0].split("+")[0]
    assert_user_error(cli("train", "--recipe", "quickstart", "--data", "sample", *args, "--out", tmp_path / "r"),
                      [where, f"no tracking store for '{scheme}://'"])
    for command in (["sweep", "--config", "lr-seed000-short"], ["repeat", "quickstart"]):
        sweep_args = ["--mlflow", uri] if given == "flag" else args  # a study's base config: --set there too
        assert_user_error(cli(*command, *sweep_args, "--out", tmp_path / "s"), f"'{scheme}://'")
    assert not (tmp_path / "r").exists() and not (tmp_path / "s").exists()


@pytest.mark.parametrize("uri", ["mlruns", "/abs/mlruns", "file:///tmp/mlruns", "http://127.0.0.1:5000",
                                 "https://mlflow.example.org", "sqlite:///mlflow.db", "postgresql://u@h/db",
                                 "postgresql+psycopg2://u@h/db", "mysql+pymysql://u@h/db", "databricks", None])
def test_an_mlflow_uri_a_store_takes_is_accepted(uri):
    assert load_config(overrides={"track.mlflow": uri}).track.mlflow == uri


def test_every_key_listed_is_settable_with_its_default():
    """`cifarlab keys` is the schema: each key it lists takes its own default back through --set."""
    from cifarlab.schema import config_keys
    listed = config_keys()
    assert {"train.class_weights", "data.image_size", "train.ema.decay", "optimizer.betas"} <= {k["key"] for k in listed}
    for k in listed:
        if k["required"] or k["key"] in ("name", "model.options"):
            continue
        section = k["key"].rsplit(".", 1)[0]
        extra = {"data.augment.progressive_resize.start_size": 16} if section == "data.augment.progressive_resize" else {}
        cfg = load_config(overrides={k["key"]: k["default"], **extra})
        node = cfg.to_dict()
        for part in k["key"].split("."):
            node = node[part]
        assert node == k["default"], k


def test_the_keys_command_lists_values_types_and_the_resolved_yaml(cli, tmp_path):
    import json

    import yaml
    code, out, err = cli("keys", "train.class_weights", "--json")
    assert code == 0, err
    (row,) = json.loads(out.splitlines()[-1])
    assert row["type"] == "none | balanced" and row["default"] == row["value"] == "none" and "sklearn" in row["description"]
    code, out, _ = cli("keys", "data.augment", "-r", "speedrun-cpu", "--set", "data.augment.cutout=5")
    assert 'data.augment.flip = "alternate"' in out and "data.augment.cutout = 5  [int]" in out
    assert all(line.startswith("data.augment.") for line in out.splitlines())
    assert "(off: train.ema is null; default 0.999)" in cli("keys", "train.ema")[1]
    code, out, _ = cli("keys", "-r", "quickstart", "--set", "train.epochs=3", "--yaml")
    assert yaml.safe_load(out) == load_config(recipe="quickstart", overrides={"train.epochs": 3}).to_dict()
    code, out, _ = cli("keys", "data.augment", "-r", "speedrun-cpu", "--yaml")
    assert yaml.safe_load(out) == {"data": {"augment": load_config(recipe="speedrun-cpu").to_dict()["data"]["augment"]}}
    assert yaml.safe_load(cli("keys", "train.epochs", "--set", "train.epochs=7", "--yaml")[1]) == {"train": {"epochs": 7}}
    assert_user_error(cli("keys", "--yaml", "--json"), "--yaml or --json")
    assert_user_error(cli("keys", "trian"), ["no config key starts with 'trian'", "cifarlab keys"])
    assert_user_error(cli("keys", "--set", "train.epochs=0"), "train.epochs")
    assert_user_error(cli("train", "--set", "zzzz=1", "--out", tmp_path / "r"), ["unknown config key 'zzzz'",
                                                                                 "`cifarlab keys` lists them"])
