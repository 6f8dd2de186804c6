"""The committed CIFAR-10 ResNet20 (checkpoints/cifar10-resnet20.pt) is what its JSON record says:
its file hash, the hash of the data it was trained on, and its test accuracy on that data."""
import json

import numpy as np
import pytest

from helpers.experiment import Experiment
from helpers.lcr import predict
from helpers.pipeline import split_inputs
from helpers.profiles import REPO_ROOT, load_profile
from helpers.utils import file_sha256

from .conftest import SHARED_DATA

CK = REPO_ROOT / "checkpoints" / "cifar10-resnet20.pt"


def test_cifar10_profile_reuses_the_committed_checkpoint():
    cfg = load_profile("cifar10")
    assert REPO_ROOT / cfg["checkpoint"] == CK and cfg["if_no_checkpoint"] == "train"
    info = json.loads(CK.with_suffix(".json").read_text())
    assert file_sha256(CK) == info["sha256"]
    assert info["profile"] == "cifar10" and info["training"] == cfg["training"] and info["seed"] == cfg["seed"]


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
