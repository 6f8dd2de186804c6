"""The committed checkpoints (checkpoints/*.pt: digits, CIFAR-10, cub100) are what their JSON records say:
its file hash, the hash of the data it was trained on, and its test accuracy on that data."""
import json

import numpy as np
import pytest
import torch

from helpers.experiment import Experiment
from helpers.lcr import predict
from helpers.pipeline import split_inputs
from helpers.profiles import REPO_ROOT, load_profile, stable_section
from helpers.utils import file_sha256

from .conftest import SHARED_DATA

CK = REPO_ROOT / "checkpoints" / "cifar10-resnet20.pt"


def test_cifar10_profile_reuses_the_committed_checkpoint():
    cfg = load_profile("cifar10")
    assert REPO_ROOT / cfg["checkpoint"] == CK and cfg["if_no_checkpoint"] == "train"
    info = json.loads(CK.with_suffix(".json").read_text())
    assert file_sha256(CK) == info["sha256"]
    assert info["profile"] == "cifar10" and info["training"] == stable_section(cfg, "training") and info["seed"] == cfg["seed"]


@pytest.mark.skipif(not (SHARED_DATA / "cifar10-jpeg.tar.gz").is_file(), reason="../shared/data absent")
def test_committed_checkpoint_reproduces_its_recorded_accuracy(one_thread):
    info = json.loads(CK.with_suffix(".json").read_text())
    exp = Experiment("cifar10")
    assert exp.data_key == info["data_key"]  # the data it saw
    model = exp.model
    assert "model" not in exp.timings  # loaded, not trained
    preds = predict(model, split_inputs(exp, "test"), batch_size=1000)
    acc = float((preds == exp.data["test"].labels).mean())
    assert acc == pytest.approx(info["accuracy"]["test"], abs=4e-4)  # at most 2 float-rounding ties of 5,000


CUB = REPO_ROOT / "checkpoints" / "cub100-squeezenet1_1.pt"


def test_cub100_profile_reuses_the_committed_checkpoint():
    cfg = load_profile("cub100")
    assert REPO_ROOT / cfg["checkpoint"] == CUB and cfg["if_no_checkpoint"] == "train"
    info = json.loads(CUB.with_suffix(".json").read_text())
    assert file_sha256(CUB) == info["sha256"]
    assert info["profile"] == "cub100" and info["training"] == cfg["training"] and info["seed"] == cfg["seed"]
    assert info["model"] == "squeezenet1_1" and info["normalize"] == cfg["normalize"]
    acc = info["accuracy"]  # the model's own photos, then the analysis splits (unseen official test photos)
    assert acc["model_train"] > acc["model_val"] > 0.5 and abs(acc["test"] - acc["val"]) < 0.1


@pytest.mark.skipif(not (SHARED_DATA / "cub100" / "images.txt").is_file(), reason="../shared/data/cub100 absent")
def test_cub100_checkpoint_reproduces_its_recorded_val_accuracy(monkeypatch):
    info = json.loads(CUB.with_suffix(".json").read_text())
    # the checkpoint alone makes the model: the pretrained features file is not needed
    monkeypatch.setattr("helpers.models._load_squeezenet_features",
                        lambda *a, **k: pytest.fail("loaded pretrained weights under a checkpoint"))
    exp = Experiment("cub100")
    assert exp.data_key == info["data_key"] and len(exp.data.classes) == 100
    model = exp.model
    assert "model" not in exp.timings
    val = exp.data.model_bundle()["val"]  # the model's own 300 validation photos
    preds = predict(model, torch.stack([val.dataset[i][0] for i in range(len(val))]), batch_size=100)
    acc = float((preds == val.labels).mean())
    assert acc == pytest.approx(info["accuracy"]["model_val"], abs=2 / 300 + 1e-9)  # at most 2 rounding ties


DIGITS = REPO_ROOT / "checkpoints" / "digits-small_cnn.pt"


def test_default_profile_loads_its_committed_checkpoint_and_reproduces_it(tmp_path, monkeypatch):
    """The default model is committed so that every CPU analyses the same weights (issue: retraining
    moved the model between AVX2 and AVX-512 kernels); it reproduces its record on any CPU."""
    monkeypatch.setenv("COMPANION_ARTIFACTS", str(tmp_path / "artifacts"))
    cfg = load_profile("digits")
    assert REPO_ROOT / cfg["checkpoint"] == DIGITS and cfg["if_no_checkpoint"] == "train"
    info = json.loads(DIGITS.with_suffix(".json").read_text())
    assert file_sha256(DIGITS) == info["sha256"]
    assert info["profile"] == "digits" and info["training"] == cfg["training"] and info["seed"] == cfg["seed"]
    exp = Experiment("digits", output_dir=tmp_path / "digits", progress=False)
    assert exp.data_key == info["data_key"]
    assert "model" not in exp.timings and len(exp.history) == cfg["training"]["epochs"]  # loaded, with its curves
    acc = exp.predictions.groupby("split")["correct"].mean()
    for split in ("train", "val", "test"):
        assert acc[split] == pytest.approx(info["accuracy"][split], abs=1e-6)
