"""A simulated accelerator: the GPU code path, exercised on a machine without a GPU.

``COMPANION_SIMULATED_ACCELERATOR=1`` registers PrivateUse1 from Python as the device ``sim``
(``torch.utils.backend_registration``) and makes ``device: auto`` pick it (:func:`helpers.devices.get_device`).
A ``sim`` tensor is a wrapper subclass that holds CPU data and checks every aten op as CUDA does:

- an op that mixes ``sim`` tensors with CPU tensors raises, except where CUDA allows it: 0-dim CPU
  tensors (scalars), CPU index tensors in indexing ops, and copies between devices;
- ``.numpy()`` of a ``sim`` tensor raises (as for a CUDA tensor: call ``.cpu()`` first);
- every host-device synchronisation (``.item()``, ``float()`` / ``int()`` / ``bool()`` of a tensor, a copy
  to the CPU, a data-dependent shape such as ``nonzero``) is counted against the source line that asked
  for it: the innermost frame of this repository's code (not torch's, not this module's).  A sync written
  in a loop body is charged to that line; one made inside torch (``GradScaler.step``) to the repository
  line that called into torch;
- ``torch.autocast("sim", dtype=torch.float16)`` casts as CUDA's autocast does for the ops listed in
  :data:`AUTOCAST_LOWER` (to float16) and :data:`AUTOCAST_FP32` (to float32; the ``_UNLESS_DTYPE`` ones
  only without an explicit ``dtype``), CUDA's policy in ``aten/src/ATen/autocast_mode.cpp``; every other
  op runs in the dtype it is given (CUDA's "promote" rule is left to the CPU kernels' own type promotion).
  ``GradScaler("sim")`` and the fused optimizers run their CPU kernels.

``COMPANION_SIMULATED_REPORT=folder`` makes every process that registers the device write, at exit, its
own report ``<folder>/<label>.<pid>.json``: ``{"pid", "notebook", "argv", "mismatches": n, "syncs":
{"file:line function": n}}``, where ``notebook`` (and ``label``) is the notebook a batch run's kernel
executes (``COMPANION_NOTEBOOK``, set by :mod:`helpers.tools.run_notebooks`), else None (``process``).
A mismatch caught and swallowed by the code under test still counts.  Nothing is faster on ``sim``: it
proves device placement and counts syncs, not speed.  CUDA-only branches (cuDNN settings, pinned memory,
channels_last, CUDA streams, TF32) do not run on it, and float16 arithmetic here is the CPU's; the
``gpu``-marked tests run those on a real GPU (docs/gpu.md).
"""
from __future__ import annotations

import atexit
import collections
import json
import os
import sys
import sysconfig
from pathlib import Path

import torch
from torch.utils._pytree import tree_map

NAME = "sim"
ENV = "COMPANION_SIMULATED_ACCELERATOR"
REPORT_ENV = "COMPANION_SIMULATED_REPORT"
#: the notebook a kernel executes, set for its kernels by helpers.tools.run_notebooks (a report's name)
NOTEBOOK_ENV = "COMPANION_NOTEBOOK"
_REPO = str(Path(__file__).resolve().parents[1]) + os.sep
_HERE = str(Path(__file__).resolve())
#: code that is never the line that asked: the standard library's and installed packages' (torch among them)
_LIBRARIES = tuple({sysconfig.get_paths()["stdlib"] + os.sep, sysconfig.get_paths()["platstdlib"] + os.sep})

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
    """The source line that asked for the op being checked: the innermost frame of this repository's code
    outside this module (not torch's, not the virtual environment's), else the innermost frame outside torch,
    the standard library and this module (a script, ``python -c``), as ``"file:line function"``.

    Every frame is looked at, the one that called into torch included: ``x.item()`` in a loop body is charged
    to that line of the loop, not to the line that called the function holding the loop."""
    outside = None
    f = sys._getframe(1)
    while f is not None:
        name = f.f_code.co_filename
        if name != _HERE and "site-packages" not in name and not name.startswith(("<frozen", *_LIBRARIES)):
            if name.startswith(_REPO):
                return f"{os.path.relpath(name, _REPO)}:{f.f_lineno} {f.f_code.co_name}"
            if outside is None:
                outside = f"{name}:{f.f_lineno} {f.f_code.co_name}"
        f = f.f_back
    return outside or "?"


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


