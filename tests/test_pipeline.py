"""Pipeline-level properties on the embedded digits profile (tiny settings)."""
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from helpers import evaluation
from helpers.experiment import Experiment
from helpers.paper1 import stages as paper1

TINY = {"checkpoint": None, "training.epochs": 3, "conductance.detector.epochs": 3, "joint.folds": 3,
        "lcr.n_mutants": 5, "lcr.grid_operators": ["filter_nai"], "lcr.grid_rates": [0.05], "lcr.grid_mutants": 3}


@pytest.fixture(scope="module")
def exp(tmp_path_factory):
    import os

    os.environ["COMPANION_ARTIFACTS"] = str(tmp_path_factory.mktemp("art"))
    e = Experiment("digits", TINY, output_dir=tmp_path_factory.mktemp("fig"), progress=False)
    yield e
    os.environ.pop("COMPANION_ARTIFACTS", None)


def test_conductance_table_is_keyed_by_id_and_complete(exp):
    cond = paper1.conductance_table(exp)
    assert list(cond["id"]) == list(exp.predictions["id"])
    # completeness on real data: summed conductance = F(x) - F(0) for the predicted class
    import torch

    x = exp.data["val"].dataset.tensors()[0][:8].to(exp.device)  # the model sits on exp.device (a GPU if any)
    with torch.no_grad():
        fx, f0 = exp.model(x), exp.model(torch.zeros_like(x))
    pred = fx.argmax(1)
    expect = (fx.gather(1, pred[:, None]) - f0.gather(1, pred[:, None]))[:, 0].cpu().numpy()
    got = cond[cond.split == "val"].filter(like="cond_").to_numpy()[:8].sum(1)
    np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-5)


def test_with_predictions_joins_on_ids_not_positions(exp):
    cond = paper1.conductance_table(exp)
    shuffled = cond.sample(frac=1.0, random_state=0)
    a = evaluation.with_predictions(exp, cond).set_index("id").sort_index()
    b = evaluation.with_predictions(exp, shuffled).set_index("id").sort_index()
    pd.testing.assert_frame_equal(a, b)
    with pytest.raises(ValueError, match="not in the prediction table"):
        evaluation.with_predictions(exp, pd.concat([cond.head(2).assign(id=["x", "y"]), cond]))


def test_oof_scores_never_from_a_detector_that_saw_the_sample(exp):
    oof = paper1.conductance_oof(exp)
    train_ids = set(exp.data["train"].ids)
    assert set(oof["id"]) == train_ids
    assert sorted(oof["fold"].unique()) == [0, 1, 2]
    det = paper1.conductance_detector(exp)["scores"]
    tr = det[det.split == "train"].merge(oof, on="id")
    assert not np.allclose(tr["conductance"], tr["conductance_oof"])


def test_lcr_against_original_prediction_and_joint_end_to_end(exp):
    m = paper1.lcr_matrix(exp)
    assert m["preds"].shape == (5, len(exp.predictions))
    # chunks computed last-first and of another size (as other processes would) assemble into the same matrix
    for f in exp.artifacts_dir.glob("lcr_preds-*"):
        f.unlink()
    for split, i in paper1.lcr_chunks(exp, chunk=2)[::-1]:
        paper1.lcr_chunk(exp, split, i, chunk=2)
    r = paper1.lcr_matrix(exp, chunk=2)
    np.testing.assert_array_equal(r["preds"], m["preds"])
    np.testing.assert_array_equal(r["ids"], m["ids"])
    lcr = paper1.lcr_table(exp, m)
    original = exp.predictions.set_index("id").loc[m["ids"], "prediction"].to_numpy()
    np.testing.assert_allclose(lcr["lcr"], (m["preds"] != original).mean(0))
    scores = paper1.joint_scores(exp)
    assert {"joint_nn", "joint_rf", "joint_lda", "joint_qda", "joint_nn_msp"} <= set(scores.columns)
    assert scores.filter(like="joint_").notna().all().all()


def test_operating_points_reach_targets_on_validation():
    rng = np.random.default_rng(0)
    n = 4000
    correct = rng.random(n) > 0.15
    score = np.where(correct, rng.normal(0, 1, n), rng.normal(1.5, 1, n))
    split = np.where(np.arange(n) % 2 == 0, "val", "test")
    df = pd.DataFrame({"split": split, "correct": correct, "s": score})
    fake = SimpleNamespace(cfg={"joint": {"correct_recall_target": 0.95, "wrong_recall_target": 0.97}})
    ops = paper1.operating_points(fake, df, "s").set_index("operating_point")
    assert ops.loc["high_correct_recall", "val correct recall"] >= 0.95
    assert ops.loc["high_wrong_recall", "val wrong recall"] >= 0.97
    er = ops.loc["equal_recall"]
    assert abs(er["val correct recall"] - er["val wrong recall"]) < 0.02
    te = df[df.split == "test"]
    flagged = te.s >= ops.loc["equal_recall", "threshold"]
    assert ops.loc["equal_recall", "test accuracy with expert"] == pytest.approx(
        ((te.correct & ~flagged).sum() + flagged.sum()) / len(te))


def test_missing_checkpoint_is_an_error(tmp_path):
    e = Experiment("digits", {"checkpoint": str(tmp_path / "nope.pt"), "if_no_checkpoint": "error"},
                   output_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="checkpoint: no file at"):
        e.model


