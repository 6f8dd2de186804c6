"""What the benchmarks share: the device they measure on, and an honest clock on it.

``BENCH_DEVICE`` (default ``auto``): ``auto`` = :func:`helpers.devices.get_device` ("auto": CUDA when
available, else the CPU; with ``COMPANION_SIMULATED_ACCELERATOR=1`` the simulated accelerator of
:mod:`helpers.simdevice`), ``cpu`` = the CPU even when a GPU is present (``cuda`` is accepted too and
fails without a GPU, as ``device: cuda`` does in a profile).

Every benchmark records, in its own result, the device each measured part ran on (:func:`describe`:
``"cpu"``, ``"cuda:0 (NVIDIA H200)"``, ``"sim:0 (simulated accelerator)"``); the parts that are
CPU-only by nature (thread scaling, resident-set size, gloo processes) say ``"cpu"``.
"""
from __future__ import annotations

import os
import time

import torch

from helpers.devices import DEVICES, canonical_device, get_device

ENV = "BENCH_DEVICE"
CPU = "cpu"


def bench_device() -> torch.device:
    """The device the benchmarks measure on (``BENCH_DEVICE``, default ``auto``)."""
    pref = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if pref not in DEVICES:
        raise ValueError(f"{ENV}={pref!r} is not valid; valid: {', '.join(DEVICES)}")
    return canonical_device(get_device(pref))


def describe(device) -> str:
    """What a result records as the device it ran on: "cpu", "cuda:0 (NVIDIA H200)", "sim:0 (...)"."""
    d = torch.device(device)
    if d.type == "cpu":
        return CPU
    if d.type == "cuda":
        d = canonical_device(d)
        return f"{d} ({torch.cuda.get_device_name(d.index)})"
    from helpers import simdevice

    i = d.index if d.index is not None else 0
    return f"{d.type}:{i} (simulated accelerator)" if simdevice.is_sim(d) else f"{d.type}:{i}"


def accelerator_name(device) -> str | None:
    """The accelerator's name for the machine block (None for the CPU)."""
    d = torch.device(device)
    return None if d.type == "cpu" else describe(d)


def sync(device) -> None:
    """Wait until the device has finished what was queued on it (CUDA kernels run asynchronously:
    without this, a clock read after a launch measures the launch, not the work).  No-op on the CPU."""
    d = torch.device(device)
    if d.type == "cpu":
        return
    if d.type == "cuda":
        torch.cuda.synchronize(d)
        return
    fn = getattr(getattr(torch, d.type, None), "synchronize", None)
    if fn is not None:
        fn()


def clock(device) -> float:
    """``time.perf_counter()`` once the device is idle: read it at both ends of a timed section."""
    sync(device)
    return time.perf_counter()
