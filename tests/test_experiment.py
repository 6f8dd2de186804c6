import json

import numpy as np
import pandas as pd
import pytest

from helpers.experiment import Experiment
from helpers.utils import atomic_path, atomic_write_json

TINY = {"training.epochs": 2, "split.limit_train": 300}


def test_training_cached_and_deterministic(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPANION_ARTIFACTS", str(tmp_path / "a"))
    e1 = Experiment("digits", TINY)
    p1 = e1.predictions
    assert set(p1["split"]) == {"train", "val", "test"}
    assert list(p1.columns[:5]) == ["id", "split", "label", "prediction", "correct"]
    assert (p1["correct"] == (p1["label"] == p1["prediction"])).all()
    ck = list((tmp_path / "a" / "digits").glob("model-*.pt"))
    assert len(ck) == 1 and ck[0].with_suffix(".pt.json").is_file()
    # a rerun reuses the checkpoint (no training: timings stay empty) and gives the same table
    e2 = Experiment("digits", TINY)
    p2 = e2.predictions
    assert "model" not in e2.timings
    pd.testing.assert_frame_equal(p1, p2)
    # same seed in a fresh cache: bit-identical logits (determinism)
    monkeypatch.setenv("COMPANION_ARTIFACTS", str(tmp_path / "b"))
    p3 = Experiment("digits", TINY).predictions
    np.testing.assert_array_equal(p1.filter(like="logit_").to_numpy(), p3.filter(like="logit_").to_numpy())


def test_interrupted_stage_leaves_nothing_a_rerun_takes_as_finished(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPANION_ARTIFACTS", str(tmp_path / "a"))
    e = Experiment("digits", TINY)

    def boom():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        e.stage("feature", {"x": 1}, boom, lambda o, p: None, lambda p: "cached", "npz")
    assert not list(e.artifacts_dir.glob("feature-*")) if e.artifacts_dir.exists() else True

    def half_written(obj, path):
        path.write_text("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        e.stage("feature", {"x": 1}, lambda: 1, half_written, lambda p: "cached", "npz")
    assert list(e.artifacts_dir.glob("feature-*")) == []
    calls = []
    out = e.stage("feature", {"x": 1}, lambda: calls.append(1) or 5,
                  lambda o, p: np.savez(open(p, "wb"), v=o), lambda p: int(np.load(p)["v"]), "npz")
    assert out == 5 and calls == [1]
    assert e.stage("feature", {"x": 1}, lambda: calls.append(1) or 6, None, lambda p: int(np.load(p)["v"]), "npz") == 5


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "m.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(ValueError):
        with atomic_path(target) as tmp:
            tmp.write_text("{broken")
            raise ValueError("boom")
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_metrics_merge(tmp_path):
    e = Experiment("digits", output_dir=tmp_path / "figs")
    e.update_metrics({"model": {"accuracy": {"val": 0.5}}})
    m = e.update_metrics({"model": {"accuracy": {"test": np.float32(0.25)}}, "x": np.int64(3)})
    assert m["model"]["accuracy"] == {"val": 0.5, "test": 0.25} and m["x"] == 3 and m["profile"] == "digits"