def test_lcr_screening_on_a_file_dataset(tmp_path, monkeypatch):
    """Folder datasets reach the mutant screening as a DataLoader (labels come from the loader)."""
    from .conftest import write_images

    for split in ("train", "val", "test"):
        for ci, c in enumerate(("a", "b")):
            write_images(tmp_path / "tree" / split / c, 6, size=(8, 8), seed=ci + 3 * len(split))
    monkeypatch.setenv("COMPANION_ARTIFACTS", str(tmp_path / "art"))
    e = Experiment("digits", {"dataset": "imagefolder", "data_dir": str(tmp_path / "tree"), "training.epochs": 1,
                              "checkpoint": None, "conductance.classes": [0, 1],
                              "normalize": {"mean": [0.5] * 3, "std": [0.5] * 3}}, output_dir=tmp_path / "f",
                   progress=False)
    z = paper1.screen(e, "filter_nai", 0.05, 2)
    assert "error" in z or len(z["seeds"]) == 2


def test_grid_extra_cells_follow_the_product_once(exp):
    e = Experiment("digits", {**TINY, "lcr.grid_extra": [["gf", 0.1], ["filter_nai", 0.05], ["gf", 0.1]]},
                   output_dir=exp.output_dir, progress=False)
    assert paper1.lcr_grid_cells(e) == [("filter_nai", 0.05), ("gf", 0.1)]
    grid = paper1.lcr_grid(e)
    assert list(zip(grid.operator, grid.rate)) == [("filter_nai", 0.05), ("gf", 0.1)]


def test_cross_fitted_detector_feeds_the_learning_curve_and_the_joint_classifier(exp):
    with pytest.raises(ValueError, match=r"conductance.cross_fit.folds is null"):
        paper1.conductance_cross_fit(exp)
    e = Experiment("digits", {**TINY, "conductance.cross_fit.folds": 3, "conductance.cross_fit.fractions": [0.5, 1.0]},
                   output_dir=exp.output_dir, progress=False)
    cf = paper1.conductance_cross_fit(e)
    assert list(cf["scores"]["id"]) == list(e.predictions["id"])  # every analysis photo, train + val + test
    assert set(cf["scores"]["fold"]) == {0, 1, 2}
    curve = paper1.detector_learning_curve(e)
    assert len(curve) == 3 and curve.n_train.iloc[0] == (e.predictions.split == "train").sum()
    assert curve.n_train.iloc[1] < curve.n_train.iloc[2] < len(e.predictions)
    assert ((curve.heldout_auroc_ci_low <= curve.heldout_auroc).all()
            and (curve.heldout_auroc <= curve.heldout_auroc_ci_high).all())
    feats = paper1.joint_features(e)  # notebook 03: every row's conductance score is the cross-fitted one
    np.testing.assert_array_equal(feats.set_index("id").loc[cf["scores"]["id"], "conductance_oof"].to_numpy(),
                                  cf["scores"]["conductance_cf"].to_numpy())
    off = paper1.joint_features(exp)
    held = off.split != "train"
    np.testing.assert_array_equal(off.loc[held, "conductance_oof"], off.loc[held, "conductance"])


def test_a_fixed_lcr_setting_is_compared_with_its_bases_lcr_on_the_same_predictions(tmp_path, monkeypatch):
    """A variant that fixes LCR's setting (``base: digits``) against the base's rule-chosen LCR: a paired
    difference of the two AUROCs on the same predictions, read from the shared cache, never computed."""
    from helpers import metrics

    monkeypatch.setenv("COMPANION_ARTIFACTS", str(tmp_path / "art"))
    own = tmp_path / "fixed.yaml"
    own.write_text("base: digits\nname: digits-lcr-fixed\nlcr:\n  operator: filter_nai\n  rate: 0.05\n"
                   "  n_mutants: 10\n")
    var = Experiment(str(own), output_dir=tmp_path / "v", progress=False)
    ours = paper1.lcr_table(var)
    before = sorted(p.name for p in var.artifacts_dir.iterdir())
    assert paper1.lcr_against_base(var, ours) == {}  # the base's LCR is not cached: nothing is computed for it
    assert sorted(p.name for p in var.artifacts_dir.iterdir()) == before
    base = Experiment("digits", output_dir=tmp_path / "b", progress=False)
    theirs = paper1.lcr_table(base)
    assert paper1.lcr_against_base(base, theirs) == {}  # not a variant
    a = paper1.lcr_against_base(var, ours)["lcr"]["against_base"]
    assert (a["profile"], (a["operator"], a["rate"]), a["n_mutants"]) == ("digits", paper1.lcr_setting(base), 50)
    for split in ("val", "test"):
        d = evaluation.with_predictions(var, ours.merge(theirs[["id", "lcr"]], on="id", suffixes=("", "_base")))
        d = d[d.split == split]
        y = evaluation.wrong(d)
        ab = (metrics.auroc(y, d["lcr"].to_numpy()), metrics.auroc(y, d["lcr_base"].to_numpy()))
        assert (a[split]["auroc"], a[split]["base_auroc"]) == pytest.approx(ab, abs=1e-6)
        assert a[split]["difference"] == pytest.approx(ab[0] - ab[1], abs=1e-6)
        assert a[split]["ci_low"] <= a[split]["difference"] <= a[split]["ci_high"] and 0 < a[split]["p_value"] <= 1
