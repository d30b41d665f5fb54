"""data.image_size: folders of photos of any size and shape, each fitted to one square size as it is
read (shorter side resized, centre cropped, as timm's and torchvision's eval transforms), cached apart
from the dataset's own size; and the same fit in eval and predict."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageOps

from cifarlab.config import load_config
from cifarlab.data.sources import load_dataset
from cifarlab.errors import UserError
from conftest import assert_user_error, png_bytes, write_cifar10_archive, write_image_folder, write_tinyimagenet

SHAPES = [(32, 32), (40, 30), (17, 61), (200, 120), (9, 9), (64, 64)]  # (width, height), some not square


def thirds(width: int, height: int) -> np.ndarray:
    """An image whose left, middle and right thirds are red, green and blue."""
    a = np.zeros((height, width, 3), np.uint8)
    a[:, : width // 3, 0] = a[:, width // 3: 2 * width // 3, 1] = a[:, 2 * width // 3:, 2] = 255
    return a


def photo_folder(root, shapes=SHAPES, classes=("cat", "dog")):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i, (w, h) in enumerate(shapes):
            (root / c / f"{i}.png").write_bytes(png_bytes(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
    return root


@pytest.mark.parametrize("size", [8, 24, 48])
def test_a_folder_of_any_sizes_is_fitted_to_the_size_asked(tmp_path, size):
    root = photo_folder(tmp_path / "photos")
    ds = load_dataset(f"folder:{root}", size=size)
    assert ds.train_x.shape == (2 * len(SHAPES), 3, size, size)
    for i in range(len(SHAPES)):  # each row is Pillow's fit of its file (cat/0.png ... cat/5.png come first)
        with Image.open(root / "cat" / f"{i}.png") as im:
            want = np.asarray(ImageOps.fit(im.convert("RGB"), (size, size), Image.BILINEAR)).transpose(2, 0, 1)
        np.testing.assert_array_equal(ds.train_x[i], want)


def test_a_wide_image_is_centre_cropped_not_squashed(tmp_path):
    root = write_image_folder(tmp_path / "f", classes=("a", "b"), per_class=1)
    (root / "a" / "wide.png").write_bytes(png_bytes(thirds(72, 24)))
    ds = load_dataset(f"folder:{root}", size=24)
    wide = ds.train_x[1]  # a/0000.png, a/wide.png, b/0000.png
    assert (wide[1] == 255).all() and (wide[0] == 0).all() and (wide[2] == 0).all()  # only the green middle


def test_without_a_size_mixed_or_oblong_images_are_refused_naming_the_key(tmp_path):
    mixed = photo_folder(tmp_path / "mixed")
    with pytest.raises(UserError, match=r"differ in size .*data\.image_size"):
        load_dataset(f"folder:{mixed}")
    oblong = photo_folder(tmp_path / "oblong", shapes=[(40, 30)] * 3)
    with pytest.raises(UserError, match=r"square images: set data\.image_size \(e\.g\. --set data\.image_size=30\)"):
        load_dataset(f"folder:{oblong}")
    assert load_dataset(f"folder:{oblong}", size=30).image_shape == (3, 30, 30)


def test_each_size_is_cached_apart_and_read_back_alike(tmp_path):
    root = write_image_folder(tmp_path / "f", per_class=3, size=32)
    natural = load_dataset(f"folder:{root}")
    small = load_dataset(f"folder:{root}", size=16)
    again = load_dataset(f"folder:{root}", size=16)  # from the cache
    assert natural.image_shape == (3, 32, 32) and small.image_shape == again.image_shape == (3, 16, 16)
    np.testing.assert_array_equal(np.asarray(small.train_x), np.asarray(again.train_x))
    np.testing.assert_array_equal(np.asarray(load_dataset(f"folder:{root}", size=32).train_x),
                                  np.asarray(natural.train_x))  # its own size: the images as they are


def test_tiny_imagenet_is_fitted_and_arrays_serve_only_their_own_size(tmp_path):
    tiny = load_dataset(f"tinyimagenet:{write_tinyimagenet(tmp_path / 't')}", size=32)
    assert tiny.image_shape == (3, 32, 32) and tiny.test_x.shape[1:] == (3, 32, 32)
    archive = write_cifar10_archive(tmp_path / "cifar.tar.gz")
    assert load_dataset(f"cifar10:{archive}", size=32).image_shape == (3, 32, 32)
    with pytest.raises(UserError, match="holds 32x32 arrays, not image files to fit: leave data.image_size out"):
        load_dataset(f"cifar10:{archive}", size=64)


@pytest.mark.parametrize("value", [0, 3, 1025, 2.5, "big"])
def test_the_key_is_bounded(value):
    with pytest.raises(UserError, match="data.image_size"):
        load_config(overrides={"data.image_size": value})


def test_train_eval_and_predict_fit_alike(cli, tmp_path):
    root = photo_folder(tmp_path / "photos", shapes=SHAPES * 3)
    run = tmp_path / "run"
    code, _, err = cli("train", "--recipe", "quickstart", "--data", f"folder:{root}", "--epochs", "1",
                       "--set", "data.image_size=20", "--set", "data.val_size=0.25", "--out", run)
    assert code == 0, err
    summary = json.loads((run / "summary.json").read_text())
    code, out, err = cli("eval", "--checkpoint", run, "--data", f"folder:{root}", "--json")
    assert code == 0, err  # the run's fit is applied to the folder given
    assert json.loads(out.splitlines()[-1])["images"] == len(SHAPES) * 3 * 2
    wide = tmp_path / "wide.png"
    wide.write_bytes(png_bytes(thirds(300, 100)))
    code, out, err = cli("predict", wide, "--checkpoint", run, "--json")
    assert code == 0 and summary["best_val_accuracy"] is not None, err
    assert_user_error(cli("train", "--recipe", "quickstart", "--data", f"folder:{root}", "--out", tmp_path / "r2"),
                      ["differ in size", "data.image_size"])
    assert not (tmp_path / "r2").exists()


def test_eval_fits_a_folder_of_any_sizes_to_the_models_input(cli, tmp_path):
    """A model trained on one size, evaluated on photos of the same classes at any sizes (as predict does)."""
    uniform = photo_folder(tmp_path / "uniform", shapes=[(16, 16)] * 8)
    run = tmp_path / "run"
    code, _, err = cli("train", "--recipe", "quickstart", "--data", f"folder:{uniform}", "--epochs", "1",
                       "--set", "data.val_size=0.25", "--set", "model.name=mlp", "--out", run)
    assert code == 0, err
    photos = photo_folder(tmp_path / "photos")
    code, out, err = cli("eval", "--checkpoint", run, "--data", f"folder:{photos}", "--json")
    assert code == 0, err
    assert json.loads(out.splitlines()[-1])["images"] == 2 * len(SHAPES)


def test_a_dataset_already_at_the_size_asked_is_not_decoded_again(tmp_path):
    from cifarlab.data.sources import cache_dir
    root = write_image_folder(tmp_path / "f", per_class=2, size=32)
    before = set((cache_dir() / "datasets").iterdir()) if (cache_dir() / "datasets").exists() else set()
    natural = load_dataset(f"folder:{root}")
    made = set((cache_dir() / "datasets").iterdir()) - before
    fitted = load_dataset(f"folder:{root}", size=32)
    assert set((cache_dir() / "datasets").iterdir()) - before == made  # no second entry for the same pixels
    np.testing.assert_array_equal(np.asarray(fitted.train_x), np.asarray(natural.train_x))
