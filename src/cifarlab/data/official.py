"""Readers for the official archives: CIFAR-10 (binary and python versions) and Tiny ImageNet.

Each reader takes the archive or its extracted folder and returns a `RawDataset` of uint8 arrays.
The CIFAR-10 binary version is parsed with numpy; the python version is pickled, so it is read
only through an allow-list unpickler that can build numpy arrays and nothing else.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path, PurePosixPath

import numpy as np

from cifarlab.data.images import Alloc, decode_rows, in_memory, list_source
from cifarlab.data.registry import register_dataset
from cifarlab.data.types import RawDataset
from cifarlab.errors import UserError

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR10_ARCHIVES = {  # file name -> (md5 of the official archive, url)
    "cifar-10-binary.tar.gz": ("c32a1d4ab5d03f1284b67883e8d87530", "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"),
    "cifar-10-python.tar.gz": ("c58f30108f718f92721af3b95e74349a", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
}
_RECORD = 1 + 3 * 32 * 32  # binary version: one label byte then the R, G and B planes


def _parse_binary(blob: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    if len(blob) == 0 or len(blob) % _RECORD:
        raise UserError(f"CIFAR-10 file '{name}' has {len(blob)} bytes, not a multiple of {_RECORD}: the archive is damaged")
    rec = np.frombuffer(blob, dtype=np.uint8).reshape(-1, _RECORD)
    y = rec[:, 0].astype(np.int64)
    if y.max() >= 10:
        raise UserError(f"CIFAR-10 file '{name}' has label {y.max()}: the archive is damaged or not CIFAR-10")
    return rec[:, 1:].reshape(-1, 3, 32, 32).copy(), y


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Builds dicts, lists, bytes and numpy arrays; any other global is refused (no code runs).

    `_codecs.encode` only turns text into bytes; Python 3 pickles of bytes (protocol 2) need it."""

    def find_class(self, module, name):
        import codecs
        try:
            from numpy._core import multiarray
        except ImportError:  # numpy < 2
            from numpy.core import multiarray
        allowed = {("numpy.core.multiarray", "_reconstruct"): multiarray._reconstruct,
                   ("numpy._core.multiarray", "_reconstruct"): multiarray._reconstruct,
                   ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): codecs.encode}
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")
        return allowed[(module, name)]


