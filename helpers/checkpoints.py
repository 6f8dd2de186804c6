"""Committed and user checkpoints: reading one with its integrity checks (the sha256 of its JSON record,
readable by torch, finite weights) and writing one with its provenance."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from helpers.cache import one_line
from helpers.paths import in_repo
from helpers.utils import UnsafeFileError, atomic_path, atomic_write_json, file_sha256, first_nonfinite, safe_torch_load


class CheckpointError(ValueError):
    """A checkpoint (or the cached ``model`` stage) that must not be used: its sha256 differs from its
    JSON record, torch cannot read it, or it holds NaN / inf weights."""


def restore_hint(path: Path, profile: str = "<profile>") -> str:
    """What to do about a damaged checkpoint: restore it from git (when committed) or re-export it."""
    rel = in_repo(path)
    restore = f"restore it (git checkout -- {rel}) or " if rel else ""
    return (f"{restore}re-export it (python -m helpers.experiment --profile {profile} "
            f"--export-checkpoint {rel or path})")


def record_path(path: Path) -> Path:
    """The human-readable JSON record beside a checkpoint file."""
    return Path(path).with_suffix(".json")


def read_checkpoint(path: Path, profile: str = "<profile>") -> dict:
    """The dict torch saved at ``path``; a :class:`CheckpointError` naming the file when torch cannot read
    it, when it holds no state dict, or when a weight is NaN or inf."""
    try:
        obj = safe_torch_load(path, "checkpoint")
    except UnsafeFileError as e:
        raise CheckpointError(str(e)) from None
    except Exception as e:
        raise CheckpointError(f"checkpoint: {path} cannot be read ({one_line(e)}); the file is damaged or "
                              f"not a torch checkpoint: {restore_hint(path, profile)}") from None
    if isinstance(obj, dict) and obj and all(torch.is_tensor(v) for v in obj.values()):
        obj = {"state_dict": obj}  # a plain state dict (torch.save(model.state_dict(), path)): no provenance
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict):
        raise CheckpointError(f"checkpoint: {path} holds no state_dict; point `checkpoint:` at a file written "
                              f"by export_checkpoint, or {restore_hint(path, profile)}")
    bad = first_nonfinite(obj["state_dict"])
    if bad is not None:
        raise CheckpointError(f"checkpoint: {path}: tensor {bad} holds NaN or inf values; the file is damaged: "
                              f"{restore_hint(path, profile)}")
    return obj


def verified_record(path: Path, profile: str, verify: bool) -> dict | None:
    """The checkpoint's JSON record (None when absent), after checking (with ``verify``, the profile's
    ``verify_checkpoint``) that the file's sha256 is the one it records; a mismatch is a
    :class:`CheckpointError`."""
    record = record_path(path)
    if not record.is_file():
        return None
    try:
        info = json.loads(record.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        rel = in_repo(record)
        raise CheckpointError(f"checkpoint: its record {record} is not valid JSON ({one_line(e)}); "
                              f"{f'restore it (git checkout -- {rel}) or ' if rel else ''}delete it") from None
    expected = info.get("sha256") if isinstance(info, dict) else None
    if verify and expected:
        actual = file_sha256(path)
        if actual != expected:
            raise CheckpointError(
                f"checkpoint: {path} has sha256 {actual} but its record {record.name} says {expected}; the file "
                f"is damaged or was replaced: {restore_hint(path, profile)}, or set `verify_checkpoint: false` "
                f"for a checkpoint of your own")
    return info if isinstance(info, dict) else None


def write_checkpoint(path: Path, state_dict: dict, history: list, info: dict) -> Path:
    """Write ``state_dict`` (on the CPU), the training history and the provenance ``info`` to ``path``
    and the same ``info`` with the file's sha256 to its JSON record, both atomically."""
    path = Path(path)
    state = {k: v.detach().cpu() for k, v in state_dict.items()}
    with atomic_path(path) as tmp:
        torch.save({"state_dict": state, "history": history, **info}, tmp)
    atomic_write_json(record_path(path), {**info, "sha256": file_sha256(path)})
    return path


#: what a model's inputs and outputs mean, recorded with every checkpoint and checked when one is loaded
CONTRACT_KEYS = ("model", "classes", "image_size", "in_channels", "normalize")


def fit_problems(record: dict, expected: dict) -> list[str]:
    """How a checkpoint's recorded contract (:data:`CONTRACT_KEYS`) differs from what the profile feeds it:
    one ``key: checkpoint ..., profile ...`` line per difference.  Keys a record lacks (written before they
    were recorded) are not compared."""
    out = []
    for key in CONTRACT_KEYS:
        if key in record and key in expected and record[key] != expected[key]:
            have, want = record[key], expected[key]
            if key == "classes" and isinstance(have, list) and sorted(have) == sorted(want):
                out.append(f"classes: the same names in another order (checkpoint {have[:5]}..., "
                           f"profile {want[:5]}...)")
            else:
                out.append(f"{key}: checkpoint {have!r}, profile {want!r}")
    return out
