"""A checkpoint must fit its data and preprocessing: the class names and order, the input size and
channels, the normalisation and the architecture are recorded with every exported checkpoint and checked
when it is loaded (an error, or with ``verify_checkpoint: false`` a line on the console); a checkpoint without
a record says so and its sha256 is recorded; a missing checkpoint that falls back to training says so."""
import json

import pytest
import torch

from helpers.checkpoints import CheckpointError, fit_problems
from helpers.evaluation import model_metrics
from helpers.experiment import Experiment
from helpers.paths import REPO_ROOT
from helpers.training import accuracy_table
from helpers.utils import file_sha256

TINY = {"checkpoint": None, "training.epochs": 1}


@pytest.fixture
def exported(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPANION_ARTIFACTS", str(tmp_path / "art"))
    exp = Experiment("digits", TINY, output_dir=tmp_path / "out", progress=False)
    ck = exp.export_checkpoint(tmp_path / "ck" / "mine.pt")
    return exp, ck


def load(tmp_path, ck, **over):
    return Experiment("digits", {"checkpoint": str(ck), **over}, output_dir=tmp_path / "o2", progress=False)


def test_an_exported_checkpoint_records_what_its_inputs_and_outputs_mean(exported):
    exp, ck = exported
    record = json.loads(ck.with_suffix(".json").read_text())
    assert record["classes"] == [str(c) for c in exp.data.classes] and record["image_size"] == 8
    assert record["in_channels"] == 1 and record["model"] == "small_cnn" and record["normalize"] == exp.cfg["normalize"]
    assert fit_problems(record, exp.input_contract()) == []


def test_another_image_size_is_refused_before_it_runs_at_chance(tmp_path, exported):
    _, ck = exported
    with pytest.raises(CheckpointError, match="image_size: checkpoint 8, profile 16.*verify_checkpoint: false"):
        _ = load(tmp_path, ck, image_size=16).model


def test_another_class_order_is_refused_or_used_knowingly(tmp_path, exported, capsys):
    _, ck = exported
    record = json.loads(ck.with_suffix(".json").read_text())
    record["classes"] = record["classes"][::-1]
    ck.with_suffix(".json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="the same names in another order"):
        _ = load(tmp_path, ck).model
    _ = load(tmp_path, ck, verify_checkpoint=False).model
    assert "used anyway: verify_checkpoint is false" in capsys.readouterr().err


def test_a_checkpoint_without_record_says_so_and_its_hash_is_recorded(tmp_path, exported, capsys):
    exp, _ = exported
    bare = tmp_path / "bare.pt"
    torch.save(exp.model.state_dict(), bare)  # a plain state dict, as torch.save(model.state_dict()) writes
    other = load(tmp_path, bare)
    _ = other.model
    assert "has no record" in capsys.readouterr().err
    m = model_metrics(other, accuracy_table(other.predictions), {})
    assert m["model"]["checkpoint"] == {"path": str(bare), "sha256": file_sha256(bare), "record": False}


def test_the_wrong_architecture_is_a_checkpoint_error_naming_the_file(tmp_path, exported):
    _, ck = exported
    resnet = REPO_ROOT / "checkpoints" / "cifar10-resnet20.pt"
    with pytest.raises(CheckpointError, match="cifar10-resnet20.pt"):
        _ = load(tmp_path, resnet, verify_checkpoint=False).model


def test_a_missing_checkpoint_that_falls_back_to_training_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COMPANION_ARTIFACTS", str(tmp_path / "art"))
    exp = Experiment("digits", {"checkpoint": str(tmp_path / "mistyped.pt"), "if_no_checkpoint": "train",
                                "training.epochs": 1}, output_dir=tmp_path / "out", progress=False)
    _ = exp.model
    err = capsys.readouterr().err
    assert "no file at" in err and "mistyped.pt" in err and "training a new model instead" in err
