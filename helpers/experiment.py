"""One experiment = one profile: its settings, cached stages, and where its outputs go.

Data flow (DESIGN.md): profile -> splits (manifest of sample ids) -> trained model
(checkpoint) -> per-sample prediction table -> features (conductance, LCR, baselines)
-> detectors -> metrics + figures.  Each stage is a cached function of its parameters:
``artifacts/<profile>/<stage>-<hash>.<ext>`` with a JSON sidecar (params, versions,
device), written atomically, so a notebook run alone computes the upstream stages it
lacks and a rerun with the same parameters reuses them.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import sys
import time
import warnings
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from . import __version__
from .datasets import DataBundle, cache_root, data_search_dirs, load_data
from .models import build_model
from .profiles import DEFAULT_PROFILE, REPO_ROOT, load_profile, params_hash, parse_overrides, stable_section
from .training import prediction_table, train_head, train_model
from .utils import (atomic_path, atomic_write_json, atomic_write_text, configure_device, file_sha256, first_nonfinite,
                    get_device, json_default, seed_everything, set_aside)


class StageNotCached(LookupError):
    """Raised inside :meth:`Experiment.cached_only` when a stage would have to be computed."""


class CheckpointError(ValueError):
    """A checkpoint (or the cached ``model`` stage) that must not be used: its sha256 differs from its
    JSON record, torch cannot read it, or it holds NaN / inf weights."""


_MISSING = object()  # a cached stage that is absent or was set aside as corrupt


def _one_line(e: BaseException) -> str:
    """``Type: first line of the message`` of an exception, for one-line reports."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _in_repo(path: Path) -> str | None:
    """``path`` relative to the repository (what ``git checkout --`` takes), or None outside it."""
    try:
        return str(path.resolve().relative_to(REPO_ROOT.resolve()))
    except ValueError:
        return None


def _restore_hint(path: Path, profile: str = "<profile>") -> str:
    """What to do about a damaged checkpoint: restore it from git (when committed) or re-export it."""
    rel = _in_repo(path)
    restore = f"restore it (git checkout -- {rel}) or " if rel else ""
    return (f"{restore}re-export it (python -m helpers.experiment --profile {profile} "
            f"--export-checkpoint {rel or path})")


def _stage_mismatch(path: Path, sidecar: Path) -> str | None:
    """Why the cached file ``path`` is not what its sidecar recorded (sha256), or None.  A sidecar
    written before stages carried a sha256, or no sidecar at all, has nothing to check."""
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
    return None if actual == expected else f"sha256 {actual[:16]} differs from {expected[:16]} recorded in {sidecar.name}"


def _read_checkpoint(path: Path, profile: str = "<profile>") -> dict:
    """The dict torch saved at ``path``; a :class:`CheckpointError` naming the file when torch cannot read
    it, when it holds no state dict, or when a weight is NaN or inf."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CheckpointError(f"checkpoint: {path} cannot be read ({_one_line(e)}); the file is damaged or "
                              f"not a torch checkpoint: {_restore_hint(path, profile)}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict):
        raise CheckpointError(f"checkpoint: {path} holds no state_dict; point `checkpoint:` at a file written "
                              f"by export_checkpoint, or {_restore_hint(path, profile)}")
    bad = first_nonfinite(obj["state_dict"])
    if bad is not None:
        raise CheckpointError(f"checkpoint: {path}: tensor {bad} holds NaN or inf values; the file is damaged: "
                              f"{_restore_hint(path, profile)}")
    return obj


def peak_rss_mb() -> float:
    """The process's peak resident memory so far (MB; Linux ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def output_root() -> Path:
    """Where profiles' outputs go: $COMPANION_OUTPUT_DIR (when set and not empty), else figures/."""
    return Path(os.environ.get("COMPANION_OUTPUT_DIR") or REPO_ROOT / "figures")


def default_output_dir(name: str, overrides: dict | None = None) -> Path:
    """figures/<profile>/, or figures/<profile>-<hash of the overrides>/ for a run with overrides, so
    that an override run (from the runner, papermill's CLI or Jupyter) never writes over the
    profile's committed results; under $COMPANION_OUTPUT_DIR when set."""
    return output_root() / (f"{name}-{params_hash(overrides, length=8)}" if overrides else name)


