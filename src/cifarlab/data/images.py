"""Decode image files (from a folder or a tar/zip archive) into one uint8 array, safely and once.

Nothing is ever extracted to disk: members are read in memory, so a member named `../x` or
`/etc/x` cannot write anywhere; such names, and links pointing out of the archive, are refused
all the same, since they only appear in hostile or broken archives.

A source is read in two passes: the first lists its names (to sort them, find the classes and
count the images), the second decodes each image straight into its row of an array allocated at
the first image's size. The caller's `alloc` may hand out a memory-mapped cache file, so the
decoded data exist once and the kernel can write them back to disk when memory runs short.
"""
from __future__ import annotations

import io
import lzma
import os
import posixpath
import stat
import tarfile
import warnings
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cifarlab.data.registry import register_dataset
from cifarlab.data.types import RawDataset
from cifarlab.errors import CifarlabWarning, UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
Alloc = Callable[[str, tuple], np.ndarray]  # (array name, shape) -> uint8 array to fill


MAX_IMAGE_BYTES = 64 * 2**20  # far above any dataset image; below what a member could cost in memory


def in_memory(name: str, shape: tuple) -> np.ndarray:
    return np.empty(shape, np.uint8)


def is_image_name(name: str) -> bool:
    base = posixpath.basename(name)
    return not base.startswith(".") and posixpath.splitext(base)[1].lower() in IMAGE_SUFFIXES


def safe_member_name(name: str, archive: Path) -> PurePosixPath:
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts:
        raise UserError(f"archive '{archive}' has a member with an unsafe path '{name}': refusing to read it")
    return p


def _check_link(name: PurePosixPath, target: str, hard: bool, archive: Path) -> None:
    """A link may only point inside the archive; hard link targets are archive paths, symlinks relative."""
    resolved = posixpath.normpath(target if hard else posixpath.join(str(name.parent), target))
    if posixpath.isabs(target) or resolved == ".." or resolved.startswith("../"):
        raise UserError(f"archive '{archive}' has a link '{name}' pointing outside it ('{target}'): refusing to read it")


def _check_tar_end(tf: tarfile.TarFile, path: Path, end: int) -> None:
    """tarfile stops at the first end-of-archive block, so a cut after it would go unseen: the rest is
    read for gzip, bzip2 and xz to check their trailers, and a plain .tar must hold the two zero blocks
    that end every archive (else it was cut at a member boundary, where tarfile stops quietly)."""
    while tf.fileobj.read(1 << 20):
        pass
    with open(path, "rb") as fh:
        compressed = fh.read(6).startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00"))
    if not compressed and path.stat().st_size < end + 1024:
        raise tarfile.ReadError("the end-of-archive blocks are missing")


@contextmanager
def _archive_errors(path: Path) -> Iterator[None]:
    """The many ways a damaged archive fails (EOFError from gzip, BadZipFile, zlib.error ...) -> one UserError."""
    try:
        yield
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, ValueError, zlib.error, lzma.LZMAError) as err:
        raise UserError(f"archive '{path}' is truncated or corrupt ({_first_line(err)}): download or copy it again") from None
    except (RuntimeError, NotImplementedError) as err:  # zipfile: encrypted members, unsupported compression
        raise UserError(f"archive '{path}' cannot be read ({_first_line(err)}): repack it as a plain .zip or .tar.gz") from None


def _first_line(err: Exception) -> str:
    """tarfile.open's error lists every method it tried, one per line; the message must stay one line."""
    return str(err).splitlines()[0].rstrip(":") if str(err).strip() else type(err).__name__


