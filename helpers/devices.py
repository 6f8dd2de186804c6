"""The small GPU helpers: which device a profile runs on (CUDA, the CPU, or the simulated accelerator of
:mod:`helpers.simdevice`), its kernel settings, the NVIDIA driver check, the device a model lives on and
the intra-op thread count."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
from torch import nn

DEVICES = ("auto", "cpu", "cuda")


def get_device(pref: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else CPU (with ``COMPANION_SIMULATED_ACCELERATOR=1``: the simulated
    accelerator of :mod:`helpers.simdevice`).  ``cuda`` without a GPU is an error.  When a GPU is present but
    torch cannot use it (typically a driver older than the CUDA build needs), ``auto`` says so on the console
    before it falls back to the CPU."""
    if isinstance(pref, torch.device):  # a device already chosen (e.g. an experiment's, passed on)
        return pref
    if isinstance(pref, str) and pref.startswith("sim"):  # the simulated accelerator, by name (sim:0)
        from helpers import simdevice

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
        from helpers import simdevice

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


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter (the CPU for a model without parameters)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def canonical_device(device) -> torch.device:
    """``device`` with its index: ``cuda`` means the current CUDA device (``torch.device("cuda") !=
    torch.device("cuda", 0)`` although both name the same GPU)."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return dev


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with ``n`` intra-op threads, then restore the count.  Loops of many tiny ops
    (batch-16 training of small layers) run fastest on one thread; with more threads than free
    cores each op waits for a descheduled worker (docs/benchmarks.md)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
