"""Tests of helpers.paper1.joint (paper 1, 4.3 and 5; docs/methods.md section 4)."""
import numpy as np
import pytest

import helpers.paper1.joint as J
from helpers.metrics import auroc
from helpers.paper1.detectors import train_conductance_detector


def _noisy(n, seed, d=20):
    """Weak signal in feature 0, lots of noise: an MLP can memorise the training split."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = (X[:, 0] + 1.5 * rng.normal(size=n) > 1.2).astype(int)
    return X, y


def test_oof_no_sample_scored_by_a_model_that_saw_it():
    X, y = _noisy(300, 0)
    X = np.c_[np.arange(len(y)), X]  # column 0 = sample id, to see what each fit got
    seen = []

    class Spy:
        def __init__(self, ids):
            self.ids = set(ids.tolist())

        def score(self, Xs):
            ids = Xs[:, 0].astype(int)
            assert not (set(ids.tolist()) & self.ids), "a model scored a sample it was fitted on"
            return np.full(len(Xs), float(len(seen)))  # score = which model

    def fit_fn(X_fit, y_fit):
        seen.append(X_fit[:, 0].astype(int))
        return Spy(X_fit[:, 0].astype(int))

    res = J.fit_predict_out_of_fold(fit_fn, X, y, k=4, seed=0)
    scores, folds = res  # unpacks as a pair
    assert len(seen) == 4 and set(folds.tolist()) == {0, 1, 2, 3}
    for f in range(4):
        held = np.flatnonzero(folds == f)
        assert not np.isin(held, seen[f]).any()  # model f never saw fold f
        assert np.array_equal(np.sort(np.r_[held, seen[f]]), np.arange(len(y)))  # ... and saw all the rest
        assert np.all(scores[held] == f + 1)  # fold f was scored by model f
    # stratified: every fold has about the same error rate
    rates = [y[folds == f].mean() for f in range(4)]
    assert max(rates) - min(rates) < 0.05
    # seeded
    assert np.array_equal(J.fit_predict_out_of_fold(lambda a, b: Spy(np.array([-1])), X, y, k=4, seed=0).fold_ids,
                          folds)


def test_out_of_fold_scores_uses_val_split_for_epochs(monkeypatch):
    X, y = _noisy(200, 0)
    Xv, yv = _noisy(100, 1)
    calls = []
    real = J.train_conductance_detector

    def spy(X_fit, y_fit, X_val, y_val, **kw):
        calls.append((len(X_fit), X_val is Xv, kw))
        return real(X_fit, y_fit, X_val, y_val, **kw)

    monkeypatch.setattr(J, "train_conductance_detector", spy)
    res = J.out_of_fold_scores(X, y, Xv, yv, k=3, seed=0, epochs=1)
    assert len(calls) == 3 and all(c[1] for c in calls)  # epochs chosen on the real validation split
    assert all(c[0] < len(y) for c in calls) and all(c[2]["epochs"] == 1 for c in calls)
    assert np.isfinite(res.scores).all() and res.fold_ids.min() == 0 and res.fold_ids.max() == 2


def test_oof_auroc_lower_than_in_sample():
    X, y = _noisy(600, 1)
    Xv, yv = _noisy(400, 2)
    kw = dict(epochs=15, patience=15)
    det = train_conductance_detector(X, y, Xv, yv, seed=0, **kw)
    in_sample = auroc(y, det.score(X))
    oof = J.out_of_fold_scores(X, y, Xv, yv, k=3, seed=0, **kw)
    assert auroc(y, oof.scores) < in_sample - 0.05  # the authors' leak is real


@pytest.mark.parametrize("name", J.UNIFIED_CLASSIFIERS)
def test_unified_classifiers(name):
    rng = np.random.default_rng(0)
    n = 600
    y = (rng.random(n) < 0.2).astype(int)
    X = np.c_[np.clip(0.1 + 0.4 * y + 0.2 * rng.normal(size=n), 0, 1),  # LCR
              np.clip(0.2 + 0.5 * y + 0.2 * rng.normal(size=n), 0, 1)]  # conductance score
    est = J.fit_unified(name, X, y, seed=0)
    s = J.unified_score(est, X)
    assert s.shape == (n,) and (s >= 0).all() and (s <= 1).all()
    assert auroc(y, s) > 0.85


def test_unknown_unified_name():
    with pytest.raises(ValueError, match="name: 'svm'.*nn, rf, lda, qda"):
        J.make_unified_classifier("svm")
    with pytest.raises(ValueError, match="k"):
        J.fit_predict_out_of_fold(lambda a, b: None, np.zeros((10, 2)), np.r_[np.zeros(8), np.ones(2)], k=5)


def test_relay_accuracy_and_curve():
    correct = np.array([1, 1, 1, 1, 0, 0, 1, 0, 1, 1], dtype=bool)  # 7 correct of 10
    flagged = np.array([0, 0, 1, 0, 1, 1, 0, 0, 0, 0], dtype=bool)  # discards 1 correct, 2 wrong
    r = J.relay_accuracy(correct, flagged)
    # kept and correct: 6; discarded (expert is always right): 3 -> 9 / 10
    assert r == {"accuracy": pytest.approx(0.9), "discarded_fraction": pytest.approx(0.3), "n_expert": 3}
    assert J.relay_accuracy(correct, np.zeros(10, bool))["accuracy"] == pytest.approx(0.7)
    assert J.relay_accuracy(correct, np.ones(10, bool))["accuracy"] == 1.0
    score = np.array([0.1, 0.2, 0.9, 0.3, 0.8, 0.8, 0.1, 0.4, 0.0, 0.2])
    disc, acc = J.relay_curve(correct, score)
    assert disc[0] == 0 and acc[0] == pytest.approx(0.7) and disc[-1] == 1 and acc[-1] == 1
    assert (np.diff(disc) > 0).all()
    for t in np.unique(score):
        rr = J.relay_accuracy(correct, score >= t)
        i = np.flatnonzero(np.isclose(disc, rr["discarded_fraction"]))
        assert i.size == 1 and acc[i[0]] == pytest.approx(rr["accuracy"])
    with pytest.raises(ValueError, match="correct and flagged"):
        J.relay_accuracy(correct, flagged[:-1])


def test_cross_fitted_detector_scores_every_photo_out_of_fold(monkeypatch):
    """The cross-fitted detector (small held-out pools): no photo scored, or used to pick the epoch, by a
    detector that learned from it; ``fraction`` subsamples only the photos a detector learns from."""
    X, y = _noisy(400, 3)
    X = np.c_[np.arange(len(y)), X]  # column 0 = photo id
    fits = []
    real = J.train_conductance_detector

    def spy(X_fit, y_fit, X_val, y_val, **kw):
        fits.append((X_fit[:, 0].astype(int), X_val[:, 0].astype(int)))
        return real(X_fit, y_fit, X_val, y_val, **kw)

    monkeypatch.setattr(J, "train_conductance_detector", spy)
    full = J.cross_fitted_detector(X, y, k=4, seed=0, inner_val=0.25, epochs=2)
    assert len(fits) == 4 and np.isfinite(full.scores).all()
    for f, (fit_ids, val_ids) in enumerate(fits):
        held = np.flatnonzero(full.fold_ids == f)
        assert not np.isin(held, fit_ids).any() and not np.isin(held, val_ids).any()
        assert not np.isin(val_ids, fit_ids).any()  # the epoch is picked on photos the detector did not learn from
        assert len(fit_ids) + len(val_ids) + len(held) == len(y)
    assert list(full.n_train) == [len(a) for a, _ in fits]
    fits.clear()
    half = J.cross_fitted_detector(X, y, k=4, seed=0, inner_val=0.25, fraction=0.5, epochs=2)
    assert np.allclose(half.n_train, full.n_train / 2, atol=1)
    assert np.array_equal(half.fold_ids, full.fold_ids)  # the same folds at every point of the curve
    with pytest.raises(ValueError, match=r"fraction: 0 is not valid"):
        J.cross_fitted_detector(X, y, fraction=0)


def test_cross_fitted_detector_shows_memorisation():
    """On weak-signal features the in-sample AUROC of each fold's detector is far above the held-out one."""
    X, y = _noisy(600, 4)
    res = J.cross_fitted_detector(X, y, k=3, seed=0, epochs=15, patience=15)
    assert res.train_auroc.mean() > auroc(y, res.scores) + 0.05
    assert 0.5 < auroc(y, res.scores) < 0.9


