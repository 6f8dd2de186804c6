"""Damaged input is refused or recomputed, never used silently: a checkpoint whose sha256 differs from its
JSON record, that torch cannot read or that holds NaN weights is an error naming the file; a cached stage
whose sha256 differs from its sidecar's, or that fails to load, is set aside and recomputed."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import cache
from helpers.cache import StageNotCached, sidecar_of
from helpers.checkpoints import CheckpointError
from helpers.experiment import Experiment
from helpers.paths import REPO_ROOT
from helpers.utils import atomic_write_json, file_sha256, set_aside

DIGITS = REPO_ROOT / "checkpoints" / "digits-small_cnn.pt"


@pytest.fixture
def artifacts(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPANION_ARTIFACTS", str(tmp_path / "artifacts"))
    return tmp_path / "artifacts"


def experiment(tmp_path, overrides=None) -> Experiment:
    return Experiment("digits", overrides, output_dir=tmp_path / "out", progress=False)


def copy_checkpoint(tmp_path, record=True):
    """A copy of the committed digits checkpoint in tmp_path/ck/, with its JSON record when asked."""
    (tmp_path / "ck").mkdir()
    path = tmp_path / "ck" / DIGITS.name
    shutil.copy(DIGITS, path)
    if record:
        shutil.copy(DIGITS.with_suffix(".json"), path.with_suffix(".json"))
    return path


def rewrite_weights(path, change):
    """Load the checkpoint at ``path``, apply ``change(state_dict)`` and save it back."""
    obj = torch.load(path, map_location="cpu", weights_only=False)
    change(obj["state_dict"])
    torch.save(obj, path)


def flip_signs(state, n=300):
    w = next(v for k, v in state.items() if k.endswith("weight") and v.numel() >= n)
    w.view(-1)[:n] *= -1


# ------------------------------------------------------------------ checkpoints
def test_sign_flipped_checkpoint_is_refused_naming_both_hashes(tmp_path, artifacts):
    ck = copy_checkpoint(tmp_path)
    rewrite_weights(ck, flip_signs)
    recorded = json.loads(ck.with_suffix(".json").read_text())["sha256"]
    with pytest.raises(CheckpointError) as e:
        experiment(tmp_path, {"checkpoint": str(ck)}).model
    msg = str(e.value)
    assert recorded in msg and file_sha256(ck) in msg and str(ck) in msg and "\n" not in msg
    assert "verify_checkpoint: false" in msg


def test_sign_flipped_checkpoint_loads_with_verify_checkpoint_false(tmp_path, artifacts):
    ck = copy_checkpoint(tmp_path)
    rewrite_weights(ck, flip_signs)
    model = experiment(tmp_path, {"checkpoint": str(ck), "verify_checkpoint": False}).model
    flipped = torch.load(ck, map_location="cpu", weights_only=False)["state_dict"]
    for k, v in model.state_dict().items():
        assert torch.equal(v.cpu(), flipped[k])


def test_checkpoint_with_nan_weights_is_refused_naming_the_tensor(tmp_path, artifacts):
    ck = copy_checkpoint(tmp_path, record=False)  # no record, so no hash: the weights are checked
    name = []

    def poison(state):
        k = next(k for k, v in state.items() if v.is_floating_point() and v.ndim == 4)  # a conv's weight
        state[k].view(-1)[7] = float("nan")
        name.append(k)

    rewrite_weights(ck, poison)
    with pytest.raises(CheckpointError, match=f"{ck.name}: tensor {name[0]} holds NaN"):
        experiment(tmp_path, {"checkpoint": str(ck)}).model


def test_cached_model_stage_with_nan_weights_is_refused(tmp_path, artifacts, monkeypatch):
    def diverged(model, *args, **kwargs):  # training that ends in NaN, without the cost of training
        with torch.no_grad():
            next(model.parameters()).fill_(float("nan"))
        return []

    monkeypatch.setattr("helpers.experiment.train_model", diverged)
    exp = experiment(tmp_path, {"checkpoint": None})
    with pytest.raises(CheckpointError, match=r"model: cached .*model-\w+\.pt: tensor \S+ holds NaN"):
        exp.model


@pytest.mark.parametrize("record", [False, True])
def test_truncated_checkpoint_is_refused_naming_the_file(tmp_path, artifacts, record):
    ck = copy_checkpoint(tmp_path, record=record)
    data = ck.read_bytes()
    ck.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="sha256" if record else "cannot be read") as e:
        experiment(tmp_path, {"checkpoint": str(ck)}).model
    assert str(ck) in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------ cached stages
def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_bit(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


FRAME = pd.DataFrame({"id": ["007", "010", "123"], "split": ["val", "test", "test"], "x": [0.25, -1.5, 3e-7]})
ARRAYS = {"id": np.array(["a", "b"]), "score": np.linspace(0, 1, 50).reshape(10, 5)}
TENSORS = {"weight": torch.arange(12.0).reshape(3, 4), "history": [{"epoch": 1, "loss": 0.5}]}
FORMATS = {  # ext: (object, format)
    "csv.gz": (FRAME, cache.FRAME),
    "npz": (ARRAYS, cache.NPZ),
    "pt": (TENSORS, cache.TENSORS),
    "json": ({"model_val": 0.75}, cache.JSON),
}


def assert_same(a, b):
    if isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b)
    elif torch.is_tensor(a):
        assert torch.equal(a, b)
    else:
        assert a == b


def run_stage(exp, ext, calls):
    obj, fmt = FORMATS[ext]
    return exp.cache.stage("tiny", {"ext": ext}, lambda: calls.append(1) or obj, fmt)


@pytest.mark.parametrize("ext, damage", [("csv.gz", truncate), ("npz", truncate), ("csv.gz", flip_bit),
                                         ("pt", truncate), ("json", truncate)])
def test_damaged_stage_is_set_aside_and_recomputed(tmp_path, artifacts, capfd, ext, damage):
    exp = experiment(tmp_path)
    calls = []
    first = run_stage(exp, ext, calls)
    path = exp.cache.path("tiny", {"ext": ext}, FORMATS[ext][1])
    damage(path)
    damaged = path.read_bytes()
    capfd.readouterr()
    again = run_stage(experiment(tmp_path), ext, calls)
    out = capfd.readouterr()
    assert len(calls) == 2  # recomputed
    assert_same(first, again)
    aside = path.with_name(path.name + ".corrupt")
    assert aside.read_bytes() == damaged and sidecar_of(path).with_name(sidecar_of(path).name + ".corrupt").is_file()
    lines = [ln for ln in (out.out + out.err).splitlines() if ln.strip()]
    assert len(lines) == 1 and str(path) in lines[0] and "corrupt" in lines[0] and "recomputing" in lines[0]
    sidecar = json.loads(sidecar_of(path).read_text())  # the sha256 beside every key it had before
    assert sidecar["sha256"] == file_sha256(path) and {"stage", "params", "versions", "device"} <= sidecar.keys()
    assert exp.cache.cost("tiny", {"ext": ext}, FORMATS[ext][1])["seconds"] >= 0  # the cost: in its cost record
    assert_same(first, run_stage(experiment(tmp_path), ext, calls)) and len(calls) == 2  # cached again


def test_stage_without_sha256_in_its_sidecar_still_loads(tmp_path, artifacts, capfd):
    """A sidecar written before stages carried their sha256 has nothing to check: the file is used."""
    exp = experiment(tmp_path)
    calls = []
    run_stage(exp, "npz", calls)
    sc = sidecar_of(exp.cache.path("tiny", {"ext": "npz"}, cache.NPZ))
    atomic_write_json(sc, {k: v for k, v in json.loads(sc.read_text()).items() if k != "sha256"})
    assert_same(ARRAYS, run_stage(exp, "npz", calls))
    assert len(calls) == 1 and not list(exp.artifacts_dir.glob("*.corrupt")) and not capfd.readouterr().err


def test_old_sidecar_and_unreadable_stage_is_set_aside_and_recomputed(tmp_path, artifacts, capfd):
    exp = experiment(tmp_path)
    calls = []
    run_stage(exp, "csv.gz", calls)
    path = exp.cache.path("tiny", {"ext": "csv.gz"}, cache.FRAME)
    atomic_write_json(sidecar_of(path), {k: v for k, v in json.loads(sidecar_of(path).read_text()).items()
                                         if k != "sha256"})
    truncate(path)
    assert_same(FRAME, run_stage(exp, "csv.gz", calls))
    err = capfd.readouterr().err
    assert len(calls) == 2 and path.with_name(path.name + ".corrupt").is_file()
    assert err.count("\n") == 1 and "EOFError" in err and str(path) in err


def test_corrupt_stage_inside_cached_only_is_set_aside_and_not_cached(tmp_path, artifacts, capfd):
    exp = experiment(tmp_path)
    calls = []
    run_stage(exp, "pt", calls)
    path = exp.cache.path("tiny", {"ext": "pt"}, cache.TENSORS)
    truncate(path)
    with exp.cache.cached_only(), pytest.raises(StageNotCached):
        run_stage(exp, "pt", calls)
    assert len(calls) == 1 and not path.exists() and path.with_name(path.name + ".corrupt").is_file()
    assert str(path) in capfd.readouterr().err


def test_set_aside_never_overwrites(tmp_path):
    p = tmp_path / "x.npz"
    for content in (b"one", b"two"):
        p.write_bytes(content)
        set_aside(p)
    assert (tmp_path / "x.npz.corrupt").read_bytes() == b"one"
    assert (tmp_path / "x.npz.corrupt-2").read_bytes() == b"two" and not p.exists()
