"""Damaged or stale data inputs are caught instead of giving silently wrong numbers, on tiny synthetic trees.

An image-folder dataset's data key follows each file's content (not its name or mtime); a damaged image
is named in the error when the data key is computed (before any training); an explicit ``data_dir`` that
does not exist is refused instead of falling back to the default places; ``split.val_fraction: 0`` is
refused instead of becoming the default.  (tests/test_imagefolder_hygiene.py: hidden files, empty class
folders, 16-bit images, decompression bombs, the decoded CIFAR-10 cache.)
"""
import os
import shutil

import numpy as np
import pytest

from helpers.datasets import DamagedImageError, DataNotFoundError, load_data
from helpers.experiment import Experiment
from helpers.profiles import ProfileError, load_profile

from .conftest import write_images


def image_tree(root):
    """train/ and test/ with classes a and b (PNGs), no val/: validation is a seeded fraction of train."""
    for split, n in (("train", 6), ("test", 3)):
        for ci, c in enumerate(("a", "b")):
            write_images(root / split / c, n, size=(10, 10), seed=ci + 10 * len(split))
    return root


def folder_profile(data_dir, dataset="imagefolder", **split):
    """A complete tiny profile (no checkpoint): what a user's YAML would say."""
    return {"name": "tiny", "dataset": dataset, "data_dir": None if data_dir is None else str(data_dir),
            "model": "small_cnn", "image_size": 8, "normalize": {"mean": [0.5] * 3, "std": [0.5] * 3},
            "seed": 0, "device": "cpu", "split": {"val_fraction": 0.25, **split},
            "training": {"epochs": 1, "batch_size": 4, "optimizer": "adam", "lr": 0.01},
            "conductance": {"classes": [0, 1]}}  # classes of the tiny trees (the default names three)


@pytest.fixture
def artifacts(tmp_path, monkeypatch):
    """Stage caches and split manifests under the test's temp dir."""
    monkeypatch.setenv("COMPANION_ARTIFACTS", str(tmp_path / "art"))
    return tmp_path / "art"


def _key(root) -> str:
    """The data key of the tiny profile on the tree at ``root``."""
    return Experiment(folder_profile(root), progress=False).data_key


def _repaint(path, value):
    """Write other pixels into ``path``, same name and format."""
    from PIL import Image

    Image.fromarray(np.full((10, 10, 3), value, dtype=np.uint8)).save(path)


def test_replacing_an_image_in_place_changes_the_data_key(tmp_path, artifacts):
    root = image_tree(tmp_path / "tree")
    before, ids = _key(root), load_data(load_profile(folder_profile(root)))["train"].ids.tolist()
    _repaint(root / "train" / "a" / "img_002.png", 7)  # fixed, replaced or corrupted: same name
    after = load_data(load_profile(folder_profile(root)))
    assert after["train"].ids.tolist() == ids  # same file names ...
    assert _key(root) != before  # ... other bytes: other data, other caches


def test_the_same_tree_elsewhere_with_other_mtimes_has_the_same_key(tmp_path, artifacts):
    root = image_tree(tmp_path / "tree")
    key = _key(root)
    copy = shutil.copytree(root, tmp_path / "elsewhere" / "copy", copy_function=shutil.copyfile)
    for p in copy.rglob("*.png"):
        os.utime(p, (1_000_000_000, 1_000_000_000))  # 2001: mtimes differ from the original's
    assert _key(copy) == key  # machine-independent: committed checkpoints' records compare it
    _repaint(copy / "test" / "b" / "img_000.png", 200)
    assert _key(copy) != key  # the control: the key does look at the bytes


@pytest.mark.parametrize("damage", ["truncated JPEG", "not an image"])
def test_a_damaged_image_is_named_in_the_error(tmp_path, damage):
    from PIL import Image

    root = image_tree(tmp_path / "tree")
    bad = root / "test" / "a" / "img_900.jpg"
    if damage == "truncated JPEG":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(bad, quality=95)
        bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    else:
        bad.write_text("<html>404 Not Found</html>\n")
    with pytest.raises(DamagedImageError) as e:
        load_data(load_profile(folder_profile(root)))  # computing the data key opens every image: before training
    msg = str(e.value)
    assert str(bad) in msg and "damaged" in msg.replace(str(tmp_path), "")  # (the test's tmp_path says "damaged")
    assert "\n" not in msg
    good = image_tree(tmp_path / "good")
    test = load_data(load_profile(folder_profile(good)))["test"]
    shutil.copyfile(bad, test.dataset.paths[0])  # damaged after the data key was computed
    with pytest.raises(DamagedImageError, match="img_000.png"):
        test.dataset[0]  # reading names it too
    with pytest.raises(OSError, match="img_000.png"):
        test.dataset.tensors()  # the whole split at once as well


def _no_reading(monkeypatch):
    """Fail the test if the data's files are read (the check must come before any long work)."""
    monkeypatch.setattr("helpers.datasets.content_digest", lambda *a: pytest.fail("read data before refusing"),
                        raising=False)


def test_an_explicit_data_dir_that_does_not_exist_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPANION_DATA_DIR", str(image_tree(tmp_path / "other-data")))  # a default place WITH data
    missing = tmp_path / "nowhere"
    with monkeypatch.context() as m, pytest.raises(ProfileError) as e:
        _no_reading(m)
        load_data(load_profile(folder_profile(missing)))
    msg = str(e.value)
    assert isinstance(e.value, DataNotFoundError)
    assert msg.startswith("data_dir:") and str(missing) in msg and "existing folder" in msg and "null" in msg
    assert len(load_data(load_profile(folder_profile(None)))["test"]) == 6  # data_dir: null still searches


def _cub_tree(parent):
    """A tiny CUB_200_2011 tree: 2 classes x 8 images, 6 of each flagged training."""
    root = parent / "CUB_200_2011"
    lines = {"images.txt": [], "image_class_labels.txt": [], "train_test_split.txt": []}
    k = 0
    for c in (1, 2):
        for j, p in enumerate(write_images(root / "images" / f"00{c}.Bird_{c}", 8, seed=c)):
            k += 1
            lines["images.txt"].append(f"{k} {p.parent.name}/{p.name}")
            lines["image_class_labels.txt"].append(f"{k} {c}")
            lines["train_test_split.txt"].append(f"{k} {int(j < 6)}")
    for name, ls in lines.items():
        (root / name).write_text("\n".join(ls) + "\n")
    return parent


@pytest.mark.parametrize("dataset,key", [("imagefolder", "val_fraction"), ("cub200", "val_fraction"),
                                         ("digits", "val_fraction"), ("digits", "test_fraction")])
def test_a_zero_split_fraction_is_refused_not_replaced_by_the_default(tmp_path, monkeypatch, dataset, key):
    root = {"imagefolder": lambda: image_tree(tmp_path / "tree"), "cub200": lambda: _cub_tree(tmp_path),
            "digits": lambda: None}[dataset]()
    cfg = load_profile(folder_profile(root, dataset, **{key: 0.0}))  # the schema's range starts at 0
    with monkeypatch.context() as m, pytest.raises(
            ProfileError, match=rf"'split\.{key}' = 0\.0 .*valid: a fraction in \(0, 0\.9\], or null"):
        _no_reading(m)
        load_data(cfg)
    cfg["split"][key] = None  # null keeps meaning "the default"
    assert len(load_data(cfg)["val"]) > 0
