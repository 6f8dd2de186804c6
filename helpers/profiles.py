"""Experiment profiles: every knob of one experiment in one YAML file (params/<name>.yaml).

A profile is loaded by name (``digits`` -> ``params/digits.yaml``) or by path, merged
with optional overrides (a dict of dotted keys, e.g. ``{"training.epochs": 1}``,
which is how notebooks receive them from papermill), and validated against
:data:`SCHEMA` and the rules across keys (:func:`_check_lists`, :func:`_check_rules`)
before any work starts: an unknown key, a missing required key, an invalid value, a
repeated key, a file that is not UTF-8, a malformed override or a copy of a committed
profile that keeps its name raises :class:`ProfileError`, in one line naming the key
(or file), the value and what is valid.
"""
from __future__ import annotations

import copy
import math
import os
import re
from pathlib import Path
from typing import Any

import yaml

from helpers.names import (
    DATASET_NAMES,
    MODEL_FORMS,
    MODEL_NAMES,
    MUTATION_OPERATORS,
    TORCHVISION_PREFIX,
    model_kind,
    torchvision_weights,
)
from helpers.paths import PARAMS_DIR, REPO_ROOT, notebook_files

DEFAULT_PROFILE = "digits"


class ProfileError(ValueError):
    """A profile key is unknown, missing or has an invalid value."""


# --------------------------------------------------------------------------- schema
# Each leaf: (type(s), required, check) where check is None, a tuple of allowed
# values, a (lo, hi) numeric range given as a dict {"min":..., "max":...}, or a compiled
# pattern a string must match in full.  A float is always refused when it is NaN or +-inf.
_NUM = (int, float)
_OPT = type(None)

#: a profile's name names its output folders (figures/<name>/, artifacts/<name>/): one plain folder name
NAME_PATTERN = re.compile(r"(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_NAME_VALID = ("letters, digits, '-', '_' and '.', starting with a letter or digit, at most 64 characters, "
               "no '..' (it names the folders figures/<name>/ and artifacts/<name>/)")

SCHEMA: dict[str, Any] = {
    "name": (str, True, NAME_PATTERN),
    "description": (str, False, None),
    "base": ((str, _OPT), False, None),   # the committed profile this one varies (_with_base); its cache is shared
    # the notebooks `make figures` runs for this profile, by their two-digit prefixes (null: all of them)
    "notebooks": ((list, _OPT), False, None),
    "dataset": (str, True, DATASET_NAMES),
    "data_dir": ((str, _OPT), False, None),
    "download": (bool, False, None),
    # one of MODEL_NAMES, or torchvision.<builder> / <module>:<callable> (helpers.names.model_kind)
    "model": (str, True, MODEL_NAMES),
    # keyword arguments of a torchvision builder or of your callable (never num_classes: the data decides)
    "model_kwargs": ((dict, _OPT), False, None),
    # module names that replace the layers found (or declared in helpers.models.LAYERS): paper 1's conductance
    # layer, paper 2's pooled layer (its global average pool is g) and final linear layer
    "layers": {
        "conductance": ((str, _OPT), False, None),
        "pooled": ((str, _OPT), False, None),
        "linear": ((str, _OPT), False, None),
    },
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
    "seed": (int, True, {"min": 0, "max": 2**32 - 1}),
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
        # the seed of the model's initial weights and of the training batches' order and augmentation; null:
        # the profile's `seed`.  Another value trains another model on the same splits, with the same mutants
        # and classifiers (helpers.tools.seed_spread: the training seed's share of every AUROC)
        "seed": ((int, _OPT), False, {"min": 0, "max": 2**32 - 1}),
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
        "operator": ((str, _OPT), False, MUTATION_OPERATORS),
        "rate": ((float, _OPT), False, {"min": 0.0, "max": 1.0}),  # with operator; > 0 (_check_rules)
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
    "base": None,
    "notebooks": None,
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
                 "kernel_l2": 0.0, "seed": None},
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
LATE_DEFAULTS = {"training": {k: DEFAULTS["training"][k] for k in ("head_epochs", "head_lr", "trainable", "kernel_l2",
                                                                   "seed")},
                 "split": {"analysis_from_test": None}}


