"""No mistaken input gives a number: what a real image folder carries besides its images, on tiny synthetic trees.

Hidden and system entries (``.ipynb_checkpoints/``, ``__MACOSX/``, AppleDouble ``._*``, ``.DS_Store``,
``Thumbs.db``, ``desktop.ini``) are never classes or images, and leave the data key of a clean tree unchanged;
an empty class folder is refused, named, before any data is read; an empty, damaged or too large image (a
decompression bomb) is named when the data key is computed, before any training; 16-bit and float images are
scaled to 8 bits, not clipped; the decoded CIFAR-10 cache follows its source's content and a damaged one is set
aside and rebuilt.
"""
import io
import os
import shutil
import struct
import tarfile
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from helpers.datasets import DamagedImageError, DataNotFoundError, decode_image, load_data, read_image
from helpers.experiment import Experiment
from helpers.profiles import load_profile

from .conftest import write_images
from .test_data_integrity import folder_profile, image_tree

APPLEDOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(64)  # the header of a ._ file


@pytest.fixture
def artifacts(tmp_path, monkeypatch):
    """Stage caches, split manifests and the decoded-dataset cache under the test's temp dir."""
    monkeypatch.setenv("COMPANION_ARTIFACTS", str(tmp_path / "art"))
    return tmp_path / "art"


def _key(root, dataset="imagefolder", **split) -> str:
    return Experiment(folder_profile(root, dataset, **split), progress=False).data_key


def _no_reading(monkeypatch):
    """Fail the test if the data's files are read (a refusal must come before any long work)."""
    monkeypatch.setattr("helpers.datasets.content_digest", lambda *a, **k: pytest.fail("read data before refusing"))


def _litter(root):
    """What Finder, Windows Explorer, Jupyter and macOS zip archives leave in a dataset's folders."""
    for split in ("train", "test"):
        write_images(root / split / ".ipynb_checkpoints", 2, size=(10, 10), seed=5)  # would be a class
        macosx = root / split / "__MACOSX" / "a"
        macosx.mkdir(parents=True)
        (macosx / "._img_000.png").write_bytes(APPLEDOUBLE)
        for c in ("a", "b"):
            (root / split / c / "._img_000.png").write_bytes(APPLEDOUBLE)  # an image's name, not an image
            (root / split / c / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(32))
            (root / split / c / "Thumbs.db").write_bytes(bytes(512))
            (root / split / c / "desktop.ini").write_text("[.ShellClassInfo]\n")
            write_images(root / split / c / ".ipynb_checkpoints", 1, size=(10, 10), seed=6)
        (root / split / ".DS_Store").write_bytes(bytes(8))


def test_hidden_and_system_entries_are_no_classes_and_keep_the_clean_trees_key(tmp_path, artifacts):
    clean = image_tree(tmp_path / "clean")
    littered = shutil.copytree(clean, tmp_path / "littered")
    _litter(littered)
    a, b = (load_data(load_profile(folder_profile(r))) for r in (clean, littered))
    assert b.classes == a.classes == ["a", "b"]  # not a 4-way model with .ipynb_checkpoints and __MACOSX
    for s in ("train", "val", "test"):
        assert b[s].ids.tolist() == a[s].ids.tolist()
    assert not any("/." in i or "__MACOSX" in i for s in ("train", "val", "test") for i in b[s].ids)
    assert _key(littered) == _key(clean)  # the same data, the same caches and checkpoint records


def _imagenet_tree(root):
    for i in range(3):
        write_images(root / "train" / f"n0{i:07d}", 4, size=(10, 10), seed=i)
        write_images(root / "val" / f"n0{i:07d}", 2, size=(10, 10), seed=10 + i)
    return root


IMAGENET = {"n_classes": 3, "train_per_class": 3, "val_per_class": 1}


