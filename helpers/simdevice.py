"""A simulated accelerator: the GPU code path, exercised on a machine without a GPU.

``COMPANION_SIMULATED_ACCELERATOR=1`` registers PrivateUse1 from Python as the device ``sim``
(``torch.utils.backend_registration``) and makes ``device: auto`` pick it (:func:`helpers.devices.get_device`).
A ``sim`` tensor is a wrapper subclass that holds CPU data and checks every aten op as CUDA does:

- an op that mixes ``sim`` tensors with CPU tensors raises, except where CUDA allows it: 0-dim CPU
  tensors (scalars), CPU index tensors in indexing ops, and copies between devices;
- ``.numpy()`` of a ``sim`` tensor raises (as for a CUDA tensor: call ``.cpu()`` first);
- every host-device synchronisation (``.item()``, a copy to the CPU, a data-dependent shape such as
  ``nonzero``) is counted by the source line in this repository that caused it.

``COMPANION_SIMULATED_REPORT=path`` writes, at exit, ``{"mismatches": n, "syncs": {"file:line function": n}}``:
a mismatch caught and swallowed by the code under test still counts.  Nothing is faster on ``sim``: it
proves device placement, not speed.  CUDA-only branches (AMP, cuDNN, pinned memory, CUDA streams) do
not run on it; the ``gpu``-marked tests run those on a real GPU (docs/gpu.md).
"""
from __future__ import annotations

import atexit
import collections
import json
import os
import traceback
from pathlib import Path

import torch
from torch.utils._pytree import tree_map

NAME = "sim"
ENV = "COMPANION_SIMULATED_ACCELERATOR"
REPORT_ENV = "COMPANION_SIMULATED_REPORT"
_REPO = str(Path(__file__).resolve().parents[1])

#: ops that may take CPU tensors beside device tensors on CUDA as well
_CROSS_DEVICE_OK = {"copy_", "_copy_from", "_copy_from_and_resize", "_has_compatible_shallow_copy_type", "_to_copy",
                    "index", "index_put", "index_put_", "_index_put_impl_", "set_", "detach", "alias"}
#: ops whose result the host has to wait for
_SYNC_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2", "is_nonzero", "equal"}

stats = {"mismatches": 0, "syncs": collections.Counter()}
_device: torch.device | None = None


def enabled() -> bool:
    return os.environ.get(ENV, "") not in ("", "0")


def _caller() -> str:
    """The innermost frame of this repository outside this module (else the innermost frame)."""
    frames = traceback.extract_stack()[:-3]
    for f in reversed(frames):
        if (f.filename.startswith(_REPO) and "site-packages" not in f.filename
                and not f.filename.endswith("simdevice.py")):
            return f"{os.path.relpath(f.filename, _REPO)}:{f.lineno} {f.name}"
    for f in reversed(frames):
        if "site-packages" not in f.filename and not f.filename.endswith("simdevice.py"):
            return f"{f.filename}:{f.lineno} {f.name}"
    return "?"


