"""docs/tools/build_cub100.py, the recipe that makes shared/data/cub100 from the serizba/vision
checkout (docs/data-and-weights.md, "cub100").

The recipe reads ``ex03/task2/bird_dataset/`` from the git objects at HEAD: ``classes.txt``
(``0, Name``), ``images.txt`` (``0, Name/0000.jpg``), ``image_class_labels.txt`` (``0, 0``),
``train_test_split.txt`` (``0, 1``, where the source's 0 means training) and ``images/Name/*.jpg``.
A tiny synthetic tree in that layout checks the mapping; the slow test rebuilds the source layout
from the cub100 copy itself and checks that the recipe gives that copy back byte for byte (which
checks the recipe's mapping, not the public repository's content)."""
import hashlib
import io
import os
import shutil
import subprocess
import sys

import pytest

from helpers.paths import REPO_ROOT

from .conftest import SHARED_DATA

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="the recipe reads a git repository")

SRC = "ex03/task2/bird_dataset"
#: the canonical listing digest in shared/data/cub100/README.md and docs/data-and-weights.md
CUB100_DIGEST = "49fe663ceb4f35eddeabdd0b8a36783d25f7131b426e4fdb5cb6aba6d084c38e"
GIT_ENV = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}


@pytest.fixture(scope="module")
def tool():
    sys.path.insert(0, str(REPO_ROOT / "docs" / "tools"))
    try:
        import build_cub100
    finally:
        sys.path.pop(0)
    return build_cub100


def git(gd, *args, stdin=None, env=None):
    return subprocess.run(["git", "--git-dir", str(gd), *args], input=stdin, check=True,
                          capture_output=True, env=env or GIT_ENV).stdout


def git_source(gd, files):
    """A bare repository whose HEAD holds `files` ({path under SRC: file on disk}) under SRC."""
    subprocess.run(["git", "init", "-q", "--bare", str(gd)], check=True, env=GIT_ENV)
    paths = list(files)
    shas = git(gd, "hash-object", "-w", "--stdin-paths",
               stdin="".join(f"{files[p]}\n" for p in paths).encode()).decode().split()
    env = {**GIT_ENV, "GIT_INDEX_FILE": str(gd / "build-index")}
    git(gd, "update-index", "--add", "--index-info", env=env,
        stdin="".join(f"100644 {s}\t{SRC}/{p}\n" for s, p in zip(shas, paths)).encode())
    tree = git(gd, "write-tree", env=env).decode().strip()
    commit = git(gd, "commit-tree", "-m", "source", tree).decode().strip()
    git(gd, "update-ref", "HEAD", commit)
    return dict(zip(paths, shas))


def write_text(path, lines):
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def jpeg(i):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (40 * i % 256, 255 - 30 * i % 256, 7 * i % 256)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


#: (name, test images, training images) per source class 0..2; the source lists every class's
#: test images first (source flag 1), then every class's training images (source flag 0)
SYNTH = [("Alpha_Bird", 2, 3), ("Beta_Bird", 1, 3), ("Gamma_Bird", 2, 2)]


def synthetic_source(tmp_path):
    """The serizba layout in miniature; returns the git dir and the expected CUB-format rows."""
    disk = tmp_path / "files"
    disk.mkdir()
    files, images, n = {}, [], 0
    for training in (False, True):
        for c, (name, n_test, n_train) in enumerate(SYNTH):
            first, count = (n_test, n_train) if training else (0, n_test)
            for k in range(first, first + count):
                n += 1
                f = disk / f"img{n}.jpg"
                f.write_bytes(jpeg(n))
                files[f"images/{name}/{k:04d}.jpg"] = f
                images.append((f"{name}/{k:04d}.jpg", c, 0 if training else 1, f))
    files["classes.txt"] = write_text(disk / "classes.txt", [f"{c}, {s[0]}" for c, s in enumerate(SYNTH)])
    files["images.txt"] = write_text(disk / "images.txt", [f"{i}, {p}" for i, (p, *_) in enumerate(images)])
    files["image_class_labels.txt"] = write_text(disk / "image_class_labels.txt",
                                                 [f"{i}, {c}" for i, (_, c, _, _) in enumerate(images)])
    files["train_test_split.txt"] = write_text(disk / "train_test_split.txt",
                                               [f"{i}, {f}" for i, (_, _, f, _) in enumerate(images)])
    blobs = git_source(tmp_path / "vision.git", files)
    return tmp_path / "vision.git", images, blobs


def check_flags(out, expected):
    got = [line.split()[1] for line in (out / "train_test_split.txt").read_text().splitlines()]
    assert got == expected, (got, expected)