def test_imagenet_subset_ignores_hidden_folders_and_files(tmp_path, artifacts):
    clean = _imagenet_tree(tmp_path / "clean")
    littered = shutil.copytree(clean, tmp_path / "littered")
    write_images(littered / "train" / ".ipynb_checkpoints", 4, size=(10, 10), seed=9)  # would be a wnid
    (littered / "train" / "__MACOSX" / "n00000000").mkdir(parents=True)
    for w in ("n00000000", "n00000002"):
        (littered / "train" / w / "._img_000.png").write_bytes(APPLEDOUBLE)
        (littered / "val" / w / "._img_001.png").write_bytes(APPLEDOUBLE)
        (littered / "val" / w / "Thumbs.db").write_bytes(bytes(64))
    a, b = (load_data(load_profile(folder_profile(r, "imagenet_subset", **IMAGENET))) for r in (clean, littered))
    assert b.classes == a.classes == ["n00000000", "n00000001", "n00000002"]
    assert all(b[s].ids.tolist() == a[s].ids.tolist() for s in ("train", "val", "test"))
    assert _key(littered, "imagenet_subset", **IMAGENET) == _key(clean, "imagenet_subset", **IMAGENET)


@pytest.mark.parametrize("where", ["train/c", "test/b"])
def test_an_empty_class_folder_is_refused_naming_it(tmp_path, monkeypatch, where):
    root = image_tree(tmp_path / "tree")
    empty = root / where
    if empty.is_dir():
        shutil.rmtree(empty)
    empty.mkdir()
    (empty / ".DS_Store").write_bytes(bytes(8))  # only what Finder leaves: still no images
    (empty / "._img_000.png").write_bytes(APPLEDOUBLE)
    with monkeypatch.context() as m, pytest.raises(DataNotFoundError) as e:
        _no_reading(m)
        load_data(load_profile(folder_profile(root)))
    msg = str(e.value)
    assert str(empty) in msg and "no image files" in msg and "valid:" in msg and "\n" not in msg


def test_an_empty_imagenet_class_folder_is_refused_naming_it(tmp_path, monkeypatch):
    root = _imagenet_tree(tmp_path / "tree")
    (root / "train" / "n09999999").mkdir()  # would take part in the seeded class choice
    with monkeypatch.context() as m, pytest.raises(DataNotFoundError, match="n09999999") as e:
        _no_reading(m)
        load_data(load_profile(folder_profile(root, "imagenet_subset", **IMAGENET)))
    assert str(root / "train" / "n09999999") in str(e.value)


def test_an_empty_image_is_named_before_training_and_an_appledouble_file_is_ignored(tmp_path, artifacts,
                                                                                    monkeypatch):
    root = image_tree(tmp_path / "tree")
    (root / "train" / "a" / "._img_001.png").write_bytes(APPLEDOUBLE)  # named only after training, before
    empty = root / "test" / "b" / "img_777.png"
    empty.write_bytes(b"")  # an interrupted copy
    monkeypatch.setattr("helpers.experiment.train_model", lambda *a, **k: pytest.fail("trained on damaged data"))
    with pytest.raises(DamagedImageError) as e:
        Experiment(folder_profile(root), progress=False).model
    msg = str(e.value)
    assert msg.startswith(f"{empty}: ") and "empty (0 bytes)" in msg and "._img_001" not in msg and "\n" not in msg
    empty.unlink()
    clean = image_tree(tmp_path / "clean")
    assert _key(root) == _key(clean)  # the AppleDouble file is no data


def test_several_damaged_images_are_counted_in_one_line(tmp_path):
    root = image_tree(tmp_path / "tree")
    for c in ("a", "b"):
        (root / "train" / c / "img_000.png").write_bytes(b"")
    with pytest.raises(DamagedImageError) as e:
        load_data(load_profile(folder_profile(root)))
    msg = str(e.value)
    assert str(root / "train" / "a" / "img_000.png") in msg and "1 more" in msg and "\n" not in msg


def _save(arr, path, **kw):
    Image.fromarray(arr).save(path, **kw)
    return path


