"""Damaged and hostile data: every case ends in a one-line UserError (what is wrong, what to do) or a
documented conversion, never a traceback. Cases already covered in test_data.py / test_cli.py
(a `..` tar member, one class, images of mixed sizes, a non-decodable .jpg, a hostile pickle, a failed
download) are not repeated here."""
import io
import os
import stat
import struct
import tarfile
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifarlab.data.sources import load_dataset
from cifarlab.errors import UserError
from conftest import png_bytes, tar_folder, write_cifar10_archive, write_image_folder, write_tinyimagenet


def refused(spec: str, match: str) -> str:
    with pytest.raises(UserError, match=match) as info:
        load_dataset(spec)
    assert "\n" not in str(info.value)
    return str(info.value)


def zip_folder(src: Path, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for f in sorted(src.rglob("*")):
            zf.write(f, f.relative_to(src.parent).as_posix())
    return dest


def plain_tar(src: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w") as tf:
        tf.add(src, arcname="train")
    return dest


ARCHIVES = {  # name -> (builder, spec prefix)
    "folder.tar.gz": (lambda d: tar_folder(write_image_folder(d / "f", per_class=4), d / "f.tar.gz"), "folder"),
    "folder.zip": (lambda d: zip_folder(write_image_folder(d / "f", per_class=4), d / "f.zip"), "folder"),
    "folder.tar": (lambda d: plain_tar(write_image_folder(d / "f", per_class=4), d / "f.tar"), "folder"),
    "cifar-10-binary.tar.gz": (lambda d: write_cifar10_archive(d / "cifar-10-binary.tar.gz", "binary"), "cifar10"),
    "cifar-10-python.tar.gz": (lambda d: write_cifar10_archive(d / "cifar-10-python.tar.gz", "python"), "cifar10"),
    "tiny-imagenet-200.zip": (lambda d: write_tinyimagenet(d, as_zip=True), "tinyimagenet"),
}


@pytest.mark.parametrize("cut", ["half", "tail"])
@pytest.mark.parametrize("name", ARCHIVES)
def test_truncated_archives(tmp_path, name, cut):
    build, kind = ARCHIVES[name]
    whole = build(tmp_path)
    assert len(load_dataset(f"{kind}:{whole}").train_y) > 0  # intact, it loads
    data = whole.read_bytes()
    # "tail" loses the last bytes: a gzip/zip trailer, or for a plain tar its end-of-archive blocks
    keep = len(data) // 2 if cut == "half" else (len(data) - 10 if name != "folder.tar" else len(data) - 10240)
    damaged = tmp_path / f"cut-{name}"
    damaged.write_bytes(data[:keep])
    refused(f"{kind}:{damaged}", "truncated or corrupt.*download or copy it again")


@pytest.mark.parametrize("where", ["boundary", "header"])
def test_plain_tar_cut_between_members_is_not_read_as_a_shorter_dataset(tmp_path, where):
    whole = plain_tar(write_image_folder(tmp_path / "f", per_class=4), tmp_path / "f.tar")
    with tarfile.open(whole) as tf:
        m = [m for m in tf.getmembers() if m.isfile()][5]
    end = m.offset_data + -(-m.size // 512) * 512  # where the next member's header starts
    cut = tmp_path / "cut.tar"
    cut.write_bytes(whole.read_bytes()[: end if where == "boundary" else end + 300])
    refused(f"folder:{cut}", "truncated or corrupt")


def test_cifar10_download_with_wrong_bytes_is_not_kept(tmp_path, monkeypatch):
    import pooch

    def corrupt_download(self, url, output_file, pooch_, check_only=False):
        Path(output_file).write_bytes(b"\x1f\x8b\x08\x00 not the archive")
    monkeypatch.setattr(pooch.HTTPDownloader, "__call__", corrupt_download)
    monkeypatch.setenv("CIFARLAB_CACHE", str(tmp_path / "cache"))
    refused("cifar10", "cifar-10-binary.tar.gz is corrupt .* was not kept: run again .* --data cifar10:PATH")
    left = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert left == []  # neither the corrupt archive nor pooch's temporary file stays in the cache


def test_cifar10_python_labels_out_of_range(tmp_path):
    import pickle
    arc = write_cifar10_archive(tmp_path / "c.tar.gz", "python", per_batch=4)
    with tarfile.open(arc) as tf:
        members = {m.name: tf.extractfile(m).read() for m in tf if m.isfile()}
    d = pickle.loads(members["cifar-10-batches-py/data_batch_2"])
    d[b"labels"][1] = 12
    members["cifar-10-batches-py/data_batch_2"] = pickle.dumps(d, protocol=2)
    with tarfile.open(tmp_path / "bad.tar.gz", "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    refused(f"cifar10:{tmp_path / 'bad.tar.gz'}", "data_batch_2' has label 12: the archive is damaged")


def test_files_that_are_not_images_are_skipped_with_a_warning(tmp_path):
    root = write_image_folder(tmp_path / "f", per_class=3)
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "labels.csv").write_text("a,b\n")
    (root / "dog" / ".DS_Store").write_bytes(b"\0\0")  # hidden: skipped without a word
    with pytest.warns(UserWarning, match=r"2 file\(s\) skipped as not images or as links, e.g. 'cat/notes.txt'"):
        ds = load_dataset(f"folder:{root}")
    assert ds.train_x.shape == (9, 3, 32, 32)
    root2 = write_image_folder(tmp_path / "g", per_class=3)
    (root2 / "dog" / ".DS_Store").write_bytes(b"\0\0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(load_dataset(f"folder:{root2}").train_y) == 9


def test_image_that_does_not_decode_is_refused_by_name(tmp_path):
    root = write_image_folder(tmp_path / "f", per_class=3)
    good = (root / "cat" / "0000.png").read_bytes()
    (root / "dog" / "cut.png").write_bytes(good[: len(good) // 2])  # opens (the header is whole), fails to load
    refused(f"folder:{root}", r"dog/cut.png' is not a readable image .*: remove or replace it")


def test_unreadable_file_is_refused_by_name(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path / "f", per_class=2)
    (root / "cat" / "locked.png").write_bytes(png_bytes(np.zeros((32, 32, 3), np.uint8)))
    real = os.open

    def os_open(path, *args, **kwargs):  # files are opened non-blocking with os.open (a FIFO must not hang)
        if str(path).endswith("locked.png"):
            raise PermissionError(13, "Permission denied")
        return real(path, *args, **kwargs)
    monkeypatch.setattr(os, "open", os_open)
    refused(f"folder:{root}", "cannot read '.*locked.png' \\(Permission denied\\): check the file and its permissions")


@pytest.mark.parametrize("content", [None, "readme.txt"])
@pytest.mark.parametrize("packed", [False, True])
def test_empty_class_folder_is_refused(tmp_path, content, packed):
    root = write_image_folder(tmp_path / "f", per_class=2)
    (root / "owl").mkdir()
    if content:
        (root / "owl" / content).write_text("no images here")
    (root / ".git").mkdir()  # hidden folders are not classes
    spec = f"folder:{tar_folder(root, tmp_path / 'f.tar.gz') if packed else root}"
    refused(spec, "class folder '(train/)?owl' with no images: add images to it or remove it")


def png16(arr: np.ndarray) -> bytes:
    """A 16-bit PNG (grey if 2-D, RGB if 3-D), which PIL can read but not write for RGB."""
    h, w = arr.shape[:2]
    colour = 0 if arr.ndim == 2 else 2
    raw = b"".join(b"\0" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def encoded(mode: str) -> bytes:
    if mode == "P":
        im = Image.new("P", (8, 8), 0)
        im.putpalette([200, 50, 25] * 256)
        return _save(im)
    if mode == "P+transparency":
        im = Image.new("P", (8, 8), 0)
        im.putpalette([200, 50, 25] * 256)
        im.info["transparency"] = 0
        return _save(im, transparency=0)
    if mode == "I;16":
        return png16(np.array([[65535] * 8, [32896] * 8, [0] * 8] + [[0] * 8] * 5, np.uint16))
    if mode == "RGB48":
        return png16(np.broadcast_to(np.array([0x8000, 0xFFFF, 0], np.uint16), (8, 8, 3)))
    fill = {"L": 100, "LA": (60, 128), "1": 1, "RGBA": (10, 20, 30, 0), "CMYK": (0, 0, 0, 0)}[mode]
    return _save(Image.new(mode, (8, 8), fill), fmt="JPEG" if mode == "CMYK" else "PNG")


def _save(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


MODES = {  # mode -> expected RGB of pixel (0, 0) (and row 1 for 16-bit: 32896 / 257 = 128)
    "L": (100, 100, 100), "LA": (60, 60, 60), "1": (255, 255, 255), "RGBA": (10, 20, 30), "P": (200, 50, 25),
    "P+transparency": (200, 50, 25), "I;16": (255, 255, 255), "RGB48": (128, 255, 0), "CMYK": (255, 255, 255),
}


def test_image_modes_are_converted_to_8bit_rgb(tmp_path):
    root = tmp_path / "m"
    for k, mode in enumerate(MODES):
        (root / f"class{k % 2}").mkdir(parents=True, exist_ok=True)
        (root / f"class{k % 2}" / f"{k:02d}.png").write_bytes(encoded(mode))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # conversions are silent (PIL's palette-transparency note included)
        ds = load_dataset(f"folder:{root}")
    order = sorted(range(len(MODES)), key=lambda k: (f"class{k % 2}", k))
    for row, k in enumerate(order):
        mode = list(MODES)[k]
        assert tuple(ds.train_x[row, :, 0, 0]) == pytest.approx(MODES[mode], abs=2 if mode == "CMYK" else 0), mode
        if mode == "I;16":  # scaled, not clipped: PIL's own convert would make every non-zero pixel white
            assert tuple(ds.train_x[row, :, 1, 0]) == (128, 128, 128) and ds.train_x[row, 0, 2, 0] == 0


def _tar_with(dest: Path, extra: list[tarfile.TarInfo]) -> Path:
    data = png_bytes(np.zeros((8, 8, 3), np.uint8))
    with tarfile.open(dest, "w:gz") as tf:
        for name in ("a/1.png", "a/2.png", "b/1.png"):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for info in extra:
            tf.addfile(info, io.BytesIO(b"\0" * info.size) if info.size else None)
    return dest


def _link(name: str, target: str, hard: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = (tarfile.LNKTYPE if hard else tarfile.SYMTYPE), target
    return info


def _file(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = 16
    return info


def _zip_with(dest: Path, name: str, symlink_to: str | None = None) -> Path:
    data = png_bytes(np.zeros((8, 8, 3), np.uint8))
    with zipfile.ZipFile(dest, "w") as zf:
        for ok in ("a/1.png", "b/1.png"):
            zf.writestr(ok, data)
        info = zipfile.ZipInfo(name)
        if symlink_to is not None:
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            info.create_system = 3  # unix
        zf.writestr(info, symlink_to if symlink_to is not None else data)
    return dest


@pytest.mark.parametrize("case,match", [
    ("tar absolute path", "unsafe path '/abs/3.png'"),
    ("tar symlink out", "link 'b/2.png' pointing outside it \\('../../etc/passwd'\\)"),
    ("tar absolute symlink", "link 'b/2.png' pointing outside it \\('/etc/passwd'\\)"),
    ("tar hardlink out", "link 'b/2.png' pointing outside it \\('../outside.png'\\)"),
    ("zip dotdot", "unsafe path '../escape/2.png'"),
    ("zip absolute path", "unsafe path '/abs/2.png'"),
    ("zip symlink out", "link 'b/2.png' pointing outside it \\('../../etc/passwd'\\)"),
])
def test_unsafe_archive_members_are_refused(tmp_path, case, match):
    arc = {
        "tar absolute path": lambda: _tar_with(tmp_path / "x.tar.gz", [_file("/abs/3.png")]),
        "tar symlink out": lambda: _tar_with(tmp_path / "x.tar.gz", [_link("b/2.png", "../../etc/passwd")]),
        "tar absolute symlink": lambda: _tar_with(tmp_path / "x.tar.gz", [_link("b/2.png", "/etc/passwd")]),
        "tar hardlink out": lambda: _tar_with(tmp_path / "x.tar.gz", [_link("b/2.png", "../outside.png", hard=True)]),
        "zip dotdot": lambda: _zip_with(tmp_path / "x.zip", "../escape/2.png"),
        "zip absolute path": lambda: _zip_with(tmp_path / "x.zip", "/abs/2.png"),
        "zip symlink out": lambda: _zip_with(tmp_path / "x.zip", "b/2.png", symlink_to="../../etc/passwd"),
    }[case]()
    msg = refused(f"folder:{arc}", match)
    assert "refusing to read it" in msg


def test_links_inside_an_archive_or_folder_are_skipped_with_a_warning(tmp_path):
    arc = _tar_with(tmp_path / "x.tar.gz", [_link("b/2.png", "1.png"), _link("b/3.png", "a/1.png", hard=True)])
    with pytest.warns(UserWarning, match="2 file\\(s\\) skipped as not images or as links"):
        assert len(load_dataset(f"folder:{arc}").train_y) == 3
    root = write_image_folder(tmp_path / "f", per_class=2)
    (root / "dog" / "alias.png").symlink_to(root / "cat" / "0000.png")
    with pytest.warns(UserWarning, match="1 file\\(s\\) skipped .*'dog/alias.png'"):
        assert len(load_dataset(f"folder:{root}").train_y) == 6


def test_encrypted_zip_is_refused(tmp_path):
    arc = _zip_with(tmp_path / "x.zip", "b/2.png")
    raw = bytearray(arc.read_bytes())
    central = raw.find(b"PK\x01\x02")
    raw[central + 8] |= 0x1  # the "encrypted" flag of the first member, as a password-protected zip has
    arc.write_bytes(bytes(raw))
    refused(f"folder:{arc}", "cannot be read .*password.*: repack it as a plain .zip or .tar.gz")


@pytest.mark.parametrize("packed", ["folder", "tar", "zip"])
def test_a_member_too_large_for_an_image_is_refused_unread(tmp_path, monkeypatch, packed):
    """A member is read whole before decoding: a huge one (e.g. a zip bomb's) is refused by its stated size."""
    from cifarlab.data import images
    src = write_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=3)
    (src / "b" / "huge.png").write_bytes(b"\0" * 5000)  # 5 kB against a limit lowered to 4 kB below
    monkeypatch.setattr(images, "MAX_IMAGE_BYTES", 4000)
    spec = {"folder": src, "tar": tar_folder(src, tmp_path / "i.tar.gz"), "zip": zip_folder(src, tmp_path / "i.zip")}
    refused(f"folder:{spec[packed]}", "huge.png' is 0 MiB, too large for one image of a dataset")


@pytest.mark.parametrize("damage", [
    lambda e: np.save(e / "train_y.npy", np.full(len(np.load(e / "train_y.npy")), 99)),
    lambda e: np.save(e / "train_y.npy", -np.load(e / "train_y.npy") - 1),
    lambda e: np.save(e / "train_y.npy", np.load(e / "train_y.npy").astype(np.float32)),
    lambda e: np.save(e / "train_y.npy", np.load(e / "train_y.npy")[:-5]),
    lambda e: np.save(e / "train_x.npy", np.load(e / "train_x.npy")[:, 0]),
    lambda e: np.save(e / "train_x.npy", np.load(e / "train_x.npy").astype(np.float32)),
    lambda e: np.save(e / "test_y.npy", np.zeros(3, np.int64)),
    lambda e: (e / "meta.json").write_text('{"classes": "airplane", "source": "x"}'),
    lambda e: (e / "meta.json").write_text('{"classes": [], "source": "x"}'),
])
def test_a_damaged_cache_entry_is_decoded_again(tmp_path, monkeypatch, damage):
    """A cache entry changed on disk after its decode (labels, shapes, dtypes, class list) is not trained on:
    the images are decoded again and the entry is replaced, so the next load is whole again."""
    monkeypatch.setenv("CIFARLAB_CACHE", str(tmp_path / "cache"))
    good = load_dataset("sample")
    expected = (np.array(good.train_x[:50]), np.array(good.train_y), list(good.classes))
    entry = next((tmp_path / "cache" / "datasets").iterdir())
    del good
    damage(entry)
    for _ in range(2):  # the repair, then a load from the repaired entry
        again = load_dataset("sample")
        assert (np.array_equal(again.train_x[:50], expected[0]) and np.array_equal(again.train_y, expected[1])
                and again.classes == expected[2])
    assert isinstance(again.train_x, np.memmap)  # from the cache again