#: ops that CUDA's autocast runs in float16 (its ``lower_precision_fp`` list), as far as this companion uses them
AUTOCAST_LOWER = ("conv1d", "conv2d", "conv3d", "convolution", "_convolution", "conv_transpose1d",
                  "conv_transpose2d.input", "linear", "matmul", "mm", "addmm", "bmm", "baddbmm", "addbmm", "mv",
                  "addmv", "einsum", "prelu")
#: ops that it runs in float32 (its ``fp32`` list: losses, norms, exp / log)
AUTOCAST_FP32 = ("cross_entropy_loss", "nll_loss", "nll_loss2d", "binary_cross_entropy_with_logits", "mse_loss",
                 "l1_loss", "smooth_l1_loss", "kl_div", "layer_norm", "group_norm", "softplus", "exp", "log",
                 "log1p", "rsqrt", "reciprocal", "pow.Tensor_Scalar", "logsumexp", "cdist")
#: ops that it runs in float32 unless the call names an output dtype (its ``fp32_set_opt_dtype`` list)
AUTOCAST_FP32_UNLESS_DTYPE = ("softmax.int", "log_softmax.int", "sum", "sum.dim_IntList", "cumsum", "prod")


def _autocast_kernel(op, dtype_of):
    """The ``AutocastPrivateUse1`` kernel of ``op``: floating ``sim`` tensors other than float64 cast to
    ``dtype_of(args, kwargs)`` (None: unchanged), then the op below autocast (as CUDA's ``cached_cast``)."""
    from torch._C import DispatchKey, DispatchKeySet

    below = DispatchKeySet(DispatchKey.AutocastPrivateUse1)

    def kernel(*args, **kwargs):
        dtype = dtype_of(args, kwargs)
        if dtype is not None:
            def cast(t):
                return (t.to(dtype) if isinstance(t, SimTensor) and t.is_floating_point()
                        and t.dtype not in (torch.float64, dtype) else t)
            args, kwargs = tree_map(cast, args), tree_map(cast, kwargs)
        with torch._C._ExcludeDispatchKeyGuard(below):
            return op(*args, **kwargs)

    return kernel


def _register_autocast() -> list:
    """Autocast on ``sim``: CUDA's casting policy for the listed ops, a fallthrough for every other op (no
    cast).  Returns the libraries, which must live as long as the registrations."""
    fall = torch.library.Library("_", "IMPL")
    fall.fallback(torch.library.fallthrough_kernel, "AutocastPrivateUse1")
    lib = torch.library.Library("aten", "IMPL")

    def unless_dtype(args, kwargs):
        given = kwargs.get("dtype") is not None or any(isinstance(a, torch.dtype) for a in args)
        return None if given else torch.float32

    policies = ([(n, lambda a, k: torch.get_autocast_dtype(NAME)) for n in AUTOCAST_LOWER]
                + [(n, lambda a, k: torch.float32) for n in AUTOCAST_FP32]
                + [(n, unless_dtype) for n in AUTOCAST_FP32_UNLESS_DTYPE])
    for qualified, dtype_of in policies:
        name, _, overload = qualified.partition(".")
        packet = getattr(torch.ops.aten, name, None)
        if packet is None or (overload or "default") not in packet.overloads():
            continue  # not an op of this torch version
        lib.impl(qualified, _autocast_kernel(getattr(packet, overload or "default"), dtype_of), "AutocastPrivateUse1")
    return [fall, lib]


def report_label() -> str:
    """The name a process's report carries: its notebook's stem in a batch run's kernel, else ``process``."""
    nb = os.environ.get(NOTEBOOK_ENV)
    return Path(nb).stem if nb else "process"


def _write_report(folder: str) -> None:
    data = {"pid": os.getpid(), "notebook": os.environ.get(NOTEBOOK_ENV), "argv": sys.argv,
            "mismatches": stats["mismatches"], "syncs": dict(stats["syncs"].most_common())}
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{report_label()}.{os.getpid()}.json").write_text(json.dumps(data, indent=1))


def read_reports(folder) -> list[dict]:
    """Every process's report in ``folder`` (:func:`_write_report`), by file name."""
    return [json.loads(p.read_text()) for p in sorted(Path(folder).glob("*.json"))]


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
    globals()["_libs"] = [lib, *_register_autocast()]  # the registrations live as long as the library objects
    if os.environ.get(REPORT_ENV):
        atexit.register(_write_report, os.environ[REPORT_ENV])
    return _device


def is_sim(device) -> bool:
    return torch.device(device).type == NAME
