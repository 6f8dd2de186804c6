"""One experiment = one profile: its settings, cached stages, and where its outputs go.

Data flow: profile -> splits (manifest of sample ids) -> trained model
(checkpoint) -> per-sample prediction table -> features (conductance, LCR, baselines)
-> detectors -> metrics + figures.  Each stage is a cached function of its parameters:
``artifacts/<profile>/<stage>-<hash>.<ext>`` with a JSON sidecar (params, versions,
device), written atomically, so a notebook run alone computes the upstream stages it
lacks and a rerun with the same parameters reuses them.
"""
from __future__ import annotations

import json
import os
import sys
import time
import warnings
from functools import cached_property
from pathlib import Path

import pandas as pd
import torch

from helpers.cache import FRAME, JSON, TENSORS, Memo, StageCache, params_hash, versions
from helpers.checkpoints import CheckpointError, fit_problems, read_checkpoint, verified_record, write_checkpoint
from helpers.datasets import DataBundle, data_search_dirs, load_data
from helpers.devices import configure_device, get_device
from helpers.models import LayerError, build_model, load_state
from helpers.paths import REPO_ROOT, cache_root, output_root
from helpers.profiles import DEFAULT_PROFILE, ProfileError, load_profile, parse_overrides, stable_section
from helpers.progress import wanted as progress_wanted
from helpers.training import prediction_table, train_head, train_model
from helpers.utils import (
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    cli_main,
    file_sha256,
    first_nonfinite,
    json_default,
    seed_everything,
)


def default_output_dir(name: str, overrides: dict | None = None) -> Path:
    """figures/<profile>/, or figures/<profile>-<hash of the overrides>/ for a run with overrides, so
    that an override run (from the runner, papermill's CLI or Jupyter) never writes over the
    profile's committed results; under $COMPANION_OUTPUT_DIR when set."""
    return output_root() / (f"{name}-{params_hash(overrides, length=8)}" if overrides else name)


def training_seconds(record: dict, history: list) -> float | None:
    """What training a checkpoint took: the sum of its epochs' wall times when the history has every one
    (a training stopped and resumed in several processes: the record's ``train_seconds`` is the last
    process's share only), else the record's ``train_seconds``."""
    secs = [e.get("seconds") for e in history if isinstance(e, dict)]
    total = record.get("train_seconds")
    if secs and len(secs) == len(history) and all(isinstance(x, (int, float)) for x in secs):
        total = max(float(sum(secs)), float(total or 0))
    return total


def write_table(folder: Path, df: pd.DataFrame, name: str, floatfmt: str = ".3f", index: bool = False) -> Path:
    """Save ``df`` as <folder>/<name>.csv and .md (atomically): the tables of a run's output folder."""
    folder = Path(folder)
    with atomic_path(folder / f"{name}.csv") as tmp:
        df.to_csv(tmp, index=index)
    atomic_write_text(folder / f"{name}.md", df.to_markdown(index=index, floatfmt=floatfmt) + "\n")
    return folder / f"{name}.md"


