"""No code runs from a file the project loads: a checkpoint, a weights file or a cached stage that carries a
pickled object whose loading would run code is refused (or, for a cached stage, set aside and recomputed),
and the code never runs."""
import json
import os

import pytest
import torch

from helpers import cache
from helpers.checkpoints import CheckpointError
from helpers.experiment import Experiment
from helpers.models import build_model
from helpers.paths import REPO_ROOT
from helpers.utils import UnsafeFileError, file_sha256, safe_torch_load


class Payload:
    """Unpickling this runs os.mkdir(marker): the stand-in for any code an attacker would run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_safe_loading_refuses_a_pickled_object_and_reads_tensors_and_arrays(tmp_path):
    import numpy as np

    marker = tmp_path / "ran"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(UnsafeFileError, match="posix.mkdir|os.mkdir|nt.mkdir"):
        safe_torch_load(tmp_path / "evil.pt", "checkpoint")
    assert not marker.exists()
    torch.save({"a": np.arange(6, dtype=np.float32).reshape(2, 3), "t": torch.ones(2)}, tmp_path / "ok.pt")
    got = safe_torch_load(tmp_path / "ok.pt", "x", arrays=True)
    assert got["a"].shape == (2, 3) and torch.equal(got["t"], torch.ones(2))
    with pytest.raises(UnsafeFileError):  # arrays only where asked for
        safe_torch_load(tmp_path / "ok.pt", "x")


@pytest.mark.parametrize("with_record", [False, True])
def test_a_checkpoint_with_a_payload_is_refused_and_runs_nothing(tmp_path, monkeypatch, with_record):
    monkeypatch.setenv("COMPANION_ARTIFACTS", str(tmp_path / "art"))
    marker = tmp_path / "ran"
    good = torch.load(REPO_ROOT / "checkpoints" / "digits-small_cnn.pt", map_location="cpu", weights_only=False)
    ck = tmp_path / "evil.pt"
    torch.save({**good, "history": [Payload(marker)]}, ck)
    if with_record:  # a matching record does not make the file trusted
        record = json.loads((REPO_ROOT / "checkpoints" / "digits-small_cnn.json").read_text())
        ck.with_suffix(".json").write_text(json.dumps({**record, "sha256": file_sha256(ck)}))
    exp = Experiment("digits", {"checkpoint": str(ck)}, output_dir=tmp_path / "out", progress=False)
    with pytest.raises(CheckpointError, match="refused"):
        _ = exp.model
    assert not marker.exists()


@pytest.mark.parametrize("model", ["resnet20", "vgg16"])
def test_a_weights_file_with_a_payload_is_refused_and_runs_nothing(tmp_path, model):
    marker = tmp_path / "ran"
    evil = tmp_path / "weights.pt"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "x": Payload(marker)}, evil)
    with pytest.raises(UnsafeFileError, match="weights"):
        build_model(model, 10, 3, str(evil))
    assert not marker.exists()


def test_an_unrelated_state_dict_as_vgg16_weights_is_an_error_not_random_weights(tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"conv.weight": torch.zeros(3, 3, 3, 3)}, other)
    with pytest.raises(ValueError, match="does not match vgg16.*only the classification head"):
        build_model("vgg16", 10, 3, str(other))


def test_a_poisoned_cached_stage_is_set_aside_and_recomputed_without_running(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("COMPANION_ARTIFACTS", str(tmp_path / "art"))
    exp = Experiment("digits", output_dir=tmp_path / "out", progress=False)
    calls = []

    def compute():
        calls.append(1)
        return {"logits": torch.zeros(2, 3), "history": [{"epoch": 1}]}

    for fmt in (cache.TENSORS, cache.TENSORS_AND_ARRAYS):
        params = {"fmt": fmt.load.__name__}
        exp.cache.stage("shared_stage", params, compute, fmt)
        path = exp.cache.path("shared_stage", params, fmt)
        marker = tmp_path / f"ran-{fmt.load.__name__}"
        torch.save({"logits": Payload(marker)}, path)  # a teammate's shared cache folder, poisoned
        sidecar = cache.sidecar_of(path)  # with a sidecar that vouches for it
        sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "sha256": file_sha256(path)}))
        capfd.readouterr()
        n = len(calls)
        out = exp.cache.stage("shared_stage", params, compute, fmt)
        assert not marker.exists() and len(calls) == n + 1 and out["history"] == [{"epoch": 1}]
        assert "corrupt" in capfd.readouterr().err and path.with_name(path.name + ".corrupt").is_file()


def test_no_loader_in_helpers_unpickles_arbitrary_objects():
    hits = [f"{p.relative_to(REPO_ROOT)}:{i + 1}" for p in sorted((REPO_ROOT / "helpers").rglob("*.py"))
            for i, line in enumerate(p.read_text().splitlines()) if "weights_only=" + "False" in line]
    assert not hits, hits
