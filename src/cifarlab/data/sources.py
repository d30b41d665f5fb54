"""Dataset specs (`sample`, `cifar10[:PATH]`, `tinyimagenet:PATH`, `folder:PATH`) -> cached uint8 arrays.

Decoding 50,000 JPEGs takes seconds; it is done once. The decoded arrays are stored as .npy files
under a key made from the source's bytes (so an edited folder or another archive never hits a
stale entry) and later runs memory-map them, starting in well under a second.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np

from cifarlab.data import official
from cifarlab.data.images import iter_archive, iter_folder, labelled_folder
from cifarlab.data.types import RawDataset
from cifarlab.errors import UserError

CACHE_FORMAT = 1  # bump when a reader changes what it produces, to invalidate old entries
SPEC_HELP = "sample, cifar10, cifar10:PATH, tinyimagenet:PATH or folder:PATH"


def cache_dir() -> Path:
    env = os.environ.get("CIFARLAB_CACHE")
    if env:
        return Path(env).expanduser()
    import pooch
    return Path(pooch.os_cache("cifarlab"))


def sample_path() -> Path:
    return Path(str(resources.files("cifarlab") / "data" / "sample" / "cifar10-sample.tar.gz"))


def _content_key(kind: str, path: Path) -> str:
    h = hashlib.sha256(f"{kind}:{CACHE_FORMAT}".encode())
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink()):
            h.update(f.relative_to(path).as_posix().encode() + b"\0")
            h.update(f.read_bytes())
    else:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()[:32]


def _save(entry: Path, ds: RawDataset, source: str) -> None:
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=".tmp-"))
    try:
        arrays = {"train_x": ds.train_x, "train_y": ds.train_y}
        if ds.test_x is not None:
            arrays.update(test_x=ds.test_x, test_y=ds.test_y)
        for name, arr in arrays.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(arr))
        (tmp / "meta.json").write_text(json.dumps({"classes": ds.classes, "source": source}))
        os.replace(tmp, entry)  # atomic: a reader sees the whole entry or none
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not entry.is_dir():  # a lost race with another process is fine; anything else is not
            raise


def _load(entry: Path) -> RawDataset | None:
    try:
        meta = json.loads((entry / "meta.json").read_text())
        arr = {f.stem: np.load(f, mmap_mode="r", allow_pickle=False) for f in entry.glob("*.npy")}
        return RawDataset(arr["train_x"], arr["train_y"], meta["classes"], arr.get("test_x"), arr.get("test_y"))
    except (OSError, ValueError, KeyError):
        return None  # missing or damaged entry: decode again


def parse_spec(spec: str) -> tuple[str, Path | None]:
    kind, _, rest = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "sample":
        return "folder", sample_path()
    if kind not in ("cifar10", "tinyimagenet", "folder"):
        raise UserError(f"unknown dataset '{spec}': use {SPEC_HELP}")
    if not rest:
        if kind == "cifar10":
            return kind, None
        raise UserError(f"dataset '{kind}' needs a path: give {kind}:PATH")
    path = Path(rest).expanduser()
    if not path.exists():
        raise UserError(f"dataset path '{path}' does not exist: check the path in '{spec}'")
    return kind, path


def load_dataset(spec: str, use_cache: bool = True) -> RawDataset:
    """Read a dataset by spec, decoding it only the first time."""
    kind, path = parse_spec(spec)
    if path is None:
        path = official.fetch_cifar10(cache_dir())
    key = _content_key(kind, path)
    entry = cache_dir() / "datasets" / key
    if use_cache and (ds := _load(entry)) is not None:
        return ds
    if kind == "cifar10":
        ds = official.read_cifar10(path)
    elif kind == "tinyimagenet":
        ds = official.read_tinyimagenet(path)
    else:
        x, y, classes = labelled_folder(iter_folder(path) if path.is_dir() else iter_archive(path), str(path))
        ds = RawDataset(x, y, classes)
    if use_cache:
        try:
            _save(entry, ds, spec)
        except OSError:
            pass  # a read-only or full cache only costs the next run a decode
    return ds