def test_synthetic_source(tmp_path, tool):
    """Layout, 1-based class numbering with NNN.Name folders, inverted flags, JPEG bytes unchanged."""
    gd, images, blobs = synthetic_source(tmp_path)
    out = tmp_path / "cub"
    n_train = sum(s[2] for s in SYNTH)
    assert tool.build(gd, out, counts=(3, n_train, len(images) - n_train)) == len(images) == 13

    folders = ["001.Alpha_Bird", "002.Beta_Bird", "003.Gamma_Bird"]
    assert (out / "classes.txt").read_text() == "".join(f"{c} {d}\n" for c, d in enumerate(folders, 1))
    rel = [f"{folders[c]}/{p.split('/')[1]}" for p, c, _, _ in images]
    assert (out / "images.txt").read_text() == "".join(f"{i} {r}\n" for i, r in enumerate(rel, 1))
    assert (out / "image_class_labels.txt").read_text() == \
        "".join(f"{i} {c + 1}\n" for i, (_, c, _, _) in enumerate(images, 1))
    # CUB: 1 = training.  The first five are the source's test images (its flag 1).
    check_flags(out, ["0"] * 5 + ["1"] * 8)
    assert rel[:5] == ["001.Alpha_Bird/0000.jpg", "001.Alpha_Bird/0001.jpg", "002.Beta_Bird/0000.jpg",
                       "003.Gamma_Bird/0000.jpg", "003.Gamma_Bird/0001.jpg"]
    assert rel[5] == "001.Alpha_Bird/0002.jpg"  # training images follow the test ones in each folder

    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == sorted(["classes.txt", "images.txt", "image_class_labels.txt",
                              "train_test_split.txt"] + [f"images/{r}" for r in rel])
    assert sorted(p.name for p in (out / "images").iterdir()) == folders
    for r, (p, _, _, f) in zip(rel, images):
        data = (out / "images" / r).read_bytes()
        assert data == f.read_bytes()
        assert hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() == blobs[f"images/{p}"]


def test_dropping_the_flag_inversion_is_caught(tmp_path, tool, monkeypatch):
    """Without the inversion the written flags mark the test images as training, and the check of
    test_synthetic_source fails; a source whose flag counts are the other way round is refused."""
    gd, images, _ = synthetic_source(tmp_path)
    counts = (3, 8, 5)
    monkeypatch.setattr(tool, "cub_flag", lambda flag: flag)
    tool.build(gd, tmp_path / "uninverted", counts=counts)
    with pytest.raises(AssertionError):
        check_flags(tmp_path / "uninverted", ["0"] * 5 + ["1"] * 8)
    monkeypatch.undo()
    with pytest.raises(AssertionError):
        tool.build(gd, tmp_path / "swapped", counts=(3, 5, 8))


def listing(root, skip=("README.md",)):
    """The canonical listing of cub100/README.md: `sha256sum` lines of every file, paths sorted bytewise."""
    paths = sorted((p.relative_to(root).as_posix() for p in root.rglob("*")
                    if p.is_file() and p.name not in skip), key=str.encode)
    return "".join(f"{hashlib.sha256((root / p).read_bytes()).hexdigest()}  {p}\n" for p in paths)


def source_from_copy(cub, tmp_path):
    """The serizba layout rebuilt from a cub100 copy: the recipe's mapping inverted."""
    def rows(name):
        return [line.split(" ", 1) for line in (cub / name).read_text().splitlines()]

    names = {d: d[4:] for _, d in rows("classes.txt")}
    images = rows("images.txt")
    txt = tmp_path / "txt"
    txt.mkdir()
    files = {f"images/{names[p.split('/')[0]]}/{p.split('/')[1]}": cub / "images" / p for _, p in images}
    files["classes.txt"] = write_text(txt / "classes.txt", [f"{int(c) - 1}, {d[4:]}" for c, d in rows("classes.txt")])
    files["images.txt"] = write_text(txt / "images.txt",
                                     [f"{int(i) - 1}, {names[p.split('/')[0]]}/{p.split('/')[1]}" for i, p in images])
    files["image_class_labels.txt"] = write_text(txt / "image_class_labels.txt",
                                                 [f"{int(i) - 1}, {int(c) - 1}"
                                                  for i, c in rows("image_class_labels.txt")])
    files["train_test_split.txt"] = write_text(txt / "train_test_split.txt",  # the source's 0 = training
                                               [f"{int(i) - 1}, {1 - int(f)}" for i, f in rows("train_test_split.txt")])
    git_source(tmp_path / "vision.git", files)
    return tmp_path / "vision.git"


@pytest.mark.slow
def test_rebuilds_the_shared_copy(tmp_path, tool):
    """From the source layout rebuilt out of shared/data/cub100, the recipe writes that copy again:
    the same 5,906 files, byte for byte, and the documented canonical digest."""
    cub = SHARED_DATA / "cub100"
    if not (cub / "images.txt").is_file():
        pytest.skip("shared/data/cub100 is not here")
    out = tmp_path / "cub100"
    assert tool.build(source_from_copy(cub, tmp_path), out) == 5902
    want, got = listing(cub), listing(out)
    assert got.count("\n") == 5906
    assert got == want
    assert hashlib.sha256(got.encode()).hexdigest() == CUB100_DIGEST
    assert CUB100_DIGEST in (cub / "README.md").read_text()
    assert CUB100_DIGEST in (REPO_ROOT / "docs" / "data-and-weights.md").read_text()
