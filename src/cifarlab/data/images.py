"""Decode image files (from a folder or a tar archive) into one uint8 array, safely.

Nothing is ever extracted to disk: tar members are read in memory, so a member named `../x` or
`/etc/x` cannot write anywhere; such names are refused all the same, since they only appear in
hostile or broken archives.
"""
from __future__ import annotations

import io
import tarfile
import zipfile
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from cifarlab.errors import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}


def is_image_name(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES and not PurePosixPath(name).name.startswith(".")


def safe_member_name(name: str, archive: Path) -> PurePosixPath:
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts:
        raise UserError(f"archive '{archive}' has a member with an unsafe path '{name}': refusing to read it")
    return p


def iter_archive(path: Path) -> Iterator[tuple[PurePosixPath, bytes]]:
    """(member path, bytes) for every regular file of a .tar[.gz|.bz2|.xz] or .zip archive."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    if not info.is_dir():
                        yield safe_member_name(info.filename, path), zf.read(info)
            return
        with tarfile.open(path, "r:*") as tf:
            for m in tf:
                if m.isfile():
                    name = safe_member_name(m.name, path)
                    yield name, tf.extractfile(m).read()
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as err:
        raise UserError(f"archive '{path}' is truncated or corrupt ({err}): download or copy it again") from None


def decode(data: bytes, where: str, size: tuple[int, int] | None = None) -> np.ndarray:
    """HxWx3 uint8 from encoded bytes; grayscale/RGBA/palette images are converted to RGB."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im = im.convert("RGB")
            if size is not None and im.size != size:
                im = im.resize(size, Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UserError(f"'{where}' is not a readable image ({err}): remove or replace it") from None


def stack_same_size(images: list[np.ndarray], names: list[str], source: str) -> np.ndarray:
    """N x 3 x H x W uint8; refuses a mix of sizes (naming one image of each) rather than guess."""
    sizes = Counter(im.shape[:2] for im in images)
    if len(sizes) > 1:
        (common, _), (other, _) = sizes.most_common(2)
        odd = next(n for n, im in zip(names, images) if im.shape[:2] == other)
        raise UserError(f"images in '{source}' differ in size ({common[1]}x{common[0]} and {other[1]}x{other[0]}, "
                        f"e.g. '{odd}'): resize them to one size first")
    return np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2))


def labelled_folder(entries: Iterable[tuple[PurePosixPath, bytes]], source: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """An image folder's `<class>/<image>` entries -> (x uint8 NCHW, y int64, sorted class names).

    The class is the parent folder of each image; a single common top folder (e.g. `train/`)
    is ignored, as in the `train/airplane/0000.jpg` layout of an archive.
    """
    items = sorted((p, b) for p, b in entries if is_image_name(p.name))
    if not items:
        raise UserError(f"'{source}' holds no image files: expected <class>/<image>.jpg|png")
    parents = {p.parent for p, _ in items}
    classes = sorted({par.name for par in parents})
    if any(par == PurePosixPath(".") or par.name == "" for par in parents):
        raise UserError(f"'{source}' has images outside class folders: put each image in a <class>/ folder")
    if len(classes) < 2:
        raise UserError(f"'{source}' has only one class folder ('{classes[0]}'): a classifier needs at least two")
    index = {c: i for i, c in enumerate(classes)}
    images = [decode(b, f"{source}:{p}") for p, b in items]
    y = np.array([index[p.parent.name] for p, _ in items], dtype=np.int64)
    return stack_same_size(images, [str(p) for p, _ in items], source), y, classes


def iter_folder(root: Path) -> Iterator[tuple[PurePosixPath, bytes]]:
    for f in sorted(root.rglob("*")):
        if f.is_file() and not f.is_symlink():  # a link could point outside the folder
            yield PurePosixPath(f.relative_to(root).as_posix()), f.read_bytes()