class Experiment:
    """Settings, cached stages and outputs of one profile.

    ``Experiment("digits")`` or ``Experiment("params/my.yaml", {"training.epochs": 1})``.
    ``output_dir`` defaults to figures/<name>/ (or $COMPANION_OUTPUT_DIR/<name>/; with overrides,
    <name>-<hash of the overrides>/: :func:`default_output_dir`); ``artifacts_dir`` to artifacts/<name>/
    (or $COMPANION_ARTIFACTS/<name>/); a variant (``base:``) shares its base's.
    """

    def __init__(self, profile: str | os.PathLike | dict = DEFAULT_PROFILE, overrides: dict | None = None,
                 output_dir: str | os.PathLike | None = None, progress: bool | None = None, check: bool = True):
        overrides = parse_overrides(overrides)  # a dict, or a JSON / YAML string from papermill's -p
        self.cfg = load_profile(profile, overrides)
        self.name = self.cfg["name"]
        self.device = get_device(self.cfg["device"])
        self.seed = self.cfg["seed"]
        self.output_dir = Path(output_dir) if output_dir else default_output_dir(self.name, overrides)
        self.artifacts_dir = cache_root() / (self.cfg["base"] or self.name)  # a variant shares its base's cache
        self.progress = progress_wanted() if progress is None else progress
        #: the profile's cached stages (:mod:`helpers.cache`)
        self.cache = StageCache(self.artifacts_dir, self.output_dir / "stages.json", str(self.device))
        #: results derived in memory from cached stages, kept for this experiment's lifetime
        self.memo = Memo()
        #: the checkpoint file the model was loaded from: path, sha256, whether a JSON record vouched for it
        self.loaded_checkpoint: dict | None = None
        self._missing_checkpoint: Path | None = None
        if self.cfg["threads"]:  # float sums depend on the thread count: fix it where the profile asks
            torch.set_num_threads(self.cfg["threads"])
        configure_device(self.device, self.cfg["deterministic"])
        seed_everything(self.seed)
        if check:
            self.check_settings()

    def with_section(self, section: str, value: dict) -> "Experiment":
        """This experiment with the profile's ``section`` replaced by ``value``: the same data, model,
        predictions and stage cache (so a stage of the other setting is read from the cache, or computed
        there), with a memo of its own (what is kept in memory depends on the settings).  For comparing
        two settings of a downstream stage on one model, e.g. a variant's LCR against its base's."""
        import copy

        view = copy.copy(self)
        view.cfg, view.memo = {**self.cfg, section: value}, Memo()
        return view

    def check_settings(self) -> None:
        """The settings that need the data or the model's structure, checked before any work (the profile's
        own values are checked when it loads): ``conductance.classes`` are classes of the data,
        ``conductance.layer`` and the ``trainable`` module names are modules of the model.  A
        :class:`ProfileError` names the key, the value and what is valid."""
        n = len(self.data.classes)
        classes = self.cfg["conductance"]["classes"]
        bad = [c for c in classes if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < n]
        if bad or not classes:
            raise ProfileError(f"conductance.classes = {classes!r} is not valid: {bad or 'empty'}; valid: a non-empty "
                               f"list of class indices 0..{n - 1} of the {n} classes of {self.name!r}")
        try:
            model = self.build_model(weights=None)  # the structure only: no weights file is read
        except LayerError as e:  # the layers of the detectors (helpers.models.find_layers): before any work
            raise ProfileError(str(e)) from None
        modules = [name for name, _ in model.named_modules() if name]
        shown = ", ".join(m for m in modules if m.count(".") <= 1)
        layer = self.cfg["conductance"]["layer"]
        if layer is not None and layer not in modules:
            raise ProfileError(f"conductance.layer = {layer!r} is not a module of {self.cfg['model']!r}; valid: null "
                               f"(the model's last conv block, {model.last_conv_layer!r}) or a module name such as "
                               f"{shown}")
        for key, special in (("training", ("all",)), ("debugging", ("all", "last_conv"))):
            spec = self.cfg.get(key, {}).get("trainable")
            names = [] if spec is None or spec in special else [spec] if isinstance(spec, str) else list(spec)
            unknown = [m for m in names if m not in modules]
            if unknown:
                raise ProfileError(f"{key}.trainable = {spec!r}: {unknown} are not modules of {self.cfg['model']!r}; "
                                   f"valid: {' or '.join(map(repr, special))} or module names such as {shown}")

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

    # ------------------------------------------------------------------ data and model
    @cached_property
    def data(self) -> DataBundle:
        """The three splits; the manifest of sample ids is saved beside the other artifacts."""
        t0 = time.perf_counter()
        data = load_data(self.cfg)
        self.cache.timings["data"] = time.perf_counter() - t0
        c = self.cfg
        self._data_key = params_hash(c["dataset"], stable_section(c, "split"), c["seed"], c["image_size"],
                                    c["normalize"], data.fingerprint)
        manifest = self.artifacts_dir / f"splits-{self._data_key}.csv"
        if not manifest.is_file():
            with atomic_path(manifest) as tmp:
                data.manifest().to_csv(tmp, index=False)
        return data

    @property
    def data_key(self) -> str:
        """Hash of the data this experiment sees (dataset, split, seed, preprocessing, the source's
        fingerprint): the name of its split manifest and the root of every cache key."""
        _ = self.data  # loading the data computes the key
        return self._data_key

    @cached_property
    def model_params(self) -> dict:
        """What the model (and so every later stage) depends on: the cache key's core.  Computed once
        per experiment: it hashes the weight / checkpoint files, and every stage's key includes it."""
        c = self.cfg
        checkpoint = self._path_of(c.get("checkpoint"))
        trained_here = checkpoint is None or not checkpoint.is_file()  # a checkpoint file is loaded, not trained
        # amp changes the model only where it is trained, on CUDA: a loaded checkpoint is the same model on
        # any device, so its keys are the same on a GPU machine and on a CPU machine (docs/scaling-out.md)
        params = {"data": self.data_key, "model": c["model"], "weights": c["weights"],
                  "training": stable_section(c, "training"),
                  "seed": c["seed"], "amp": c["training"]["amp"] and self.device.type == "cuda" and trained_here}
        for key in ("model_kwargs", "layers"):  # only where a profile sets them: the others' keys stay as they were
            if c.get(key):
                params[key] = c[key]
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
                           search_dirs=[d.parent / "weights" for d in data_search_dirs(c)] + data_search_dirs(c),
                           image_size=c["image_size"], model_kwargs=c.get("model_kwargs"), layers=c.get("layers"))

    def _load_checkpoint(self) -> tuple[torch.nn.Module, list] | None:
        ck = self.cfg.get("checkpoint")
        if not ck:
            return None
        path = self._path_of(ck)
        if not path.is_file():
            if self.cfg["if_no_checkpoint"] == "train":
                self._missing_checkpoint = path
                return None
            raise FileNotFoundError(f"checkpoint: no file at {path}; set `checkpoint: null` (or "
                                    f"`if_no_checkpoint: train`) to train instead")
        info = verified_record(path, self.name, self.cfg["verify_checkpoint"])
        obj = read_checkpoint(path, self.name)
        provenance = info if info is not None else obj
        problems = fit_problems(provenance, self.input_contract())
        if problems and self.cfg["verify_checkpoint"]:
            raise CheckpointError(f"checkpoint: {path} was made for other inputs or outputs than this profile's: "
                                  + "; ".join(problems) + ". Use a checkpoint made for this data, or set "
                                  "`verify_checkpoint: false` to use it knowingly")
        for line in problems:
            print(f"checkpoint: {path.name}: {line} (used anyway: verify_checkpoint is false)", file=sys.stderr)
        if info is None and "data_key" not in obj:
            print(f"checkpoint: {path} has no record ({path.with_suffix('.json').name}) and no provenance inside: "
                  "nothing checks that it fits this data; its sha256 is recorded in metrics.json", file=sys.stderr)
        saw = obj.get("data_key")
        if saw is not None and saw != self.data_key:
            warnings.warn(f"checkpoint: {path.name} was trained on data {saw} ({obj.get('data_source')}), "
                          f"this profile's data is {self.data_key} ({self.data.source}); its numbers are "
                          f"not those of the committed run", stacklevel=2)
        model = self.build_model(weights=None)
        try:
            load_state(model, obj["state_dict"])
        except RuntimeError as e:
            raise CheckpointError(f"checkpoint: {path} does not fit model {self.cfg['model']!r} with "
                                  f"{len(self.data.classes)} classes: {str(e).splitlines()[1].strip()[:300]}") from None
        self.loaded_checkpoint = {"path": str(ck), "sha256": file_sha256(path), "record": info is not None}
        info = provenance
        self.cache.log_entry(f"model-{file_sha256(path, 10)}", {
            "stage": "model (committed checkpoint)", "seconds": training_seconds(info, obj.get("history", [])),
            "peak_rss_mb": None, "threads": info.get("train_threads"), "device": info.get("train_device"),
            "finished": None})
        return model, obj.get("history", [])

    def input_contract(self) -> dict:
        """What the model's inputs and outputs mean (:data:`checkpoints.CONTRACT_KEYS`): the architecture, the
        class names in output order, the input size and channels, the normalisation."""
        return {"model": self.cfg["model"], "classes": [str(c) for c in self.data.classes],
                "image_size": self.cfg["image_size"], "in_channels": self.data.in_channels,
                "normalize": self.cfg["normalize"]}

    def export_checkpoint(self, path: str | os.PathLike) -> Path:
        """Write the trained model as a reusable checkpoint (``checkpoint:`` in a profile) with
        its provenance: the profile's training settings, the hash of the data it saw (the
        split manifest's key) and its accuracies; plus a human-readable JSON twin."""
        path = Path(path)
        acc = self.predictions.groupby("split")["correct"].mean().round(6).to_dict()
        acc.update({k: round(v, 6) for k, v in self.model_split_accuracy().items()})
        info = {"profile": self.name, **self.input_contract(), "weights": self.cfg["weights"],
                "training": self.cfg["training"], "seed": self.seed, "data_key": self.data_key,
                "data_source": self.data.source, "data_fingerprint": self.data.fingerprint,
                "split": self.cfg["split"], "normalize": self.cfg["normalize"], "accuracy": acc,
                "train_seconds": None, "train_threads": None, "train_device": None, "versions": versions()}
        trained = self.cache.cost("model", self.model_params, TENSORS)  # what training cost, where it ran
        history = self._model_and_history[1]
        if trained:  # a training resumed in several processes: all its epochs, not the last process's share
            info.update(train_seconds=training_seconds({"train_seconds": trained.get("seconds")}, history),
                        train_threads=trained.get("threads"), train_device=trained.get("device"))
        return write_checkpoint(path, self.model.state_dict(), history, info)

    @cached_property
    def _model_and_history(self):
        reused = self._load_checkpoint()
        if reused is not None:
            model, history = reused
            return model.to(self.device).eval(), history

        def compute():
            if self._missing_checkpoint is not None:
                print(f"checkpoint: no file at {self._missing_checkpoint}; training a new model instead "
                      "(if_no_checkpoint: train)", file=sys.stderr, flush=True)
            seed_everything(self.train_seed)  # the same initial weights as head_features' model, even random ones
            model = self.build_model()
            history = []
            if self.cfg["training"]["head_epochs"]:
                g, y = self.head_features()
                history += train_head(model, g, y, self.cfg["training"], self.train_seed)
            history += train_model(model, self.data.model_bundle(), self.cfg["training"], self.train_seed, self.device,
                                   self.progress, self.loader_options, state_path=self.train_state_path)
            return {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()}, "history": history}

        obj = self.cache.stage("model", self.model_params, compute, TENSORS)
        self.train_state_path.unlink(missing_ok=True)  # the finished model is cached: no epoch to resume
        bad = first_nonfinite(obj["state_dict"])
        if bad is not None:
            path = self.cache.path("model", self.model_params, TENSORS)
            raise CheckpointError(f"model: cached {path}: tensor {bad} holds NaN or inf values; training diverged "
                                  f"(lower training.lr) or the file was damaged: delete it and its .json to retrain")
        model = self.build_model(weights=None)
        load_state(model, obj["state_dict"])
        return model.to(self.device).eval(), obj["history"]

    @property
    def train_state_path(self) -> Path:
        """Where training keeps its state after every epoch (:func:`training.train_model`), beside the cached
        model it will become: a stopped run resumes from it, and it is removed once the model is cached."""
        return self.cache.path("model", self.model_params, TENSORS).with_suffix(".train.pt")

    @property
    def train_seed(self) -> int:
        """The seed of the model's initial weights and training order: ``training.seed``, else ``seed``."""
        t = self.cfg["training"].get("seed")
        return self.seed if t is None else t

    def head_features(self) -> tuple[dict, dict]:
        """Pooled features ``g`` of the train and val images under the initial (pretrained, frozen)
        weights, and their labels: the input of :func:`training.train_head` (cached)."""
        from helpers.models import pooled_features
        from helpers.training import iterate_batches

        c = self.cfg
        params = {"data": self.data_key, "model": c["model"], "weights": c["weights"], "seed": self.train_seed,
                  **{k: v for k, v in self.model_params.items() if k in ("weights_file", "model_kwargs")}}

        def compute():
            seed_everything(self.train_seed)  # the model that is then trained draws the same initial weights
            model = self.build_model().to(self.device).eval()
            out = {}
            for split in ("train", "val"):
                out[split] = torch.cat([pooled_features(model, x.to(self.device, non_blocking=True))[0] for x, _ in
                                        iterate_batches(data[split].dataset, self.eval_batch_size,
                                                        **self.loader_options)]).cpu()
            return out

        data = self.data.model_bundle()
        g = self.cache.stage("head_features", params, compute, TENSORS)
        return g, {s: torch.as_tensor(data[s].labels) for s in ("train", "val")}

    def model_split_accuracy(self) -> dict:
        """Accuracy on the model's own train and val photos when they are not the analysis splits
        (``split.analysis_from_test``), else {} (the prediction table has them).  Cached."""
        ms = self.data.extra.get("model_splits")
        if not ms:
            return {}
        params = {"model": self.model_params, "checkpoint": self.cfg.get("checkpoint")}

        def compute():
            from helpers.training import predict_logits

            return {f"model_{s}": float((predict_logits(self.model, sd.dataset, self.device, self.eval_batch_size,
                                                        self.loader_options).argmax(1)
                                         == sd.labels).mean()) for s, sd in ms.items()}

        return self.cache.stage("model_accuracy", params, compute, JSON)

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
        return self.cache.stage(
            "predictions", params,
            lambda: prediction_table(self.model, self.data, self.device, self.eval_batch_size, self.loader_options),
            FRAME)

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
        return write_table(self.output_dir, df, name, floatfmt, index)

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