def test_16_bit_grayscale_png_is_scaled_to_8_bits_not_clipped(tmp_path):
    values = np.array([[0, 128, 129, 257], [1000, 20000, 32767, 32768],
                       [40000, 50000, 60000, 65000], [65407, 65408, 65534, 65535]], dtype=np.uint16)
    path = _save(values, tmp_path / "deep.png")
    assert Image.open(path).mode == "I;16"
    expected = np.floor(values / 257.0 + 0.5).astype(np.uint8)  # 0..65535 -> 0..255, rounded
    gray = read_image(path, "L", 4)  # the model's size is the image's: no resampling
    assert gray.dtype == np.uint8 and gray.tolist() == expected.tolist()  # not 0 / 255 only
    assert (read_image(path, "RGB", 4) == expected[..., None]).all()  # the same grey on each channel


@pytest.mark.parametrize("mode,arr,expected", [
    ("I;16B", np.array([[0, 257, 32768, 65535]], dtype=">u2"), [[0, 1, 128, 255]]),
    ("I", np.array([[0, 257, 32768, 65535]], dtype=np.int32), [[0, 1, 128, 255]]),
    ("F", np.array([[0.0, 0.5, 1.0, 1 / 255]], dtype=np.float32), [[0, 128, 255, 1]]),
])
def test_16_and_32_bit_images_are_scaled_to_8_bits(tmp_path, mode, arr, expected):
    im = Image.frombytes(mode, (4, 1), arr.tobytes()) if mode == "I;16B" else Image.fromarray(arr)
    path = tmp_path / "deep.tif"
    im.save(path)
    assert Image.open(path).mode == mode
    assert decode_image(path, "L", path).tolist() == expected


def test_a_32_bit_image_out_of_range_is_named(tmp_path):
    path = _save(np.array([[0.0, 3.0]], dtype=np.float32), tmp_path / "hdr.tif")
    with pytest.raises(DamagedImageError, match=r"hdr\.tif: image of mode F with values in \[0, 3\]; valid"):
        read_image(path, "RGB", 4)


def test_palette_and_rgba_convert_as_before(tmp_path):
    rgba = np.random.default_rng(0).integers(0, 255, (6, 6, 4), dtype=np.uint8)
    p_rgba = _save(rgba, tmp_path / "alpha.png")
    pal = Image.fromarray(rgba[..., :3]).convert("P", palette=Image.ADAPTIVE, colors=8)
    pal.save(tmp_path / "pal.png")
    for path in (p_rgba, tmp_path / "pal.png"):
        with Image.open(path) as im:
            for mode in ("RGB", "L"):
                assert (read_image(path, mode, 6) == np.asarray(im.convert(mode))).all()


def test_a_16_bit_png_in_a_tree_trains_with_the_right_pixels(tmp_path):
    root = image_tree(tmp_path / "tree")
    deep = _save(np.full((8, 8), 32768, dtype=np.uint16), root / "test" / "a" / "img_500.png")
    b = load_data(load_profile(folder_profile(root)))  # the data key's check decodes it too
    i = b["test"].ids.tolist().index("test/a/img_500.png")
    x, _ = b["test"].dataset[i]  # normalised with mean 0.5, std 0.5: 128/255 -> ~0.004, not 1.0 (255)
    assert float(x.abs().max()) < 0.01 and b["test"].dataset.paths[i] == str(deep)


