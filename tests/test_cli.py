"""The command line: the JSON contract other tools rely on, and one-line errors (exit 2) for bad input."""
import json
import os
import pickle

import pytest
import torch

from conftest import assert_user_error, set_args, tar_folder, tiny_overrides, write_image_folder

# the dataset as --data, so that a later --data replaces it (a --set would win over every flag)
TINY = ["--data", "sample", *set_args(tiny_overrides(omit=("data.dataset", "schedule.name"), **{"train.epochs": 1}))]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short run shared by the tests below: (run dir, parsed --json summary)."""
    import contextlib
    import io

    from cifarlab.cli.main import run
    out = tmp_path_factory.mktemp("cli") / "run"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert run(["train", "--recipe", "quickstart", *TINY, "--out", str(out), "--json"]) == 0
    return out, json.loads(buf.getvalue().strip().splitlines()[-1])


def test_train_json_contract(trained):
    out, s = trained
    for key in ("best_val_accuracy", "best_epoch", "test_accuracy", "train_images_per_second", "run_dir"):
        assert key in s
    assert s["run_dir"] == str(out) and (out / "best.pt").is_file()


def test_eval_json_contract(cli, trained):
    out, s = trained
    code, stdout, _ = cli("eval", "--checkpoint", out / "best.pt", "--data", "sample", "--split", "val", "--json")
    assert code == 0
    res = json.loads(stdout.strip().splitlines()[-1])
    for key in ("accuracy", "loss", "per_class_accuracy", "macro_f1", "confusion_matrix"):
        assert key in res
    assert res["accuracy"] == pytest.approx(s["best_val_accuracy"], abs=1e-6)  # same split, same weights
    assert len(res["per_class_accuracy"]) == 10


def test_models_and_recipes_lists(cli):
    code, out, _ = cli("models", "--json")
    rows = {r["name"]: r for r in json.loads(out.strip().splitlines()[-1])}
    assert code == 0 and rows["tutorial_cnn"]["parameters"] == 62006 and "resnet18" in rows and "mlp" in rows
    code, out, _ = cli("recipes")
    assert code == 0 and "quickstart" in out


@pytest.mark.parametrize("args,match", [
    (["train", "--bogus"], "No such option: --bogus"),
    (["train", "--batch-size", "0"], "train.batch_size"),
    (["train", "--batch-size", "abc"], "--batch-size"),
    (["train", "--lr", "-1"], "optimizer.lr"),
    (["train", "--model", "resnet19"], "unknown model 'resnet19': did you mean 'resnet18'"),
    (["train", "--optimizer", "adamx"], "optimizer.name"),
    (["train", "--set", "train.epoch=2"], "did you mean 'train.epochs'"),
    (["train", "--set", "model.options={hidden: [8], wings: 2}", "--model", "mlp"], "has no option 'wings'"),
    *[(["train", "--model", "speedrun_net", "--set", f"model.options.train_norm_weight={v}"],
       "train_norm_weight must be true or false") for v in ("maybe", "1", "[true]")],
    *[(["train", "--model", "speedrun_net", "--set", f"model.options.whiten_bias_as_norm_bias={v}"],
       "whiten_bias_as_norm_bias must be true or false") for v in ("maybe", "2", "[false]")],
    *[(["train", "--set", f"optimizer.muon_fixed_norm={v}"], "'optimizer.muon_fixed_norm': Input should be a valid boolean")
      for v in ("maybe", "2", "[true]")],
    *[(["train", "--set", f"optimizer.muon_ns_dtype={v}"], "'optimizer.muon_ns_dtype': Input should be 'auto', 'bf16' or 'fp32'")
      for v in ("fp16", "BF16", "32", "[fp32]")],
    *[(["train", "--set", f"reported.split={v}"], "'reported.split': Input should be 'test' or 'validation'")
      for v in ("val", "Test", "1")],
    (["train", "--data", "folder:/no/such/dir"], "does not exist"),
    (["train", "--data", "mnist"], "unknown dataset 'mnist'"),
    (["train", "--recipe", "nope"], "unknown recipe 'nope'"),
    (["train", "--config", "/no/such.yaml"], "does not exist"),
    (["train", "--device", "cuda:7"] if not torch.cuda.is_available() else ["train", "--device", "tpu"], "device"),
    (["eval", "--data", "sample"], "Missing option '--checkpoint'"),
    (["frobnicate"], "No such command"),
])
def test_bad_input_is_one_line_exit_2(cli, tmp_path, args, match):
    code, _, err = cli(*args, "--out", tmp_path / "r") if args[0] == "train" else cli(*args)
    assert_user_error((code, err), match)
    assert not (tmp_path / "r" / "last.pt").exists()  # refused before any training


def test_bad_data_files(cli, tmp_path):
    corrupt = tmp_path / "corrupt.tar.gz"
    corrupt.write_bytes(b"\x1f\x8b\x08\x00garbage")
    assert_user_error(cli("train", *TINY, "--data", f"folder:{corrupt}", "--out", tmp_path / "a"),
                   "truncated or corrupt")
    root = write_image_folder(tmp_path / "imgs", per_class=3)
    (root / "cat" / "oops.jpg").write_bytes(b"not an image")
    assert_user_error(cli("train", *TINY, "--data", f"folder:{root}", "--out", tmp_path / "b"),
                   "is not a readable image")


def test_bad_checkpoints(cli, tmp_path, trained):
    out, _ = trained
    other = write_image_folder(tmp_path / "three", per_class=4)
    assert_user_error(cli("eval", "--checkpoint", out, "--data", f"folder:{other}"), "is for 10 classes")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    assert_user_error(cli("eval", "--checkpoint", tmp_path / "junk.pt", "--data", "sample"), "is not a torch file")
    assert_user_error(cli("eval", "--checkpoint", tmp_path / "none.pt", "--data", "sample"), "does not exist")

    # weights of another model under this model's name
    ckpt = torch.load(out / "best.pt", weights_only=True)
    ckpt["model"]["name"] = "mlp"
    torch.save(ckpt, tmp_path / "swapped.pt")
    assert_user_error(cli("eval", "--checkpoint", tmp_path / "swapped.pt", "--data", "sample"), "does not fit")

    # a pickle that would run code when loaded without weights_only
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"format": "cifarlab-checkpoint-1", "x": Evil()}, f)
    assert_user_error(cli("eval", "--checkpoint", tmp_path / "evil.pt", "--data", "sample"), "refused unexecuted")
    assert not marker.exists()


def test_resume_flags(cli, tmp_path, trained):
    out, _ = trained
    assert_user_error(cli("train", "--resume", out, "--recipe", "quickstart"), "drop --recipe")
    assert_user_error(cli("train", "--resume", tmp_path / "nothing"), "no run to resume")


def test_folder_tarball_trains_from_the_cli(cli, tmp_path):
    arc = tar_folder(write_image_folder(tmp_path / "imgs", per_class=30), tmp_path / "imgs.tar.gz")
    code, out, err = cli("train", "--data", f"folder:{arc}", "--epochs", "3", "--val-size", "0.2", "-b", "8",
                         "--threads", "1", "--out", tmp_path / "r", "--lr", "0.01", "--json")
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["best_val_accuracy"] > 0.5  # colours are easy to tell apart


def test_eval_with_flip_tta(cli, trained):
    out, _ = trained
    code, stdout, _ = cli("eval", "--checkpoint", out, "--data", "sample", "--split", "val", "--tta", "1", "--json")
    plain = json.loads(cli("eval", "--checkpoint", out, "--data", "sample", "--split", "val", "--json")[1].splitlines()[-1])
    tta = json.loads(stdout.strip().splitlines()[-1])
    assert code == 0 and tta["images"] == plain["images"] and tta["loss"] != plain["loss"]


def test_eval_train_split_is_the_rows_the_run_trained_on(cli, trained):
    """--split train is the run's training rows, its data.train_limit included (it was once all 400 non-val rows)."""
    out, _ = trained
    code, stdout, _ = cli("eval", "--checkpoint", out, "--data", "sample", "--split", "train", "--json")
    assert code == 0 and json.loads(stdout.strip().splitlines()[-1])["images"] == 300


