"""Dataset specs (`KIND` or `KIND:PATH`, the kinds in data/registry.py) -> cached uint8 arrays.

Decoding 50,000 JPEGs takes seconds; it is done once. The decoded arrays are stored as .npy files
under a key made from the source's bytes (so an edited folder or another archive never hits a
stale entry) and later runs memory-map them, starting in well under a second.

The first run decodes straight into those .npy files (memory-mapped, in a temporary entry renamed
into place when complete), so a dataset is never held twice in memory, and the pages written can
go back to disk if memory runs short. See docs/reliability.md for the measured peaks.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np

from cifarlab.data import official  # noqa: F401  (registers cifar10 and tinyimagenet)
from cifarlab.data.images import read_folder
from cifarlab.data.registry import DATASETS, DatasetKind, register_dataset
from cifarlab.data.types import RawDataset
from cifarlab.errors import UserError

CACHE_FORMAT = 1  # bump when a reader changes what it produces, to invalidate old entries


def cache_dir() -> Path:
    env = os.environ.get("CIFARLAB_CACHE")
    if env:
        return Path(env).expanduser()
    import pooch
    return Path(pooch.os_cache("cifarlab"))


def sample_path() -> Path:
    return Path(str(resources.files("cifarlab") / "data" / "sample" / "cifar10-sample.tar.gz"))


# The bundled sample is a folder archive; cached under "folder", its entry is the one `folder:` that archive has.
register_dataset("sample", path="none", default=lambda cache: sample_path(), cache_as="folder",
                 summary="the 4,000-image CIFAR-10 sample bundled with cifarlab (no download)")(read_folder)


def _hash_file(h, path: Path) -> None:
    """Feed a regular file to `h` in 4 MiB chunks (never whole into memory). Opened non-blocking and checked
    after opening, so a FIFO, device or socket put in place of a file is refused, never read or waited on."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb", buffering=0) as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UserError(f"'{path}' is not a regular file (a pipe, device or socket): give a file or a folder")
        while chunk := fh.read(1 << 22):
            h.update(chunk)


def check_image_shape(ds: RawDataset, spec: str) -> RawDataset:
    """The models take square images: refuse others here, before a model is built or a run written."""
    shape = tuple(ds.train_x.shape[1:])
    if len(shape) != 3 or shape[1] != shape[2] or shape[1] < 1:
        size = f"{shape[2]}x{shape[1]}" if len(shape) == 3 else "x".join(map(str, shape))
        raise UserError(f"dataset '{spec}' has {size} (width x height) images; the models take square images: "
                        f"set data.image_size (e.g. --set data.image_size={min(shape[1:]) if len(shape) == 3 else 32}) "
                        "to fit each to one square size as it is read")
    return ds


def _content_key(kind: str, path: Path) -> str:
    h = hashlib.sha256(f"{kind}:{CACHE_FORMAT}".encode())
    f = path
    try:
        if path.is_dir():
            # regular files only (is_file: no FIFOs, devices or sockets, which could block or never end)
            for f in sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink()):
                h.update(f.relative_to(path).as_posix().encode() + b"\0")
                _hash_file(h, f)
        else:
            _hash_file(h, path)
    except OSError as err:
        raise UserError(f"cannot read '{f}' ({err.strerror or err}): check the file and its permissions") from None
    return h.hexdigest()[:32]


class _Staging:
    """A temporary cache entry that readers decode into; renamed into place once complete, so a reader
    of the cache sees a whole entry or none."""

    def __init__(self, entry: Path | None):
        self.entry, self.tmp, self.mapped = entry, None, {}
        if entry is not None:
            try:
                entry.parent.mkdir(parents=True, exist_ok=True)
                self.tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=".tmp-"))
            except OSError:
                pass  # a read-only cache only costs the next run a decode

    def array(self, name: str, shape: tuple) -> np.ndarray:
        """A uint8 array to fill: the entry's .npy file, memory-mapped, or plain memory without a cache."""
        if self.tmp is not None and hasattr(os, "posix_fallocate"):
            f = self.tmp / f"{name}.npy"
            try:
                arr = np.lib.format.open_memmap(f, mode="w+", dtype=np.uint8, shape=shape)
                with open(f, "r+b") as fh:  # blocks reserved now: a full disk is an OSError here, not a SIGBUS mid-decode
                    os.posix_fallocate(fh.fileno(), 0, os.fstat(fh.fileno()).st_size)
                self.mapped[name] = arr
                return arr
            except (OSError, ValueError):
                f.unlink(missing_ok=True)
        return np.empty(shape, np.uint8)

    def commit(self, ds: RawDataset, source: str) -> RawDataset:
        """The entry, renamed into place and mapped read-only; `ds` itself where the cache cannot be written."""
        if self.tmp is None:
            return ds
        try:
            arrays = {"train_x": ds.train_x, "train_y": ds.train_y}
            if ds.test_x is not None:
                arrays.update(test_x=ds.test_x, test_y=ds.test_y)
            for name, arr in arrays.items():
                if arr is self.mapped.get(name):
                    arr.flush()
                else:
                    np.save(self.tmp / f"{name}.npy", np.ascontiguousarray(arr))
            self.mapped.clear()
            (self.tmp / "meta.json").write_text(json.dumps({"classes": ds.classes, "source": source}))
            os.replace(self.tmp, self.entry)  # atomic
            self.tmp = None
        except OSError:
            if not self.entry.is_dir():  # a lost race with another process is fine: its entry is the same
                return ds
        cached = _load(self.entry)
        return cached if cached is not None else ds

    def discard(self) -> None:
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)