def test_msp_comparison_metrics_pair_each_score_with_msp_on_the_same_predictions():
    """detectors.<name>.<split>.msp_difference*: AUROC(score) - AUROC(MSP) on each split, joined on id (the
    scores' rows shuffled), with a paired bootstrap interval and p-value; MSP itself is not compared."""
    from types import SimpleNamespace

    import pandas as pd

    from helpers.paper1 import stages as paper1

    rng = np.random.default_rng(0)
    n = 400
    split = np.array(["val", "test"])[np.arange(n) % 2]
    correct = rng.random(n) < 0.7
    pred = pd.DataFrame({"id": [f"s{i}" for i in range(n)], "split": split, "label": 0,
                         "prediction": np.where(correct, 0, 1), "correct": correct})
    good = (~correct) + rng.normal(0, 0.5, n)
    msp = (~correct) + rng.normal(0, 1.5, n)
    scores = pd.DataFrame({"id": pred.id, "split": split, "good": good, "msp": msp}).sample(frac=1, random_state=1)
    exp = SimpleNamespace(predictions=pred, cfg={"metrics": {"n_bootstrap": 200}}, seed=0)
    out = paper1.msp_comparison_metrics(exp, scores, ["good", "msp"])["detectors"]
    assert set(out) == {"good"} and set(out["good"]) == {"val", "test"}
    val = out["good"]["val"]
    assert set(val) == {"msp_difference", "msp_difference_ci_low", "msp_difference_ci_high", "msp_difference_p_value"}
    v = split == "val"
    assert val["msp_difference"] == pytest.approx(auroc(~correct[v], good[v]) - auroc(~correct[v], msp[v]), abs=1e-6)
    assert val["msp_difference_ci_low"] > 0 and val["msp_difference_p_value"] < 0.05