def test_eval_of_a_cached_dataset_prints_no_warning(trained):
    """The cache is a read-only memory map: eval once handed it to torch.from_numpy, and PyTorch printed a
    UserWarning about non-writable arrays (once per process, so a fresh process checks it)."""
    import subprocess
    import sys
    out, _ = trained
    for split in ("all", "val"):
        done = subprocess.run([sys.executable, "-W", "default", "-m", "cifarlab", "eval", "--checkpoint", str(out),
                               "--data", "sample", "--split", split, "--json"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "Warning" not in done.stderr, done.stderr


def _listed_commands(help_text):
    return {line.split()[0] for line in help_text.splitlines() if line.startswith("  ") and line.split()}


def test_every_entry_point_lists_every_command():
    """`python -m cifarlab.cli.main`, `python -m cifarlab` and run() show the same commands
    (cli/main.py as __main__ once built a second app that lacked the report and study commands)."""
    import subprocess
    import sys
    seen = []
    for argv in (["-m", "cifarlab.cli.main", "--help"], ["-m", "cifarlab", "--help"]):
        done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        seen.append(_listed_commands(done.stdout))
    assert seen[0] == seen[1]
    assert {"train", "eval", "models", "recipes", "sweep", "repeat", "compare", "report", "runs"} <= seen[0], seen[0]


def test_ctrl_c_exits_130_with_one_line_and_leaves_run_resumable(tmp_path):
    """SIGINT during `train`: exit 130 (typer returned it and run() used to drop it as 0), one line,
    and the run continues with --resume."""
    import signal
    import subprocess
    import sys
    import time
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "cifarlab", "train", "--recipe", "quickstart", "--epochs", "200",
           "--threads", "1", "--no-progress", "--out", str(out)]
    # A shell that starts the suite in the background (CI's `.ci/run &`) hands its children SIGINT ignored,
    # and Python keeps it so: the run then finished its 200 epochs and exited 0. Ctrl-C is what we test.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not (out / "last.pt").is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    lines = [line for line in err.strip().splitlines() if line.startswith("cifarlab:")]
    assert len(lines) == 1 and "interrupted" in lines[0] and "--resume" in lines[0], err
    assert "Traceback" not in err
    assert (out / "last.pt").is_file() and (out / "config.yaml").is_file()