@dataclass
class Listing:
    """The members of a folder or archive, named but not read; `read` then streams the wanted ones."""
    path: Path
    files: list[PurePosixPath] = field(default_factory=list)  # regular files
    dirs: set[PurePosixPath] = field(default_factory=set)  # directories, stated or implied by a file
    links: list[PurePosixPath] = field(default_factory=list)  # never followed
    infos: dict = field(default_factory=dict)  # archive member name -> its TarInfo / ZipInfo

    def _check_size(self, name: PurePosixPath, size: int) -> None:
        # a member is read whole before decoding: a huge one (a zip bomb's) must be refused unread
        if size > MAX_IMAGE_BYTES:
            raise UserError(f"'{self.path}:{name}' is {size / 2**20:.0f} MiB, too large for one image of a dataset "
                            f"(limit {MAX_IMAGE_BYTES // 2**20} MiB): remove it")

    def read(self, wanted: Iterable[PurePosixPath]) -> Iterator[tuple[PurePosixPath, bytes]]:
        """(name, bytes) for the wanted regular files, one in memory at a time: in the order given, except
        in a tar, read in stored order with the headers of the first pass (going back means decompressing)."""
        if self.path.is_dir():
            for name in wanted:
                try:
                    data = _read_regular(self.path / name, lambda size, name=name: self._check_size(name, size))
                except OSError as err:
                    raise UserError(f"cannot read '{self.path / name}' ({err.strerror or err}): "
                                    "check the file and its permissions") from None
                yield name, data
            return
        with _archive_errors(self.path):
            if zipfile.is_zipfile(self.path):
                with zipfile.ZipFile(self.path) as zf:
                    for name in wanted:  # zipfile reads no more than the header's size, so checking it is enough
                        self._check_size(name, self.infos[name].file_size)
                        yield name, zf.read(self.infos[name])
            else:
                with tarfile.open(self.path, "r:*") as tf:
                    for name in sorted(wanted, key=lambda n: self.infos[n].offset_data):
                        self._check_size(name, self.infos[name].size)
                        yield name, tf.extractfile(self.infos[name]).read()


def _read_regular(path: Path, check_size) -> bytes:
    """A folder's file, read whole (after `check_size(bytes)`), opened non-blocking and checked after opening:
    a FIFO, device or socket swapped in after the listing is refused, never waited on or read without end."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UserError(f"'{path}' is not a regular file (a pipe, device or socket): remove it from the dataset")
        check_size(st.st_size)
        return fh.read()


def list_source(path: Path) -> Listing:
    """Every member of a folder or a .tar[.gz|.bz2|.xz] / .zip archive, without reading any content."""
    out = Listing(path)
    if path.is_dir():
        for f in path.rglob("*"):
            rel = PurePosixPath(f.relative_to(path).as_posix())
            if f.is_symlink():  # a link could point outside the folder; rglob does not follow them either
                out.links.append(rel)
            elif f.is_dir():
                out.dirs.add(rel)
            elif f.is_file():
                out.files.append(rel)
    else:
        with _archive_errors(path):
            if zipfile.is_zipfile(path):
                with zipfile.ZipFile(path) as zf:
                    for info in zf.infolist():
                        name = safe_member_name(info.filename, path)
                        if info.is_dir():
                            out.dirs.add(name)
                        elif stat.S_ISLNK(info.external_attr >> 16):  # a zip symlink stores its target as content
                            _check_link(name, zf.read(info).decode(errors="replace"), False, path)
                            out.links.append(name)
                        else:
                            out.infos[name] = info  # a name stored twice: the later copy wins, as on extraction
            else:
                with tarfile.open(path, "r:*") as tf:
                    end = 0
                    for m in tf:
                        end = m.offset_data + -(-m.size // 512) * 512
                        name = safe_member_name(m.name, path)
                        if m.issym() or m.islnk():
                            _check_link(name, m.linkname, m.islnk(), path)
                            out.links.append(name)
                        elif m.isdir():
                            out.dirs.add(name)
                        elif m.isfile():
                            out.infos[name] = m
                    _check_tar_end(tf, path, end)
            out.files = list(out.infos)
    for parent in {f.parent for f in out.files}:
        out.dirs.update((parent, *parent.parents))
    out.dirs.discard(PurePosixPath("."))
    return out


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        # 16-bit grayscale: PIL's convert clips every value above 255 (a white image); scale instead
        wide = np.clip(np.asarray(im, dtype=np.int64), 0, 65535)
        return Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8)).convert("RGB")
    return im.convert("RGB")  # palette, grayscale, CMYK; RGBA loses its alpha (no compositing)


def decode(data: bytes, where: str, size: int | None = None) -> np.ndarray:
    """HxWx3 uint8 from encoded bytes; grayscale/RGBA/palette/16-bit images are converted to 8-bit RGB.
    `size`: the image fitted to size x size, as timm's and torchvision's eval transforms do (shorter side
    resized to `size`, centre square cropped), so a photo of any shape keeps its proportions."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im = _to_rgb(im)
            if size is not None and im.size != (size, size):
                im = ImageOps.fit(im, (size, size), Image.BILINEAR)  # Pillow's reducing bilinear is antialiased
            return np.asarray(im, dtype=np.uint8)
    except UnidentifiedImageError:  # its own text names a BytesIO object, not the file
        why = "it is empty, 0 bytes" if not data else "in no image format Pillow reads"
        raise UserError(f"'{where}' is not a readable image ({why}): remove or replace it") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise UserError(f"'{where}' is not a readable image ({err}): remove or replace it") from None


