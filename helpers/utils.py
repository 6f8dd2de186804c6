"""Seeds, atomic file writes, JSON and progress-bar conventions that every stage shares."""
from __future__ import annotations

import contextlib
import json
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

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


def _writer_tag() -> str:
    """``<host>-<pid>``: which process writes a temporary file (:func:`remove_orphan_temporaries`)."""
    import socket

    return f"{socket.gethostname().replace('.', '_')}-{os.getpid()}"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    A crash or interrupt leaves no file at ``path`` that a rerun could mistake for finished work.  The
    temporary file's name, ``.<name>.<host>-<pid>.<random>.tmp``, says which process writes it, so that one
    left by a killed process can be told from one being written (:func:`remove_orphan_temporaries`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_writer_tag()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def remove_orphan_temporaries(folder) -> list[str]:
    """Remove the temporary files of :func:`atomic_path` in ``folder`` that a process of this machine left
    when it was killed mid-write (its pid is gone); files of live processes and of other machines stay.
    Returns the names removed."""
    folder, host = Path(folder), _writer_tag().rsplit("-", 1)[0]
    removed = []
    for f in folder.glob(".*.tmp") if folder.is_dir() else []:
        tag = f.name[:-len(".tmp")].rsplit(".", 2)
        writer = tag[1].rsplit("-", 1) if len(tag) == 3 else []
        if len(writer) != 2 or writer[0] != host or not writer[1].isdigit():
            continue
        try:
            os.kill(int(writer[1]), 0)
            continue  # alive (or not ours to signal): being written
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        with contextlib.suppress(FileNotFoundError):
            f.unlink()
            removed.append(f.name)
    return removed


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


def duration_text(seconds: float) -> str:
    """A duration as people read it: ``42.0 s`` under a minute, else ``12.5 min``."""
    return f"{seconds:.1f} s" if seconds < 60 else f"{seconds / 60:.1f} min"


def tqdm_disabled_by_env() -> bool:
    """Whether ``TQDM_DISABLE`` asks for no progress bars: set, and not empty, 0, false or no."""
    return os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false", "no")


def _array_globals() -> list:
    """What rebuilding a NumPy array from a torch file needs: the array type, its reconstructor and dtypes."""
    core = getattr(np, "_core", None) or np.core
    dtypes = [type(np.dtype(t)) for t in ("float16", "float32", "float64", "int8", "int16", "int32", "int64",
                                          "uint8", "bool")]
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, *dtypes]


class UnsafeFileError(ValueError):
    """A torch file that holds Python objects whose loading could run code: refused, never unpickled."""


def safe_torch_load(path, what: str, arrays: bool = False, map_location="cpu"):
    """``torch.load`` that runs no code from the file: only tensors, numbers, strings, lists, dicts and
    torch's version strings are rebuilt (``weights_only=True``), and NumPy arrays where ``arrays``.  A file
    that holds anything else (a pickled object whose loading could run code) raises :class:`UnsafeFileError`
    naming ``what`` and the file; a damaged file raises what torch raises."""
    import pickle

    allowed = [torch.torch_version.TorchVersion, *(_array_globals() if arrays else [])]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower() and "weights_only" not in str(e).lower():
            raise
        import re

        m = re.search(r"(?:unsupported GLOBAL|Unsupported global: GLOBAL)\s+([\w.]+)", str(e))
        found = f"the Python object {m.group(1)}" if m else "a Python object"
        raise UnsafeFileError(
            f"{what}: {path} holds {found}, which loading would have to run; refused (only tensors, numbers, "
            "strings, lists and dicts are read). Save a plain state dict instead: "
            "torch.save(model.state_dict(), path)") from None


def cli_main(main, argv=None) -> int:
    """Run a command-line tool's ``main(argv)`` so that a mistake reads as one line: ``error: <what, the
    value, what is valid>`` on stderr and exit status 1, the traceback only with ``--debug``.  A failed
    notebook (papermill's execution error) is named with its cell's error."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        return main(argv) or 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            raise
        if hasattr(e, "ename") and hasattr(e, "evalue"):  # papermill: the notebook's own error
            text = f"a notebook cell failed: {e.ename}: {str(e.evalue).strip().splitlines()[0] if e.evalue else ''}"
        else:
            lines = str(e).strip().splitlines()
            text = lines[0] if lines else type(e).__name__
            if type(e).__name__ in ("KeyError", "AttributeError", "TypeError", "IndexError", "RuntimeError"):
                text = f"{type(e).__name__}: {text}"
        print(f"error: {text}  (--debug shows the traceback)", file=sys.stderr)
        return 1
