"""Seeds, devices, atomic file writes: the conventions every stage shares."""
from __future__ import annotations

import contextlib
import json
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

DEVICES = ("auto", "cpu", "cuda")
_UMASK = os.umask(0)
os.umask(_UMASK)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA); return a torch.Generator seeded the same."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def get_device(pref: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else CPU (with ``COMPANION_SIMULATED_ACCELERATOR=1``: the simulated
    accelerator of :mod:`helpers.simdevice`).  ``cuda`` without a GPU is an error.  When a GPU is present but
    torch cannot use it (typically a driver older than the CUDA build needs), ``auto`` says so on the console
    before it falls back to the CPU."""
    if isinstance(pref, torch.device):  # a device already chosen (e.g. an experiment's, passed on)
        return pref
    if isinstance(pref, str) and pref.startswith("sim"):  # the simulated accelerator, by name (sim:0)
        from . import simdevice

        if pref not in ("sim", "sim:0"):  # there is one simulated device: never hand out sim:0 for sim:1
            raise ValueError(f"device: {pref!r} is not valid; the simulated accelerator has one device: "
                             "'sim' or 'sim:0'")
        if not simdevice.enabled():
            raise ValueError(f"device: {pref!r} is the simulated accelerator; set {simdevice.ENV}=1 to use it")
        return simdevice.register()
    if isinstance(pref, str) and pref.startswith(("cuda:", "cpu:")):  # an indexed device, e.g. a rank's GPU
        if pref.startswith("cuda:") and not torch.cuda.is_available():
            get_device("cuda")  # raises, with the reason
        return torch.device(pref)
    if pref not in DEVICES:
        raise ValueError(f"device: {pref!r} is not valid; valid: {', '.join(DEVICES)}")
    if pref == "auto":
        from . import simdevice

        if simdevice.enabled():
            return simdevice.register()
        if torch.cuda.is_available():
            return torch.device("cuda")
        why = cuda_unusable_reason()
        if why:
            print(f"device: auto uses the CPU: {why}", flush=True)
        return torch.device("cpu")
    if pref == "cuda" and not torch.cuda.is_available():
        why = cuda_unusable_reason() or "torch sees no CUDA device"
        raise ValueError(f"device: 'cuda' was asked for but {why}; use 'auto' or 'cpu'")
    return torch.device(pref)


def configure_device(device: torch.device, deterministic: bool = False) -> None:
    """Kernel settings for ``device``.  CPU: deterministic algorithms (free there).  CUDA: with
    ``deterministic`` (the profile's key), deterministic cuDNN and cuBLAS kernels (``CUBLAS_WORKSPACE_CONFIG``,
    set before cuBLAS starts) and no TF32; otherwise cuDNN picks the fastest kernel per shape
    (``cudnn.benchmark``) and matmuls may use TF32: faster, and the last bits move from run to run."""
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
        return
    if device.type != "cuda":
        return
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    else:
        torch.backends.cudnn.benchmark = True


#: the oldest Linux driver each CUDA major version runs on (NVIDIA's CUDA compatibility table)
MIN_DRIVER = {11: (450, 80), 12: (525, 60), 13: (580, 65)}


def nvidia_driver_version() -> str | None:
    """The loaded NVIDIA kernel driver's version (``/proc/driver/nvidia/version``), or None."""
    import re

    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    m = re.search(r"Kernel Module\s+(?:for\s+\S+\s+)?([0-9]+\.[0-9]+(?:\.[0-9]+)?)", text)
    return m.group(1) if m else None


def cuda_unusable_reason(driver: str | None = None, cuda: str | None = None) -> str | None:
    """Why torch cannot use a GPU that is present, or None (no GPU driver, or a CPU-only torch)."""
    driver = driver or nvidia_driver_version()
    cuda = cuda if cuda is not None else torch.version.cuda
    if not driver or not cuda:
        return None
    need = MIN_DRIVER.get(int(cuda.split(".")[0]))
    have = tuple(int(p) for p in driver.split(".")[:2])
    if need and have < need:
        return (f"the NVIDIA driver {driver} is older than torch's CUDA {cuda} build needs "
                f"(driver >= {need[0]}.{need[1]:02d}); update the driver or install a torch built for an older CUDA")
    return f"an NVIDIA driver ({driver}) is loaded but torch (CUDA {cuda}) sees no usable GPU"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    A crash or interrupt leaves no file at ``path`` that a rerun could mistake for finished work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def file_sha256(path, length: int = 64) -> str:
    """sha256 of a file's content (first ``length`` hex digits), read in 1 MiB chunks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length]


def set_aside(path, suffix: str = ".corrupt") -> Path:
    """Rename ``path`` to ``<path><suffix>`` in the same folder (``<path><suffix>-2``, ... when taken),
    so that a damaged file is kept for inspection, never deleted; return the new path."""
    path = Path(path)
    target, n = path.with_name(path.name + suffix), 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}{suffix}-{n}")
    os.replace(path, target)
    return target


def first_nonfinite(tensors: dict) -> str | None:
    """The name of the first floating-point tensor of ``tensors`` (a state dict) holding NaN or inf, else None."""
    for name, t in tensors.items():
        if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


def atomic_write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=json_default) + "\n")


def json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def tqdm_disabled_by_env() -> bool:
    """Whether ``TQDM_DISABLE`` asks for no progress bars: set, and not empty, 0, false or no."""
    return os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false", "no")


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with ``n`` intra-op threads, then restore the count.  Loops of many tiny ops
    (batch-16 training of small layers) run fastest on one thread; with two threads on a busy
    2-core machine each op waits for a descheduled worker (``make bench``, cfe: 8-14x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