class SimTensor(torch.Tensor):
    """A tensor on the simulated device: CPU data in ``.elem``, device ``sim:0`` to everyone else."""

    elem: torch.Tensor

    @staticmethod
    def __new__(cls, elem: torch.Tensor):
        # never an inference tensor itself: view ops (detach, ...) on it inside torch.inference_mode then
        # work as on CUDA (autograd sets the output's version counter after this returns)
        with torch.inference_mode(False):
            r = torch.Tensor._make_wrapper_subclass(cls, elem.size(), strides=elem.stride(),
                                                    storage_offset=elem.storage_offset(), dtype=elem.dtype,
                                                    layout=elem.layout, device=_device,
                                                    requires_grad=elem.requires_grad)
        r.elem = elem
        return r

    def __repr__(self, *, tensor_contents=None):
        return f"SimTensor({self.elem!r}, device='{_device}')"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        cpu_args = []

        def unwrap(t):
            if isinstance(t, SimTensor):
                return t.elem
            if isinstance(t, torch.Tensor) and t.dim() > 0 and t.device.type == "cpu":
                cpu_args.append(tuple(t.shape))
            return t

        uargs, ukwargs = tree_map(unwrap, args), tree_map(unwrap, kwargs)
        if cpu_args and name not in _CROSS_DEVICE_OK:
            stats["mismatches"] += 1
            raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two devices, "
                               f"{_device} and cpu! (simulated accelerator: aten.{name} got CPU tensors of shape "
                               f"{cpu_args} at {_caller()})")
        if name in _SYNC_OPS:
            stats["syncs"][_caller()] += 1
        if name in ("_to_copy", "to"):  # (inside inference_mode, aten.to reaches here undecomposed)
            target = kwargs.get("device", next((a for a in args[1:] if isinstance(a, torch.device)), None))
            cpu = torch.device("cpu")
            if "device" in ukwargs:
                ukwargs = {**ukwargs, "device": cpu}
            uargs = tuple(cpu if isinstance(a, torch.device) else a for a in uargs)
            out = func(*uargs, **ukwargs)
            if target is not None and torch.device(target).type == "cpu":
                if isinstance(args[0], SimTensor):
                    stats["syncs"][_caller()] += 1
                return out.clone() if out is uargs[0] else out
            return SimTensor(out) if target is not None or isinstance(args[0], SimTensor) else out
        if name == "copy_" and not isinstance(args[0], SimTensor) and isinstance(args[1], SimTensor):
            stats["syncs"][_caller()] += 1  # device -> host
        out = func(*uargs, **ukwargs)
        if name == "_local_scalar_dense":
            return out
        if name in ("copy_", "set_") and isinstance(args[0], torch.Tensor) and not isinstance(args[0], SimTensor):
            return args[0]
        return tree_map(lambda t: SimTensor(t) if type(t) is torch.Tensor else t, out)

    def numpy(self, *a, **k):
        stats["mismatches"] += 1
        raise TypeError(f"can't convert {_device} device type tensor to numpy. Use Tensor.cpu() to copy the tensor "
                        f"to host memory first. (simulated accelerator, at {_caller()})")


def _empty(size, dtype=None, layout=None, device=None, pin_memory=None, memory_format=None):
    return SimTensor(torch.empty(size, dtype=dtype, layout=layout))


def _empty_strided(size, stride, dtype=None, layout=None, device=None, pin_memory=None):
    return SimTensor(torch.empty_strided(size, stride, dtype=dtype, layout=layout))


def _copy_from(src, dst, non_blocking=False):
    """A copy between the CPU and the device that reached the backend kernel (``torch.as_tensor(...,
    device=sim)``): copy the data; a copy to the host is a sync."""
    if isinstance(src, SimTensor) and not isinstance(dst, SimTensor):
        stats["syncs"][_caller()] += 1
    (dst.elem if isinstance(dst, SimTensor) else dst).copy_(src.elem if isinstance(src, SimTensor) else src)
    return dst


class _Backend:
    """What torch asks of a device module (``torch.sim``)."""

    @staticmethod
    def is_available() -> bool:
        return True

    @staticmethod
    def device_count() -> int:
        return 1

    @staticmethod
    def current_device() -> int:
        return 0

    @staticmethod
    def _is_in_bad_fork() -> bool:
        return False

    @staticmethod
    def manual_seed_all(seed: int) -> None:
        pass

    @staticmethod
    def synchronize(device=None) -> None:
        pass

    @staticmethod
    def get_amp_supported_dtype() -> list:
        return [torch.float16, torch.bfloat16]

    @staticmethod
    def is_autocast_enabled() -> bool:
        return False

    @staticmethod
    def mem_get_info(device=None) -> tuple[int, int]:
        """(free, total) bytes, as ``torch.cuda.mem_get_info``: a small device, 2 GiB free."""
        return 2 << 30, 4 << 30


def _write_report(path: str) -> None:
    data = {"mismatches": stats["mismatches"], "syncs": dict(stats["syncs"].most_common())}
    Path(path).write_text(json.dumps(data, indent=1))


def register() -> torch.device:
    """Register the simulated device (once per process) and return it."""
    global _device
    if _device is not None:
        return _device
    from torch.utils.backend_registration import _setup_privateuseone_for_python_backend

    _setup_privateuseone_for_python_backend(NAME, backend_module=_Backend())
    _device = torch.device(NAME, 0)
    lib = torch.library.Library("aten", "IMPL")
    lib.impl("empty.memory_format", _empty, "PrivateUse1")
    lib.impl("empty_strided", _empty_strided, "PrivateUse1")
    lib.impl("_copy_from", _copy_from, "PrivateUse1")
    globals()["_lib"] = lib  # the registrations live as long as the library object
    if os.environ.get(REPORT_ENV):
        atexit.register(_write_report, os.environ[REPORT_ENV])
    return _device


def is_sim(device) -> bool:
    return torch.device(device).type == NAME