def _png_header(width, height) -> bytes:
    """A PNG of a few bytes whose header claims ``width`` x ``height`` RGB pixels."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_a_decompression_bomb_header_is_named_before_training(tmp_path):
    root = image_tree(tmp_path / "tree")
    bomb = root / "train" / "b" / "img_666.png"
    bomb.write_bytes(_png_header(100_000, 100_000))  # 10^10 pixels in 60 bytes
    with pytest.raises(DamagedImageError) as e:
        load_data(load_profile(folder_profile(root)))
    msg = str(e.value)
    assert msg.startswith(f"{bomb}: ") and "decompression bomb" in msg and "valid: at most" in msg
    with pytest.raises(DamagedImageError, match="decompression bomb"):
        read_image(bomb, "RGB", 8)


@pytest.mark.parametrize("pil_warning", ["ignore", "error"])
def test_an_image_over_the_pixel_limit_is_an_error_not_a_warning(tmp_path, monkeypatch, pil_warning):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL only warns between 1x and 2x its limit
    warnings.simplefilter(pil_warning, Image.DecompressionBombWarning)  # (pytest restores the filters)
    root = image_tree(tmp_path / "tree")
    big = _save(np.zeros((40, 40, 3), dtype=np.uint8), root / "test" / "a" / "img_400.png")  # 1,600 pixels
    with pytest.raises(DamagedImageError) as e:
        load_data(load_profile(folder_profile(root)))
    msg = str(e.value)
    assert msg.startswith(f"{big}: image of ") and "1,600 pixels" in msg.replace("(1600 pixels)", "1,600 pixels")
    assert "is over the limit of 1,000 pixels" in msg and "valid: at most 1,000 pixels" in msg and "\n" not in msg
    with pytest.raises(DamagedImageError, match="img_400"):
        read_image(big, "RGB", 8)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)
    assert len(load_data(load_profile(folder_profile(root)))["test"]) == 7  # under the limit: data


# --------------------------------------------------------------------------- the decoded CIFAR-10 cache
def _cifar_tree(root, seed=0):
    """A tiny extracted cifar10-jpeg/: train/<class>/<index>.bmp (BMP: the same size for any pixels)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", 8), ("test", 6)):
        for i in range(n):
            c = ("airplane", "cat")[i % 2]
            (root / split / c).mkdir(parents=True, exist_ok=True)
            _save(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), root / split / c / f"{i:05d}.bmp")
    return root


def _cifar_cfg(data_dir):
    return load_profile("cifar10", {"data_dir": str(data_dir), "split.val_from_test": 3, "checkpoint": None})


def _cached(artifacts):
    return sorted((artifacts / "datasets").glob("cifar10-imagefolder-*.npz"))


def _train_pixels(bundle, i=0):
    return bundle["train"].dataset.images[i].permute(1, 2, 0).numpy()


@pytest.mark.parametrize("packed", [False, True], ids=["folder", "tar.gz"])
def test_the_cifar_cache_follows_the_content_not_the_mtime(tmp_path, artifacts, monkeypatch, packed):
    monkeypatch.setattr("helpers.datasets.REPO_ROOT", tmp_path / "repo")
    data = tmp_path / "data"
    folder = _cifar_tree((tmp_path / "src" if packed else data) / "cifar10-jpeg")
    first = folder / "train" / "airplane" / "00000.bmp"

    def pack():  # the archive that data_dir holds, always with the same mtime
        if packed:
            tar = data / "cifar10-jpeg.tar.gz"
            data.mkdir(exist_ok=True)
            with tarfile.open(tar, "w:gz") as tf:
                tf.add(folder, arcname="cifar10-jpeg")
            os.utime(tar, (1_000_000_000, 1_000_000_000))
    pack()
    before = load_data(_cifar_cfg(data))
    assert (_train_pixels(before) == np.asarray(Image.open(first))).all() and len(_cached(artifacts)) == 1
    st = first.stat()
    new = np.full((32, 32, 3), 9, dtype=np.uint8)
    _save(new, first)  # replaced in place: same name, same size ...
    os.utime(first, ns=(st.st_atime_ns, st.st_mtime_ns))  # ... same mtime
    assert first.stat().st_size == st.st_size
    pack()
    after = load_data(_cifar_cfg(data))
    assert (_train_pixels(after) == new).all()  # the new pixels, not the cached old ones
    assert len(_cached(artifacts)) == 2 and after.fingerprint != before.fingerprint
    assert (_train_pixels(after, 1) == _train_pixels(before, 1)).all()


