"""docs/tools/cifar10_jpeg_from_lossless.py: the NumPy re-implementation of IJG libjpeg 7..9d's encoder
(quality 75) that rebuilds the CIFAR-10 JPEG copy from torchvision's lossless batches, its archive
writer and its manifest check (docs/data-and-weights.md)."""
from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from helpers.paths import REPO_ROOT

from .conftest import SHARED_DATA

sys.path.insert(0, str(REPO_ROOT / "docs" / "tools"))
try:
    import cifar10_jpeg_from_lossless as tool
finally:
    sys.path.pop(0)


def synthetic_images(h=32, w=32, n=6) -> np.ndarray:
    """Deterministic test images (no RNG): ramps in red, pseudo-noise in green, black / white checks in blue."""
    yy, xx = np.meshgrid(np.arange(h, dtype=np.int64), np.arange(w, dtype=np.int64), indexing="ij")
    out = []
    for k in range(n):
        r = (xx * (7 + k) + yy * 3 + 40 * k) % 256
        g = ((xx * 2654435761 + yy * 40503 + k * 97) >> 7) % 256
        b = 255 * ((xx // (k + 2) + yy // (k + 3)) % 2)
        out.append(np.stack([r, g, b], -1))
    return np.stack(out).astype(np.uint8)


# sha256 (first 16 hex digits) of each synthetic image as IJG libjpeg 9d writes it at quality 75
# (jpeg_set_defaults + jpeg_set_quality(75), through the PyPI package jpeglib 1.0.2): an independent encoder
LIBJPEG_9D = {
    (32, 32): ["6ea93dd750f29688", "6f84111da799d4f7", "4f0cfea968da2450", "9d514e2c16e90715", "29be7365fcad0ed2",
               "00dc837051b40d9f"],
    (48, 64): ["8fb1bb5232dfd6b6", "73d050821e331765", "d7999c10a94f4416", "1b7070ea816e3aa9", "f8eb7216c76d8458",
               "f4be471c36744f92"],
}


@pytest.mark.parametrize("shape", sorted(LIBJPEG_9D))
def test_encoder_writes_libjpeg_9d_bytes(shape):
    files = tool.encode(synthetic_images(*shape))
    assert [hashlib.sha256(f).hexdigest()[:16] for f in files] == LIBJPEG_9D[shape]
    assert sum(b"\xff\x00" in f[len(tool.header(*shape)):] for f in files) > 0  # byte stuffing was exercised


def test_encoded_file_is_a_quality_75_420_jpeg_close_to_its_input():
    yy, xx = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    smooth = np.stack([40 + 3 * xx + 2 * yy, 200 - 4 * yy, 90 + xx + yy], -1).astype(np.uint8)
    im = Image.open(io.BytesIO(tool.encode(smooth[None])[0]))
    assert im.format == "JPEG" and im.size == (32, 32) and JpegImagePlugin.get_sampling(im) == 2  # 4:2:0
    assert im.info["jfif_version"] == (1, 1) and not im.info.get("progressive")
    assert list(im.quantization[0]) == [8, 6, 5, 8, 12, 20, 26, 31, 6, 6, 7, 10, 13, 29, 30, 28, 7, 7, 8, 12, 20, 29,
                                        35, 28, 7, 9, 11, 15, 26, 44, 40, 31, 9, 11, 19, 28, 34, 55, 52, 39, 12, 18,
                                        28, 32, 41, 52, 57, 46, 25, 32, 39, 44, 52, 61, 60, 51, 36, 46, 48, 49, 56,
                                        50, 52, 50]  # Annex K luminance table at quality 75, as the copy's files
    err = np.abs(np.asarray(im.convert("RGB"), dtype=int) - smooth)
    assert err.mean() < 2 and err.max() <= 8  # measured: 1.49 and 7


def test_encoder_refuses_other_shapes():
    with pytest.raises(ValueError, match="multiples of 16"):
        tool.encode(np.zeros((1, 30, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        tool.encode(np.zeros((1, 32, 32, 3), np.float32))


def _copy_members(prefix: str, wanted: set) -> dict:
    """{path relative to cifar10-jpeg/: bytes} of the shared copy's files in ``wanted``, reading the archive
    only as far as the folder ``prefix`` goes (names are sorted in it)."""
    out, seen = {}, False
    with tarfile.open(SHARED_DATA / "cifar10-jpeg.tar.gz", "r|gz") as tf:
        for m in tf:
            rel = m.name.split("/", 1)[-1]
            if rel.startswith(prefix):
                seen = True
                if m.isfile() and rel in wanted:
                    out[rel] = tf.extractfile(m).read()
            elif seen:
                break
    return out


def test_rebuilds_the_shared_copy_from_the_lossless_sample():
    """The 1,000 lossless test images of the sample, encoded, are the copy's files byte for byte."""
    npz = SHARED_DATA / "cifar10-lossless-sample.npz"
    if not (npz.is_file() and (SHARED_DATA / "cifar10-jpeg.tar.gz").is_file()):
        pytest.skip("the shared CIFAR-10 copy and lossless sample are absent")
    with np.load(npz) as z:
        x, y = z["x_test"], z["y_test"]
    paths = [f"test/{tool.CLASSES[c]}/{i:05d}.jpg" for i, c in enumerate(y)]
    copy = _copy_members("test/", set(paths))
    assert len(copy) == len(paths) == 1000
    files = tool.encode(x)
    differ = [p for p, f in zip(paths, files) if copy[p] != f]
    assert not differ, f"{len(differ)} of 1000 differ, first {differ[:3]}"


# ------------------------------------------------------------------------------------ batches, archive, manifest
def _write_batches(d, n_per_batch=4, n_test=5):
    """torchvision's cifar-10-batches-py/ layout with a few synthetic images per batch; returns the arrays."""
    d.mkdir(parents=True)
    imgs = synthetic_images(n=6)
    data = {}
    for split, names, n in (("train", tool.BATCHES["train"], n_per_batch), ("test", tool.BATCHES["test"], n_test)):
        xs, ys = [], []
        for b, name in enumerate(names):
            k = np.arange(n) + b * n
            x = np.stack([np.roll(imgs[i % 6], i % 7, axis=1) ^ np.uint8(9 * i % 256) for i in k])
            y = [(3 * int(i) + (split == "test")) % 10 for i in k]
            entry = {"batch_label": f"synthetic {name}", "labels": y, "filenames": [f"img{i}.png" for i in k],
                     "data": np.ascontiguousarray(x.transpose(0, 3, 1, 2)).reshape(n, 3072)}
            (d / name).write_bytes(pickle.dumps(entry, protocol=2))  # the official files are protocol 2
            xs.append(x)
            ys += y
        data[split] = (np.concatenate(xs), np.array(ys))
    return data


def test_builds_the_archive_from_batches_and_checks_it(tmp_path, capsys):
    data = _write_batches(tmp_path / "root" / "cifar-10-batches-py")
    for src in (tmp_path / "root", tmp_path / "root" / "cifar-10-batches-py"):
        got = tool.read_cifar10(src, log=lambda *_: None)
        for s in ("train", "test"):
            assert (got[s][0] == data[s][0]).all() and (got[s][1] == data[s][1]).all()

    out = tmp_path / "out"
    assert tool.main([str(tmp_path / "root"), str(out)]) == 1  # synthetic data: not the copy
    text = capsys.readouterr().out
    assert "differ from the official files" in text and "is NOT the copy" in text and "folders that differ" in text
    raw = (out / "cifar10-jpeg.tar.gz").read_bytes()
    assert raw[:4] == b"\x1f\x8b\x08\x00" and raw[4:8] == b"\0\0\0\0"  # gzip without name or time
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(raw))) as tf:
        members = tf.getmembers()
        names = [m.name for m in members]
        assert names == sorted(names)
        assert names[:3] == ["cifar10-jpeg", "cifar10-jpeg/test", "cifar10-jpeg/test/airplane"]
        assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(tool.TAR_MTIME, 0, 0, "", "")}
        assert {m.mode for m in members if m.isdir()} == {0o755} and {m.mode for m in members if m.isfile()} == {0o644}
        files = {m.name.split("/", 1)[1]: tf.extractfile(m).read() for m in members if m.isfile()}
    assert len(files) == 25
    for s in ("train", "test"):
        x, y = data[s]
        enc = tool.encode(x)
        for i in range(len(y)):
            assert files[f"{s}/{tool.CLASSES[y[i]]}/{i:05d}.jpg"] == enc[i]

    # the same input gives the same archive; a manifest made from it passes, a changed file is found
    assert tool.main([str(tmp_path / "root" / "cifar-10-batches-py"), str(tmp_path / "again")]) == 1
    assert (tmp_path / "again" / "cifar10-jpeg.tar.gz").read_bytes() == raw
    manifest = tmp_path / "m.sha256"
    assert tool.main(["--write-manifest", str(out / "cifar10-jpeg.tar.gz"), str(manifest)]) == 0
    entries = tool.read_manifest(manifest)
    assert entries["cifar10-jpeg.tar.gz"] == hashlib.sha256(raw).hexdigest()
    assert tool.main(["--check", str(out / "cifar10-jpeg.tar.gz"), "--manifest", str(manifest)]) == 0
    assert tool.main(["--folder", str(tmp_path / "root"), str(tmp_path / "tree"), "--manifest", str(manifest)]) == 0
    victim = tmp_path / "tree" / "cifar10-jpeg" / "train" / tool.CLASSES[data["train"][1][7]] / "00007.jpg"
    victim.write_bytes(victim.read_bytes()[:-3] + b"\x00\xff\xd9")
    capsys.readouterr()
    assert tool.main(["--check", str(tmp_path / "tree"), "--manifest", str(manifest)]) == 1
    n_folders = len({f"{s}/{c}" for s in data for c in data[s][1]})
    assert f"folders that differ: 1 of {n_folders}: train/{victim.parent.name}/" in capsys.readouterr().out


def test_reads_the_batches_from_torchvisions_archive(tmp_path):
    data = _write_batches(tmp_path / "cifar-10-batches-py")
    arc = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(arc, "w:gz") as tf:
        tf.add(tmp_path / "cifar-10-batches-py", "cifar-10-batches-py")
    got = tool.read_cifar10(arc, log=lambda *_: None)
    assert (got["test"][0] == data["test"][0]).all() and (got["train"][1] == data["train"][1]).all()
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match="test_batch"):
        tool.read_cifar10(tmp_path, log=lambda *_: None)


def test_batch_reader_runs_no_code_from_the_file(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    _write_batches(d)

    class Evil:
        def __reduce__(self):
            return (print, ("ran code from a batch file",))

    (d / "data_batch_2").write_bytes(pickle.dumps({"data": Evil(), "labels": []}))
    with pytest.raises(pickle.UnpicklingError, match="builtins.print"):
        tool.read_cifar10(d, log=lambda *_: None)


@pytest.mark.skipif(not (shutil.which("tar") and shutil.which("sha256sum") and shutil.which("find")),
                    reason="needs GNU tar, find and sha256sum")
def test_archive_and_listing_agree_with_the_gnu_tools(tmp_path):
    """The tar is what GNU tar writes with the copy's settings; the listing digest is the documented one-liner's."""
    if "GNU tar" not in subprocess.run(["tar", "--version"], capture_output=True, text=True).stdout:
        pytest.skip("tar is not GNU tar")
    files = {f"test/{c}/{i:05d}.jpg": f for i, (c, f) in
             enumerate(zip(("cat", "dog", "cat", "ship"), tool.encode(synthetic_images(n=4))))}
    root = tmp_path / "cifar10-jpeg"
    for rel, b in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b)
        (root / rel).chmod(0o644)
    for d in [root, *[p for p in root.rglob("*") if p.is_dir()]]:
        d.chmod(0o755)
    gnu = subprocess.run(["tar", "--sort=name", "--format=gnu", "--owner=0", "--group=0", "--numeric-owner",
                          "--mtime=@1577836800", "-cf", "-", "cifar10-jpeg"], cwd=tmp_path, capture_output=True,
                         check=True).stdout
    assert tool.tar_bytes(files) == gnu
    shell = subprocess.run("find . -type f -printf '%P\\n' | LC_ALL=C sort | xargs -d '\\n' sha256sum | sha256sum",
                           shell=True, cwd=root, capture_output=True, text=True, check=True).stdout.split()[0]
    digests = {p: hashlib.sha256(b).hexdigest() for p, b in files.items()}
    assert tool.manifest_entries(digests)["listing"] == shell


def test_committed_manifest_names_the_copy():
    m = tool.read_manifest()
    folders = [k for k in m if k.endswith("/")]
    assert len(folders) == 20 and {k.split("/")[1] for k in folders} == set(tool.CLASSES)
    assert m["cifar10-jpeg.tar.gz"] == "409a740d9602c952ad4416e9a860a3eb196b96dd1933fe9a9fd61c0aed73c228"
    assert all(len(v) == 64 and int(v, 16) >= 0 for v in m.values()) and "listing" in m and "cifar10-jpeg.tar" in m


@pytest.mark.slow
def test_committed_manifest_matches_the_shared_copy(capsys):
    src = SHARED_DATA / "cifar10-jpeg.tar.gz"
    if not src.is_file():
        pytest.skip(f"{src} absent")
    assert tool.main(["--check", str(src)]) == 0
    out = capsys.readouterr().out
    assert "listing of 60000 files: matches" in out and "cifar10-jpeg.tar.gz: matches" in out