def _parse_pickled(blob: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        d = _NumpyOnlyUnpickler(io.BytesIO(blob), encoding="bytes").load()
        x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(d[b"labels"], dtype=np.int64)
    except Exception as err:  # any malformed or hostile pickle ends here, unexecuted
        raise UserError(f"CIFAR-10 file '{name}' is not a valid CIFAR-10 python batch ({err}): use the official archive") from None
    if len(x) != len(y):
        raise UserError(f"CIFAR-10 file '{name}' has {len(x)} images but {len(y)} labels: the archive is damaged")
    bad = y[(y < 0) | (y >= 10)]
    if len(bad):  # a label out of range would fail deep inside training instead
        raise UserError(f"CIFAR-10 file '{name}' has label {bad[0]}: the archive is damaged or not CIFAR-10")
    return x, y


@register_dataset("cifar10", path="optional", default=lambda cache: fetch_cifar10(cache))
def read_cifar10(path: Path, alloc: Alloc = in_memory) -> RawDataset:
    """CIFAR-10: the official binary or python archive, or its folder; without PATH, downloaded once."""
    listing = list_source(path)
    by_name = {p.name: p for p in sorted(listing.files)}
    if "data_batch_1.bin" in by_name:
        parse, names, test = _parse_binary, [f"data_batch_{i}.bin" for i in range(1, 6)], "test_batch.bin"
    elif "data_batch_1" in by_name:
        parse, names, test = _parse_pickled, [f"data_batch_{i}" for i in range(1, 6)], "test_batch"
    else:
        raise UserError(f"'{path}' is not a CIFAR-10 archive or folder (no data_batch_1[.bin]): "
                        "give cifar-10-binary.tar.gz, cifar-10-python.tar.gz or their extracted folder")
    missing = [n for n in names + [test] if n not in by_name]
    if missing:
        raise UserError(f"CIFAR-10 at '{path}' lacks '{missing[0]}': the archive is incomplete, download it again")
    # each batch is parsed as it is read, so only one raw 30 MB batch is held at a time
    parts = {p.name: parse(blob, p.name) for p, blob in listing.read([by_name[n] for n in names + [test]])}
    x = np.concatenate([parts[n][0] for n in names], out=alloc("train_x", (sum(len(parts[n][1]) for n in names), 3, 32, 32)))
    tx = np.concatenate([parts[test][0]], out=alloc("test_x", parts[test][0].shape))
    return RawDataset(x, np.concatenate([parts[n][1] for n in names]), CIFAR10_CLASSES, test_x=tx, test_y=parts[test][1])


def fetch_cifar10(cache_dir: Path) -> Path:
    """The official binary archive, from the cache or downloaded once with its checksum checked."""
    import pooch

    for fname, (md5, _) in CIFAR10_ARCHIVES.items():  # either version already here will do
        f = cache_dir / fname
        if f.is_file() and pooch.file_hash(str(f), alg="md5") == md5:
            return f
    fname = "cifar-10-binary.tar.gz"
    md5, url = CIFAR10_ARCHIVES[fname]
    try:
        return Path(pooch.retrieve(url, known_hash=f"md5:{md5}", fname=fname, path=cache_dir, progressbar=False))
    except ValueError:  # pooch: the md5 differs; it has deleted the download already
        raise UserError(f"the downloaded {fname} is corrupt (its md5 is not the official {md5}) and was not kept: "
                        f"run again to download it anew, or copy the official archive and give --data cifar10:PATH") from None
    except Exception as err:
        reason = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
        raise UserError(f"could not download CIFAR-10 ({reason}): copy {fname} or cifar-10-python.tar.gz here "
                        f"and give --data cifar10:PATH, or place it in {cache_dir}") from None


@register_dataset("tinyimagenet")
def read_tinyimagenet(path: Path, alloc: Alloc = in_memory, size: int | None = None) -> RawDataset:
    """Tiny ImageNet (200 classes, 64x64): tiny-imagenet-200.zip or its folder.

    The official tiny-imagenet-200 layout: train/<wnid>/images/*.JPEG, val/images/*.JPEG with
    val/val_annotations.txt, wnids.txt and words.txt. The labelled val set serves as the test split
    (the official test set has no labels); validation is carved from train as for every dataset."""
    listing = list_source(path)
    files = listing.files

    def rel(p: PurePosixPath) -> tuple[str, ...]:  # without the archive's top folder (tiny-imagenet-200/)
        parts = p.parts
        return parts[1:] if parts and parts[0] not in ("train", "val", "test", "wnids.txt", "words.txt") else parts

    wanted_meta = {p for p in files if rel(p) in (("wnids.txt",), ("words.txt",)) or p.name == "val_annotations.txt"}
    meta = {p.name: b for p, b in listing.read(wanted_meta)}
    for need in ("wnids.txt", "val_annotations.txt"):
        if need not in meta:
            raise UserError(f"'{path}' is not a Tiny ImageNet archive or folder (no {need}): give tiny-imagenet-200.zip or its folder")
    def text(name: str) -> str:  # metadata of odd encodings: one line, never a UnicodeDecodeError
        try:
            return meta.get(name, b"").decode("utf-8")
        except UnicodeDecodeError:
            raise UserError(f"'{path}': its {name} is not UTF-8 text: the archive is damaged or not Tiny ImageNet") from None

    wnids = list(dict.fromkeys(text("wnids.txt").split()))  # a class listed twice is one class
    if len(wnids) < 2:
        raise UserError(f"Tiny ImageNet at '{path}' lists {len(wnids)} class(es) in wnids.txt: a classifier needs at least 2")
    index = {w: i for i, w in enumerate(wnids)}
    words = dict(line.split("\t", 1) for line in text("words.txt").splitlines() if "\t" in line)
    classes = [words.get(w, w).split(",")[0].strip() or w for w in wnids]
    val_labels = {}
    for line in text("val_annotations.txt").splitlines():
        cols = line.split("\t")
        if len(cols) >= 2 and cols[1] in index:
            val_labels[cols[0]] = index[cols[1]]

    def load(split: str, label_of, name: str) -> tuple[np.ndarray, np.ndarray]:
        names = sorted({p for p in files if len(rel(p)) >= 2 and rel(p)[0] == split and p.suffix.upper() == ".JPEG"})
        kept = [(p, lab) for p in names if (lab := label_of(p)) is not None]
        if not kept:
            raise UserError(f"Tiny ImageNet at '{path}' has no labelled images in one split: the archive is incomplete")
        rows = {p: i for i, (p, _) in enumerate(kept)}
        x = decode_rows(listing.read(rows), rows, lambda shape: alloc(name, shape), str(path), size)
        return x, np.array([lab for _, lab in kept], dtype=np.int64)

    train_x, train_y = load("train", lambda p: index.get(rel(p)[1]), "train_x")
    test_x, test_y = load("val", lambda p: val_labels.get(p.name), "test_x")
    return RawDataset(train_x, train_y, classes, test_x=test_x, test_y=test_y)