def export_train_state(exp: Experiment, path: str | os.PathLike) -> Path:
    """Copy the profile's unfinished training state (:attr:`Experiment.train_state_path`) to ``path`` with a
    JSON record (profile, the model's cache key, epochs done, sha256), so that a run on another machine
    can resume it (``--resume-from``)."""
    src, path = exp.train_state_path, Path(path)
    if not src.is_file():
        raise FileNotFoundError(f"--export-train-state: {exp.name!r} has no unfinished training state at {src}")
    with atomic_path(path) as tmp:
        tmp.write_bytes(src.read_bytes())
    state = torch.load(path, map_location="cpu", weights_only=True)
    atomic_write_json(path.with_suffix(".json"), {
        "profile": exp.name, "model_key": src.name.split(".")[0], "data_key": exp.data_key,
        "epochs_done": int(state["epoch"]), "epochs": exp.cfg["training"]["epochs"],
        "history": state["history"], "sha256": file_sha256(path)})
    return path


def resume_from(exp: Experiment, path: str | os.PathLike) -> Path:
    """Put an exported training state (:func:`export_train_state`) where training resumes from it, after
    checking its record: its sha256, and that it belongs to this profile's model (same cache key)."""
    path = Path(path)
    record = json.loads(path.with_suffix(".json").read_text())
    key = exp.train_state_path.name.split(".")[0]
    if record.get("model_key") != key:
        raise ValueError(f"--resume-from: {path} is the training state of model {record.get('model_key')}, "
                         f"not of {exp.name!r}'s model {key} (another profile, data or training settings)")
    if file_sha256(path) != record.get("sha256"):
        raise ValueError(f"--resume-from: {path}'s sha256 differs from its record {path.with_suffix('.json')}")
    with atomic_path(exp.train_state_path) as tmp:
        tmp.write_bytes(path.read_bytes())
    return exp.train_state_path