def decode_rows(entries: Iterable[tuple[PurePosixPath, bytes]], row_of: dict[PurePosixPath, int],
                alloc: Callable[[tuple], np.ndarray], source: str, size: int | None = None) -> np.ndarray:
    """N x 3 x H x W uint8, each image decoded into its row (fitted to size x size when `size` is given);
    without a size, refuses a mix of sizes rather than guess."""
    out, first = None, None
    for name, data in entries:
        im = decode(data, f"{source}:{name}", size)
        if out is None:
            out, first = alloc((len(row_of), 3, *im.shape[:2])), name
        elif im.shape[:2] != out.shape[2:]:
            raise UserError(f"images in '{source}' differ in size ('{first}' is {out.shape[3]}x{out.shape[2]}, "
                            f"'{name}' is {im.shape[1]}x{im.shape[0]}): set data.image_size (e.g. --set data.image_size="
                            f"{min(out.shape[2], out.shape[3])}) to fit each to one square size as it is read")
        out[row_of[name]] = im.transpose(2, 0, 1)
    return out


def labelled_folder(path: Path, alloc: Alloc = in_memory, size: int | None = None
                    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """An image folder's `<class>/<image>` files -> (x uint8 NCHW, y int64, sorted class names).

    The class is the parent folder of each image; a single common top folder (e.g. `train/`)
    is ignored, as in the `train/airplane/0000.jpg` layout of an archive. Files that are not
    images by name are skipped with a warning (hidden ones such as .DS_Store silently); a file
    named as an image that does not decode is refused, since it means a damaged copy.
    """
    source = str(path)
    listing = list_source(path)
    images = sorted({p for p in listing.files if is_image_name(p.name)})
    if not images:
        raise UserError(f"'{source}' holds no image files: expected <class>/<image>.jpg|png")
    parents = {p.parent for p in images}
    if PurePosixPath(".") in parents:
        raise UserError(f"'{source}' has images outside class folders: put each image in a <class>/ folder")
    classes = sorted({par.name for par in parents})
    # a class folder left empty (or holding no images) is a class the model would silently not know;
    # hidden and __MACOSX-style folders are not classes
    homes = {par.parent for par in parents}
    holding = parents | {a for par in parents for a in par.parents}
    empty = sorted(d for d in listing.dirs if d.parent in homes and d not in holding and not d.name.startswith((".", "__")))
    if empty:
        raise UserError(f"'{source}' has a class folder '{empty[0]}' with no images: add images to it or remove it")
    if len(classes) < 2:
        raise UserError(f"'{source}' has only one class folder ('{classes[0]}'): a classifier needs at least two")
    skipped = sorted([p for p in listing.files if not is_image_name(p.name) and not p.name.startswith(".")] + listing.links)
    if skipped:
        warnings.warn(f"'{source}': {len(skipped)} file(s) skipped as not images or as links, e.g. '{skipped[0]}'",
                      CifarlabWarning, stacklevel=3)
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[p.parent.name] for p in images], dtype=np.int64)
    rows = {p: i for i, p in enumerate(images)}
    x = decode_rows(listing.read(rows), rows, lambda shape: alloc("train_x", shape), source, size)
    return x, y, classes


@register_dataset("folder")
def read_folder(path: Path, alloc: Alloc = in_memory, size: int | None = None) -> RawDataset:
    """An image folder or a .tar[.gz]/.zip of one: <class>/<image> files, the class named by its folder."""
    return RawDataset(*labelled_folder(path, alloc, size))
