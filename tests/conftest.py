"""Shared fixtures: a private dataset cache, tiny datasets written in the official layouts, the CLI.

Quick developer loop (skips the tests marked slow, > ~15 s each): `python -m pytest -m "not slow"`; CI runs all.
"""
from __future__ import annotations

import io
import os
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SHARED_CIFAR = SHARED / "data" / "cifar10-jpeg" / "train.tar.gz"


@pytest.fixture(autouse=True, scope="session")
def private_cache(tmp_path_factory):
    """Every test run decodes into its own cache: hermetic, and never touches ~/.cache."""
    path = tmp_path_factory.mktemp("cache")
    os.environ["CIFARLAB_CACHE"] = str(path)
    yield path


def png_bytes(arr: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    im = Image.fromarray(arr)
    if mode:
        im = im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def class_pattern(c: int, i: int, size: int = 32) -> np.ndarray:
    """An image whose class is easy to learn (a colour per class) with per-image noise."""
    rng = np.random.default_rng(1000 * c + i)
    base = np.array([(c * 97) % 256, (c * 53 + 80) % 256, (c * 29 + 160) % 256], dtype=np.float64)
    img = base + rng.normal(0, 25, size=(size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def write_image_folder(root: Path, classes=("cat", "dog", "frog"), per_class: int = 20, size: int = 32) -> Path:
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (root / name / f"{i:04d}.png").write_bytes(png_bytes(class_pattern(c, i, size)))
    return root


def tar_folder(src: Path, dest: Path, top: str = "train") -> Path:
    with tarfile.open(dest, "w:gz") as tf:
        tf.add(src, arcname=top)
    return dest


def cifar_arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = np.stack([class_pattern(int(c), i).transpose(2, 0, 1) for i, c in enumerate(y)])
    return x, y


def write_cifar10_archive(dest: Path, fmt: str = "binary", per_batch: int = 20) -> Path:
    """A small archive in the official layout (same member names and record formats, fewer images)."""
    members: dict[str, bytes] = {}
    batches = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(batches):
        x, y = cifar_arrays(per_batch, k)
        if fmt == "binary":
            rec = np.concatenate([y.astype(np.uint8)[:, None], x.reshape(len(x), -1)], axis=1)
            members[f"cifar-10-batches-bin/{name}.bin"] = rec.tobytes()
        else:
            d = {b"batch_label": name.encode(), b"labels": [int(v) for v in y], b"data": x.reshape(len(x), -1),
                 b"filenames": [f"{i}.png".encode() for i in range(len(y))]}
            members[f"cifar-10-batches-py/{name}"] = pickle.dumps(d, protocol=2)
    if fmt == "binary":
        members["cifar-10-batches-bin/batches.meta.txt"] = b"airplane\nautomobile\n"
    with tarfile.open(dest, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return dest


def write_tinyimagenet(root: Path, wnids=("n01443537", "n01629819", "n01641577"), per_class: int = 6,
                       val_per_class: int = 3, as_zip: bool = False) -> Path:
    """The tiny-imagenet-200 layout with a few classes: train/<wnid>/images, val/images + annotations."""
    files: dict[str, bytes] = {"tiny-imagenet-200/wnids.txt": "\n".join(wnids).encode() + b"\n",
                               "tiny-imagenet-200/words.txt": "".join(f"{w}\tclass {i}, other name\n"
                                                                      for i, w in enumerate(wnids)).encode()}
    ann = []
    for c, w in enumerate(wnids):
        files[f"tiny-imagenet-200/train/{w}/{w}_boxes.txt"] = b""
        for i in range(per_class):
            files[f"tiny-imagenet-200/train/{w}/images/{w}_{i}.JPEG"] = png_bytes(class_pattern(c, i, 64), "JPEG")
        for i in range(val_per_class):
            name = f"val_{c * val_per_class + i}.JPEG"
            files[f"tiny-imagenet-200/val/images/{name}"] = png_bytes(class_pattern(c, 100 + i, 64), "JPEG")
            ann.append(f"{name}\t{w}\t0\t0\t63\t63")
    files["tiny-imagenet-200/val/val_annotations.txt"] = ("\n".join(ann) + "\n").encode()
    if as_zip:
        dest = root / "tiny-imagenet-200.zip"
        with zipfile.ZipFile(dest, "w") as zf:
            for name, data in files.items():
                zf.writestr(name, data)
        return dest
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root / "tiny-imagenet-200"


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return write_image_folder(tmp_path / "imgs")


@pytest.fixture
def cli(capsys):
    """Run the CLI in-process: returns (exit code, stdout, stderr)."""
    from cifarlab.cli.main import run

    def call(*args: str):
        code = run([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err
    return call


TINY = {"data.dataset": "sample", "data.train_limit": 300, "data.val_size": 100, "train.epochs": 2,
        "train.batch_size": 32, "train.threads": 1, "schedule.name": "constant"}


def tiny_overrides(*, omit: tuple[str, ...] = (), **extra) -> dict:
    """A config that trains in about a second on the bundled sample: 300 images, 100 for validation, 2 epochs
    of batch 32 on one thread at a constant LR. `extra` (dotted keys: **{"train.epochs": 1}) changes or adds
    keys, `omit` leaves keys out (so the recipe's own value stands)."""
    base = {k: v for k, v in TINY.items() if k not in omit}
    base.update(extra)
    return base


def set_args(overrides: dict) -> list[str]:
    """Config overrides as the command line gives them: --set KEY=VALUE ..."""
    return [x for k, v in overrides.items() for x in ("--set", f"{k}={v}")]


# ---------------------------------------------------------------------- one-line user errors

USER_ERROR = "cifarlab: error: "


def _code_and_stderr(result) -> tuple[int, str]:
    """(exit code, stderr) of (code, err) or (code, out, err) tuples (the `cli` fixtures), a subprocess
    CompletedProcess/Popen that captured stderr, or a typer/click CliRunner Result."""
    if isinstance(result, tuple):
        return result[0], result[-1]
    if hasattr(result, "returncode"):  # subprocess
        err = result.stderr
    else:  # click.testing.Result
        code = result.exit_code
        try:
            err = result.stderr
        except ValueError:  # older click without a separate stderr
            err = result.output
        return code, err
    return result.returncode, err.decode() if isinstance(err, bytes) else err


def assert_user_error(result, contains: str | tuple[str, ...] | list[str] = (), *, code: int = 2,
                      after_output: bool = False, context=None) -> str:
    """A refused command, as users must see it: exit code 2, no traceback, and stderr exactly one line
    `cifarlab: error: ...` holding each of `contains`. `after_output=True` (a child process that ran for a
    while before failing) allows earlier stderr lines; the error must then be the last one. Returns that line."""
    exit_code, err = _code_and_stderr(result)
    why = (context, err) if context is not None else err
    assert exit_code == code, why
    assert "Traceback" not in err, why
    if after_output:
        lines = [line for line in err.splitlines() if line.strip()]
        assert lines, why
        line = lines[-1]
    else:
        assert err.endswith("\n") and err.count("\n") == 1 and len(err.splitlines()) == 1, why
        line = err[:-1]
    assert line.startswith(USER_ERROR), why
    for part in ([contains] if isinstance(contains, str) else contains):
        assert part in line, why
    return line