def main(argv=None) -> None:
    """``python -m helpers.experiment --profile cifar10 --export-checkpoint checkpoints/cifar10-resnet20.pt``:
    train (or load from the cache) the profile's model and write it as a committed checkpoint.  Training
    saves its state after every epoch and a rerun resumes it; ``--export-train-state`` hands an unfinished
    run to another machine, where ``--resume-from`` continues it."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--profile", default=DEFAULT_PROFILE)
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--export-checkpoint", metavar="PATH", help="train or load the model, write it to PATH")
    what.add_argument("--export-train-state", metavar="PATH", help="copy the unfinished training state to PATH")
    ap.add_argument("--resume-from", metavar="PATH", help="an exported training state to continue from")
    a = ap.parse_args(argv)
    exp = Experiment(a.profile)
    if a.export_train_state:
        path = export_train_state(exp, a.export_train_state)
        print(f"wrote {path} ({json.loads(path.with_suffix('.json').read_text())['epochs_done']} epochs done)")
        return
    if a.resume_from and not exp.train_state_path.is_file():
        resume_from(exp, a.resume_from)
    path = exp.export_checkpoint(a.export_checkpoint)
    print(json.dumps(json.loads(path.with_suffix(".json").read_text()), indent=1, default=json_default))


if __name__ == "__main__":
    sys.exit(cli_main(main))