def test_the_cifar_cache_ignores_hidden_files_and_is_shared_by_copies(tmp_path, artifacts, monkeypatch):
    monkeypatch.setattr("helpers.datasets.REPO_ROOT", tmp_path / "repo")
    clean = _cifar_tree(tmp_path / "a" / "cifar10-jpeg")
    b = load_data(_cifar_cfg(tmp_path / "a"))
    other = shutil.copytree(clean, tmp_path / "b" / "cifar10-jpeg", copy_function=shutil.copyfile)  # new mtimes
    (other / "__MACOSX" / "train" / "cat").mkdir(parents=True)
    (other / "__MACOSX" / "train" / "cat" / "._00001.bmp").write_bytes(APPLEDOUBLE)
    (other / "train" / "cat" / "._00001.bmp").write_bytes(APPLEDOUBLE)
    stray = other / ".Trash" / "train" / "cat"  # an index again, in a hidden folder
    stray.mkdir(parents=True)
    _save(np.zeros((32, 32, 3), dtype=np.uint8), stray / "00001.bmp")
    c = load_data(_cifar_cfg(tmp_path / "b"))
    assert len(_cached(artifacts)) == 1  # the same content: the same decoded copy
    assert (c["train"].dataset.images == b["train"].dataset.images).all() and c.fingerprint == b.fingerprint


def test_a_cifar_image_of_the_wrong_size_or_twice_is_named(tmp_path, artifacts, monkeypatch):
    monkeypatch.setattr("helpers.datasets.REPO_ROOT", tmp_path / "repo")
    root = _cifar_tree(tmp_path / "cifar10-jpeg")
    twice = _save(np.zeros((32, 32, 3), dtype=np.uint8), root / "train" / "cat" / "00000.bmp")
    with pytest.raises(DamagedImageError, match=r"a second image of train index 0 .*valid: one image per index"):
        load_data(_cifar_cfg(tmp_path))
    twice.unlink()
    big = _save(np.zeros((64, 64, 3), dtype=np.uint8), root / "test" / "cat" / "00001.bmp")
    with pytest.raises(DamagedImageError, match=r"00001\.bmp: image of 64 x 64 pixels is not a CIFAR-10 image"):
        load_data(_cifar_cfg(tmp_path))
    big.write_bytes(b"")
    with pytest.raises(DamagedImageError, match=r"00001\.bmp: damaged image file, it is empty"):
        load_data(_cifar_cfg(tmp_path))


def test_a_truncated_cifar_cache_is_set_aside_and_rebuilt(tmp_path, artifacts, monkeypatch, capsys):
    monkeypatch.setattr("helpers.datasets.REPO_ROOT", tmp_path / "repo")
    _cifar_tree(tmp_path / "cifar10-jpeg")
    first = load_data(_cifar_cfg(tmp_path))
    (cached,) = _cached(artifacts)
    capsys.readouterr()
    cached.write_bytes(cached.read_bytes()[: cached.stat().st_size // 2])  # a full disk, a killed copy
    again = load_data(_cifar_cfg(tmp_path))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(cached) in err[0] and "corrupt" in err[0] and "cifar10-imagefolder-" in err[0]
    assert (cached.parent / (cached.name + ".corrupt")).is_file()  # kept for inspection
    assert _cached(artifacts) == [cached]  # rebuilt under the same name
    assert (again["train"].dataset.images == first["train"].dataset.images).all()
    assert again.fingerprint == first.fingerprint
    load_data(_cifar_cfg(tmp_path))
    assert capsys.readouterr().err == ""  # the rebuilt file reads


def test_a_16_bit_png_in_memory_decodes(tmp_path):
    """The CIFAR decoder reads archive members from memory: the same 8-bit scaling applies."""
    buf = io.BytesIO()
    Image.fromarray(np.array([[65535, 0]], dtype=np.uint16)).save(buf, format="PNG")
    assert decode_image(io.BytesIO(buf.getvalue()), "RGB", "member")[..., 0].tolist() == [[255, 0]]
