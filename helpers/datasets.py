"""Datasets and seeded splits (paper 1, sections 4.1-4.3; docs/methods.md section 2).

Every split is a list of stable sample ids (``train/00012`` = official CIFAR-10
training index 12, a relative file path for folder datasets, ...).  All later
per-sample arrays are joined on these ids, never on positions: the authors' code
kept LCR and conductance arrays in different orders (docs/methods.md section 9).

Loaders:

``digits``          scikit-learn's bundled 8x8 digits (no download); seeded stratified train/val/test.
``cifar10``         torchvision's CIFAR-10 (downloaded into data_dir when ``download: true``) or,
                    offline, an ImageFolder copy (``cifar10-jpeg/`` or ``cifar10-jpeg.tar.gz``);
                    train = the 50,000 training images, the 10,000 test images split 5,000/5,000
                    into validation/test with the profile's seed (paper 1, section 4.1.2).
``imagenet_subset`` an ImageNet-layout root (train/<wnid>/, val/<wnid>/): n classes by a seeded
                    shuffle, per class N train and M validation images from train/, official val as test.
``cub200``          the CUB_200_2011 layout; official train/test split, a seeded fraction of train as val.
``imagefolder``     any tree with train/<class>/ and test/<class>/ (val/<class>/ optional).

The folder datasets' fingerprint (part of the data key that roots every cache key and is recorded in
checkpoints) covers every file's name and content (sha256), never its mtime: an image replaced or
damaged in place is new data, and the same tree gives the same key on any machine.  Computing it opens
and decodes every image, so that an empty, damaged or too large one (a decompression bomb) is named before
any training.  Hidden and system entries (names starting with '.', ``__MACOSX``, ``Thumbs.db``,
``desktop.ini``) are never classes or images, and a class folder without images is refused.  16-bit and
float images are scaled to 8 bits (0..65535 and 0..1 to 0..255), not clipped.
"""
from __future__ import annotations

import io
import os
import sys
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from helpers.cache import one_line, params_hash
from helpers.paths import REPO_ROOT, cache_root
from helpers.profiles import ProfileError
from helpers.utils import atomic_path, file_sha256, set_aside

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SPLITS = ("train", "val", "test")


class DataNotFoundError(FileNotFoundError):
    """The data a profile asks for is not where the project looked."""


class DataDirError(DataNotFoundError, ProfileError):
    """The profile's explicit ``data_dir`` is not an existing folder (both a missing-data and a profile error)."""


class DamagedImageError(OSError):
    """A data file cannot be decoded as an image: truncated, corrupted, or not an image at all."""


#: names that are never data, wherever a class folder or an image list is read: any name starting with
#: '.' (``.DS_Store``, ``.ipynb_checkpoints``, AppleDouble ``._*`` files, ...) and these system names
SYSTEM_NAMES = frozenset({"__macosx", "thumbs.db", "desktop.ini", ".ds_store", ".ipynb_checkpoints"})
#: the most pixels (width x height) an image may have (8192 x 8192; PIL's own ``Image.MAX_IMAGE_PIXELS``
#: when lower): a larger one is refused as a possible decompression bomb, before it is decoded
MAX_IMAGE_PIXELS = 8192 * 8192


def is_hidden(name: str) -> bool:
    """Whether a file or folder name is a hidden or system entry that is never data (:data:`SYSTEM_NAMES`)."""
    return name.startswith(".") or name.lower() in SYSTEM_NAMES


def image_files(d) -> list[Path]:
    """The image files of folder ``d`` (by extension, :data:`IMAGE_EXTS`), sorted; hidden and system
    files (:func:`is_hidden`) and subfolders are not images."""
    with os.scandir(d) as entries:
        return sorted(Path(e.path) for e in entries
                      if not is_hidden(e.name) and os.path.splitext(e.name)[1].lower() in IMAGE_EXTS and e.is_file())


def pixel_limit() -> int:
    """The most pixels an image may have: :data:`MAX_IMAGE_PIXELS`, or PIL's limit when that is lower."""
    from PIL import Image

    pil = Image.MAX_IMAGE_PIXELS
    return min(MAX_IMAGE_PIXELS, int(pil)) if pil else MAX_IMAGE_PIXELS


def damaged_message(path, exc) -> str:
    """One line: which file is damaged, what is wrong (the decoder's exception, or a description), what to do."""
    why = exc if isinstance(exc, str) else f"it cannot be decoded ({one_line(exc)})"
    return f"{path}: damaged image file, {why}; replace it with an intact copy or remove it from the dataset"


def too_large_message(path, what: str) -> str:
    """One line: which image is over :func:`pixel_limit`, by how much, what is valid."""
    limit = pixel_limit()
    return (f"{path}: image of {what} is over the limit of {limit:,} pixels (a decompression bomb, or not an image "
            f"of this dataset); valid: at most {limit:,} pixels (helpers.datasets.MAX_IMAGE_PIXELS): downscale it or "
            "remove it from the dataset")


