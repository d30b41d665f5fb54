"""Datasets: official layouts built by the tests, image folders, the cache, splits and augmentation."""
import io
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch

from cifarlab.data.augment import BatchTransform
from cifarlab.data.loader import PreparedData, normalisation, stratified_split
from cifarlab.data.sources import load_dataset, sample_path
from cifarlab.errors import UserError
from cifarlab.schema import AugmentConfig, DataConfig
from conftest import png_bytes, tar_folder, write_cifar10_archive, write_image_folder, write_tinyimagenet


@pytest.mark.parametrize("fmt", ["binary", "python"])
def test_cifar10_official_formats(tmp_path, fmt):
    arc = write_cifar10_archive(tmp_path / f"cifar-10-{fmt}.tar.gz", fmt, per_batch=20)
    ds = load_dataset(f"cifar10:{arc}")
    assert ds.train_x.shape == (100, 3, 32, 32) and ds.test_x.shape == (20, 3, 32, 32)
    assert ds.classes[0] == "airplane" and ds.classes[9] == "truck"
    # records are read back exactly as written (label byte then R, G, B planes)
    from conftest import cifar_arrays
    x1, y1 = cifar_arrays(20, 0)
    np.testing.assert_array_equal(ds.train_x[:20], x1)
    np.testing.assert_array_equal(ds.train_y[:20], y1)


def test_cifar10_extracted_folder(tmp_path):
    arc = write_cifar10_archive(tmp_path / "c.tar.gz", "binary")
    with tarfile.open(arc) as tf:
        tf.extractall(tmp_path / "x", filter="data")
    ds = load_dataset(f"cifar10:{tmp_path / 'x' / 'cifar-10-batches-bin'}")
    assert len(ds.train_y) == 100


