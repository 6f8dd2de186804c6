"""The stage cache: each stage is a cached function of its parameters.

``<cache root>/<profile>/<stage>-<hash of params>.<ext>`` holds a stage's result, written atomically,
with a JSON sidecar (params, versions, device and the file's sha256, checked when it is read).
A damaged entry is set aside (``<file>.corrupt``) and recomputed; a rerun with the same parameters
reuses what was finished.  What computing a stage cost (seconds, peak memory, threads, when) is a fact
about the run, not about the result: it goes to a cost record beside the cache,
``<cache root>/.stage-costs/<profile>/<file>.json``, and ``stages.json`` in the profile's output folder
logs it.  Results are stored in named :class:`Format` s (npz, csv.gz, json, pt), never in ad-hoc
pickles, and every format writes the same bytes for the same result, whoever writes it and under
whatever temporary name: a cache folder filled by one process or by many is identical file for file.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import platform
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generic, Hashable, TypeVar

import numpy as np
import pandas as pd
import torch

from helpers import __version__
from helpers.utils import atomic_path, atomic_write_json, file_sha256, json_default, safe_torch_load, set_aside

T = TypeVar("T")


def params_hash(*parts: Any, length: int = 10) -> str:
    """A short stable hash of JSON-serialisable parameters (the cache key of a stage)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


# --------------------------------------------------------------------------- formats
@dataclass(frozen=True)
class Format:
    """How a stage's result is written to and read from its file: a name (the file extension) and
    the pair of functions ``save(obj, path)`` and ``load(path) -> obj``."""

    ext: str
    save: Callable[[Any, Path], None]
    load: Callable[[Path], Any]


def _save_npz(obj: dict, path) -> None:
    with open(path, "wb") as f:
        np.savez(f, **obj)  # zip members dated 1980-01-01 (zipfile's default): no time in the bytes