def open_image(src, shown):
    """PIL's image of ``src`` (a path or a binary file), its header checked: an empty file, an undecodable one
    and one of more than :func:`pixel_limit` pixels raise :class:`DamagedImageError` naming ``shown``.
    The pixels are not decoded yet (a bomb is refused before)."""
    from PIL import Image

    try:
        empty = (os.path.getsize(src) if isinstance(src, (str, os.PathLike)) else src.getbuffer().nbytes) == 0
        if empty:
            raise DamagedImageError(damaged_message(shown, "it is empty (0 bytes)"))
        im = Image.open(src)
    except (DamagedImageError, FileNotFoundError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DamagedImageError(too_large_message(shown, f"more pixels than PIL allows ({one_line(exc)})")) from exc
    except (OSError, SyntaxError, ValueError) as exc:  # UnidentifiedImageError is an OSError
        raise DamagedImageError(damaged_message(shown, exc)) from exc
    w, h = im.size
    if w * h > pixel_limit():
        im.close()
        raise DamagedImageError(too_large_message(shown, f"{w} x {h} = {w * h:,} pixels"))
    return im


def to_8bit(im, shown):
    """``im`` with 8 bits per channel: 16-bit grayscale (modes ``I;16*``, and ``I`` as PIL opened 16-bit
    PNGs) scaled from 0..65535 to 0..255, 32-bit float (``F``) from 0..1 to 0..255 (PIL's own conversion
    clips them to 0 / 255); any other mode unchanged (``convert`` handles palette, alpha, ...).  Values
    outside those ranges raise :class:`DamagedImageError` naming ``shown``."""
    from PIL import Image

    if not (im.mode.startswith("I;16") or im.mode in ("I", "F")):
        return im
    arr = np.asarray(im)
    top, valid = (1.0, "floats in [0, 1]") if im.mode == "F" else (65535, "integers in 0..65535")
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if not (np.isfinite(lo) and np.isfinite(hi) and lo >= 0 and hi <= top):
        raise DamagedImageError(f"{shown}: image of mode {im.mode} with values in [{lo:g}, {hi:g}]; valid for mode "
                                f"{im.mode}: {valid}: convert it to 8 or 16 bits or remove it from the dataset")
    if im.mode == "F":
        out = np.floor(arr.astype(np.float64) * 255.0 + 0.5)
    else:
        out = (arr.astype(np.int64) * 255 + 32767) // 65535  # rounded, 65535 -> 255
    return Image.fromarray(out.astype(np.uint8), mode="L")


def decode_image(src, mode: str, shown, size: int | None = None) -> np.ndarray:
    """The image of ``src`` (a path or a binary file) converted to PIL ``mode`` (16-bit and float images
    scaled to 8 bits, :func:`to_8bit`) and, when ``size`` is given, resized to ``size`` x ``size``: a uint8
    array.  A file that is empty, undecodable or too large raises :class:`DamagedImageError` naming ``shown``."""
    from PIL import Image

    try:
        with open_image(src, shown) as im:
            im = to_8bit(im, shown).convert(mode)
            if size is not None:
                im = im.resize((size, size), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except (DamagedImageError, FileNotFoundError):
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DamagedImageError(damaged_message(shown, exc)) from exc


def read_image(path, mode: str, size: int) -> np.ndarray:
    """The image file at ``path`` converted to PIL ``mode`` and resized to ``size`` x ``size`` (uint8 array).

    A file PIL cannot decode (or an empty or too large one) raises :class:`DamagedImageError` naming it (PIL's
    own message names no file)."""
    return decode_image(path, mode, path, size)


def check_image(path) -> str | None:
    """None when the image file at ``path`` decodes (a JPEG at reduced scale: the whole file is still read),
    else the one-line message of its :class:`DamagedImageError`."""
    from PIL import Image

    try:
        with open_image(path, path) as im:
            if im.format == "JPEG":
                im.draft(im.mode, (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
            to_8bit(im, path)
    except DamagedImageError as exc:
        return str(exc)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return damaged_message(path, exc)
    return None


# --------------------------------------------------------------------------- datasets
class ArrayImages(Dataset):
    """Images held in memory as uint8 (N, H, W, C); yields normalised float tensors and labels.

    ``mean``: one value per channel, or a (C, H, W) mean image (``normalize.pixel_mean``)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean, std, image_size: int):
        self.images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)  # N,C,H,W uint8
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        mean = torch.as_tensor(np.asarray(mean, dtype=np.float32))
        self.mean = mean if mean.dim() == 3 else mean.view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.image_size = image_size

    def __len__(self):
        return len(self.labels)

    def _convert(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().div_(255.0)
        c = self.mean.shape[0]
        if x.shape[-3] != c:  # grayscale <-> RGB, whichever the model takes
            x = x.mean(-3, keepdim=True)
            x = x.expand(*x.shape[:-3], c, *x.shape[-2:]).contiguous() if c != 1 else x
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            squeeze = x.dim() == 3
            x = F.interpolate(x[None] if squeeze else x, size=(self.image_size, self.image_size),
                              mode="bilinear", align_corners=False, antialias=True)
            x = x[0] if squeeze else x
        return (x - self.mean) / self.std

    def __getitem__(self, i):
        return self._convert(self.images[i]), self.labels[i]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images as one normalised float tensor (fast path for small datasets)."""
        return self._convert(self.images), self.labels


class FileImages(Dataset):
    """Images read from files; any size and mode (grayscale included) converted to the model's input."""

    def __init__(self, paths, labels, mean, std, image_size: int):
        self.paths = [str(p) for p in paths]
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.image_size = image_size

    def __len__(self):
        return len(self.paths)

    @property
    def nbytes(self) -> int:
        """Bytes of all images as one normalised float32 tensor (see :meth:`tensors`)."""
        return len(self) * self.mean.shape[0] * self.image_size ** 2 * 4

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images decoded once into one normalised float tensor, and the labels (for splits that
        are read many times, e.g. by every LCR mutant; :func:`evaluation.split_inputs` checks the size)."""
        return torch.stack([self[i][0] for i in range(len(self))]) if len(self) else torch.zeros(0), self.labels

    def __getitem__(self, i):
        arr = read_image(self.paths[i], "L" if self.mean.shape[0] == 1 else "RGB", self.image_size)
        x = torch.from_numpy(arr.copy()).float().div_(255.0)
        x = x[None] if x.dim() == 2 else x.permute(2, 0, 1)
        return (x - self.mean) / self.std, self.labels[i]


@dataclass
class SplitData:
    ids: np.ndarray
    labels: np.ndarray
    dataset: Dataset

    def __len__(self):
        return len(self.ids)


@dataclass
class DataBundle:
    """The three splits of one profile, their class names and where the data came from."""

    name: str
    classes: list
    splits: dict
    source: str
    in_channels: int
    image_size: int
    fingerprint: str = ""
    extra: dict = field(default_factory=dict)

    def __getitem__(self, split: str) -> SplitData:
        if split not in self.splits:
            raise KeyError(f"split: {split!r} is not valid; valid: {', '.join(self.splits)}")
        return self.splits[split]

    def loader(self, split: str, batch_size: int = 256, shuffle: bool = False, seed: int = 0,
               num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
        g = torch.Generator()
        g.manual_seed(seed)
        return DataLoader(self[split].dataset, batch_size=batch_size, shuffle=shuffle, generator=g,
                          num_workers=num_workers, pin_memory=pin_memory)

    def model_bundle(self) -> "DataBundle":
        """The data the model is trained and selected on: these splits, or, when the analysis splits
        are carved from held-out photos (``split.analysis_from_test``), the model's own train / val."""
        ms = self.extra.get("model_splits")
        if not ms:
            return self
        return DataBundle(self.name, self.classes, dict(ms), self.source, self.in_channels, self.image_size,
                          self.fingerprint)

    def manifest(self) -> pd.DataFrame:
        """One row per sample: id, split, label (the saved split manifest; the model's own training
        photos, when separate, as splits ``model_train`` and ``model_val``)."""
        named = list(self.splits.items()) + [(f"model_{k}", v) for k, v in self.extra.get("model_splits", {}).items()]
        frames = [pd.DataFrame({"id": s.ids, "split": name, "label": s.labels}) for name, s in named]
        return pd.concat(frames, ignore_index=True)


def denormalize(dataset, x) -> np.ndarray:
    """A normalised image tensor (C, H, W) of ``dataset`` as an (H, W, C) array in [0, 1] for imshow."""
    x = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    return np.clip((x * dataset.std.numpy() + dataset.mean.numpy()).transpose(1, 2, 0), 0, 1)


# --------------------------------------------------------------------------- helpers
def shown_path(path) -> str:
    """``path`` as the notebooks print it: relative to the repository when it lies in it or beside it
    (e.g. ``../shared/data/cub100``, also when ``../shared`` is a symbolic link, as the data search
    resolves links), so that committed outputs carry no machine's absolute paths."""
    path = Path(path).resolve()
    shared = REPO_ROOT.parent / "shared"
    for shown, base in ((Path("."), REPO_ROOT), (Path("..") / "shared", shared), (Path(".."), REPO_ROOT.parent)):
        base = base.resolve()
        if path.is_relative_to(base):
            return str(shown / path.relative_to(base))
    return str(path)


def explicit_data_dir(cfg: dict) -> Path | None:
    """The profile's ``data_dir`` as a path (a relative one is relative to the repository), or None when null."""
    if not cfg.get("data_dir"):
        return None
    p = Path(os.path.expandvars(os.path.expanduser(cfg["data_dir"])))
    return p if p.is_absolute() else (REPO_ROOT / p)


def check_data_dir(cfg: dict, layout: str) -> None:
    """Refuse an explicit ``data_dir`` that is not an existing folder, instead of silently searching the
    default places (which may hold other data).  ``layout``: what the folder should hold, for the message."""
    d = explicit_data_dir(cfg)
    if d is not None and not d.is_dir():
        raise DataDirError(f"data_dir: {cfg['data_dir']!r} ({d}) is not an existing folder for dataset "
                           f"{cfg['dataset']!r}; valid: an existing folder that holds {layout}, or null to search "
                           "$COMPANION_DATA_DIR, ./data and ../shared/data (docs/data-and-weights.md: how to get "
                           "each dataset)")


def data_search_dirs(cfg: dict) -> list[Path]:
    """Where data is looked for, in order: profile ``data_dir``, $COMPANION_DATA_DIR, ./data, ../shared/data."""
    explicit = explicit_data_dir(cfg)
    dirs = [explicit] if explicit is not None else []
    if os.environ.get("COMPANION_DATA_DIR"):
        dirs.append(Path(os.environ["COMPANION_DATA_DIR"]))
    dirs += [REPO_ROOT / "data", REPO_ROOT.parent / "shared" / "data"]
    out = []
    for d in dirs:
        d = d.resolve()
        if d not in out:
            out.append(d)
    return out



def _rng(seed: int, *salt) -> np.random.Generator:
    return np.random.default_rng([seed, *[abs(hash_int(s)) for s in salt]])


def hash_int(s) -> int:
    return int(params_hash(s, length=8), 16)


FRACTION = "a fraction in (0, 0.9]"


def split_setting(cfg: dict, key: str, default, valid: str):
    """``split.<key>``, or ``default`` when it is null.  An explicit 0 is refused with a
    :class:`~helpers.profiles.ProfileError` (the schema lets fractions reach 0, but every split the
    setting sizes is needed by the analysis); ``valid`` describes the valid range for the message."""
    val = cfg["split"][key]
    if val is None:
        return default
    if val <= 0:
        raise ProfileError(f"profile: 'split.{key}' = {val!r} is not valid for dataset {cfg['dataset']!r}: the "
                           f"split it sizes would be empty; valid: {valid}, or null for the default {default}")
    return val


def _limit(idx: np.ndarray, n: int | None, seed: int, salt: str) -> np.ndarray:
    if n is None or n >= len(idx):
        return idx
    return np.sort(_rng(seed, "limit", salt).choice(idx, size=n, replace=False))


def _stratified_three_way(labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int):
    """Seeded stratified split of positions into train/val/test."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    rest, test = train_test_split(idx, test_size=test_fraction, stratify=labels, random_state=seed)
    rel_val = val_fraction / (1.0 - test_fraction)
    train, val = train_test_split(rest, test_size=rel_val, stratify=labels[rest], random_state=seed + 1)
    return np.sort(train), np.sort(val), np.sort(test)


def _make_bundle(cfg, name, classes, ids, labels, make_ds, source, fingerprint, in_channels) -> DataBundle:
    """ids/labels: dict split -> arrays of the full splits; applies limit_* and builds datasets."""
    splits = {}
    for s in SPLITS:
        pos = _limit(np.arange(len(ids[s])), cfg["split"][f"limit_{s}"], cfg["seed"], s)
        splits[s] = SplitData(np.asarray(ids[s])[pos], np.asarray(labels[s], dtype=np.int64)[pos], make_ds(s, pos))
    return DataBundle(name, list(classes), splits, source, in_channels, cfg["image_size"], fingerprint)


# --------------------------------------------------------------------------- digits
def load_digits_bundle(cfg: dict) -> DataBundle:
    """scikit-learn's 1,797 8x8 handwritten digits, bundled with the package: no download."""
    from sklearn.datasets import load_digits

    val_fraction = split_setting(cfg, "val_fraction", 0.2, FRACTION)
    test_fraction = split_setting(cfg, "test_fraction", 0.2, FRACTION)
    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]  # N,8,8,1
    labels = d.target.astype(np.int64)
    tr, va, te = _stratified_three_way(labels, val_fraction, test_fraction, cfg["seed"])
    pos = {"train": tr, "val": va, "test": te}
    ids = {s: np.array([f"digits/{i:04d}" for i in p]) for s, p in pos.items()}
    lab = {s: labels[p] for s, p in pos.items()}
    mean, std = cfg["normalize"]["mean"], cfg["normalize"]["std"]

    def make_ds(s, sel):
        return ArrayImages(images[pos[s][sel]], lab[s][sel], mean, std, cfg["image_size"])

    return _make_bundle(cfg, "digits", [str(i) for i in range(10)], ids, lab, make_ds,
                        "sklearn.datasets.load_digits", params_hash("digits", images.shape), len(mean))


# --------------------------------------------------------------------------- cifar10
def _cifar_from_torchvision(root: Path, download: bool):
    import torchvision

    tr = torchvision.datasets.CIFAR10(str(root), train=True, download=download)
    te = torchvision.datasets.CIFAR10(str(root), train=False, download=download)
    return (np.asarray(tr.data), np.asarray(tr.targets)), (np.asarray(te.data), np.asarray(te.targets))


def _data_parts(rel: str) -> list[str] | None:
    """The parts of the relative path ``rel`` of a file in a folder or archive, or None when one of them is a
    hidden or system name (:func:`is_hidden`: ``__MACOSX/``, ``._*``, ``.ipynb_checkpoints/``, ...)."""
    parts = [x for x in rel.replace("\\", "/").split("/") if x not in ("", ".")]
    return None if any(is_hidden(x) for x in parts) else parts


def _cifar_folder_files(src: Path) -> dict[str, Path]:
    """{relative path: file} of the image files of an extracted CIFAR-10 copy, hidden and system ones left out."""
    files = {}
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = [d for d in dirnames if not is_hidden(d)]
        for name in filenames:
            if not is_hidden(name) and os.path.splitext(name)[1].lower() in IMAGE_EXTS:
                p = Path(dirpath) / name
                files[p.relative_to(src).as_posix()] = p
    return dict(sorted(files.items()))


def _cifar_from_imagefolder(src: Path):
    """Decode an ImageFolder copy (folder or .tar.gz) of CIFAR-10 into uint8 arrays, in official order.
    Hidden and system files are left out; an image that is damaged, not 32 x 32, or a second copy of an
    index is named (:class:`DamagedImageError`)."""
    out = {"train": {}, "test": {}}
    cls_index = {c: i for i, c in enumerate(CIFAR10_CLASSES)}

    def add(rel: str, data: bytes):
        parts = _data_parts(rel)
        if parts is None or len(parts) < 3 or parts[-3] not in out or parts[-2] not in cls_index:
            return
        stem = os.path.splitext(parts[-1])[0]
        if not stem.isdigit():
            return
        shown = f"{src}: {rel}" if src.is_file() else src / rel
        arr = decode_image(io.BytesIO(data), "RGB", shown)
        if arr.shape != (32, 32, 3):
            raise DamagedImageError(f"{shown}: image of {arr.shape[1]} x {arr.shape[0]} pixels is not a CIFAR-10 "
                                    "image; valid: 32 x 32: replace it with the original or remove it")
        split, idx = parts[-3], int(stem)
        if idx in out[split]:
            raise DamagedImageError(f"{shown}: a second image of {split} index {idx} (the first: "
                                    f"{out[split][idx][2]}); valid: one image per index: remove one of them")
        out[split][idx] = (arr, cls_index[parts[-2]], shown)

    if src.is_file():
        with tarfile.open(src) as tf:
            for m in tf:
                if m.isfile() and m.name.lower().endswith(IMAGE_EXTS):
                    add(m.name, tf.extractfile(m).read())
    else:
        for rel, p in _cifar_folder_files(src).items():
            add(rel, p.read_bytes())
    res = []
    for s in ("train", "test"):
        keys = sorted(out[s])
        if not keys:
            raise DataNotFoundError(f"{src}: no {s}/<class>/<index>.jpg images found (expected the layout of "
                                    "docs/data-and-weights.md)")
        res.append((np.stack([out[s][k][0] for k in keys]), np.array([out[s][k][1] for k in keys]),
                    np.array(keys)))
    return res


CIFAR_ARRAYS = ("xtr", "ytr", "itr", "xte", "yte", "ite")


def cifar_cache_key(src: Path) -> str:
    """The key of the decoded copy of ``src`` (``cifar10-imagefolder-<key>.npz``): its content, never its path,
    size or mtime (an image replaced in place is other data): a .tar.gz's sha256, or an extracted folder's
    file list and each file's sha256 (:func:`content_digest`)."""
    if src.is_file():
        return params_hash("cifar10-jpeg decode", "archive sha256", file_sha256(src))
    files = _cifar_folder_files(src)
    return params_hash("cifar10-jpeg decode", "folder files", content_digest(files, check_images=False))


def _read_cifar_cache(cached: Path):
    """The six arrays of a decoded copy, or None when ``cached`` is damaged: then it is set aside
    (``<file>.corrupt``) and one line on stderr says so (as :class:`helpers.cache.StageCache` does)."""
    try:
        with np.load(cached, allow_pickle=False) as z:
            arrays = tuple(z[k] for k in CIFAR_ARRAYS)
        xtr, ytr, itr, xte, yte, ite = arrays
        if not (len(xtr) == len(ytr) == len(itr) > 0 and len(xte) == len(yte) == len(ite) > 0
                and xtr.dtype == xte.dtype == np.uint8 and xtr.shape[1:] == xte.shape[1:] == (32, 32, 3)):
            raise ValueError("arrays of inconsistent lengths or shapes")
        return arrays
    except MemoryError:
        raise
    except Exception as exc:  # truncated or damaged: BadZipFile, EOFError, KeyError, ValueError, ...
        aside = set_aside(cached)
        print(f"cifar10: cached decoded dataset {cached} is corrupt ({one_line(exc)}); set aside as {aside.name}, "
              "decoding again", file=sys.stderr, flush=True)
        return None


CIFAR_LAYOUT = ("cifar10-jpeg.tar.gz, cifar10-jpeg/ or cifar-10-batches-py/ (or set `download: true` to let "
                "torchvision download into it)")


def _find_cifar(cfg: dict):
    """Return (kind, path) for the first CIFAR-10 source found."""
    if not cfg.get("download"):  # with download, torchvision creates data_dir
        check_data_dir(cfg, CIFAR_LAYOUT)
    tried = []
    for d in data_search_dirs(cfg):
        tv = d / "cifar-10-batches-py"
        tried.append(str(tv))
        if tv.is_dir():
            return "torchvision", d
        for name in ("cifar10-jpeg", "cifar10-jpeg.tar.gz"):
            p = d / name
            tried.append(str(p))
            if p.exists():
                return "imagefolder", p
    if cfg.get("download"):
        d = data_search_dirs(cfg)[0]
        return "download", d
    raise DataNotFoundError(
        "dataset 'cifar10': no copy found; looked at:\n  " + "\n  ".join(tried) +
        "\nProvide it one of these ways:\n"
        "  - online: set `download: true` in the profile (torchvision downloads into data_dir)\n"
        "  - offline: put cifar10-jpeg.tar.gz (or its extracted cifar10-jpeg/ folder with "
        "train/<class>/<index>.jpg and test/<class>/<index>.jpg) in data_dir, ./data or ../shared/data,\n"
        "    or set COMPANION_DATA_DIR to the folder that holds it"
    )


def load_cifar10_bundle(cfg: dict) -> DataBundle:
    """CIFAR-10: 50,000 train; the 10,000 test images split into validation/test with the seed."""
    kind, path = _find_cifar(cfg)
    if kind in ("torchvision", "download"):
        try:
            (xtr, ytr), (xte, yte) = _cifar_from_torchvision(path, download=(kind == "download"))
        except Exception as exc:
            raise DataNotFoundError(f"dataset 'cifar10': torchvision could not load or download into {path} "
                                    f"({type(exc).__name__}: {exc}); see the offline options in "
                                    "docs/data-and-weights.md") from exc
        itr, ite = np.arange(len(ytr)), np.arange(len(yte))
        source = f"torchvision CIFAR10 at {shown_path(path)}"
    else:
        cached = cache_root() / "datasets" / f"cifar10-imagefolder-{cifar_cache_key(path)}.npz"
        arrays = _read_cifar_cache(cached) if cached.is_file() else None
        if arrays is None:
            (xtr, ytr, itr), (xte, yte, ite) = _cifar_from_imagefolder(path)
            with atomic_path(cached) as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, xtr=xtr, ytr=ytr, itr=itr, xte=xte, yte=yte, ite=ite)
        else:
            xtr, ytr, itr, xte, yte, ite = arrays
        source = f"ImageFolder copy {path.name}"
    n_val = split_setting(cfg, "val_from_test", len(yte) // 2, "a count of at least 1")
    if not 0 < n_val < len(yte):
        raise ValueError(f"split.val_from_test: {n_val} must be between 1 and {len(yte) - 1}")
    perm = np.random.default_rng(cfg["seed"]).permutation(len(yte))
    val_pos, test_pos = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    ids = {"train": np.array([f"train/{i:05d}" for i in itr]),
           "val": np.array([f"test/{i:05d}" for i in ite[val_pos]]),
           "test": np.array([f"test/{i:05d}" for i in ite[test_pos]])}
    lab = {"train": ytr, "val": yte[val_pos], "test": yte[test_pos]}
    imgs = {"train": xtr, "val": xte[val_pos], "test": xte[test_pos]}
    mean, std = cfg["normalize"]["mean"], cfg["normalize"]["std"]
    if cfg["normalize"].get("pixel_mean"):  # Keras' example: x / 255 minus the training images' mean image
        mean = (xtr.astype(np.float64).mean(0) / 255.0).astype(np.float32).transpose(2, 0, 1)  # C, H, W
    fp = params_hash(source.split(" at ")[0], xtr.shape, int(xtr[:, ::7, ::7].sum()), int(xte[:, ::7, ::7].sum()))

    def make_ds(s, sel):
        return ArrayImages(imgs[s][sel], lab[s][sel], mean, std, cfg["image_size"])

    return _make_bundle(cfg, "cifar10", CIFAR10_CLASSES, ids, lab, make_ds, source, fp, len(std))


# --------------------------------------------------------------------------- folder datasets
def _find_root(cfg: dict, dataset: str, must_have: list[str], hint: str) -> Path:
    """The first folder among :func:`data_search_dirs` (or its ``dataset`` / CUB_200_2011 subfolder) that
    holds ``must_have``; an explicit ``data_dir`` that does not exist is refused first."""
    check_data_dir(cfg, hint)
    tried = []
    for d in data_search_dirs(cfg):
        for cand in (d, d / dataset, d / "CUB_200_2011"):
            tried.append(str(cand))
            if all((cand / m).exists() for m in must_have):
                return cand
    raise DataNotFoundError(f"dataset {dataset!r}: not found; looked for {', '.join(must_have)} in:\n  "
                            + "\n  ".join(dict.fromkeys(tried)) + f"\nExpected layout: {hint}. Set `data_dir` "
                            "in the profile or COMPANION_DATA_DIR to the folder that holds it.")


def class_folders(d: Path) -> list[Path]:
    """The class folders of ``d`` (its subfolders but hidden and system ones: :func:`is_hidden`), sorted."""
    return sorted(c for c in d.iterdir() if c.is_dir() and not is_hidden(c.name))


def refuse_empty_classes(dataset: str, empty: list) -> None:
    """Refuse class folders without image files (they would become classes without data)."""
    if empty:
        raise DataNotFoundError(
            f"dataset {dataset!r}: class folder(s) with no image files: {', '.join(str(d) for d in empty)}; valid: "
            f"a class folder holds at least one image ({', '.join(IMAGE_EXTS)}; hidden and system files such as "
            "._*, .DS_Store and Thumbs.db are ignored): add its images or remove the folder")


def _list_class_dir(d: Path, dataset: str = "imagefolder") -> dict[str, list[Path]]:
    """{class name: its image files} of the class folders of ``d``; an empty class folder is refused."""
    out = {c.name: image_files(c) for c in class_folders(d)}
    refuse_empty_classes(dataset, [d / c for c, ps in out.items() if not ps])
    return out


def file_digest(path) -> str:
    """sha256 of one file's bytes (32 hex digits): its content, not its name, size or mtime."""
    return file_sha256(path, 32)


def content_digest(files: dict, check_images: bool = True) -> str:
    """One hash of every file's content, keyed by sample id (``{id: path}``): the same tree gives the same
    digest on any machine and at any mtime; replacing, fixing or corrupting one file in place changes it.

    With ``check_images``, every file is also opened and decoded (:func:`check_image`), so that an empty,
    damaged or too large image is named (:class:`DamagedImageError`) before any training, not when a
    later stage first reads it.  Files are read by a few threads (hashing and decoding release the GIL)."""
    ids = sorted(files)

    def one(i):
        return file_digest(files[i]), (check_image(files[i]) if check_images else None)

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = list(pool.map(one, ids))
    bad = [msg for _, msg in results if msg is not None]
    if bad:
        more = f" (and {len(bad) - 1} more damaged image file(s))" if len(bad) > 1 else ""
        raise DamagedImageError(bad[0] + more)
    return params_hash("sha256 of each file", [(i, d) for i, (d, _) in zip(ids, results)], length=32)


def _files_bundle(cfg, name, classes, files: dict, root: Path, source: str,
                  model_files: dict | None = None) -> DataBundle:
    """files: split -> list of (path, label).  ``model_files`` (train, val): the model's own training
    photos when the analysis splits are carved from the test photos (``split.analysis_from_test``)."""
    def ids_labels(items):
        return (np.array([str(Path(p).relative_to(root)).replace(os.sep, "/") for p, _ in items]),
                np.array([label for _, label in items], dtype=np.int64))

    ids, lab = {}, {}
    for s in SPLITS:
        ids[s], lab[s] = ids_labels(files[s])
    mean, std = cfg["normalize"]["mean"], cfg["normalize"]["std"]
    for s in SPLITS:
        if len(ids[s]) == 0:
            raise DataNotFoundError(f"dataset {name!r} at {root}: split {s!r} has no images")

    def make_ds(s, sel):
        return FileImages([files[s][i][0] for i in sel], lab[s][sel], mean, std, cfg["image_size"])

    fp_parts = {s: list(ids[s]) for s in SPLITS}
    paths = {i: p for s in SPLITS for i, (p, _) in zip(ids[s], files[s])}
    model_splits = {}
    for s, items in (model_files or {}).items():
        m_ids, m_lab = ids_labels(items)
        model_splits[s] = SplitData(m_ids, m_lab,
                                    FileImages([p for p, _ in items], m_lab, mean, std, cfg["image_size"]))
        fp_parts[f"model_{s}"] = list(m_ids)
        paths.update(zip(m_ids, (p for p, _ in items)))
    # the names AND the bytes: an image replaced or damaged in place changes the data key (not mtimes:
    # the key is compared with the committed checkpoints' records made on other machines)
    fp = params_hash(name, fp_parts, content_digest(paths))
    bundle = _make_bundle(cfg, name, classes, ids, lab, make_ds, source, fp, len(mean))
    if model_splits:
        bundle.extra["model_splits"] = model_splits
    return bundle


def _seeded_fraction(items: list, fraction: float, seed: int, salt: str):
    perm = _rng(seed, salt).permutation(len(items))
    n = int(round(len(items) * fraction))
    val = set(perm[:n].tolist())
    return [x for i, x in enumerate(items) if i not in val], [x for i, x in enumerate(items) if i in val]


def load_imagefolder_bundle(cfg: dict) -> DataBundle:
    """train/<class>/ and test/<class>/ (val/<class>/ optional, else a seeded fraction of train)."""
    root = _find_root(cfg, "imagefolder", ["train", "test"], "train/<class>/*.jpg, test/<class>/*.jpg, optional val/")
    has_val = (root / "val").is_dir()
    val_fraction = None if has_val else split_setting(cfg, "val_fraction", 0.1, FRACTION)
    tr = _list_class_dir(root / "train")
    classes = sorted(tr)
    cidx = {c: i for i, c in enumerate(classes)}

    def pairs(d):
        out = []
        for c, ps in _list_class_dir(d).items():
            if c not in cidx:
                raise ValueError(f"dataset 'imagefolder': class {c!r} in {d} is not among the train classes")
            out += [(p, cidx[c]) for p in ps]
        return out

    train = [(p, cidx[c]) for c in classes for p in tr[c]]
    if has_val:
        val = pairs(root / "val")
    else:
        train, val = _seeded_fraction(train, val_fraction, cfg["seed"], "val")
    return _files_bundle(cfg, "imagefolder", classes, {"train": train, "val": val, "test": pairs(root / "test")},
                         root, f"ImageFolder at {root}")


def _has_image(d: Path) -> bool:
    """Whether folder ``d`` holds an image file (stops at the first: cheap on a full ImageNet train/)."""
    with os.scandir(d) as entries:
        return any(not is_hidden(e.name) and os.path.splitext(e.name)[1].lower() in IMAGE_EXTS and e.is_file()
                   for e in entries)


def load_imagenet_subset_bundle(cfg: dict) -> DataBundle:
    """Paper 1's ImageNet subsets: n seeded classes; N train / M val per class from train/, official val as test."""
    n = split_setting(cfg, "n_classes", 50, "a count of at least 2")
    n_tr = split_setting(cfg, "train_per_class", 500, "a count of at least 1")
    n_va = split_setting(cfg, "val_per_class", 50, "a count of at least 1")
    root = _find_root(cfg, "imagenet", ["train", "val"], "train/<wnid>/*.JPEG and val/<wnid>/*.JPEG")
    wnids = [c.name for c in class_folders(root / "train")]
    refuse_empty_classes("imagenet_subset", [root / "train" / w for w in wnids if not _has_image(root / "train" / w)])
    if n > len(wnids):
        raise ValueError(f"split.n_classes: {n} but {root / 'train'} has only {len(wnids)} classes")
    chosen = sorted(_rng(cfg["seed"], "classes").permutation(wnids)[:n].tolist())
    files = {"train": [], "val": [], "test": []}
    for ci, w in enumerate(chosen):
        ps = image_files(root / "train" / w)
        ps = [ps[i] for i in _rng(cfg["seed"], "per-class", w).permutation(len(ps))]
        if len(ps) < n_tr + n_va:
            raise ValueError(f"split.train_per_class + val_per_class = {n_tr + n_va} "
                             f"but class {w} has {len(ps)} images")
        files["train"] += [(p, ci) for p in sorted(ps[:n_tr])]
        files["val"] += [(p, ci) for p in sorted(ps[n_tr:n_tr + n_va])]
        vd = root / "val" / w
        test = image_files(vd) if vd.is_dir() else []
        if vd.is_dir() and not test:
            refuse_empty_classes("imagenet_subset", [vd])
        files["test"] += [(p, ci) for p in test]
    return _files_bundle(cfg, "imagenet_subset", chosen, files, root, f"ImageNet layout at {root}")


def load_cub200_bundle(cfg: dict) -> DataBundle:
    """CUB-200-2011: official train/test split (train_test_split.txt), a seeded fraction of train as val."""
    val_fraction = split_setting(cfg, "val_fraction", 0.1, FRACTION)
    need = ["images.txt", "image_class_labels.txt", "train_test_split.txt"]
    root = _find_root(cfg, "cub200", need, "CUB_200_2011/{images.txt, image_class_labels.txt, "
                      "train_test_split.txt, classes.txt, images/}")

    def table(name):
        return dict(line.split(maxsplit=1) for line in (root / name).read_text().splitlines() if line.strip())

    paths, labels, is_train = table("images.txt"), table("image_class_labels.txt"), table("train_test_split.txt")
    classes_txt = root / "classes.txt"
    n_cls = max(int(v) for v in labels.values())
    classes = [c for _, c in sorted((int(k), v) for k, v in table("classes.txt").items())] if classes_txt.is_file() \
        else [str(i) for i in range(1, n_cls + 1)]
    items = {"train": [], "test": []}
    for k in sorted(paths, key=int):
        items["train" if is_train[k].strip() == "1" else "test"].append(
            (root / "images" / paths[k].strip(), int(labels[k]) - 1))
    train, val = _seeded_fraction(items["train"], val_fraction, cfg["seed"], "val")
    pool = cfg["split"]["analysis_from_test"]
    if pool:  # the model trains on the official train photos; every analysis split is unseen test photos
        test = items["test"]
        try:
            pos = _stratified_three_way(np.array([label for _, label in test]), pool[1], pool[2], cfg["seed"])
        except ValueError as exc:  # scikit-learn: a split smaller than the number of classes
            raise ValueError(f"split.analysis_from_test = {pool}: {len(test)} test photos of {len(classes)} classes "
                             f"cannot be split stratified this way ({exc}); use larger fractions or more data") from exc
        files = {s: [test[i] for i in p] for s, p in zip(SPLITS, pos)}
        return _files_bundle(cfg, "cub200", classes, files, root,
                             f"CUB-200-2011 at {shown_path(root)} (analysis splits from the official test photos)",
                             model_files={"train": train, "val": val})
    return _files_bundle(cfg, "cub200", classes, {"train": train, "val": val, "test": items["test"]}, root,
                         f"CUB-200-2011 at {shown_path(root)}")


LOADERS = {
    "digits": load_digits_bundle,
    "cifar10": load_cifar10_bundle,
    "imagefolder": load_imagefolder_bundle,
    "imagenet_subset": load_imagenet_subset_bundle,
    "cub200": load_cub200_bundle,
}


def load_data(cfg: dict) -> DataBundle:
    """Build the profile's splits (see the module docstring)."""
    return LOADERS[cfg["dataset"]](cfg)


def split_summary(data: DataBundle) -> pd.DataFrame:
    """Counts per class (rows) and split (columns), with a total row."""
    rows = {name: pd.Series(sd.labels).value_counts().reindex(range(len(data.classes)), fill_value=0)
            for name, sd in data.splits.items()}
    df = pd.DataFrame(rows)
    df.index = [str(c) for c in data.classes]
    df.loc["total"] = df.sum()
    df.index.name = "class"
    return df.reset_index()