def stable_section(cfg: dict, section: str) -> dict:
    """``cfg[section]`` without the keys of :data:`LATE_DEFAULTS` that keep their default value (also of a
    checkpoint record's settings: ``stable_section({"training": record["training"]}, "training")``)."""
    late = LATE_DEFAULTS.get(section, {})
    return {k: v for k, v in cfg[section].items() if k not in late or v != late[k]}


# --------------------------------------------------------------------------- reading YAML
#: numbers with an exponent that YAML 1.1 (PyYAML) reads as strings: ``1e-3``, ``1E5``, ``2.5e3``, ``.5e-2``
_SCI_FLOAT = re.compile(r"[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+")


class ProfileLoader(yaml.SafeLoader):
    """PyYAML's safe loader (no Python tags) that also reads ``1e-3`` as a float, as YAML 1.2 does."""


ProfileLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(f"^(?:{_SCI_FLOAT.pattern})$"),
                                    list("-+0123456789."))


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: str, line: int, first: int):
        super().__init__(f"duplicate key {key!r}")
        self.key, self.line, self.first = key, line, first


def _check_duplicates(loader: ProfileLoader, node, where: str = "") -> None:
    """Refuse a key given twice in one mapping (PyYAML keeps the last silently): a second ``conductance:``
    section would replace the first.  ``<<`` merge keys are YAML's own way to combine mappings: allowed."""
    if isinstance(node, yaml.MappingNode):
        seen: dict = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = loader.construct_object(key_node, deep=True) if isinstance(key_node, yaml.ScalarNode) else None
            name = f"{where}{key}"
            try:
                if key is not None and key in seen:
                    raise _DuplicateKey(name, key_node.start_mark.line + 1, seen[key])
                if key is not None:
                    seen[key] = key_node.start_mark.line + 1
            except TypeError:  # an unhashable key: the constructor names it
                pass
            _check_duplicates(loader, value_node, f"{name}.")
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_duplicates(loader, item, f"{where[:-1]}[{i}].")