def _load_npz(path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _save_frame(df: pd.DataFrame, path) -> None:
    """gzip CSV whose header holds neither a file name (the writer's temporary name would be stored) nor a
    time: the same bytes from every writer."""
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        df.to_csv(gz, index=False, mode="wb")


def _load_frame(path) -> pd.DataFrame:
    return pd.read_csv(path, compression="gzip", dtype={"id": str})


def _save_json(obj, path) -> None:
    atomic_write_json(path, obj)


def _load_json(path):
    return json.loads(Path(path).read_text())


def _save_torch(obj, path) -> None:
    with open(path, "wb") as f:  # a file object: torch names the archive "archive", not after the temporary file
        torch.save(obj, f)


def _load_torch(path):
    return safe_torch_load(path, "cached stage")


def _load_torch_arrays(path):
    return safe_torch_load(path, "cached stage", arrays=True)


#: a dict of NumPy arrays (``np.savez``, no pickles)
NPZ = Format("npz", _save_npz, _load_npz)
#: a per-sample table keyed by ``id`` (gzip CSV, no name or time in its header: the same bytes from every writer)
FRAME = Format("csv.gz", _save_frame, _load_frame)
#: a JSON document
JSON = Format("json", _save_json, _load_json)
#: tensors, dicts, lists and numbers (``torch.save``; read without running any code from the file:
#: :func:`helpers.utils.safe_torch_load`, so a shared cache folder cannot carry code)
TENSORS = Format("pt", _save_torch, _load_torch)
#: like :data:`TENSORS`, NumPy arrays included
TENSORS_AND_ARRAYS = Format("pt", _save_torch, _load_torch_arrays)


# --------------------------------------------------------------------------- the cache
class StageNotCached(LookupError):
    """Raised inside :meth:`StageCache.cached_only` when a stage would have to be computed."""


_MISSING = object()  # a cached stage that is absent or was set aside as corrupt


def one_line(e: BaseException) -> str:
    """``Type: first line of the message`` of an exception, for one-line reports."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def sidecar_of(path: Path) -> Path:
    """The JSON sidecar of a cached stage file: params, versions, device and cost."""
    return path.with_suffix(path.suffix + ".json")


def stage_mismatch(path: Path, sidecar: Path) -> str | None:
    """Why the cached file ``path`` is not what its sidecar recorded (sha256), or None.  A sidecar
    without a sha256, or no sidecar at all, has nothing to check."""
    if not sidecar.is_file():
        return None
    try:
        info = json.loads(sidecar.read_text())
    except (ValueError, UnicodeDecodeError):
        return f"its sidecar {sidecar.name} is not valid JSON"
    expected = info.get("sha256") if isinstance(info, dict) else None
    if not expected:
        return None
    actual = file_sha256(path)
    return None if actual == expected else (f"sha256 {actual[:16]} differs from {expected[:16]} "
                                            f"recorded in {sidecar.name}")


def peak_rss_mb() -> float:
    """The process's peak resident memory so far (MB; Linux ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def versions() -> dict:
    """The versions a result was computed with (recorded in sidecars and checkpoint records)."""
    import sklearn

    return {"helpers": __version__, "torch": str(torch.__version__), "numpy": np.__version__,
            "sklearn": sklearn.__version__, "python": platform.python_version()}


#: the cost records' folder beside the cache folders: ``<cache root>/.stage-costs/<profile>/``
COSTS_FOLDER = ".stage-costs"
#: what a cost record holds besides what a computation noted (:meth:`StageCache.note`)
COST_KEYS = ("seconds", "peak_rss_mb", "threads", "device", "finished")
#: the work units of ``helpers.tools.precompute`` (:mod:`helpers.paper1.stages`, :mod:`helpers.paper2.stages`):
#: read or computed inside the stage they are joined into, they count in that stage's cost record
#: (``units``, ``units_seconds``: their own cost records' seconds) and are not logged on their own
UNIT_STAGES = ("lcr_screen_block", "lcr_preds_part", "conductance_part", "cfe_generator_group")


class StageCache:
    """The cached stages of one profile: files in ``folder``, what computing them cost in cost records
    (``cost_folder``, default ``<folder's parent>/.stage-costs/<folder's name>/``), logged in ``log_path``.

    ``device`` is recorded in each sidecar (where the stage was computed)."""

    def __init__(self, folder: Path, log_path: Path | None, device: str, cost_folder: Path | None = None):
        self.folder = Path(folder)
        #: the stage log (None: none is kept, as in helpers.tools.precompute, whose costs are in the cost records)
        self.log_path = Path(log_path) if log_path else None
        self.device = str(device)
        self.cost_folder = Path(cost_folder) if cost_folder else self.folder.parent / COSTS_FOLDER / self.folder.name
        #: seconds each stage computed in this process took
        self.timings: dict[str, float] = {}
        #: how many stages this process computed (rather than found cached)
        self.computed = 0
        self._cache_only = False
        self._notes: list[dict] = []  # one dict per stage being computed now (stages nest: upstream inside)
        self._upstream: list[float] = []  # per stage being computed now: seconds of the stages computed inside it
        self._units: list[dict] = []  # per stage being computed now: {unit file: its seconds} (UNIT_STAGES)

    def path(self, stage: str, params: Any, fmt: Format) -> Path:
        """Where ``stage`` for ``params`` is (or would be) cached."""
        return self.folder / f"{stage}-{params_hash(params)}.{fmt.ext}"

    def cost_path(self, path: Path) -> Path:
        """The cost record of the cached file ``path``."""
        return self.cost_folder / f"{Path(path).name}.json"

    def cost(self, stage: str, params: Any, fmt: Format) -> dict:
        """What computing ``stage`` for ``params`` cost where it was computed: seconds, peak_rss_mb,
        threads, device, finished, and what the computation noted (:meth:`note`); {} when unknown (computed
        on another machine that shares no cache root).  A sidecar from before cost records had its own."""
        path = self.path(stage, params, fmt)
        return self._cost_of(path, sidecar_of(path))

    def note(self, **facts) -> None:
        """Inside a stage's ``compute``: add ``facts`` (e.g. seconds per epoch) to that stage's cost record,
        so that timings never enter the cached file itself."""
        if not self._notes:
            raise RuntimeError("note: only inside a stage's compute")
        self._notes[-1].update(facts)

    @contextlib.contextmanager
    def cached_only(self):
        """Inside this block a stage that is not cached raises :class:`StageNotCached` instead of being
        computed: a notebook can use an expensive upstream result (e.g. LCR) only where it exists."""
        before, self._cache_only = self._cache_only, True
        try:
            yield self
        finally:
            self._cache_only = before

    def if_cached(self, fn: Callable[[], Any], otherwise: Callable[[], Any] = lambda: None) -> Any:
        """``fn()`` when every stage it needs is already cached, else ``otherwise()``: use an expensive
        result, or a unit that helpers.tools.precompute cached, only where it exists."""
        try:
            with self.cached_only():
                return fn()
        except StageNotCached:
            return otherwise()

    def stage(self, stage: str, params: Any, compute: Callable[[], Any], fmt: Format) -> Any:
        """The cached result of ``stage`` for ``params``, computed and saved atomically if absent.

        A cached file whose sha256 differs from its sidecar's, or that ``fmt`` cannot read, is corrupt:
        it and its sidecar are set aside (``<file>.corrupt``), one line on stderr says so, and the stage
        is recomputed (inside :meth:`cached_only`: :class:`StageNotCached`)."""
        key = params_hash(params)
        path = self.folder / f"{stage}-{key}.{fmt.ext}"
        sidecar = sidecar_of(path)
        result = self._load_cached(stage, path, sidecar, fmt.load) if path.is_file() else _MISSING
        if result is _MISSING and self._cache_only:
            raise StageNotCached(f"{stage}: not cached for this profile ({path.name})")
        if result is _MISSING:
            self._compute_and_save(stage, params, compute, fmt.save, path, sidecar)
            result = fmt.load(path)  # the same object whether computed now or cached earlier
        if stage in UNIT_STAGES and self._units:  # a unit joined into the stage being computed: its cost
            self._units[-1][path.name] = self._cost_of(path, sidecar).get("seconds") or 0.0
        else:
            self._log_stage(stage, key, sidecar)
        return result

    def _compute_and_save(self, stage: str, params: Any, compute: Callable[[], Any],
                          save: Callable[[Any, Path], None], path: Path, sidecar: Path) -> None:
        """Compute, write the file and its sidecar (what the result is: the same bytes from any writer),
        then its cost record (what computing it cost here)."""
        t0 = time.perf_counter()
        self._notes.append({})
        self._upstream.append(0.0)
        self._units.append({})
        try:
            result = compute()
        finally:
            notes = self._notes.pop()
            upstream = self._upstream.pop()
            units = self._units.pop()
        elapsed = time.perf_counter() - t0
        if self._upstream:  # this stage ran inside another's compute: not that stage's own cost
            self._upstream[-1] += elapsed
        # a stage's cost is its own: an upstream stage computed inside it (the model trained for the
        # predictions) has its own record and is not counted twice
        self.timings[stage] = elapsed - upstream
        if upstream:
            notes["upstream_seconds"] = upstream
        if units:  # each unit once, however often the join read it
            notes.update(units=len(units), units_seconds=float(sum(units.values())))
        self.computed += 1
        with atomic_path(path) as tmp:
            save(result, tmp)
            sha = file_sha256(tmp)
        atomic_write_json(sidecar, {"stage": stage, "params": params, "versions": versions(), "device": self.device,
                                    "sha256": sha})
        atomic_write_json(self.cost_path(path), {
            **notes, "stage": stage, "seconds": self.timings[stage], "peak_rss_mb": round(peak_rss_mb(), 1),
            "threads": torch.get_num_threads(), "device": self.device,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})

    def _load_cached(self, stage: str, path: Path, sidecar: Path, load: Callable[[Path], Any]) -> Any:
        try:
            reason = stage_mismatch(path, sidecar)
            if reason is not None:  # another writer of the same stage may be between its file and its sidecar
                time.sleep(0.5)
                reason = stage_mismatch(path, sidecar)
            if reason is None:
                return load(path)
        except MemoryError:
            raise
        except Exception as e:  # a truncated or damaged file: EOFError, BadZipFile, BadGzipFile, ...
            reason = one_line(e)
        aside = set_aside(path)
        if sidecar.is_file():
            set_aside(sidecar)
        then = "not cached now (cached_only)" if self._cache_only else "recomputing"
        print(f"{stage}: cached file {path} is corrupt ({reason}); set aside as {aside.name}, {then}",
              file=sys.stderr, flush=True)
        return _MISSING

    def _cost_of(self, path: Path, sidecar: Path) -> dict:
        record = self.cost_path(path)
        for source in (record, sidecar):  # a sidecar written before cost records carried the cost itself
            try:
                info = json.loads(source.read_text()) if source.is_file() else {}
            except (OSError, ValueError):
                info = {}
            if isinstance(info, dict) and info.get("seconds") is not None:
                return {k: v for k, v in info.items() if k not in ("params", "versions", "sha256")}
        return {}

    def _log_stage(self, stage: str, key: str, sidecar: Path) -> None:
        """Record in the stage log what the stage cost when it was computed (from its cost record)."""
        info = self._cost_of(sidecar.with_suffix(""), sidecar)
        entry = {"stage": stage, **{k: info.get(k) for k in COST_KEYS}}
        units = info.get("units_seconds", info.get("blocks_seconds"))  # blocks: LCR screenings noted before
        if units is not None:  # joined from work units (helpers.tools.precompute, maybe other processes)
            entry["units_seconds"] = float(units)
        self.log_entry(f"{stage}-{key}", entry)

    def log_entry(self, key: str, entry: dict) -> None:
        """Add ``entry`` under ``stages[key]`` of the stage log (``{"stages": {...}, "notebooks": {...}}``);
        the file is rewritten only when that changes it (a stage read many times is logged once)."""
        if self.log_path is None:
            return
        log = json.loads(self.log_path.read_text()) if self.log_path.is_file() else {}
        if log.get("stages", {}).get(key) == json.loads(json.dumps(entry, default=json_default)):
            return
        log.setdefault("stages", {})[key] = entry
        atomic_write_json(self.log_path, log)


class Memo(Generic[T]):
    """Results derived in memory from cached stages, kept for one experiment's lifetime (e.g. a split's
    decoded inputs, or the CFE analysis that every fine-tune of notebook 05 needs)."""

    def __init__(self) -> None:
        self._values: dict[Hashable, Any] = {}

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        """The value kept under ``key``, computed by ``compute()`` the first time."""
        if key not in self._values:
            self._values[key] = compute()
        return self._values[key]

    def __contains__(self, key: Hashable) -> bool:
        return key in self._values
