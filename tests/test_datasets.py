from pathlib import Path

import numpy as np
import pytest

from helpers.datasets import DataNotFoundError, load_data
from helpers.profiles import load_profile

from .conftest import SHARED_DATA, write_images


def _ids(bundle):
    return {s: set(bundle[s].ids) for s in ("train", "val", "test")}


def test_digits_splits_deterministic_disjoint_complete():
    cfg = load_profile("digits")
    a, b = load_data(cfg), load_data(cfg)
    ia = _ids(a)
    for s in ia:
        assert list(a[s].ids) == list(b[s].ids)
    assert not (ia["train"] & ia["val"]) and not (ia["train"] & ia["test"]) and not (ia["val"] & ia["test"])
    assert sum(len(v) for v in ia.values()) == 1797
    assert len(a["val"]) == pytest.approx(1797 * 0.25, abs=2)
    # another seed gives another split
    c = load_data(load_profile("digits", {"seed": 1, "checkpoint": None}))
    assert list(c["val"].ids) != list(a["val"].ids)
    x, y = a["train"].dataset[0]
    assert x.shape == (1, 8, 8) and int(y) == a["train"].labels[0]


def test_limits_subsample_with_seed():
    cfg = load_profile("digits", {"split.limit_train": 100, "split.limit_test": 50, "checkpoint": None})
    b = load_data(cfg)
    assert len(b["train"]) == 100 and len(b["test"]) == 50
    assert set(b["train"].ids) <= set(load_data(load_profile("digits"))["train"].ids)


def _imagefolder_tree(root, with_val):
    for split, n in (("train", 6), ("test", 3)) + ((("val", 2),) if with_val else ()):
        for ci, c in enumerate(("cat", "dog")):
            write_images(root / split / c, n, size=(13 + ci, 9), mode="L" if c == "dog" else "RGB", seed=ci)


@pytest.mark.parametrize("with_val", [True, False])
def test_imagefolder_loader_any_size_and_mode(tmp_path, with_val):
    root = tmp_path / "tree"
    _imagefolder_tree(root, with_val)
    cfg = load_profile("digits", {"checkpoint": None, "dataset": "imagefolder", "data_dir": str(root), "image_size": 16,
                                  "normalize": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
                                  "split.val_fraction": 0.25})
    b = load_data(cfg)
    assert b.classes == ["cat", "dog"]
    assert len(b["test"]) == 6
    assert len(b["val"]) == (4 if with_val else 3)
    assert len(b["train"]) + len(b["val"]) == 12 + (4 if with_val else 0)
    x, y = b["train"].dataset[len(b["train"]) - 1]  # a grayscale dog converted to RGB
    assert x.shape == (3, 16, 16)
    assert all(i.startswith(("train/", "val/", "test/")) for i in b["train"].ids)
    assert not (set(b["train"].ids) & set(b["val"].ids))


def test_imagenet_subset_layout(tmp_path):
    root = tmp_path / "imagenet"
    wnids = [f"n0{i:07d}" for i in range(5)]
    for i, w in enumerate(wnids):
        write_images(root / "train" / w, 7, seed=i)
        write_images(root / "val" / w, 2, seed=10 + i)
    cfg = load_profile("digits", {"checkpoint": None, "dataset": "imagenet_subset", "data_dir": str(root),
                                  "image_size": 8, "normalize": {"mean": [0.5] * 3, "std": [0.5] * 3},
                                  "split": {"n_classes": 3, "train_per_class": 4, "val_per_class": 2}})
    b = load_data(cfg)
    assert len(b.classes) == 3 and set(b.classes) <= set(wnids)
    assert len(b["train"]) == 12 and len(b["val"]) == 6 and len(b["test"]) == 6
    assert not (set(b["train"].ids) & set(b["val"].ids))
    assert all(i.startswith("val/") for i in b["test"].ids)
    assert load_data(cfg).classes == b.classes  # the seeded class choice is deterministic