def load_yaml(text: str):
    """One YAML document read with :class:`ProfileLoader`, a key repeated in a mapping refused."""
    loader = ProfileLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_duplicates(loader, node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _yaml_problem(e: yaml.YAMLError) -> str:
    """``line L, column C: problem`` of a YAML error, in one line."""
    mark = getattr(e, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    problem = getattr(e, "problem", None) or (str(e).splitlines() or [type(e).__name__])[0]
    return where + problem


def _read_profile_file(path: Path, source: str):
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
        if "\x00" in text:  # UTF-16 / UTF-32 without a byte order mark: NUL bytes between the letters
            raise UnicodeDecodeError("utf-8", data, text.index("\x00"), text.index("\x00") + 1, "NUL byte")
    except UnicodeDecodeError as e:
        kind = " (it looks like UTF-16 or UTF-32)" if data[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\x00" in data else ""
        raise ProfileError(f"{source}: not UTF-8 text{kind}, byte {e.start} = {data[e.start:e.start + 1]!r}; valid: "
                           "a UTF-8 text file: save it as UTF-8 (an editor's 'Save with encoding', or "
                           "iconv -f UTF-16 -t UTF-8)") from None
    try:
        return load_yaml(text)
    except _DuplicateKey as e:
        raise ProfileError(f"{source}, line {e.line}: duplicate key {e.key!r} (first at line {e.first}); valid: "
                           "each key once per section: merge the two into one") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ProfileError(f"{source}{where}: not valid YAML ({problem}); fix the file's syntax") from None


def _with_base(raw: dict, source: str, seen: tuple[str, ...] = ()) -> dict:
    """``base: <profile>``: the named profile's file with this one's keys merged over it (nested sections key
    by key), so that a variant of a committed profile states only what it changes.  The variant needs a
    ``name`` of its own (its results go to figures/<name>/); bases may chain.  ``base`` is kept, naming the
    root of the chain: the variant's stages are cached beside its base's (artifacts/<base>/), where every
    stage's key says what it computed, so what the two share is computed once."""
    if raw.get("base") is None:  # no base; or an already-loaded profile (base: null) passed as a dict
        return raw
    base = raw["base"]
    known = sorted(x.stem for x in PARAMS_DIR.glob("*.yaml"))
    if not isinstance(base, str) or not (PARAMS_DIR / f"{base}.yaml").is_file():
        raise ProfileError(f"{source}: 'base' = {base!r} is not a committed profile; valid: {', '.join(known)}")
    if base in seen:
        raise ProfileError(f"{source}: 'base' = {base!r} leads back to itself ({' -> '.join([*seen, base])}); "
                           "valid: a chain of bases that ends in a profile without 'base'")
    own = {k: v for k, v in raw.items() if k != "base"}
    if "name" not in own or own["name"] == base:
        raise ProfileError(f"{source}: 'name' = {own.get('name')!r} must be set to a name other than its base's "
                           f"({base!r}), so that the variant's results do not overwrite figures/{base}/")
    parent = _with_base(_read_profile_file(PARAMS_DIR / f"{base}.yaml", f"params/{base}.yaml") or {},
                        f"params/{base}.yaml", (*seen, base))
    return {**_merge(parent, own), "base": parent.get("base") or base}  # the root of the chain


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


def _range_text(check) -> str:
    """What a numeric key accepts, for a message."""
    if isinstance(check, dict) and "min" in check and "max" in check:
        return f"a number from {check['min']} to {check['max']}"
    if isinstance(check, dict) and "min" in check:
        return f"a number >= {check['min']}"
    return "a finite number"


def _with_dot(text: str) -> str:
    """``1e-3`` -> ``1.0e-3``: the way PyYAML's YAML 1.1 reads a number, for a message."""
    mant, _, exp = text.lower().partition("e")
    return f"{mant if '.' in mant else mant + '.0'}e{exp if exp[:1] in '+-' else '+' + exp}"


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
                hint = (" or, for a torchvision.<builder> model, torchvision weights in `weights:` (their own "
                        "transforms give it)" if full.split(".")[0] in WEIGHTS_DEFAULTS else "")
                raise ProfileError(f"{source}: missing required key {full!r} ({_type_name(types)}){hint}")
            continue
        val = cfg[key]
        ts = types if isinstance(types, tuple) else (types,)
        ok = isinstance(val, ts) and not (isinstance(val, bool) and bool not in ts)
        if not ok and float in ts and isinstance(val, int) and not isinstance(val, bool):
            ok = True
        if not ok:
            hint = ""
            if float in ts and isinstance(val, str) and _SCI_FLOAT.fullmatch(val.strip()):
                hint = f" (a number: write it with a dot, e.g. {_with_dot(val.strip())})"
            raise ProfileError(f"{source}: {full!r} = {val!r} has the wrong type; expected {_type_name(types)}{hint}")
        if isinstance(val, float) and not math.isfinite(val):
            raise ProfileError(f"{source}: {full!r} = {val!r} is not a finite number; valid: {_range_text(check)}")
        if val is None or check is None:
            continue
        if isinstance(check, tuple) and val not in check:
            if check is MODEL_NAMES and model_kind(val):
                continue
            also = f", or {' or '.join(MODEL_FORMS)}" if check is MODEL_NAMES else ""
            raise ProfileError(f"{source}: {full!r} = {val!r} is not valid; valid: {', '.join(map(str, check))}{also}")
        if isinstance(check, re.Pattern) and not check.fullmatch(val):
            raise ProfileError(f"{source}: {full!r} = {val!r} is not valid; valid: {_NAME_VALID}")
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
    path = None
    if isinstance(profile, dict):
        raw, source = copy.deepcopy(profile), "profile"
    else:
        path = profile_path(profile)
        source = str(path.resolve().relative_to(REPO_ROOT) if path.resolve().is_relative_to(REPO_ROOT) else path)
        raw = _read_profile_file(path, source) or {}
        if not isinstance(raw, dict):
            raise ProfileError(f"{source}: must be a YAML mapping of keys to values")
    raw = _with_base(raw, source)
    file_raw = raw
    overrides = parse_overrides(overrides)
    if overrides:
        ov = _expand_dotted(overrides)
        _validate_partial(ov, SCHEMA, "", "overrides")
        raw = _merge(raw, ov)
    raw = _defaults_from_weights(raw)
    _validate(raw, SCHEMA, "", source)
    cfg = _merge(DEFAULTS, raw)
    _check_lists(cfg, source)
    _check_rules(cfg, source)
    _check_model_keys(cfg, source)
    if path is not None:
        _check_committed_name(cfg["name"], path, file_raw, source)
    _check_checkpoint_overrides(cfg, overrides)
    return cfg


def _is_number(v) -> bool:
    """A finite int or float, not a bool."""
    if isinstance(v, bool) or not isinstance(v, _NUM):
        return False
    return isinstance(v, int) or math.isfinite(v)


def notebook_prefixes() -> list[str]:
    """The two-digit prefixes of the notebook sequence (``00`` for 00_data_and_model.ipynb, ...)."""
    return [p.name[:2] for p in notebook_files()]


def _check_lists(cfg: dict, source: str) -> None:
    """The list-valued keys, whose items the schema cannot type: each item checked (numbers finite)."""

    def bad(key: str, val, valid: str, at=None):
        where = f" at {at!r}" if at is not None else ""
        return ProfileError(f"{source}: {key!r} = {val!r} is not valid{where}; valid: {valid}")

    if cfg["notebooks"] is not None:
        prefixes = notebook_prefixes()
        wrong = next((n for n in cfg["notebooks"] if n not in prefixes), None)
        if not cfg["notebooks"] or wrong is not None:
            raise bad("notebooks", cfg["notebooks"], "null (every notebook) or a non-empty list of notebook "
                      f"prefixes among {', '.join(prefixes)} (quoted: \"00\"), e.g. [\"00\", \"01\"]", wrong)
    norm = cfg["normalize"]
    for key in ("mean", "std"):
        vals = norm[key]
        wrong = next((v for v in vals if not _is_number(v) or (key == "std" and v <= 0)), None)
        if not vals or wrong is not None:
            raise bad(f"normalize.{key}", vals, "a non-empty list of finite numbers, one per image channel"
                      + (", each > 0" if key == "std" else "") + ", e.g. [0.5, 0.5, 0.5]",
                      None if not vals else wrong)
    if len(norm["mean"]) != len(norm["std"]):
        raise bad("normalize", {"mean": norm["mean"], "std": norm["std"]},
                  "mean and std of equal length (one number per image channel)")
    classes = cfg["conductance"]["classes"]
    wrong = next((c for c in classes if isinstance(c, bool) or not isinstance(c, int) or c < 0), None)
    if not classes or wrong is not None:
        raise bad("conductance.classes", classes, "a non-empty list of class indices (integers >= 0), e.g. [0, 1, 2]",
                  wrong)
    lc = cfg["lcr"]
    wrong = next((o for o in lc["grid_operators"] if o not in MUTATION_OPERATORS), None)
    if wrong is not None:
        raise bad("lcr.grid_operators", lc["grid_operators"],
                  f"a list of operators among {', '.join(MUTATION_OPERATORS)}", wrong)
    wrong = next((r for r in lc["grid_rates"] if not _is_number(r) or not 0 < r <= 1), None)
    if wrong is not None:
        raise bad("lcr.grid_rates", lc["grid_rates"], "a list of mutation rates in (0, 1], e.g. [0.01, 0.05]", wrong)
    extra = lc["grid_extra"]
    for cell in extra:
        if (not isinstance(cell, list) or len(cell) != 2 or cell[0] not in MUTATION_OPERATORS
                or not _is_number(cell[1]) or not 0 < cell[1] <= 1):
            raise bad("lcr.grid_extra", extra, f"a list of [operator, rate] pairs, operator one of "
                      f"{', '.join(MUTATION_OPERATORS)}, rate in (0, 1], e.g. [[gf, 0.003], [gf, 0.01]]", cell)
    fr = cfg["conductance"]["cross_fit"]["fractions"]
    if not fr or not all(_is_number(f) and 0 < f <= 1 for f in fr) or 1 not in fr:
        raise bad("conductance.cross_fit.fractions", fr,
                  "fractions in (0, 1] of each fold's training photos that include 1, e.g. [0.25, 0.5, 1.0]")
    grid = cfg["debugging"]["grid"]
    wrong = next((c for c in grid if not isinstance(c, list) or len(c) != 2
                  or not all(_is_number(x) and x >= 0 for x in c)), None)
    if not grid or wrong is not None:
        raise bad("debugging.grid", grid, "a non-empty list of [l1, l2] pairs of finite numbers >= 0, "
                  "e.g. [[0, 0], [1.0e-3, 2.0e-5]]", wrong)
    for key, special in (("training.trainable", ("all",)), ("debugging.trainable", ("last_conv", "all"))):
        section, name = key.split(".")
        val = cfg[section][name]
        if val in special:
            continue
        if not (isinstance(val, list) and val and all(isinstance(m, str) and m for m in val)):
            hint = f" (one module: [{val}])" if isinstance(val, str) and val else ""
            raise bad(key, val, f"{' or '.join(repr(x) for x in special)}, or a non-empty list of module names, "
                      f"e.g. [features, linear]{hint}")


#: the keys that torchvision weights' own transforms give when a profile leaves them out
WEIGHTS_DEFAULTS = ("image_size", "normalize")


def weights_transforms(model, weights) -> dict | None:
    """``image_size`` and ``normalize`` as the torchvision weights named by ``weights`` preprocess their
    images (``<Weights>.transforms()``: the crop size, the mean and std), for a ``torchvision.<builder>``
    model and a weights name of that builder (``DEFAULT``, ``IMAGENET1K_V1``, the full enum name, or
    ``pretrained``); None for any other model or weights (a file, null).  Needs no network: the transforms
    are metadata of the weights enum.  The companion resizes each image to the crop size instead of
    torchvision's resize-then-centre-crop (docs/your-model.md)."""
    if model_kind(model) != "torchvision" or not isinstance(weights, str):
        return None
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(model[len(TORCHVISION_PREFIX):])
    except (KeyError, ValueError):
        return None
    member = torchvision_weights(enum, weights)
    if member is None:
        return None
    t = member.transforms()
    crop, mean, std = getattr(t, "crop_size", None), getattr(t, "mean", None), getattr(t, "std", None)
    if not crop or mean is None or std is None:
        return None
    return {"image_size": int(crop[0]), "normalize": {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}}


def _defaults_from_weights(raw: dict) -> dict:
    """Fill ``image_size`` / ``normalize`` (mean, std) that a profile leaves out from its torchvision
    weights' transforms (:func:`weights_transforms`); keys the profile sets are kept as they are."""
    if all(k in raw for k in WEIGHTS_DEFAULTS) and all(k in (raw.get("normalize") or {}) for k in ("mean", "std")):
        return raw
    found = weights_transforms(raw.get("model"), raw.get("weights"))
    if found is None:
        return raw
    out = dict(raw)
    out.setdefault("image_size", found["image_size"])
    norm = out.get("normalize")
    if norm is None or isinstance(norm, dict):
        out["normalize"] = {**found["normalize"], **(norm or {})}
    return out


def _check_model_keys(cfg: dict, source: str) -> None:
    """``model_kwargs`` and ``layers``, keys a profile sets only for a model of its own choosing: keyword names,
    no ``num_classes``, only with a ``torchvision.<builder>`` or ``<module>:<callable>`` model; module names."""
    kw = cfg.get("model_kwargs")
    if kw:
        if model_kind(cfg["model"]) == "known":
            raise ProfileError(f"{source}: 'model_kwargs' = {kw!r} is not valid for model {cfg['model']!r}; valid: "
                               f"null, or a mapping for a model named {' or '.join(MODEL_FORMS)}")
        wrong = next((k for k in kw if not isinstance(k, str) or not k.isidentifier() or k == "num_classes"), None)
        if wrong is not None:
            raise ProfileError(f"{source}: 'model_kwargs' = {kw!r} is not valid at {wrong!r}; valid: keyword arguments "
                               "of the builder or callable, e.g. {dropout: 0.2}, never num_classes (the data decides)")
    for key, val in (cfg.get("layers") or {}).items():
        if val is not None and (not val or val != val.strip()):
            raise ProfileError(f"{source}: 'layers.{key}' = {val!r} is not valid; valid: null or a module name of "
                               "the model, e.g. layer4")


#: the fractions the digits loader uses for a null ``split.val_fraction`` / ``split.test_fraction``
#: (helpers.datasets.load_digits_bundle; the only dataset with a test fraction)
_DIGITS_SPLIT_DEFAULT = 0.2


def _check_rules(cfg: dict, source: str) -> None:
    """Rules across keys."""
    sp = cfg["split"]
    val, test = sp["val_fraction"], sp["test_fraction"]
    if cfg["dataset"] == "digits":
        val = _DIGITS_SPLIT_DEFAULT if val is None else val
        test = _DIGITS_SPLIT_DEFAULT if test is None else test
    if val is not None and test is not None and val + test >= 1:
        raise ProfileError(f"{source}: 'split.val_fraction' + 'split.test_fraction' = {val!r} + {test!r} leaves "
                           "no training split; valid: a sum below 1, e.g. 0.25 + 0.25 (for digits a null one "
                           f"counts as its default {_DIGITS_SPLIT_DEFAULT})")
    pool = sp["analysis_from_test"]
    if pool is not None:
        if cfg["dataset"] != "cub200":
            raise ProfileError(f"{source}: 'split.analysis_from_test' = {pool!r} needs an official train/test split; "
                               f"valid for dataset 'cub200', not {cfg['dataset']!r}")
        if len(pool) != 3 or not all(_is_number(v) and 0 < v < 1 for v in pool) or abs(sum(pool) - 1) > 1e-6:
            raise ProfileError(f"{source}: 'split.analysis_from_test' = {pool!r} is not valid; valid: three fractions "
                               "in (0, 1) for train, val and test that sum to 1, e.g. [0.5, 0.25, 0.25], or null")
    lc = cfg["lcr"]
    if (lc["operator"] is None) != (lc["rate"] is None) or lc["rate"] == 0:
        raise ProfileError(f"{source}: 'lcr.operator' = {lc['operator']!r} with 'lcr.rate' = {lc['rate']!r} is not "
                           "valid; valid: both set (an operator and a rate in (0, 1], e.g. gf and 0.01) or both "
                           "null (the grid's best cell)")
    if lc["operator"] is None and not (lc["grid_operators"] and lc["grid_rates"] or lc["grid_extra"]):
        raise ProfileError(f"{source}: 'lcr.grid_operators' = {lc['grid_operators']!r} x 'lcr.grid_rates' = "
                           f"{lc['grid_rates']!r} (and 'lcr.grid_extra' = {lc['grid_extra']!r}) has no cell, and "
                           "'lcr.operator' is null; valid: at least one operator and one rate, or lcr.operator and "
                           "lcr.rate set")
    norm = cfg["normalize"]
    if norm.get("pixel_mean") and (cfg["dataset"] != "cifar10" or any(m != 0 for m in norm["mean"])):
        raise ProfileError(f"{source}: 'normalize.pixel_mean' = true needs dataset 'cifar10' (not "
                           f"{cfg['dataset']!r}) and 'normalize.mean' = zeros (got {norm['mean']}): the mean image "
                           "of the training split replaces it")


def _check_committed_name(name: str, path: Path, file_raw: dict, source: str) -> None:
    """A profile file other than params/<name>.yaml that claims a committed profile's name (a copy that kept
    ``name: digits``, or ``--set name=digits``) must hold that profile's settings: otherwise its results
    would overwrite the committed figures/<name>/ and artifacts/<name>/.  Compared: the mappings the two
    files load to, defaults filled and before overrides (comments and layout do not count)."""
    committed = PARAMS_DIR / f"{name}.yaml"
    if not committed.is_file() or committed.resolve() == path.resolve():
        return
    theirs = _read_profile_file(committed, f"params/{name}.yaml") or {}
    if _merge(DEFAULTS, {**file_raw, "name": name}) != _merge(DEFAULTS, theirs):
        raise ProfileError(f"{source}: 'name' = {name!r} is the name of the committed profile params/{name}.yaml, "
                           "whose settings differ; valid: a new name for a profile of your own (e.g. "
                           f"name: my-{name}), so that its results do not overwrite figures/{name}/")


def _parse_value(key: str, text: str, source: str):
    """One override value given as YAML text (``--set key=value``), read as a profile file reads it."""
    try:
        return load_yaml(text) if text.strip() else None
    except yaml.YAMLError as e:
        raise ProfileError(f"{source}: {key!r} = {text!r} is not a valid YAML value ({_yaml_problem(e)}); valid: a "
                           "number, true / false, null, text, or a list such as [0.5, 0.5]") from None


def parse_set(items) -> dict:
    """``--set`` items, ``["training.lr=1e-3", "lcr.grid_rates=[0.01, 0.05]"]``, as a dict of dotted keys;
    each value read as YAML the way a profile file is (``1e-3`` a float)."""
    out = {}
    for item in items or []:
        if not isinstance(item, str) or "=" not in item:
            raise ProfileError(f"--set: {item!r} is not valid; valid: key=value, e.g. training.epochs=1")
        key, text = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ProfileError(f"--set: {item!r} has no key; valid: key=value, e.g. training.epochs=1")
        out[key] = _parse_value(key, text, "--set")
    return out


def parse_overrides(overrides) -> dict:
    """Overrides as a dict of dotted keys, as a JSON / YAML mapping in a string (what
    ``papermill -p overrides '{"conductance.n_steps": 5}'`` passes), or as a list of ``key=value``
    strings (``--set``, :func:`parse_set`)."""
    if overrides is None or isinstance(overrides, dict):
        return overrides or {}
    if isinstance(overrides, (list, tuple)) and all(isinstance(x, str) and "=" in x for x in overrides):
        return parse_set(overrides)
    if isinstance(overrides, str):
        try:
            parsed = load_yaml(overrides) if overrides.strip() else {}
        except _DuplicateKey as e:
            raise ProfileError(f"overrides: {overrides!r} gives {e.key!r} twice; valid: each key once") from None
        except yaml.YAMLError as e:
            raise ProfileError(f"overrides: {overrides!r} is not a JSON or YAML mapping ({_yaml_problem(e)}); "
                               "valid: e.g. '{\"training.epochs\": 1}'") from None
        if parsed is None:
            return {}
        if isinstance(parsed, dict):
            return parsed
    raise ProfileError(f"overrides: {overrides!r} is not a mapping of dotted keys to values; "
                       "valid: a dict, a JSON / YAML string, e.g. '{\"training.epochs\": 1}', or key=value items")


#: override keys that decide the trained model: with a committed checkpoint they would not take effect
MODEL_KEYS = ("dataset", "model", "model_kwargs", "weights", "image_size", "normalize", "seed", "split", "training")
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

