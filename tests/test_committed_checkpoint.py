"""The committed checkpoints (checkpoints/*.pt: digits, the CIFAR-10 ResNet20s, cub100) are what their JSON
records say: its file hash, the profile and training settings it was made with, the hash of the data it was trained on,
and its accuracy on that data."""
import json

import pytest
import torch

from helpers.evaluation import split_inputs
from helpers.experiment import Experiment
from helpers.paper1.lcr import predict
from helpers.paths import REPO_ROOT
from helpers.profiles import load_profile, stable_section
from helpers.utils import file_sha256

from .conftest import SHARED_DATA

CHECKPOINTS = {"digits": "digits-small_cnn.pt", "cifar10": "cifar10-resnet20.pt",
               "cifar10-keras": "cifar10-keras-resnet20.pt", "cifar10-paper": "cifar10-paper-resnet20.pt",
               "cub100": "cub100-squeezenet1_1.pt"}


def record(profile: str) -> dict:
    return json.loads((REPO_ROOT / "checkpoints" / CHECKPOINTS[profile]).with_suffix(".json").read_text())


@pytest.mark.parametrize("profile", sorted(CHECKPOINTS))
def test_profile_reuses_its_committed_checkpoint(profile):
    cfg = load_profile(profile)
    ck = REPO_ROOT / "checkpoints" / CHECKPOINTS[profile]
    assert REPO_ROOT / cfg["checkpoint"] == ck and cfg["if_no_checkpoint"] == "train"
    info = record(profile)
    assert file_sha256(ck) == info["sha256"]
    assert info["profile"] == profile and info["model"] == cfg["model"] and info["seed"] == cfg["seed"]
    # the training settings (a record written before a key existed lacks it while it keeps its default)
    assert stable_section(info, "training") == stable_section(cfg, "training")
    assert info["normalize"] == cfg["normalize"]


def test_cub100_record_holds_both_kinds_of_accuracy():
    acc = record("cub100")["accuracy"]  # the model's own photos, then the analysis splits (unseen official test photos)
    assert acc["model_train"] > acc["model_val"] > 0.5 and abs(acc["test"] - acc["val"]) < 0.1


def _cifar10_test(exp):
    return split_inputs(exp, "test"), exp.data["test"].labels, 1000


def _cub100_own_val(exp):
    val = exp.data.model_bundle()["val"]  # the model's own 300 validation photos
    return torch.stack([val.dataset[i][0] for i in range(len(val))]), val.labels, 100


REPRODUCE = {  # profile: (data it needs, its inputs and labels, recorded accuracy key, tolerance); the other
    # CIFAR-10 checkpoints (cifar10-keras, cifar10-paper) load through the same code, and their notebooks'
    # committed accuracies are the references' (tests/reference/<profile>/): not recomputed here, for time
    # at most 2 float-rounding ties of 5,000 test images; of 300 validation photos
    "cifar10": (SHARED_DATA / "cifar10-jpeg.tar.gz", _cifar10_test, "test", 4e-4),
    "cub100": (SHARED_DATA / "cub100" / "images.txt", _cub100_own_val, "model_val", 2 / 300 + 1e-9),
}


@pytest.mark.slow
@pytest.mark.parametrize("profile", sorted(REPRODUCE))
def test_committed_checkpoint_reproduces_its_recorded_accuracy(profile, monkeypatch, one_thread):
    needs, inputs, key, tol = REPRODUCE[profile]
    if not needs.is_file():
        pytest.skip(f"{needs} absent")
    info = record(profile)
    # the checkpoint alone makes the model: no pretrained weights file is read
    monkeypatch.setattr("helpers.models._load_squeezenet_features",
                        lambda *a, **k: pytest.fail("loaded pretrained weights under a checkpoint"))
    exp = Experiment(profile)
    assert exp.data_key == info["data_key"]  # the data it saw
    model = exp.model
    assert "model" not in exp.cache.timings  # loaded, not trained
    x, labels, batch = inputs(exp)
    acc = float((predict(model, x, batch_size=batch) == labels).mean())
    assert acc == pytest.approx(info["accuracy"][key], abs=tol)


def test_default_profile_loads_its_committed_checkpoint_and_reproduces_it(tmp_path, monkeypatch):
    """The default model is committed so that every CPU analyses the same weights (a model
    retrained on each CPU differs between AVX2 and AVX-512 kernels); it reproduces its record on any CPU."""
    monkeypatch.setenv("COMPANION_ARTIFACTS", str(tmp_path / "artifacts"))
    cfg, info = load_profile("digits"), record("digits")
    exp = Experiment("digits", output_dir=tmp_path / "digits", progress=False)
    assert exp.data_key == info["data_key"]
    assert "model" not in exp.cache.timings and len(exp.history) == cfg["training"]["epochs"]  # loaded, with its curves
    acc = exp.predictions.groupby("split")["correct"].mean()
    for split in ("train", "val", "test"):
        assert acc[split] == pytest.approx(info["accuracy"][split], abs=1e-6)
