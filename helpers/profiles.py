"""Experiment profiles: every knob of one experiment in one YAML file (params/<name>.yaml).

A profile is loaded by name (``digits`` -> ``params/digits.yaml``) or by path, merged
with optional overrides (a dict of dotted keys, e.g. ``{"training.epochs": 1}``,
which is how notebooks receive them from papermill), and validated against
:data:`SCHEMA` before any work starts: an unknown key, a missing required key or an
invalid value raises :class:`ProfileError` naming the key, the value and what is
valid.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

from helpers.names import DATASET_NAMES, MODEL_NAMES, MUTATION_OPERATORS
from helpers.paths import PARAMS_DIR, REPO_ROOT

DEFAULT_PROFILE = "digits"


class ProfileError(ValueError):
    """A profile key is unknown, missing or has an invalid value."""


# --------------------------------------------------------------------------- schema
# Each leaf: (type(s), required, check) where check is None, a tuple of allowed
# values, or a (lo, hi) numeric range given as a dict {"min":..., "max":...}.
_NUM = (int, float)
_OPT = type(None)

SCHEMA: dict[str, Any] = {
    "name": (str, True, None),
    "description": (str, False, None),
    "dataset": (str, True, DATASET_NAMES),
    "data_dir": ((str, _OPT), False, None),
    "download": (bool, False, None),
    "model": (str, True, MODEL_NAMES),
    "weights": ((str, _OPT), False, None),
    "checkpoint": ((str, _OPT), False, None),
    "if_no_checkpoint": (str, False, ("error", "train")),
    # true: a checkpoint's sha256 must match its JSON record (checkpoints/<name>.json); false: skip that
    # check (a checkpoint of your own, without a record)
    "verify_checkpoint": (bool, False, None),
    "image_size": (int, True, {"min": 4, "max": 1024}),
    "normalize": {
        "mean": (list, True, None),
        "std": (list, True, None),
        # true: subtract the mean image of the training split, pixel by pixel (Keras' example, paper 1's
        # ResNet20), instead of ``mean``, which must then be zeros; CIFAR-10 only
        "pixel_mean": (bool, False, None),
    },
    "seed": (int, True, {"min": 0}),
    "device": (str, False, ("auto", "cpu", "cuda")),
    "num_workers": (int, False, {"min": 0}),
    # on an accelerator: evaluation batches this many times training.eval_batch_size (CPU-tuned)
    "accelerator_batch_scale": (int, False, {"min": 1, "max": 1024}),
    # true: deterministic kernels on CUDA too (cuDNN deterministic, no cuDNN benchmark, cuBLAS workspace
    # config); slower.  On a CPU the deterministic algorithms are always on (they cost nothing there).
    "deterministic": (bool, False, None),
    "threads": ((int, _OPT), False, {"min": 1, "max": 1024}),
    "split": {
        "val_fraction": ((float, _OPT), False, {"min": 0.0, "max": 0.9}),
        "test_fraction": ((float, _OPT), False, {"min": 0.0, "max": 0.9}),
        "val_from_test": ((int, _OPT), False, {"min": 1}),
        "n_classes": ((int, _OPT), False, {"min": 2}),
        "train_per_class": ((int, _OPT), False, {"min": 1}),
        "val_per_class": ((int, _OPT), False, {"min": 1}),
        "limit_train": ((int, _OPT), False, {"min": 10}),
        "limit_val": ((int, _OPT), False, {"min": 10}),
        "limit_test": ((int, _OPT), False, {"min": 10}),
        # [train, val, test] fractions: carve the analysis splits from the official test photos (cub200)
        "analysis_from_test": ((list, _OPT), False, None),
    },
    "training": {
        "epochs": (int, True, {"min": 0, "max": 1000}),
        "batch_size": (int, True, {"min": 1}),
        "optimizer": (str, True, ("sgd", "adam")),
        "lr": (_NUM, True, {"min": 0.0, "max": 10.0}),
        "momentum": (_NUM, False, {"min": 0.0, "max": 1.0}),
        "weight_decay": (_NUM, False, {"min": 0.0, "max": 1.0}),
        # Keras' kernel_regularizer=l2(c): c * (sum of the squared conv kernels) added to the loss (paper 1's
        # ResNet20); unlike weight_decay it spares biases, BatchNorm and the final linear layer
        "kernel_l2": (_NUM, False, {"min": 0.0, "max": 1.0}),
        "schedule": (str, False, ("none", "cosine", "step", "onecycle")),
        # crop: random crop of the padded image; crop_flip: and horizontal flip; shift_flip: Keras'
        # ImageDataGenerator(width_shift_range=0.1, height_shift_range=0.1, horizontal_flip=True): a random
        # sub-pixel shift of up to a tenth of each side, bilinear, edges repeated ('nearest' fill), and a flip
        "augmentation": (str, False, ("none", "crop_flip", "crop", "shift_flip")),
        "amp": (bool, False, None),
        "eval_batch_size": (int, False, {"min": 1}),
        # transfer learning: first the linear head on frozen pooled features, then ``epochs`` of
        # fine-tuning the ``trainable`` modules (training.train_head / train_model)
        "head_epochs": (int, False, {"min": 0, "max": 10000}),
        "head_lr": (_NUM, False, {"min": 0.0, "max": 10.0}),
        "trainable": ((str, list), False, None),
    },
    "conductance": {
        "layer": ((str, _OPT), False, None),
        "n_steps": (int, False, {"min": 1, "max": 1000}),
        "method": (str, False, ("auto", "exact", "riemann", "captum")),
        "reduction": (str, False, ("sum", "mean")),
        "classes": (list, False, None),
        "top_k": (int, False, {"min": 1}),
        "detector": {
            "epochs": (int, False, {"min": 1}),
            "batch_size": (int, False, {"min": 1}),
            "lr": (_NUM, False, {"min": 0.0}),
            "patience": (int, False, {"min": 1}),
        },
        # the detector cross-fitted over ALL analysis photos (train + val + test; k folds, each fold
        # scored by a detector trained on the others) and its learning curve: for small held-out pools
        # (cub100) where the train split alone is too small.  folds: null = off (the paper's protocol only)
        "cross_fit": {
            "folds": ((int, _OPT), False, {"min": 2, "max": 50}),
            "inner_val": (_NUM, False, {"min": 0.05, "max": 0.5}),
            "fractions": (list, False, None),
        },
    },
    "lcr": {
        "grid_operators": (list, False, None),
        "grid_rates": (list, False, None),
        # cells beyond grid_operators x grid_rates, as [operator, rate] pairs (a stronger rate for one operator)
        "grid_extra": (list, False, None),
        "grid_mutants": (int, False, {"min": 1}),
        "operator": ((str, _OPT), False, None),
        "rate": ((float, _OPT), False, {"min": 0.0, "max": 1.0}),
        "n_mutants": (int, False, {"min": 1}),
        "accept_threshold": (_NUM, False, {"min": 0.0, "max": 1.0}),
        "max_tries_factor": (int, False, {"min": 1}),
        "sprt_alpha": (_NUM, False, {"min": 0.0, "max": 0.5}),
        "sprt_beta": (_NUM, False, {"min": 0.0, "max": 0.5}),
        "sprt_threshold": ((float, _OPT), False, {"min": 0.0, "max": 1.0}),
        "sprt_indifference": (_NUM, False, {"min": 0.0, "max": 0.5}),
        "compile": (bool, False, None),
    },
    "joint": {
        "folds": (int, False, {"min": 2}),
        "correct_recall_target": (_NUM, False, {"min": 0.0, "max": 1.0}),
        "wrong_recall_target": (_NUM, False, {"min": 0.0, "max": 1.0}),
    },
    "metrics": {
        "n_bootstrap": (int, False, {"min": 10}),
    },
    "cfe": {  # paper 2, sec. 3 and 4.2 (docs/methods.md section 6)
        "sparsity": (_NUM, False, {"min": 0.0}),
        "loss_scale": (_NUM, False, {"min": 0.0}),
        "lr": (_NUM, False, {"min": 0.0, "max": 10.0}),
        "momentum": (_NUM, False, {"min": 0.0, "max": 1.0}),
        "batch_size": (int, False, {"min": 1}),
        "epochs": (int, False, {"min": 1, "max": 1000}),
        "tau": (_NUM, False, {"min": 0.0, "max": 1.0}),
        "frequency": (_NUM, False, {"min": 0.0, "max": 1.0}),
        "skip": (_NUM, False, {"min": 0.0, "max": 1.0}),
        "recall_threshold": (_NUM, False, {"min": 0.0, "max": 1.0}),
        "folds": (int, False, {"min": 2}),
        "disable_draws": (int, False, {"min": 1}),
    },
    "debugging": {  # paper 2, eq. 4-8, sec. 4.3-4.4 (docs/methods.md section 7)
        "grid": (list, False, None),
        "seeds": (int, False, {"min": 1, "max": 100}),
        "frequency": (_NUM, False, {"min": 0.0, "max": 1.0}),
        "lr": (_NUM, False, {"min": 0.0, "max": 10.0}),
        "momentum": (_NUM, False, {"min": 0.0, "max": 1.0}),
        "batch_size": (int, False, {"min": 1}),
        "epochs": (int, False, {"min": 1, "max": 1000}),
        "trainable": ((str, list), False, None),
        "augmentation": ((str, _OPT), False, ("none", "crop_flip", "crop")),
        "n_bootstrap": (int, False, {"min": 10}),
    },
}

#: Defaults filled in for optional keys a profile leaves out.
DEFAULTS: dict[str, Any] = {
    "description": "",
    "data_dir": None,
    "download": False,
    "weights": None,
    "checkpoint": None,
    "if_no_checkpoint": "error",
    "verify_checkpoint": True,
    "device": "auto",
    "num_workers": 0,
    "accelerator_batch_scale": 4,
    "deterministic": False,
    "threads": None,
    "split": {
        "val_fraction": None, "test_fraction": None, "val_from_test": None, "n_classes": None,
        "train_per_class": None, "val_per_class": None,
        "limit_train": None, "limit_val": None, "limit_test": None, "analysis_from_test": None,
    },
    "training": {"momentum": 0.9, "weight_decay": 0.0, "schedule": "none", "augmentation": "none",
                 "amp": True, "eval_batch_size": 512, "head_epochs": 0, "head_lr": 0.01, "trainable": "all",
                 "kernel_l2": 0.0},
    "conductance": {"layer": None, "n_steps": 10, "method": "auto", "reduction": "sum",
                    "classes": [0, 1, 2], "top_k": 5,
                    "detector": {"epochs": 20, "batch_size": 50, "lr": 1e-3, "patience": 5},
                    "cross_fit": {"folds": None, "inner_val": 0.2, "fractions": [0.125, 0.25, 0.5, 1.0]}},
    "lcr": {"grid_operators": ["filter_nai", "filter_gf", "gf"], "grid_rates": [0.01, 0.05], "grid_extra": [],
            "grid_mutants": 10, "operator": None, "rate": None, "n_mutants": 100,
            "accept_threshold": 0.9, "max_tries_factor": 20,
            "sprt_alpha": 0.05, "sprt_beta": 0.05, "sprt_threshold": None, "sprt_indifference": 0.05,
            "compile": False},
    "joint": {"folds": 5, "correct_recall_target": 0.982, "wrong_recall_target": 0.995},
    "metrics": {"n_bootstrap": 1000},
    # the authors' values (docs/methods.md section 6): lambda = 2, both extra terms x 0.001, SGD 1e-3 / 0.9,
    # batch 16, 10 epochs; tau 0.9, frequency 0.15, skip 0.9; the fixed rule recall < 0.3
    "cfe": {"sparsity": 2.0, "loss_scale": 0.001, "lr": 0.001, "momentum": 0.9, "batch_size": 16, "epochs": 10,
            "tau": 0.9, "frequency": 0.15, "skip": 0.9, "recall_threshold": 0.3, "folds": 5, "disable_draws": 5},
    # the authors' values (docs/methods.md section 7): SGD 1e-4 / 0.9, batch 16, 20 epochs, last conv layer + head,
    # class masks with frequency threshold 0; the grid holds the control (0, 0) and their two cells
    "debugging": {"grid": [[0.0, 0.0], [1e-3, 2e-5], [4e-4, 2e-5], [1e-2, 2e-5], [1e-3, 2e-4], [1e-2, 2e-4]],
                  "seeds": 3, "frequency": 0.0, "lr": 1e-4, "momentum": 0.9, "batch_size": 16, "epochs": 20,
                  "trainable": "last_conv", "augmentation": None, "n_bootstrap": 2000},
}


#: keys added after caches and checkpoints existed, with their defaults: cache keys leave a key out
#: while it keeps its default (:func:`stable_section`), so those caches and records stay valid
LATE_DEFAULTS = {"training": {k: DEFAULTS["training"][k] for k in ("head_epochs", "head_lr", "trainable", "kernel_l2")},
                 "split": {"analysis_from_test": None}}


def stable_section(cfg: dict, section: str) -> dict:
    """``cfg[section]`` without the keys of :data:`LATE_DEFAULTS` that keep their default value (also of a
    checkpoint record's settings: ``stable_section({"training": record["training"]}, "training")``)."""
    late = LATE_DEFAULTS.get(section, {})
    return {k: v for k, v in cfg[section].items() if k not in late or v != late[k]}


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _type_name(t) -> str:
    ts = t if isinstance(t, tuple) else (t,)
    return " or ".join("null" if x is type(None) else x.__name__ for x in ts)


def _validate(cfg: dict, schema: dict, where: str, source: str) -> None:
    for key in cfg:
        if key not in schema:
            raise ProfileError(
                f"{source}: unknown key {where + key!r}; valid keys here: {', '.join(sorted(schema))}"
            )
    for key, spec in schema.items():
        full = where + key
        if isinstance(spec, dict):
            val = cfg.get(key, {})
            if not isinstance(val, dict):
                raise ProfileError(f"{source}: {full!r} must be a mapping, got {val!r}")
            _validate(val, spec, full + ".", source)
            continue
        types, required, check = spec
        if key not in cfg:
            if required:
                raise ProfileError(f"{source}: missing required key {full!r} ({_type_name(types)})")
            continue
        val = cfg[key]
        ts = types if isinstance(types, tuple) else (types,)
        ok = isinstance(val, ts) and not (isinstance(val, bool) and bool not in ts)
        if not ok and float in ts and isinstance(val, int) and not isinstance(val, bool):
            ok = True
        if not ok:
            raise ProfileError(f"{source}: {full!r} = {val!r} has the wrong type; expected {_type_name(types)}")
        if val is None or check is None:
            continue
        if isinstance(check, tuple) and val not in check:
            raise ProfileError(f"{source}: {full!r} = {val!r} is not valid; valid: {', '.join(map(str, check))}")
        if isinstance(check, dict):
            if "min" in check and val < check["min"]:
                raise ProfileError(f"{source}: {full!r} = {val!r} is below the minimum {check['min']}")
            if "max" in check and val > check["max"]:
                raise ProfileError(f"{source}: {full!r} = {val!r} is above the maximum {check['max']}")


def _expand_dotted(overrides: dict) -> dict:
    out: dict = {}
    for key, val in (overrides or {}).items():
        parts = str(key).split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ProfileError(f"overrides: {key!r} conflicts with another override")
        if isinstance(val, dict):
            val = _expand_dotted(val)
        node[parts[-1]] = val
    return out


def profile_path(profile: str | os.PathLike) -> Path:
    """``digits`` -> params/digits.yaml; a path to a YAML file is taken as is."""
    p = Path(profile)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise ProfileError(f"profile: no file at {p}")
        return p
    cand = PARAMS_DIR / f"{profile}.yaml"
    if not cand.is_file():
        known = sorted(x.stem for x in PARAMS_DIR.glob("*.yaml"))
        raise ProfileError(f"profile: {str(profile)!r} is not a known profile; valid: {', '.join(known)} "
                           "or a path to a .yaml file")
    return cand


def load_profile(profile: str | os.PathLike | dict = DEFAULT_PROFILE, overrides: dict | None = None) -> dict:
    """Load, merge overrides into, fill defaults of, and validate a profile.

    Returns a plain nested dict.  ``profile`` may also be an already-loaded dict.
    """
    if isinstance(profile, dict):
        raw, source = copy.deepcopy(profile), "profile"
    else:
        path = profile_path(profile)
        source = str(path.resolve().relative_to(REPO_ROOT) if path.resolve().is_relative_to(REPO_ROOT) else path)
        try:
            with open(path) as f:
                raw = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ProfileError(f"{source}{where}: not valid YAML ({problem}); fix the file's syntax") from None
        if not isinstance(raw, dict):
            raise ProfileError(f"{source}: must be a YAML mapping of keys to values")
    overrides = parse_overrides(overrides)
    if overrides:
        ov = _expand_dotted(overrides)
        _validate_partial(ov, SCHEMA, "", "overrides")
        raw = _merge(raw, ov)
    _validate(raw, SCHEMA, "", source)
    cfg = _merge(DEFAULTS, raw)
    pool = cfg["split"]["analysis_from_test"]
    if pool is not None:
        if cfg["dataset"] != "cub200":
            raise ProfileError(f"{source}: 'split.analysis_from_test' = {pool!r} needs an official train/test split; "
                               f"valid for dataset 'cub200', not {cfg['dataset']!r}")
        if (len(pool) != 3 or not all(isinstance(v, _NUM) and not isinstance(v, bool) and 0 < v < 1 for v in pool)
                or abs(sum(pool) - 1) > 1e-6):
            raise ProfileError(f"{source}: 'split.analysis_from_test' = {pool!r} is not valid; valid: three fractions "
                               "in (0, 1) for train, val and test that sum to 1, e.g. [0.5, 0.25, 0.25], or null")
    _check_lists(cfg, source)
    norm = cfg["normalize"]
    if len(norm["mean"]) != len(norm["std"]) or any(s <= 0 for s in norm["std"]):
        raise ProfileError(f"{source}: 'normalize' needs mean and std of equal length with std > 0, got {norm}")
    if norm.get("pixel_mean") and (cfg["dataset"] != "cifar10" or any(m != 0 for m in norm["mean"])):
        raise ProfileError(f"{source}: 'normalize.pixel_mean' = true needs dataset 'cifar10' (not "
                           f"{cfg['dataset']!r}) and 'normalize.mean' = zeros (got {norm['mean']}): the mean image "
                           "of the training split replaces it")
    _check_checkpoint_overrides(cfg, overrides)
    return cfg


def _check_lists(cfg: dict, source: str) -> None:
    """The list-valued keys whose items the schema cannot type: ``lcr.grid_extra`` and
    ``conductance.cross_fit.fractions``."""

    extra = cfg["lcr"]["grid_extra"]
    for cell in extra:
        if (not isinstance(cell, list) or len(cell) != 2 or cell[0] not in MUTATION_OPERATORS
                or isinstance(cell[1], bool) or not isinstance(cell[1], _NUM) or not 0 < cell[1] <= 1):
            raise ProfileError(f"{source}: 'lcr.grid_extra' = {extra!r} is not valid at {cell!r}; valid: a list of "
                               f"[operator, rate] pairs, operator one of {', '.join(MUTATION_OPERATORS)}, "
                               "rate in (0, 1], e.g. [[gf, 0.003], [gf, 0.01]]")
    fr = cfg["conductance"]["cross_fit"]["fractions"]
    if not fr or not all(isinstance(f, _NUM) and not isinstance(f, bool) and 0 < f <= 1 for f in fr) or 1 not in fr:
        raise ProfileError(f"{source}: 'conductance.cross_fit.fractions' = {fr!r} is not valid; valid: fractions in "
                           "(0, 1] of each fold's training photos that include 1, e.g. [0.25, 0.5, 1.0]")


def parse_overrides(overrides) -> dict:
    """Overrides as a dict of dotted keys, or as a JSON / YAML mapping in a string (what
    ``papermill -p overrides '{"conductance.n_steps": 5}'`` passes)."""
    if overrides is None or isinstance(overrides, dict):
        return overrides or {}
    if isinstance(overrides, str):
        try:
            parsed = yaml.safe_load(overrides) if overrides.strip() else {}
        except yaml.YAMLError as e:
            raise ProfileError(f"overrides: {overrides!r} is not a JSON or YAML mapping ({e.__class__.__name__}); "
                               "valid: e.g. '{\"training.epochs\": 1}'") from None
        if parsed is None:
            return {}
        if isinstance(parsed, dict):
            return parsed
    raise ProfileError(f"overrides: {overrides!r} is not a mapping of dotted keys to values; "
                       "valid: a dict or a JSON / YAML string, e.g. '{\"training.epochs\": 1}'")


#: override keys that decide the trained model: with a committed checkpoint they would not take effect
MODEL_KEYS = ("dataset", "model", "weights", "image_size", "normalize", "seed", "split", "training")
_NOT_MODEL_KEYS = ("training.eval_batch_size", "training.amp")


def _check_checkpoint_overrides(cfg: dict, overrides: dict) -> None:
    """A profile that loads a checkpoint ignores settings that would train another model: an override of
    such a setting, without ``checkpoint`` in the same overrides, is an error (not a warning in a
    notebook nobody reads), so nobody believes they trained a model they did not."""
    if not overrides or not cfg.get("checkpoint"):
        return
    flat = _flat_keys(_expand_dotted(overrides))
    if "checkpoint" in flat:
        return
    changed = [k for k in flat if k.split(".")[0] in MODEL_KEYS and k not in _NOT_MODEL_KEYS]
    if changed:
        raise ProfileError(
            f"overrides: {', '.join(changed)} would train another model, but the profile loads the checkpoint "
            f"{cfg['checkpoint']!r}, which ignores them; add checkpoint=null (--set checkpoint=null, "
            "-p overrides '{\"checkpoint\": null, ...}') to train a model with these settings")


def _flat_keys(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        out += _flat_keys(v, f"{prefix}{k}.") if isinstance(v, dict) and k != "normalize" else [f"{prefix}{k}"]
    return out


def _validate_partial(ov: dict, schema: dict, where: str, source: str) -> None:
    """Overrides name only some keys: check those exist and have valid values."""
    for key, val in ov.items():
        if key not in schema:
            raise ProfileError(f"{source}: unknown key {where + key!r}; valid keys here: {', '.join(sorted(schema))}")
        spec = schema[key]
        if isinstance(spec, dict):
            if not isinstance(val, dict):
                raise ProfileError(f"{source}: {where + key!r} must be a mapping, got {val!r}")
            _validate_partial(val, spec, where + key + ".", source)
        else:
            _validate({key: val}, {key: (spec[0], False, spec[2])}, where, source)

