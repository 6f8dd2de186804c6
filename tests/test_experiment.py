import json

import numpy as np
import pandas as pd
import pytest

from helpers.cache import Format, StageCache
from helpers.experiment import Experiment
from helpers.utils import atomic_path, atomic_write_json

TINY = {"training.epochs": 2, "split.limit_train": 300, "checkpoint": None}  # train, not the committed model


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
    assert "model" not in e2.cache.timings
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
        e.cache.stage("feature", {"x": 1}, boom, Format("npz", lambda o, p: None, lambda p: "cached"))
    assert not list(e.artifacts_dir.glob("feature-*")) if e.artifacts_dir.exists() else True

    def half_written(obj, path):
        path.write_text("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        e.cache.stage("feature", {"x": 1}, lambda: 1, Format("npz", half_written, lambda p: "cached"))
    assert list(e.artifacts_dir.glob("feature-*")) == []
    calls = []
    fmt = Format("npz", lambda o, p: np.savez(open(p, "wb"), v=o), lambda p: int(np.load(p)["v"]))
    out = e.cache.stage("feature", {"x": 1}, lambda: calls.append(1) or 5, fmt)
    assert out == 5 and calls == [1]
    assert e.cache.stage("feature", {"x": 1}, lambda: calls.append(1) or 6, fmt) == 5


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


def test_exported_checkpoint_is_reused_with_provenance(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPANION_ARTIFACTS", str(tmp_path / "a"))
    ck = tmp_path / "ck" / "digits.pt"
    # missing checkpoint: an error by default, training with if_no_checkpoint=train
    with pytest.raises(FileNotFoundError, match="checkpoint: no file at"):
        Experiment("digits", {**TINY, "checkpoint": str(ck), "if_no_checkpoint": "error"}).model
    e1 = Experiment("digits", {**TINY, "checkpoint": str(ck), "if_no_checkpoint": "train"})
    p1 = e1.predictions
    assert "model" in e1.cache.timings  # trained
    e1.export_checkpoint(ck)
    info = json.loads(ck.with_suffix(".json").read_text())
    assert info["data_key"] == e1.data_key and info["training"]["epochs"] == 2
    assert info["accuracy"]["test"] == pytest.approx(p1[p1.split == "test"].correct.mean())
    assert len(info["sha256"]) == 64 and info["train_seconds"] > 0
    assert info["train_seconds"] >= sum(e["seconds"] for e in e1._model_and_history[1])  # every epoch counted
    # present: loaded, not trained; same predictions, and the file's hash is in the cache key
    e2 = Experiment("digits", {**TINY, "checkpoint": str(ck), "if_no_checkpoint": "train"})
    p2 = e2.predictions
    assert "model" not in e2.cache.timings and "checkpoint_file" in e2.model_params
    pd.testing.assert_frame_equal(p1.filter(like="logit_"), p2.filter(like="logit_"))
    assert not e2.history.empty
    # on other data: a warning that names both data hashes
    with pytest.warns(UserWarning, match=f"trained on data {e1.data_key}"):
        Experiment("digits", {**TINY, "checkpoint": str(ck), "seed": 1}).model


def test_stage_log_records_cost(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPANION_ARTIFACTS", str(tmp_path / "a"))
    e = Experiment("digits", TINY, output_dir=tmp_path / "out")
    e.cache.stage("feature", {"x": 1}, lambda: 5,
                  Format("npz", lambda o, p: np.savez(open(p, "wb"), v=o), lambda p: int(np.load(p)["v"])))
    log = json.loads((tmp_path / "out" / "stages.json").read_text())["stages"]
    (entry,) = [v for v in log.values() if v["stage"] == "feature"]
    assert entry["seconds"] >= 0 and entry["peak_rss_mb"] > 10 and entry["threads"] >= 1


def test_a_stage_computed_inside_another_is_not_counted_twice(tmp_path):
    """The predictions that train the model they need: the model's time is the model's cost record, and
    the predictions' record holds only their own time (with the upstream time noted beside it)."""
    import time

    sc = StageCache(tmp_path / "p", tmp_path / "stages.json", "cpu")
    fmt = Format("npz", lambda o, p: np.savez(open(p, "wb"), v=o), lambda p: int(np.load(p)["v"]))

    def model():
        time.sleep(0.4)
        return 1

    def predictions():
        up = sc.stage("model", {"m": 1}, model, fmt)
        time.sleep(0.1)
        return up + 1

    assert sc.stage("predictions", {"p": 1}, predictions, fmt) == 2
    m, p = sc.cost("model", {"m": 1}, fmt), sc.cost("predictions", {"p": 1}, fmt)
    assert m["seconds"] >= 0.4 and 0.1 <= p["seconds"] < 0.3
    assert p["upstream_seconds"] == pytest.approx(m["seconds"], abs=0.05) and "upstream_seconds" not in m
    assert sc.timings["predictions"] == p["seconds"]


def test_a_resumed_training_costs_all_its_epochs():
    """A checkpoint trained in two processes records the last one's seconds; its cost is every epoch's."""
    from helpers.experiment import training_seconds

    history = [{"epoch": i, "seconds": 10.0} for i in range(1, 7)]
    assert training_seconds({"train_seconds": 20.5}, history) == 60.0  # resumed for the last 2 epochs
    assert training_seconds({"train_seconds": 61.0}, history) == 61.0  # one process: its own measure
    assert training_seconds({"train_seconds": 7.0}, history[:2] + [{"epoch": 3}]) == 7.0  # not every epoch timed
    assert training_seconds({}, []) is None