def test_cub200_layout(tmp_path):
    root = tmp_path / "CUB_200_2011"
    lines_img, lines_lab, lines_split = [], [], []
    k = 0
    for c in (1, 2):
        paths = write_images(root / "images" / f"00{c}.Bird_{c}", 10, seed=c)
        for j, p in enumerate(paths):
            k += 1
            lines_img.append(f"{k} {p.parent.name}/{p.name}")
            lines_lab.append(f"{k} {c}")
            lines_split.append(f"{k} {1 if j < 7 else 0}")
    (root / "images.txt").write_text("\n".join(lines_img))
    (root / "image_class_labels.txt").write_text("\n".join(lines_lab))
    (root / "train_test_split.txt").write_text("\n".join(lines_split))
    (root / "classes.txt").write_text("1 001.Bird_1\n2 002.Bird_2\n")
    cfg = load_profile("digits", {"checkpoint": None, "dataset": "cub200", "data_dir": str(tmp_path), "image_size": 8,
                                  "normalize": {"mean": [0.5] * 3, "std": [0.5] * 3}, "split.val_fraction": 0.15})
    b = load_data(cfg)
    assert b.classes == ["001.Bird_1", "002.Bird_2"]
    assert len(b["test"]) == 6 and len(b["train"]) + len(b["val"]) == 14 and len(b["val"]) == 2
    assert set(b["test"].labels) == {0, 1}


def test_missing_data_lists_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setattr("helpers.datasets.REPO_ROOT", tmp_path / "repo")
    cfg = load_profile("cifar10", {"data_dir": str(tmp_path / "nowhere")})
    with pytest.raises(DataNotFoundError) as e:
        load_data(cfg)
    msg = str(e.value)
    assert "nowhere" in msg and "download: true" in msg and "cifar10-jpeg.tar.gz" in msg


def test_cifar10_imagefolder_copy_in_official_order(tmp_path, monkeypatch):
    """A tiny CIFAR-10-layout folder (train/<class>/<index>.jpg) loads with ids = official indices."""
    from PIL import Image

    root = tmp_path / "cifar10-jpeg"
    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("test", 10)):
        for i in range(n):
            c = ("airplane", "cat")[i % 2]
            (root / split / c).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / split / c / f"{i:05d}.jpg")
    monkeypatch.setenv("COMPANION_ARTIFACTS", str(tmp_path / "art"))
    monkeypatch.setattr("helpers.datasets.REPO_ROOT", tmp_path / "repo")
    cfg = load_profile("cifar10", {"data_dir": str(tmp_path), "split.val_from_test": 5, "checkpoint": None})
    b = load_data(cfg)
    assert list(b["train"].ids) == [f"train/{i:05d}" for i in range(20)]
    assert list(b["train"].labels[:4]) == [0, 3, 0, 3]
    assert len(b["val"]) == 5 and len(b["test"]) == 5
    assert not (set(b["val"].ids) & set(b["test"].ids))
    assert load_data(cfg)["val"].ids.tolist() == b["val"].ids.tolist()  # cached decode, same split


@pytest.mark.skipif(not (SHARED_DATA / "cifar10-jpeg.tar.gz").is_file(), reason="../shared/data absent")
def test_cifar10_offline_copy_has_paper_split_sizes():
    b = load_data(load_profile("cifar10"))
    assert (len(b["train"]), len(b["val"]), len(b["test"])) == (50000, 5000, 5000)
    assert not (set(b["val"].ids) & set(b["test"].ids))
    assert np.bincount(b["train"].labels).tolist() == [5000] * 10


def test_data_sources_are_shown_relative_to_the_repository_when_beside_it():
    """Notebook 00 prints the data source: a committed output must not carry this machine's absolute path."""
    from helpers.datasets import shown_path
    from helpers.paths import REPO_ROOT

    assert shown_path(REPO_ROOT.parent / "shared" / "data" / "cub100") == "../shared/data/cub100"
    assert shown_path(REPO_ROOT / "data") == "data"
    elsewhere = Path("/") / "nonexistent-root-for-test" / "cub100"
    if not elsewhere.is_relative_to(REPO_ROOT.parent):
        assert shown_path(elsewhere) == str(elsewhere)