def sidecar_of(path: Path) -> Path:
    """The JSON sidecar of a cached stage file: params, versions, device and cost."""
    return path.with_suffix(path.suffix + ".json")


def _versions() -> dict:
    import sklearn

    return {"helpers": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "sklearn": sklearn.__version__, "python": platform.python_version()}


class Experiment:
    """Settings, cached stages and outputs of one profile.

    ``Experiment("digits")`` or ``Experiment("params/my.yaml", {"training.epochs": 1})``.
    ``output_dir`` defaults to figures/<name>/ (or $COMPANION_OUTPUT_DIR/<name>/; with overrides,
    <name>-<hash of the overrides>/: :func:`default_output_dir`); ``artifacts_dir`` to artifacts/<name>/
    (or $COMPANION_ARTIFACTS/<name>/).
    """

    def __init__(self, profile: str | os.PathLike | dict = DEFAULT_PROFILE, overrides: dict | None = None,
                 output_dir: str | os.PathLike | None = None, progress: bool | None = None):
        overrides = parse_overrides(overrides)  # a dict, or a JSON / YAML string from papermill's -p
        self.cfg = load_profile(profile, overrides)
        self.name = self.cfg["name"]
        self.device = get_device(self.cfg["device"])
        self.seed = self.cfg["seed"]
        self.output_dir = Path(output_dir) if output_dir else default_output_dir(self.name, overrides)
        self.artifacts_dir = cache_root() / self.name
        self.progress = (os.environ.get("TQDM_DISABLE", "0") in ("", "0")) if progress is None else progress
        self.timings: dict[str, float] = {}
        self._cache_only = False
        #: results derived in memory from cached stages, kept for this experiment's lifetime (e.g. the
        #: CFE analysis that notebook 05 needs for every fine-tune's class masks)
        self.memory: dict[str, Any] = {}
        if self.cfg["threads"]:  # float sums depend on the thread count: fix it where the profile asks
            torch.set_num_threads(self.cfg["threads"])
        configure_device(self.device, self.cfg["deterministic"])
        seed_everything(self.seed)

    @property
    def on_accelerator(self) -> bool:
        return self.device.type != "cpu"

    @property
    def eval_batch_size(self) -> int:
        """Batch size of every inference pass: ``training.eval_batch_size`` (tuned for a CPU), times
        ``accelerator_batch_scale`` on an accelerator."""
        bs = self.cfg["training"]["eval_batch_size"]
        return bs * self.cfg["accelerator_batch_scale"] if self.on_accelerator else bs

    @property
    def loader_options(self) -> dict:
        """Keyword arguments of :func:`training.iterate_batches`: the profile's ``num_workers`` (image
        files decoded in worker processes) and pinned memory on CUDA."""
        return {"num_workers": self.cfg["num_workers"], "pin_memory": self.device.type == "cuda"}

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
        """``fn()`` when every stage it needs is already cached (run inside :meth:`cached_only`), else
        ``otherwise()``: use an expensive result, or a unit that helpers.precompute cached, only where
        it exists."""
        try:
            with self.cached_only():
                return fn()
        except StageNotCached:
            return otherwise()

    # ------------------------------------------------------------------ caching
    def stage(self, stage: str, params: Any, compute: Callable[[], Any], save: Callable[[Any, Path], None],
              load: Callable[[Path], Any], ext: str) -> Any:
        """Return the cached result of ``stage`` for ``params``, computing and saving it atomically if absent.

        A cached file whose sha256 differs from its sidecar's, or whose ``load`` raises, is corrupt: it
        and its sidecar are set aside (``<file>.corrupt``), one line on stderr says so, and the stage is
        recomputed (inside :meth:`cached_only`: :class:`StageNotCached`)."""
        key = params_hash(params)
        path = self.artifacts_dir / f"{stage}-{key}.{ext}"
        sidecar = sidecar_of(path)
        result = self._load_cached(stage, path, sidecar, load) if path.is_file() else _MISSING
        if result is _MISSING and self._cache_only:
            raise StageNotCached(f"{stage}: not cached for this profile ({path.name})")
        if result is _MISSING:
            self._compute_and_save(stage, params, compute, save, path, sidecar)
            result = load(path)  # the same object whether computed now or cached earlier
        self._log_stage(stage, key, sidecar)
        return result

    def _compute_and_save(self, stage: str, params: Any, compute: Callable[[], Any],
                          save: Callable[[Any, Path], None], path: Path, sidecar: Path) -> None:
        """Compute a stage, save it atomically at ``path`` and write its sidecar (params, versions,
        device, cost and the file's sha256, checked when it is loaded)."""
        t0 = time.perf_counter()
        result = compute()
        self.timings[stage] = time.perf_counter() - t0
        with atomic_path(path) as tmp:
            save(result, tmp)
            sha = file_sha256(tmp)
        atomic_write_json(sidecar, {
            "stage": stage, "params": params, "versions": _versions(), "device": str(self.device),
            "seconds": self.timings[stage], "peak_rss_mb": round(peak_rss_mb(), 1),
            "threads": torch.get_num_threads(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "sha256": sha})

    def _load_cached(self, stage: str, path: Path, sidecar: Path, load: Callable[[Path], Any]) -> Any:
        """``load(path)`` after checking the file's sha256 against its sidecar; :data:`_MISSING` when the
        entry is corrupt (mismatch, or ``load`` raises): then both files are set aside, one line printed."""
        try:
            reason = _stage_mismatch(path, sidecar)
            if reason is not None:  # another writer of the same stage may be between its file and its sidecar
                time.sleep(0.5)
                reason = _stage_mismatch(path, sidecar)
            if reason is None:
                return load(path)
        except MemoryError:
            raise
        except Exception as e:  # a truncated or damaged file: EOFError, BadZipFile, BadGzipFile, ...
            reason = _one_line(e)
        aside = set_aside(path)
        if sidecar.is_file():
            set_aside(sidecar)
        then = "not cached now (cached_only)" if self._cache_only else "recomputing"
        print(f"{stage}: cached file {path} is corrupt ({reason}); set aside as {aside.name}, {then}",
              file=sys.stderr, flush=True)
        return _MISSING

    @property
    def stages_path(self) -> Path:
        return self.output_dir / "stages.json"

    def _log_stage(self, stage: str, key: str, sidecar: Path) -> None:
        """Record in <output_dir>/stages.json (``{"stages": {stage-key: ...}, "notebooks": {...}}``) what the stage cost when it was computed (from its
        sidecar): seconds, peak resident memory of the computing process, threads, device."""
        info = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
        self._log_entry(f"{stage}-{key}", {
            "stage": stage, **{k: info.get(k) for k in ("seconds", "peak_rss_mb", "threads", "device", "finished")}})

    def _log_entry(self, key: str, entry: dict) -> None:
        log = json.loads(self.stages_path.read_text()) if self.stages_path.is_file() else {}
        log.setdefault("stages", {})[key] = entry
        atomic_write_json(self.stages_path, log)

    def stage_path(self, stage: str, params: Any, ext: str) -> Path:
        return self.artifacts_dir / f"{stage}-{params_hash(params)}.{ext}"

    # ------------------------------------------------------------------ data and model
    @cached_property
    def data(self) -> DataBundle:
        """The three splits; the manifest of sample ids is saved beside the other artifacts."""
        t0 = time.perf_counter()
        data = load_data(self.cfg)
        self.timings["data"] = time.perf_counter() - t0
        c = self.cfg
        self._data_key = params_hash(c["dataset"], stable_section(c, "split"), c["seed"], c["image_size"], c["normalize"],
                                    data.fingerprint)
        manifest = self.artifacts_dir / f"splits-{self._data_key}.csv"
        if not manifest.is_file():
            with atomic_path(manifest) as tmp:
                data.manifest().to_csv(tmp, index=False)
        return data

    @property
    def data_key(self) -> str:
        """Hash of the data this experiment sees (dataset, split, seed, preprocessing, the source's
        fingerprint): the name of its split manifest and the root of every cache key."""
        self.data
        return self._data_key

    @cached_property
    def model_params(self) -> dict:
        """What the model (and so every later stage) depends on: the cache key's core.  Computed once
        per experiment: it hashes the weight / checkpoint files, and every stage's key includes it."""
        c = self.cfg
        params = {"data": self.data_key, "model": c["model"], "weights": c["weights"],
                  "training": stable_section(c, "training"),
                  "seed": c["seed"], "amp": c["training"]["amp"] and self.device.type == "cuda"}
        for key in ("weights", "checkpoint"):  # a file's content, not just its name, decides the model
            path = self._path_of(c.get(key))
            if path is not None and path.is_file():
                params[f"{key}_file"] = file_sha256(path, 16)
        return params

    @staticmethod
    def _path_of(value) -> Path | None:
        if not value or value in ("none", "pretrained", "imagenet"):
            return None
        p = Path(value).expanduser()
        return p if p.is_absolute() else REPO_ROOT / p

    def build_model(self, weights="profile") -> torch.nn.Module:
        """The profile's model with its initial weights (``weights=None``: random, e.g. before a
        checkpoint is loaded over them, so a committed checkpoint needs no pretrained file)."""
        c = self.cfg
        return build_model(c["model"], len(self.data.classes), self.data.in_channels,
                           c["weights"] if weights == "profile" else weights,
                           search_dirs=[d.parent / "weights" for d in data_search_dirs(c)] + data_search_dirs(c))

    def _load_checkpoint(self) -> tuple[torch.nn.Module, list] | None:
        ck = self.cfg.get("checkpoint")
        if not ck:
            return None
        path = self._path_of(ck)
        if not path.is_file():
            if self.cfg["if_no_checkpoint"] == "train":
                return None
            raise FileNotFoundError(f"checkpoint: no file at {path}; set `checkpoint: null` (or "
                                    f"`if_no_checkpoint: train`) to train instead")
        record = path.with_suffix(".json")  # the human-readable twin, else the record inside the file
        info = self._checkpoint_record(path, record)
        obj = _read_checkpoint(path, self.name)
        saw = obj.get("data_key")
        if saw is not None and saw != self.data_key:
            warnings.warn(f"checkpoint: {path.name} was trained on data {saw} ({obj.get('data_source')}), "
                          f"this profile's data is {self.data_key} ({self.data.source}); its numbers are "
                          f"not those of the committed run", stacklevel=2)
        model = self.build_model(weights=None)
        model.load_state_dict(obj["state_dict"])
        info = info if info is not None else obj
        self._log_entry(f"model-{file_sha256(path, 10)}", {
            "stage": "model (committed checkpoint)", "seconds": info.get("train_seconds"),
            "peak_rss_mb": None, "threads": info.get("train_threads"), "device": info.get("train_device"),
            "finished": None})
        return model, obj.get("history", [])

    def _checkpoint_record(self, path: Path, record: Path) -> dict | None:
        """The checkpoint's JSON record (None when absent), after checking (``verify_checkpoint``) that
        the file's sha256 is the one it records; a mismatch is a :class:`CheckpointError`."""
        if not record.is_file():
            return None
        try:
            info = json.loads(record.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            rel = _in_repo(record)
            raise CheckpointError(f"checkpoint: its record {record} is not valid JSON ({_one_line(e)}); "
                                  f"{f'restore it (git checkout -- {rel}) or ' if rel else ''}delete it") from None
        expected = info.get("sha256") if isinstance(info, dict) else None
        if self.cfg["verify_checkpoint"] and expected:
            actual = file_sha256(path)
            if actual != expected:
                raise CheckpointError(
                    f"checkpoint: {path} has sha256 {actual} but its record {record.name} says {expected}; the file "
                    f"is damaged or was replaced: {_restore_hint(path, self.name)}, or set `verify_checkpoint: false` "
                    f"for a checkpoint of your own")
        return info if isinstance(info, dict) else None

    def export_checkpoint(self, path: str | os.PathLike) -> Path:
        """Write the trained model as a reusable checkpoint (``checkpoint:`` in a profile) with
        its provenance: the profile's training settings, the hash of the data it saw (the
        split manifest's key) and its accuracies; plus a human-readable JSON twin."""
        path = Path(path)
        acc = self.predictions.groupby("split")["correct"].mean().round(6).to_dict()
        acc.update({k: round(v, 6) for k, v in self.model_split_accuracy().items()})
        info = {"profile": self.name, "model": self.cfg["model"], "weights": self.cfg["weights"],
                "training": self.cfg["training"], "seed": self.seed, "data_key": self.data_key,
                "data_source": self.data.source, "data_fingerprint": self.data.fingerprint,
                "split": self.cfg["split"], "normalize": self.cfg["normalize"], "accuracy": acc,
                "train_seconds": None, "train_threads": None, "train_device": None, "versions": _versions()}
        sidecar = sidecar_of(self.stage_path("model", self.model_params, "pt"))
        if sidecar.is_file():
            trained = json.loads(sidecar.read_text())
            info.update(train_seconds=trained.get("seconds"), train_threads=trained.get("threads"),
                        train_device=trained.get("device"))
        state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        with atomic_path(path) as tmp:
            torch.save({"state_dict": state, "history": self._model_and_history[1], **info}, tmp)
        atomic_write_json(path.with_suffix(".json"), {**info, "sha256": file_sha256(path)})
        return path

    @cached_property
    def _model_and_history(self):
        reused = self._load_checkpoint()
        if reused is not None:
            model, history = reused
            return model.to(self.device).eval(), history

        def compute():
            seed_everything(self.seed)  # the same initial weights as head_features' model, even random ones
            model = self.build_model()
            history = []
            if self.cfg["training"]["head_epochs"]:
                g, y = self.head_features()
                history += train_head(model, g, y, self.cfg["training"], self.seed)
            history += train_model(model, self.data.model_bundle(), self.cfg["training"], self.seed, self.device,
                                   self.progress, self.loader_options)
            return {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()}, "history": history}

        obj = self.stage("model", self.model_params, compute, lambda o, p: torch.save(o, p),
                         lambda p: torch.load(p, map_location="cpu", weights_only=False), "pt")
        bad = first_nonfinite(obj["state_dict"])
        if bad is not None:
            path = self.stage_path("model", self.model_params, "pt")
            raise CheckpointError(f"model: cached {path}: tensor {bad} holds NaN or inf values; training diverged "
                                  f"(lower training.lr) or the file was damaged: delete it and its .json to retrain")
        model = self.build_model(weights=None)
        model.load_state_dict(obj["state_dict"])
        return model.to(self.device).eval(), obj["history"]

    def head_features(self) -> tuple[dict, dict]:
        """Pooled features ``g`` of the train and val images under the initial (pretrained, frozen)
        weights, and their labels: the input of :func:`training.train_head` (cached)."""
        from .models import pooled_features
        from .training import iterate_batches

        c = self.cfg
        params = {"data": self.data_key, "model": c["model"], "weights": c["weights"], "seed": self.seed,
                  **{k: v for k, v in self.model_params.items() if k == "weights_file"}}

        def compute():
            seed_everything(self.seed)  # the model that is then trained draws the same initial weights
            model = self.build_model().to(self.device).eval()
            out = {}
            for split in ("train", "val"):
                out[split] = torch.cat([pooled_features(model, x.to(self.device, non_blocking=True))[0] for x, _ in
                                        iterate_batches(data[split].dataset, self.eval_batch_size,
                                                        **self.loader_options)]).cpu()
            return out

        data = self.data.model_bundle()
        g = self.stage("head_features", params, compute, lambda o, p: torch.save(o, p),
                       lambda p: torch.load(p, map_location="cpu", weights_only=True), "pt")
        return g, {s: torch.as_tensor(data[s].labels) for s in ("train", "val")}

    def model_split_accuracy(self) -> dict:
        """Accuracy on the model's own train and val photos when they are not the analysis splits
        (``split.analysis_from_test``), else {} (the prediction table has them).  Cached."""
        ms = self.data.extra.get("model_splits")
        if not ms:
            return {}
        params = {"model": self.model_params, "checkpoint": self.cfg.get("checkpoint")}

        def compute():
            from .training import predict_logits

            return {f"model_{s}": float((predict_logits(self.model, sd.dataset, self.device, self.eval_batch_size,
                                                        self.loader_options).argmax(1)
                                         == sd.labels).mean()) for s, sd in ms.items()}

        return self.stage("model_accuracy", params, compute, lambda o, p: atomic_write_json(p, o),
                          lambda p: json.loads(Path(p).read_text()), "json")

    @property
    def model(self) -> torch.nn.Module:
        """The trained (or loaded) model, in eval mode on the experiment's device."""
        return self._model_and_history[0]

    @property
    def history(self) -> pd.DataFrame:
        return pd.DataFrame(self._model_and_history[1])

    @cached_property
    def predictions(self) -> pd.DataFrame:
        """Per-sample table (id, split, label, prediction, correct, logits), cached."""
        params = {"model": self.model_params, "checkpoint": self.cfg.get("checkpoint")}
        return self.stage(
            "predictions", params,
            lambda: prediction_table(self.model, self.data, self.device, self.eval_batch_size, self.loader_options),
            lambda df, p: df.to_csv(p, index=False, compression="gzip"),
            lambda p: pd.read_csv(p, compression="gzip", dtype={"id": str}), "csv.gz")

    def split_table(self, split: str) -> pd.DataFrame:
        """The prediction table rows of one split, in the split's id order."""
        t = self.predictions
        return t[t["split"] == split].reset_index(drop=True)

    # ------------------------------------------------------------------ outputs
    def save_figure(self, fig, name: str) -> Path:
        """Save ``fig`` as <output_dir>/<name>.png and .pdf (atomically)."""
        paths = []
        for ext in ("png", "pdf"):
            path = self.output_dir / f"{name}.{ext}"
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format=ext, bbox_inches="tight", dpi=150,
                            metadata={"CreationDate": None} if ext == "pdf" else {"Software": None})
            paths.append(path)
        return paths[0]

    def save_table(self, df: pd.DataFrame, name: str, floatfmt: str = ".3f", index: bool = False) -> Path:
        """Save ``df`` as <output_dir>/<name>.csv and .md (atomically)."""
        with atomic_path(self.output_dir / f"{name}.csv") as tmp:
            df.to_csv(tmp, index=index)
        atomic_write_text(self.output_dir / f"{name}.md", df.to_markdown(index=index, floatfmt=floatfmt) + "\n")
        return self.output_dir / f"{name}.md"

    @property
    def metrics_path(self) -> Path:
        return self.output_dir / "metrics.json"

    def metrics(self) -> dict:
        return json.loads(self.metrics_path.read_text()) if self.metrics_path.is_file() else {}

    def update_metrics(self, updates: dict, fresh: bool = False) -> dict:
        """Merge ``updates`` (nested dict) into <output_dir>/metrics.json, atomically.

        ``fresh=True`` (notebook 00, the start of a run) drops what an earlier run left there, so
        the file never mixes sections of different runs."""
        def merge(a, b):
            for k, v in b.items():
                a[k] = merge(a.get(k, {}), v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
            return a

        m = merge({} if fresh else self.metrics(), json.loads(json.dumps(updates, default=json_default)))
        m["profile"] = self.name
        atomic_write_json(self.metrics_path, m)
        return m



def main(argv=None) -> None:
    """``python -m helpers.experiment --profile cifar10 --export-checkpoint checkpoints/cifar10-resnet20.pt``:
    train (or load from the cache) the profile's model and write it as a committed checkpoint."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--profile", default=DEFAULT_PROFILE)
    ap.add_argument("--export-checkpoint", required=True, metavar="PATH")
    a = ap.parse_args(argv)
    exp = Experiment(a.profile)
    path = exp.export_checkpoint(a.export_checkpoint)
    print(json.dumps(json.loads(path.with_suffix(".json").read_text()), indent=1, default=json_default))


if __name__ == "__main__":
    main()