def test_python_format_pickle_payload_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    arc = write_cifar10_archive(tmp_path / "c.tar.gz", "python")
    evil = pickle.dumps({b"data": Evil(), b"labels": [0]}, protocol=2)
    with tarfile.open(arc) as tf:
        members = {m.name: tf.extractfile(m).read() for m in tf if m.isfile()}
    members["cifar-10-batches-py/data_batch_1"] = evil
    with tarfile.open(tmp_path / "evil.tar.gz", "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    with pytest.raises(UserError, match="not allowed"):
        load_dataset(f"cifar10:{tmp_path / 'evil.tar.gz'}")
    assert not marker.exists()


def test_truncated_archive_and_bad_records(tmp_path):
    arc = write_cifar10_archive(tmp_path / "c.tar.gz")
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(arc.read_bytes()[: len(arc.read_bytes()) // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_dataset(f"cifar10:{cut}")
    with pytest.raises(UserError, match="not a CIFAR-10 archive"):
        load_dataset(f"cifar10:{tar_folder(write_image_folder(tmp_path / 'f'), tmp_path / 'f.tar.gz')}")


def test_cifar10_download_failure_says_how_to_point_at_a_copy(tmp_path, monkeypatch):
    import pooch

    def offline(*a, **k):
        raise ConnectionError("Name or service not known")
    monkeypatch.setattr(pooch, "retrieve", offline)
    with pytest.raises(UserError, match="cifar10:PATH"):
        load_dataset("cifar10")


def test_unsafe_tar_member_is_refused(tmp_path):
    dest = tmp_path / "bad.tar.gz"
    with tarfile.open(dest, "w:gz") as tf:
        data = png_bytes(np.zeros((8, 8, 3), np.uint8))
        for name in ("a/1.png", "../escape/2.png"):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    with pytest.raises(UserError, match="unsafe path"):
        load_dataset(f"folder:{dest}")


@pytest.mark.parametrize("as_zip", [False, True])
def test_tinyimagenet_layout(tmp_path, as_zip):
    path = write_tinyimagenet(tmp_path, as_zip=as_zip)
    ds = load_dataset(f"tinyimagenet:{path}")
    assert ds.train_x.shape == (18, 3, 64, 64) and ds.test_x.shape == (9, 3, 64, 64)
    assert ds.classes == ["class 0", "class 1", "class 2"]
    assert sorted(np.bincount(ds.test_y).tolist()) == [3, 3, 3]


def test_image_folder_dir_and_tarball_agree(tmp_path, image_folder):
    a = load_dataset(f"folder:{image_folder}")
    b = load_dataset(f"folder:{tar_folder(image_folder, tmp_path / 'imgs.tar.gz')}")
    assert a.classes == b.classes == ["cat", "dog", "frog"]
    np.testing.assert_array_equal(a.train_x, b.train_x)
    assert a.test_x is None


def test_modes_converted_sizes_refused(tmp_path):
    root = write_image_folder(tmp_path / "m", per_class=2)
    (root / "cat" / "gray.png").write_bytes(png_bytes(np.zeros((32, 32, 3), np.uint8), mode="L"))
    (root / "dog" / "rgba.png").write_bytes(png_bytes(np.zeros((32, 32, 3), np.uint8), mode="RGBA"))
    assert load_dataset(f"folder:{root}").train_x.shape == (8, 3, 32, 32)
    (root / "dog" / "big.png").write_bytes(png_bytes(np.zeros((40, 48, 3), np.uint8)))
    with pytest.raises(UserError, match="differ in size .*big.png"):
        load_dataset(f"folder:{root}")


@pytest.mark.parametrize("case,match", [("one_class", "only one class"), ("not_image", "not a readable image"),
                                        ("empty", "no image files"), ("loose", "outside class folders")])
def test_bad_folders(tmp_path, case, match):
    root = tmp_path / case
    if case == "one_class":
        write_image_folder(root, classes=("cat",), per_class=2)
    elif case == "not_image":
        write_image_folder(root, per_class=2)
        (root / "cat" / "broken.jpg").write_bytes(b"this is not a jpeg")
    elif case == "empty":
        (root / "cat").mkdir(parents=True)
    else:
        root.mkdir()
        (root / "x.png").write_bytes(png_bytes(np.zeros((8, 8, 3), np.uint8)))
    with pytest.raises(UserError, match=match):
        load_dataset(f"folder:{root}")


def test_spec_errors(tmp_path):
    for spec, match in [("imagenet", "unknown dataset"), ("folder:", "needs a path"),
                        (f"folder:{tmp_path}/missing", "does not exist"), ("tinyimagenet", "needs a path")]:
        with pytest.raises(UserError, match=match):
            load_dataset(spec)


def test_cache_is_keyed_by_content_and_memory_mapped(tmp_path):
    root = write_image_folder(tmp_path / "c", per_class=3)
    first = load_dataset(f"folder:{root}")
    again = load_dataset(f"folder:{root}")
    assert isinstance(again.train_x, np.memmap)
    np.testing.assert_array_equal(first.train_x, again.train_x)
    (root / "cat" / "0000.png").write_bytes(png_bytes(np.full((32, 32, 3), 7, np.uint8)))
    changed = load_dataset(f"folder:{root}")
    assert changed.train_x[0].max() == 7  # an edited folder is decoded again, not served stale


def test_bundled_sample():
    assert sample_path().is_file() and sample_path().stat().st_size < 3_000_000
    ds = load_dataset("sample")
    assert ds.train_x.shape == (4000, 3, 32, 32) and np.bincount(ds.train_y).tolist() == [400] * 10


def test_stratified_split_is_reproducible_and_balanced():
    y = np.repeat(np.arange(10), [100] * 5 + [50] * 5)
    tr, va = stratified_split(y, 0.2, seed=3)
    tr2, va2 = stratified_split(y, 0.2, seed=3)
    assert np.array_equal(va, va2) and not set(tr) & set(va) and len(tr) + len(va) == len(y)
    assert np.bincount(y[va]).tolist() == [20] * 5 + [10] * 5
    assert len(stratified_split(y, 150, seed=0)[1]) == 150
    assert not np.array_equal(va, stratified_split(y, 0.2, seed=4)[1])
    for bad in (0.0, 750, 5000):
        with pytest.raises(UserError, match="val_size"):
            stratified_split(y, bad, 0)


def test_normalisation_modes():
    x = np.stack([np.full((3, 4, 4), v, np.uint8) for v in (0, 255)])
    assert normalisation(DataConfig(normalize="none"), x) == ([0.0] * 3, [1.0] * 3)
    assert normalisation(DataConfig(normalize="half"), x) == ([0.5] * 3, [0.5] * 3)
    mean, std = normalisation(DataConfig(normalize="dataset"), x)
    assert mean == pytest.approx([0.5] * 3) and std == pytest.approx([0.5] * 3)
    assert normalisation(DataConfig(normalize=[[0.45] * 3, [0.475] * 3]), x) == ([0.45] * 3, [0.475] * 3)


def test_augmentations_keep_shape_and_follow_the_seed():
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    cfg = AugmentConfig(crop_padding=4, flip=True, autoaugment=True, rotation=10, cutout=8,
                        color_jitter={"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.05})
    t = BatchTransform(torch.zeros(3), torch.ones(3), cfg, 32)
    torch.manual_seed(0)
    a = t(x, train=True)
    torch.manual_seed(0)
    b = t(x, train=True)
    assert a.shape == (64, 3, 32, 32) and torch.equal(a, b)
    assert not torch.equal(a, x.float() / 255)
    assert torch.equal(t(x, train=False), x.float() / 255)  # evaluation is never augmented


def test_flip_rate_and_crop_offsets():
    # a horizontal ramp reveals both the flip (direction) and the crop (shift) of every image
    ramp = torch.arange(32, dtype=torch.uint8).repeat(3, 32, 1) * 4 + 1
    x = ramp.expand(4000, 3, 32, 32).contiguous()
    t = BatchTransform(torch.zeros(3), torch.ones(3), AugmentConfig(crop_padding=2, flip=True), 32)
    torch.manual_seed(0)
    out = (t(x, train=True) * 255).round()
    row = out[:, 0, 16]  # middle row: a zero-padded column shows up as 0
    flipped = row[:, 20] < row[:, 10]
    assert abs(flipped.float().mean().item() - 0.5) < 0.03
    centre = torch.where(flipped, 31 - row[:, 16].div(4).floor(), row[:, 16].div(4).floor())
    offsets = (centre - 16).long() + 2  # 0..4 for padding 2
    counts = torch.bincount(offsets, minlength=5).float() / len(offsets)
    assert counts.min() > 0.16 and counts.max() < 0.24  # uniform over the 5 offsets


def test_split_rows_are_the_rows_a_run_trains_and_selects_on():
    """eval --split val/train and benchmarks/airbench_data.py read split_rows; the trainer's PreparedData must agree."""
    from cifarlab.data.loader import split_rows
    from cifarlab.data.sources import load_dataset
    cfg = DataConfig(dataset="sample", train_limit=150, val_size=0.2, split_seed=3)
    data, raw = PreparedData(cfg, torch.device("cpu")), load_dataset("sample")
    for which, split in (("train", data.train), ("val", data.val)):
        x, y = split_rows(raw, cfg, which)
        assert torch.equal(torch.from_numpy(x), split.x) and torch.equal(torch.from_numpy(y), split.y)
    assert len(data.train) == 150 and x.flags.writeable


def test_concat_original_doubles_the_epoch():
    cfg = DataConfig(dataset="sample", train_limit=200, val_size=100, augment=AugmentConfig(flip=True, concat_original=True))
    data = PreparedData(cfg, torch.device("cpu"))
    seen = sum(len(yb) for _, yb in data.train_batches(64, torch.Generator().manual_seed(0)))
    assert seen == 2 * len(data.train)