def _load(entry: Path) -> RawDataset | None:
    try:
        meta = json.loads((entry / "meta.json").read_text())
        arr = {f.stem: np.load(f, mmap_mode="r", allow_pickle=False) for f in entry.glob("*.npy")}
        ds = RawDataset(arr["train_x"], arr["train_y"], meta["classes"], arr.get("test_x"), arr.get("test_y"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # missing or damaged entry: decode again
    return ds if _consistent(ds) else None


def _consistent(ds: RawDataset) -> bool:
    """A cache entry as a decode writes it: uint8 images (N, C, H, W), one label per image, each a class index.
    A file changed on disk since (a bad sector, a hand edit) would otherwise fail mid-run, or train on it."""
    if not (isinstance(ds.classes, list) and ds.classes and all(isinstance(c, str) for c in ds.classes)):
        return False
    splits = [(ds.train_x, ds.train_y)] + ([(ds.test_x, ds.test_y)] if ds.test_x is not None or ds.test_y is not None else [])
    for x, y in splits:
        if x is None or y is None or x.dtype != np.uint8 or x.ndim != 4 or y.ndim != 1 or len(x) != len(y) or not len(y):
            return False
        if y.dtype.kind not in "iu" or int(y.min()) < 0 or int(y.max()) >= len(ds.classes):
            return False
    return ds.test_x is None or ds.test_x.shape[1:] == ds.train_x.shape[1:]


def parse_spec(spec: str) -> tuple[DatasetKind, Path | None]:
    """`KIND[:PATH]` -> the registered kind and its PATH (None: the kind's default source)."""
    name, _, rest = spec.partition(":")
    kind = DATASETS.get(name.strip().lower())
    if kind.path == "none" and rest.strip():
        raise UserError(f"dataset '{kind.name}' takes no path, got '{spec}': give just '{kind.name}' "
                        "(for images of your own: folder:PATH)")
    if kind.path == "none" or not rest:
        if kind.default is None:
            raise UserError(f"dataset '{kind.name}' needs a path: give {kind.name}:PATH")
        return kind, None
    path = Path(rest).expanduser()
    if not path.exists():
        raise UserError(f"dataset path '{path}' does not exist: check the path in '{spec}'")
    if not (path.is_dir() or path.is_file()):  # a FIFO, device or socket: reading it could block or never end
        raise UserError(f"dataset path '{path}' is not a regular file or a folder: check the path in '{spec}'")
    return kind, path


def load_dataset(spec: str, use_cache: bool = True, size: int | None = None) -> RawDataset:
    """Read a dataset by spec, decoding it only the first time. `size` (data.image_size): each image
    fitted to size x size as it is decoded, cached apart from the dataset's own size."""
    kind, path = parse_spec(spec)
    if path is None:
        path = kind.default(cache_dir())
    resize = size is not None and kind.resizes  # a reader of arrays serves its own size, checked below
    key = _content_key(kind.cache_as, path)
    entry = cache_dir() / "datasets" / (key + (f"-fit{size}" if resize else ""))
    if resize and use_cache and (ds := _load(entry.with_name(key))) is not None and ds.image_shape[1:] == (size, size):
        return ds  # decoded before at its own size, which is the size asked: fitting would change no pixel
    if use_cache and (ds := _load(entry)) is not None:
        return _check_size(check_image_shape(ds, spec), spec, size)
    if use_cache and (entry / "meta.json").exists():  # a damaged entry: decode again, into its place
        shutil.rmtree(entry, ignore_errors=True)
    staging = _Staging(entry if use_cache else None)
    try:
        read = kind.read(path, staging.array, size=size) if resize else kind.read(path, staging.array)
        return _check_size(check_image_shape(staging.commit(read, spec), spec), spec, size)
    finally:
        staging.discard()


def _check_size(ds: RawDataset, spec: str, size: int | None) -> RawDataset:
    if size is not None and ds.image_shape[1] != size:
        raise UserError(f"data.image_size {size}: dataset '{spec}' holds {ds.image_shape[1]}x{ds.image_shape[1]} "
                        f"arrays, not image files to fit: leave data.image_size out (or set it to {ds.image_shape[1]})")
    return ds


def read_rows(x: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray:
    """`x[idx]` (every row when idx is None) in memory. From a cached (memory-mapped) array the rows are
    read with plain file reads: indexing the map would also make every page it touches resident in this
    process, so its RSS would count the data twice (the map and the copy), although the map's half is only
    page cache."""
    idx = np.arange(len(x)) if idx is None else idx
    offset = _npy_data_offset(x)
    if offset is None:
        return x[idx]
    out = np.empty((len(idx), *x.shape[1:]), x.dtype)
    if not len(idx):
        return out
    row = out[:1].nbytes
    ends = np.flatnonzero(np.diff(idx) != 1) + 1  # read runs of consecutive rows at once
    with open(x.filename, "rb", buffering=0) as fh:
        for a, b in zip(np.r_[0, ends], np.r_[ends, len(idx)]):
            fh.seek(offset + int(idx[a]) * row)
            view = memoryview(out[a:b]).cast("B")
            if fh.readinto(view) != len(view):
                raise UserError(f"cache file '{x.filename}' is truncated: delete it and run again")
    return out


def _npy_data_offset(x: np.ndarray) -> int | None:
    """Where the data of a memory-mapped .npy start, if `x` is the whole of it (not a slice)."""
    if not isinstance(x, np.memmap) or not x.filename or not x.flags.c_contiguous:
        return None
    fmt = np.lib.format
    with open(x.filename, "rb") as fh:
        version = fmt.read_magic(fh)
        read = {1: fmt.read_array_header_1_0, 2: fmt.read_array_header_2_0}.get(version[0])
        if read is None or read(fh) != (x.shape, False, x.dtype):
            return None
        return fh.tell()
