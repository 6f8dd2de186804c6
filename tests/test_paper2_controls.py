"""Paper 2's headline numbers and the controls the companion adds (docs/methods.md section 8): tests that FAIL when
the sign of a CFE error score, the Table 1 class means (source rows, column, class index, gate), the
debugging grid's choice or the order of the paired comparison is wrong; and the added controls
(gate-only control, head-weight disabling control, hierarchical interval, minimum detectable effect).

Every expected value is written out by hand (worked in the comments) or computed by an independent
few-line loop, never by calling the code under test a second time.  Everything runs on tiny synthetic
tables and stub experiments (no model, no cache): well under a second."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
from scipy import stats

from helpers.metrics import auroc
from helpers.paper2 import cfe
from helpers.paper2 import stages as paper2
from helpers.paper2.cfe import (
    GlobalFilters,
    agreement,
    class_means,
    disable_filters_check,
    flag_predictions,
    gate_control,
)
from helpers.paper2.debugging import paired_statistics
from helpers.paper2.stages import CFEAnalysis, error_scores


def _analysis(table: dict, n_classes: int = 3, k: int = 4) -> CFEAnalysis:
    """A CFEAnalysis around a hand-written table; the arrays are placeholders (the functions tested
    here read the table only)."""
    t = pd.DataFrame(table)
    n = len(t)
    gf = GlobalFilters(np.zeros((n_classes, k), np.int64), np.zeros((n_classes, k)), np.zeros(n_classes, np.int64),
                       np.zeros(n, bool))
    return CFEAnalysis(t, np.zeros((n, k), np.float32), np.zeros((n, k), np.float32), gf, 0.15, n_classes)


# --------------------------------------------------------------------------- 1. the scores' sign
def test_error_scores_by_hand_higher_means_less_agreement():
    """cfe_recall = 1 - recall, cfe_f1 = 1 - F1, cfe_precision = 1 - precision, cfe_outside = |MC| (1 - precision)
    (the MC filters outside G_c), cfe_mask_size = |MC|, all from the OUT-OF-FOLD columns (the in-sample
    ones differ on the training rows here); the row that agrees least with its class scores highest."""
    a = _analysis({
        "id": ["a", "b", "c", "d"], "split": ["train", "train", "test", "test"],
        "label": [0, 1, 1, 0], "prediction": [0, 1, 0, 0], "correct": [True, True, False, True],
        "n_mc": [4, 6, 10, 0],
        "recall": [0.9, 0.9, 0.0, 0.5], "precision": [0.9, 0.9, 0.2, 0.0], "f1": [0.9, 0.9, 0.0, 0.0],
        "recall_oof": [1.0, 0.25, 0.0, 0.5], "precision_oof": [1.0, 0.5, 0.2, 0.0],
        "f1_oof": [1.0, 1 / 3, 0.0, 0.0],
    })
    s = error_scores(a)
    assert s["id"].tolist() == ["a", "b", "c", "d"] and s["split"].tolist() == ["train", "train", "test", "test"]
    np.testing.assert_allclose(s["cfe_recall"], [0.0, 0.75, 1.0, 0.5])
    np.testing.assert_allclose(s["cfe_f1"], [0.0, 2 / 3, 1.0, 1.0])
    np.testing.assert_allclose(s["cfe_precision"], [0.0, 0.5, 0.8, 1.0])
    # |MC \ G_c|: 4 x 0 = 0, 6 x 0.5 = 3 of 6 outside, 10 x 0.8 = 8 of 10 outside, an empty mask has none
    np.testing.assert_allclose(s["cfe_outside"], [0.0, 3.0, 8.0, 0.0])
    np.testing.assert_allclose(s["cfe_mask_size"], [4.0, 6.0, 10.0, 0.0])
    # a, b, c agree less and less with their class (recall 1 > 0.25 > 0, precision 1 > 0.5 > 0.2): every
    # agreement score rises strictly along them
    for col in ("cfe_recall", "cfe_f1", "cfe_precision", "cfe_outside"):
        assert s[col].iloc[0] < s[col].iloc[1] < s[col].iloc[2], col


def _scored(mc: np.ndarray, g_sets: np.ndarray, pred: np.ndarray, wrong: np.ndarray) -> pd.DataFrame:
    """error_scores of predictions whose MC filters are ``mc``, scored with the real ``cfe.agreement``."""
    sc = agreement(mc, g_sets[pred])
    n = len(pred)
    a = _analysis({"id": [f"s{i}" for i in range(n)], "split": ["test"] * n, "label": pred, "prediction": pred,
                   "correct": ~wrong, "n_mc": mc.sum(1), **{f"{k}_oof": v for k, v in sc.items()}},
                  n_classes=g_sets.shape[0], k=mc.shape[1])
    return error_scores(a)


def _two_class_sets(k: int = 8) -> np.ndarray:
    g_sets = np.zeros((2, k), bool)
    g_sets[0, :4] = True      # G_0 = {0, 1, 2, 3}
    g_sets[1, 4:] = True      # G_1 = {4, 5, 6, 7}
    return g_sets


def _predictions(n: int, seed: int):
    """n predictions of two classes (alternating), every third one wrong, with empty MC sets to fill."""
    pred = np.arange(n) % 2
    return np.random.default_rng(seed), _two_class_sets(), pred, np.arange(n) % 3 == 0, np.zeros((n, 8), bool)


def test_cfe_recall_ranks_low_recall_errors_above_chance():
    """Wrong predictions whose MC filters miss most of G_c (low recall) get HIGHER cfe_recall and cfe_f1:
    AUROC(wrong, score) > 0.5 (here 1: every error has recall <= 0.5, every correct one >= 0.75)."""
    rng, g_sets, pred, wrong, mc = _predictions(40, seed=0)
    for i in range(len(pred)):
        own = np.flatnonzero(g_sets[pred[i]])
        if wrong[i]:    # 1-2 of its class's 4 filters and 0-1 others
            mc[i, rng.choice(own, rng.integers(1, 3), replace=False)] = True
            mc[i, rng.choice(np.flatnonzero(~g_sets[pred[i]]), rng.integers(0, 2), replace=False)] = True
        else:           # 3-4 of its class's filters
            mc[i, rng.choice(own, rng.integers(3, 5), replace=False)] = True
    s = _scored(mc, g_sets, pred, wrong)
    assert auroc(wrong, s["cfe_recall"]) == 1.0 > 0.5
    assert auroc(wrong, s["cfe_f1"]) > 0.5
    assert auroc(wrong, 1.0 - s["cfe_recall"]) < 0.5  # what a flipped sign would report


def test_precision_outside_and_mask_size_rank_large_mask_errors_above_chance():
    """The issue-19 pattern: errors have LARGER masks that cover G_c plus extra filters (recall 1), correct
    predictions miss one filter of G_c (recall 0.75, precision 1).  1 - recall then ranks errors below
    chance, while 1 - precision, the count outside G_c and |MC| rank them above it."""
    rng, g_sets, pred, wrong, mc = _predictions(30, seed=1)
    for i in range(len(pred)):
        own, rest = np.flatnonzero(g_sets[pred[i]]), np.flatnonzero(~g_sets[pred[i]])
        if wrong[i]:
            mc[i, own] = True
            mc[i, rng.choice(rest, rng.integers(2, 4), replace=False)] = True
        else:
            mc[i, rng.choice(own, 3, replace=False)] = True
    s = _scored(mc, g_sets, pred, wrong)
    assert auroc(wrong, s["cfe_recall"]) == 0.0
    for col in ("cfe_precision", "cfe_outside", "cfe_mask_size"):
        assert auroc(wrong, s[col]) == 1.0, col


# --------------------------------------------------------------------------- 2. Table 1's class means
def test_class_means_by_hand_unsorted_classes():
    """Mean per class over its own samples only (classes given unsorted), NaN for a class with none."""
    m = class_means(np.array([0.9, 0.1, 0.4, 0.3, 0.5]), np.array([2, 0, 2, 0, 3]), 5)
    np.testing.assert_allclose(m[[0, 2, 3]], [0.2, 0.65, 0.5])   # (0.1 + 0.3) / 2, (0.9 + 0.4) / 2, 0.5
    assert m.shape == (5,) and np.isnan(m[1]) and np.isnan(m[4])


def test_flag_predictions_against_a_loop():
    """On random data, flags[i] = (skip == 0 or p_i <= skip) and score_i < mean of the PREDICTED class
    (a NaN mean flags nothing), written as a plain loop."""
    rng = np.random.default_rng(3)
    n, c = 200, 5
    score = np.round(rng.random(n), 1)                 # ties with the means happen
    pred = rng.integers(0, c, n)
    conf = np.round(rng.random(n), 1)                  # ties with skip happen
    means = np.array([0.3, np.nan, 0.5, 0.7, 0.2])
    for skip in (0.0, 0.5, 0.9):
        got = flag_predictions(score, pred, conf, skip, class_means=means)
        want = [(skip == 0 or conf[i] <= skip) and bool(score[i] < means[pred[i]]) for i in range(n)]
        assert got.tolist() == want, skip
    got = flag_predictions(score, pred, conf, 0.0, fixed_threshold=0.3)
    assert got.tolist() == [bool(score[i] < 0.3) for i in range(n)]


CFE_CFG = {"cfe": {"tau": 0.9, "frequency": 0.15, "skip": 0.9, "recall_threshold": 0.3, "folds": 5}}


def _table1_analysis() -> CFEAnalysis:
    """Six training rows and seven test rows, 3 classes.

    Training rows (label, prediction, contributed to G_c; in-sample / out-of-fold recall and F1):
      t0 0 0 yes  recall 0.8 / 0.6  f1 0.7 / 0.5
      t1 0 0 yes  recall 0.6 / 0.4  f1 0.5 / 0.3
      t2 1 1 yes  recall 0.4 / 0.2  f1 0.3 / 0.1
      t3 1 1 no   recall 0.0 / 0.0  f1 0.0 / 0.0   (correct but not confident: did not build G_1)
      t4 0 1 no   recall 1.0 / 1.0  f1 1.0 / 1.0   (wrong)
      t5 2 2 no   recall 0.9 / 0.9  f1 0.9 / 0.9   (class 2 built nothing: NaN mean)
    Class means over the contributing rows:   in-sample recall 0.7, 0.4, NaN; F1 0.6, 0.3, NaN
                                              out-of-fold recall 0.5, 0.2, NaN; F1 0.4, 0.1, NaN
    Test rows (recall_oof = recall there, as in the pipeline); errors e1, e2, e4, e6:
      e0 0 0 ok  p 0.50  recall 0.65  f1 0.65  recall_f0 0.9
      e1 1 0 ERR p 0.50  recall 0.45  f1 0.35  recall_f0 0.25
      e2 0 1 ERR p 0.60  recall 0.30  f1 0.05  recall_f0 0.5
      e3 1 1 ok  p 0.95  recall 0.10  f1 0.00  recall_f0 0.1   (skipped at skip 0.9)
      e4 1 2 ERR p 0.30  recall 0.00  f1 0.00  recall_f0 0.0   (predicted class 2: NaN mean)
      e5 1 1 ok  p 0.90  recall 0.35  f1 0.20  recall_f0 0.3   (p == skip: kept)
      e6 2 0 ERR p 0.99  recall 0.20  f1 0.20  recall_f0 0.2   (skipped at skip 0.9)
    """
    tr = {"label": [0, 0, 1, 1, 0, 2], "prediction": [0, 0, 1, 1, 1, 2],
          "contributed": [True, True, True, False, False, False],
          "recall": [0.8, 0.6, 0.4, 0.0, 1.0, 0.9], "recall_oof": [0.6, 0.4, 0.2, 0.0, 1.0, 0.9],
          "f1": [0.7, 0.5, 0.3, 0.0, 1.0, 0.9], "f1_oof": [0.5, 0.3, 0.1, 0.0, 1.0, 0.9],
          "confidence": [0.99, 0.95, 0.97, 0.6, 0.99, 0.5]}
    tr["recall_f0"] = tr["recall_f0_oof"] = tr["recall"]
    ev = {"label": [0, 1, 0, 1, 1, 1, 2], "prediction": [0, 0, 1, 1, 2, 1, 0], "contributed": [False] * 7,
          "confidence": [0.5, 0.5, 0.6, 0.95, 0.3, 0.9, 0.99],
          "recall": [0.65, 0.45, 0.3, 0.1, 0.0, 0.35, 0.2], "f1": [0.65, 0.35, 0.05, 0.0, 0.0, 0.2, 0.2],
          "recall_f0": [0.9, 0.25, 0.5, 0.1, 0.0, 0.3, 0.2]}
    for key in ("recall", "f1", "recall_f0"):
        ev[f"{key}_oof"] = ev[key]
    table = {k: tr[k] + ev[k] for k in ev}
    table["split"] = ["train"] * 6 + ["test"] * 7
    table["id"] = [f"t{i}" for i in range(6)] + [f"e{i}" for i in range(7)]
    table["correct"] = [lab == p for lab, p in zip(table["label"], table["prediction"])]
    return _analysis(table, n_classes=3)


def test_table1_counts_by_hand():
    """Table 1 from a stub experiment (table1 reads exp.cfg["cfe"] only): class means from the training rows
    that built G_c, grouped by label, in-sample or out-of-fold column; flags against the PREDICTED class's
    mean, inside the skip gate; the fixed rule on recall at frequency 0 with skip 0."""
    t = paper2.table1(SimpleNamespace(cfg=CFE_CFG), _table1_analysis())
    got = {(r.setting, r.thresholds): (r.errors_detected, r.new_errors) for r in t.itertuples()}
    assert list(got) == [("avg_recall", "in-sample"), ("avg_recall", "out-of-fold"), ("avg_f1", "in-sample"),
                         ("avg_f1", "out-of-fold"), ("recall_lt_0.3", "fixed")]
    assert got == {
        # means 0.7 / 0.4: e0 0.65 < 0.7 (new), e1 0.45 < 0.7, e2 0.30 < 0.4, e5 0.35 < 0.4 (new); e4 NaN
        ("avg_recall", "in-sample"): (2, 2),
        # means 0.5 / 0.2: only e1 0.45 < 0.5
        ("avg_recall", "out-of-fold"): (1, 0),
        # F1 means 0.6 / 0.3: e1 0.35 < 0.6, e2 0.05 < 0.3, e5 0.2 < 0.3 (new); e0 0.65 is not
        ("avg_f1", "in-sample"): (2, 1),
        # F1 means 0.4 / 0.1: e1 0.35 < 0.4, e2 0.05 < 0.1
        ("avg_f1", "out-of-fold"): (2, 0),
        # recall_f0 < 0.3 on every test row: e1, e3 (new), e4, e6; e5 = 0.3 is not < 0.3
        ("recall_lt_0.3", "fixed"): (3, 1),
    }
    assert (t["errors"] == 4).all()
    np.testing.assert_allclose(t["errors_detected_fraction"], [0.5, 0.25, 0.5, 0.5, 0.75])
    assert t["skip"].tolist() == [0.9, 0.9, 0.9, 0.9, 0.0]
    assert t["frequency"].tolist() == [0.15, 0.15, 0.15, 0.15, 0.0]


def test_table1_gate_columns_by_hand():
    """With an MSP score, the gate columns: the gate is p <= skip (5 test rows, 3 errors) for the class-mean
    rules and every row (7, 4 errors) for the fixed rule; random = k E / N; the rule's own AUROC inside the
    gate is of 1 - score (higher = more likely wrong)."""
    msp = np.array([0.5, 0.5, 0.4, 0.05, 0.7, 0.1, 0.01])   # 1 - p of e0..e6
    t = paper2.table1(SimpleNamespace(cfg=CFE_CFG), _table1_analysis(), msp).set_index(["setting", "thresholds"])
    assert t["gate_n"].tolist() == [5, 5, 5, 5, 7] and t["gate_errors"].tolist() == [3, 3, 3, 3, 4]
    r = t.loc[("avg_recall", "in-sample")]
    assert r["gate_random_expected"] == pytest.approx(4 * 3 / 5)     # k = 4 flags (e0, e1, e2, e5)
    assert r["gate_msp_caught"] == 3                                 # top 4 MSP in the gate: e4, e0, e1, e2
    # in the gate (e0, e1, e2, e4, e5) 1 - recall = 0.35, 0.55, 0.70, 1.00, 0.65 with errors e1, e2, e4:
    # error above correct in 5 of 6 pairs (0.55 < 0.65)
    assert r["gate_rule_auroc_in_gate"] == pytest.approx(5 / 6)
    # MSP there: errors 0.5, 0.4, 0.7 against correct 0.5, 0.1: 1/2 + 1 + 0 + 1 + 1 + 1 = 4.5 of 6
    assert r["gate_msp_auroc_in_gate"] == pytest.approx(0.75)
    f = t.loc[("recall_lt_0.3", "fixed")]
    assert f["gate_random_expected"] == pytest.approx(4 * 4 / 7)     # k = 4 (e1, e3, e4, e6)


# --------------------------------------------------------------------------- 3. the gate-only control
def _hypergeom_quantile(n: int, e: int, k: int, q: float) -> int:
    """Smallest x with P(X <= x) >= q, X ~ hypergeometric(n, e, k), from binomial coefficients."""
    cdf = 0.0
    for x in range(k + 1):
        cdf += math.comb(e, x) * math.comb(n - e, k - x) / math.comb(n, k)
        if cdf >= q - 1e-12:
            return x
    return k


def test_gate_control_by_hand():
    """8 predictions, the gate keeps rows 0-5 (N = 6, E = 3 errors: rows 1, 3, 4), the rule flags rows 1, 2
    (k = 2, 1 error caught).  Random: 2 x 3 / 6 = 1 error on average, pmf 0.2 / 0.6 / 0.2 over 0 / 1 / 2.
    MSP's 2 highest scores INSIDE the gate are rows 2 (correct) and 4 (error): 1 caught (rows 6 and 7
    outside the gate score higher and are both errors)."""
    correct = np.array([True, False, True, False, False, True, False, False])
    considered = np.array([True] * 6 + [False] * 2)
    flagged = np.array([False, True, True, False, False, False, False, False])
    msp = np.array([0.1, 0.3, 0.8, 0.2, 0.6, 0.05, 0.99, 0.95])
    rule = np.array([0.2, 0.9, 0.5, 0.7, 0.6, 0.3, 0.0, 0.0])
    out = gate_control(flagged, correct, considered, msp, rule)
    assert (out["gate_n"], out["gate_errors"], out["flagged"], out["caught"]) == (6, 3, 2, 1)
    assert out["random_expected"] == pytest.approx(1.0)
    assert out["random_low"] == _hypergeom_quantile(6, 3, 2, 0.025) == 0
    assert out["random_high"] == _hypergeom_quantile(6, 3, 2, 0.975) == 2
    assert out["random_low"] <= out["random_expected"] <= out["random_high"]
    assert out["msp_caught"] == 1
    # inside the gate the rule's score puts every error (0.9, 0.7, 0.6) above every correct one (0.2, 0.5, 0.3)
    assert out["rule_auroc_in_gate"] == 1.0
    # MSP inside the gate: errors 0.3, 0.2, 0.6 against correct 0.1, 0.8, 0.05: 6 of 9 pairs
    assert out["msp_auroc_in_gate"] == pytest.approx(6 / 9)
    # a larger budget: k = 4 of N = 6 with E = 3: mean 2, and the interval from the pmf by hand
    big = np.array([True, True, True, True, False, False, False, False])
    out4 = gate_control(big, correct, considered, msp)
    assert out4["random_expected"] == pytest.approx(2.0) and "rule_auroc_in_gate" not in out4
    assert (out4["random_low"], out4["random_high"]) == (_hypergeom_quantile(6, 3, 4, 0.025),
                                                         _hypergeom_quantile(6, 3, 4, 0.975)) == (1, 3)
    with pytest.raises(ValueError, match="outside the considered set"):
        gate_control(np.eye(8, dtype=bool)[6], correct, considered, msp)
    # a larger gate, where the 2.5 % and 97.5 % quantiles lie inside the support: N = 40, E = 10, k = 12
    wrong40 = np.arange(40) < 10
    out12 = gate_control(np.arange(40) < 12, ~wrong40, np.ones(40, bool), np.linspace(1, 0, 40))
    assert out12["random_expected"] == pytest.approx(12 * 10 / 40)
    lo, hi = _hypergeom_quantile(40, 10, 12, 0.025), _hypergeom_quantile(40, 10, 12, 0.975)
    assert 0 < lo < 3 < hi < 10 and (out12["random_low"], out12["random_high"]) == (lo, hi)
    assert out12["caught"] == out12["msp_caught"] == 10   # MSP ranks rows 0-11 first: all 10 errors


def test_gate_control_without_errors_in_the_gate():
    """No error inside the gate: random catches 0 (a point interval) and the in-gate AUROCs are NaN."""
    correct = np.array([True, True, True, False])
    considered = np.array([True, True, True, False])
    out = gate_control(np.array([True, False, False, False]), correct, considered, np.array([0.2, 0.1, 0.3, 0.9]),
                       np.array([0.5, 0.1, 0.2, 0.9]))
    assert (out["gate_n"], out["gate_errors"], out["caught"], out["msp_caught"]) == (3, 0, 0, 0)
    assert out["random_expected"] == out["random_low"] == out["random_high"] == 0.0
    assert math.isnan(out["rule_auroc_in_gate"]) and math.isnan(out["msp_auroc_in_gate"])


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_gate_control_when_the_catch_is_fixed():
    """A gate of errors only (E = N) or a rule that flags the whole gate (k = N): random flags catch
    exactly min(k, E), a point interval, with no warning (scipy's hypergeometric .mean() divides by zero
    there; the closed form k E / N does not)."""
    correct = np.array([False, False, False, True])
    considered = np.array([True, True, True, False])
    out = gate_control(np.array([True, False, True, False]), correct, considered, np.array([0.2, 0.1, 0.3, 0.9]))
    assert (out["gate_n"], out["gate_errors"], out["flagged"], out["caught"]) == (3, 3, 2, 2)
    assert out["random_expected"] == out["random_low"] == out["random_high"] == 2.0
    assert out["random_p_more"] == out["random_p_fewer"] == 1.0
    every = gate_control(np.array([True] * 3 + [False]), np.array([True, False, True, True]), considered,
                         np.array([0.2, 0.1, 0.3, 0.9]))
    assert every["random_expected"] == every["random_low"] == every["random_high"] == every["caught"] == 1.0


# --------------------------------------------------------------------------- 4. the grid's choice
def _fake_grid(monkeypatch, cells, accs, seed=7):
    """debugging_grid with debug_grid / debug_run / run_accuracies replaced: ``accs`` maps a cell to
    (train, val, test) accuracy.  Returns the result and the (l1, l2, seed) of every run."""
    calls = []
    monkeypatch.setattr(paper2, "debug_grid", lambda exp: list(cells))

    def run(exp, l1, l2, s):
        calls.append((l1, l2, s))
        return {"best_epoch": 3, "cell": (l1, l2)}

    monkeypatch.setattr(paper2, "debug_run", run)
    monkeypatch.setattr(paper2, "run_accuracies",
                        lambda exp, r: dict(zip(("train", "val", "test"), accs[r["cell"]])))
    grid, chosen = paper2.debugging_grid(SimpleNamespace(seed=seed))
    return grid, chosen, calls


def test_debugging_grid_chooses_best_validation_excluding_control(monkeypatch):
    """The control (0, 0) has the best validation accuracy and is not chosen; the chosen cell is the best
    VALIDATION cell among those with l1 or l2 > 0 (here one with l1 = 0, l2 > 0), not the best test or
    train cell; every cell runs at exp.seed."""
    cells = [(0.0, 0.0), (1e-3, 0.0), (0.0, 2e-5), (1e-3, 2e-5)]
    accs = {(0.0, 0.0): (0.99, 0.95, 0.50), (1e-3, 0.0): (0.90, 0.80, 0.99),
            (0.0, 2e-5): (0.80, 0.90, 0.60), (1e-3, 2e-5): (0.999, 0.85, 0.70)}
    grid, chosen, calls = _fake_grid(monkeypatch, cells, accs)
    assert chosen == (0.0, 2e-5)
    assert grid["chosen"].tolist() == [False, False, True, False]
    assert calls == [(l1, l2, 7) for l1, l2 in cells]
    assert list(zip(grid.l1, grid.l2)) == cells
    np.testing.assert_allclose(grid.val_accuracy, [0.95, 0.80, 0.90, 0.85])
    np.testing.assert_allclose(grid.test_accuracy, [0.50, 0.99, 0.60, 0.70])
    assert (grid.best_epoch == 3).all()


def test_debugging_grid_first_cell_on_a_tie(monkeypatch):
    """Two cells tie on validation accuracy: the first in grid order wins; a control that ties with them
    (listed first) is still not chosen."""
    cells = [(0.0, 0.0), (1e-3, 0.0), (2e-3, 0.0), (3e-3, 0.0)]
    accs = {(0.0, 0.0): (0.5, 0.85, 0.5), (1e-3, 0.0): (0.5, 0.80, 0.9),
            (2e-3, 0.0): (0.5, 0.85, 0.6), (3e-3, 0.0): (0.9, 0.85, 0.7)}
    grid, chosen, _ = _fake_grid(monkeypatch, cells, accs)
    assert chosen == (2e-3, 0.0)
    assert grid["chosen"].tolist() == [False, False, True, False]


# --------------------------------------------------------------------------- 5. the paired comparison
def _disagreeing_seeds():
    """4 seeds x 200 test images; the debugged arm (a) fixes 30, 2, 25, 5 more images than the control (b)
    in seeds 0-3: per-seed gains 0.15, 0.01, 0.125, 0.025 (the seeds disagree a lot)."""
    rng = np.random.default_rng(2)
    n_seeds, n = 4, 200
    b = rng.random((n_seeds, n)) < 0.6
    b[:, :40] = False
    a = b.copy()
    gains = np.array([30, 2, 25, 5])
    for s, g in enumerate(gains):
        a[s, rng.choice(40, g, replace=False)] = True
    return a, b, gains / n


def test_paired_statistics_is_debugged_minus_control():
    """a better than b: mean and both intervals (image-only and hierarchical) above 0; swapping the
    arguments negates the mean and puts both intervals below 0."""
    a, b, gains = _disagreeing_seeds()
    s = paired_statistics(a, b, n_bootstrap=400, seed=0)
    np.testing.assert_allclose(s["per_seed"], gains)
    assert s["mean"] == pytest.approx(gains.mean()) and s["mean"] > 0
    assert s["ci_low"] > 0 and s["hier_ci_low"] > 0
    r = paired_statistics(b, a, n_bootstrap=400, seed=0)
    assert r["mean"] == pytest.approx(-gains.mean())
    assert r["ci_high"] < 0 and r["hier_ci_high"] < 0


def test_paired_statistics_hierarchical_interval_and_mde_by_hand():
    """The hierarchical interval contains the mean and, when the seeds disagree, is at least as wide as the
    image-only one; sd and MDE by hand: sd = std(gains, ddof=1), MDE = (t_.975,3 + t_.8,3) sd / sqrt(4);
    p from a one-sample t-test of the gains; one seed: sd, MDE and p are NaN."""
    a, b, gains = _disagreeing_seeds()
    s = paired_statistics(a, b, n_bootstrap=400, seed=0)
    assert s["hier_ci_low"] <= s["mean"] <= s["hier_ci_high"]
    assert s["ci_low"] <= s["mean"] <= s["ci_high"]
    assert s["hier_ci_high"] - s["hier_ci_low"] >= s["ci_high"] - s["ci_low"]
    sd = math.sqrt(sum((g - gains.mean()) ** 2 for g in gains) / 3)
    assert s["sd_per_seed"] == pytest.approx(sd)
    assert s["mde"] == pytest.approx((stats.t.ppf(0.975, 3) + stats.t.ppf(0.8, 3)) * sd / 2.0)
    assert s["p_value"] == pytest.approx(stats.ttest_1samp(gains, 0.0).pvalue)
    assert s["n_seeds"] == 4
    one = paired_statistics(a[:1], b[:1], n_bootstrap=100, seed=0)
    assert math.isnan(one["mde"]) and math.isnan(one["p_value"]) and math.isnan(one["sd_per_seed"])
    assert one["mean"] == pytest.approx(gains[0]) and one["n_seeds"] == 1
    # one seed: the hierarchical resample is the image bootstrap of that seed
    assert one["hier_ci_low"] <= one["mean"] <= one["hier_ci_high"]


def _one_hot(pred: np.ndarray, c: int = 4) -> np.ndarray:
    return np.eye(c, dtype=np.float32)[pred] * 5.0


def test_debugging_seeds_passes_the_debugged_arm_first(monkeypatch):
    """With debug_run faked so that the chosen cell gets 14, 15, 16 of 20 test images right at seeds 10, 11,
    12 and the control (0, 0) 10 of 20 at every seed: the table lists the debugged arm first with the
    chosen cell, the control with (0, 0), the same seeds in both arms; stats are debugged minus control."""
    n = 20
    y = np.arange(n) % 4
    wrong = (y + 1) % 4
    chosen = (1e-3, 2e-5)
    calls = []

    def run(exp, l1, l2, seed):
        calls.append((l1, l2, seed))
        k = 14 + (seed - 10) if (l1, l2) == chosen else 10
        pred = np.where(np.arange(n) < k, y, wrong)
        logits = _one_hot(pred)
        return {"best_epoch": 1, "logits": {"train": logits, "val": logits, "test": logits}}

    monkeypatch.setattr(paper2, "debug_run", run)
    split = SimpleNamespace(labels=y)
    exp = SimpleNamespace(seed=10, cfg={"debugging": {"seeds": 3, "n_bootstrap": 300}},
                          data={"train": split, "val": split, "test": split})
    table, st, correct = paper2.debugging_seeds(exp, chosen)
    assert table["arm"].tolist() == ["debugged"] * 3 + ["control"] * 3
    assert table["seed"].tolist() == [10, 11, 12] * 2
    assert list(zip(table.l1, table.l2)) == [chosen] * 3 + [(0.0, 0.0)] * 3
    np.testing.assert_allclose(table.test_accuracy, [0.70, 0.75, 0.80, 0.5, 0.5, 0.5])
    assert sorted(calls) == sorted([(*chosen, s) for s in (10, 11, 12)] + [(0.0, 0.0, s) for s in (10, 11, 12)])
    np.testing.assert_allclose(st["per_seed"], [0.20, 0.25, 0.30])
    assert st["mean"] == pytest.approx(0.25) and st["mean"] > 0
    assert st["ci_low"] > 0 and st["hier_ci_low"] > 0 and st["n_seeds"] == 3
    assert set(correct) == {"debugged", "control"}
    np.testing.assert_allclose(correct["debugged"].mean(1), [0.70, 0.75, 0.80])
    np.testing.assert_allclose(correct["control"].mean(1), [0.5, 0.5, 0.5])


# --------------------------------------------------------------------------- 6. the head-weight control
def _hand_head():
    """6 filters, 3 classes, 4 images each, zero bias.  W[0] = [3, 2, 0, 0, 0, -4], W[1] = [0, 0, 3, 2, 0, 0],
    W[2] = [0, 0, 0, 0, 5, 1].  Images: class 0 g = [2, 3, .1, .1, 1, 0] (z = 12, .5, 5), class 1
    g = [.1, .1, 2, 2, 1, 0] (z = .5, 10, 5), class 2 g = [.1, .1, .1, .1, 0, 8] (z = -31.5, .5, 8): all
    correct.  Class 2's largest head weight (filter 4) is never active on its own images; its logit rests
    on filter 5 (weight 1, activation 8)."""
    head = nn.Linear(6, 3)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[3.0, 2.0, 0.0, 0.0, 0.0, -4.0],
                                        [0.0, 0.0, 3.0, 2.0, 0.0, 0.0],
                                        [0.0, 0.0, 0.0, 0.0, 5.0, 1.0]]))
        head.bias.zero_()
    rows = [[2.0, 3.0, 0.1, 0.1, 1.0, 0.0], [0.1, 0.1, 2.0, 2.0, 1.0, 0.0], [0.1, 0.1, 0.1, 0.1, 0.0, 8.0]]
    g = torch.tensor([rows[c] for c in range(3) for _ in range(4)])
    y = np.repeat(np.arange(3), 4)
    return head, g, y


def test_disable_filters_head_weight_control_by_hand():
    """Per class, zeroing G_c against zeroing the |G_c| filters of largest W[c]:

    - class 0, G_0 = {4, 5} (not what its logit reads): own recall stays 1 (drop 0), class 2 loses filter 5
      and goes to class 1 (other accuracy 8/8 -> 4/8); the head-weight control zeroes {0, 1}, the only
      filters with W[0] > 0: z_0 = 0 < z_2 = 5, recall 1 -> 0 (drop 1).  Does not beat it.
    - class 1, G_1 = {2, 3} = its top-weight filters: both drop 1; equal is not "beats".
    - class 2, G_2 = {5}: drop 1 (z_2 = 0 < z_1 = .5); top-1 W[2] is filter 4, zero on class 2's images:
      drop 0.  Beats the head-weight control."""
    head, g, y = _hand_head()
    assert (head(g).argmax(1).numpy() == y).all()  # the hand-computed logits: every image correct
    filters = np.zeros((3, 6), bool)
    filters[0, [4, 5]] = True
    filters[1, [2, 3]] = True
    filters[2, 5] = True
    df = disable_filters_check(head, g, y, filters, n_random=3, seed=0).set_index("class")
    assert df.index.tolist() == [0, 1, 2] and df["n_filters"].tolist() == [2, 2, 1]
    assert (df["own_recall"] == 1.0).all() and (df["other_accuracy"] == 1.0).all()
    assert df["own_recall_disabled"].tolist() == [1.0, 0.0, 0.0]
    assert df["own_recall_drop"].tolist() == [0.0, 1.0, 1.0]
    assert df["other_accuracy_disabled"].tolist() == [0.5, 1.0, 1.0]
    assert df["other_accuracy_drop"].tolist() == [0.5, 0.0, 0.0]
    assert df["head_weight_own_recall_drop"].tolist() == [1.0, 1.0, 0.0]
    assert df["head_weight_other_accuracy_drop"].tolist() == [0.0, 0.0, 0.0]
    assert df["beats_head_weight"].tolist() == [False, False, True]
    assert list(df.reset_index().columns) == cfe.DISABLE_COLUMNS


def test_disable_metrics_count_wins_losses_ties_and_sign_test():
    """The hand-made check above: class 2 wins, class 0 loses, class 1 ties; the sign test of 1 win against
    1 loss is p = 1.  28 wins against 17 losses (cub100's table): p = 0.135, twice the binomial tail."""
    head, g, y = _hand_head()
    filters = np.zeros((3, 6), bool)
    filters[0, [4, 5]] = True
    filters[1, [2, 3]] = True
    filters[2, 5] = True
    df = disable_filters_check(head, g, y, filters, n_random=3, seed=0)
    out = paper2.disable_metrics(df)["cfe"]
    assert out["disable_vs_head_weight"] == {"wins": 1, "losses": 1, "ties": 1, "sign_test_p": 1.0}
    assert out["disable"]["beats_head_weight_fraction"] == pytest.approx(1 / 3, abs=1e-4)
    many = pd.DataFrame({"own_recall_drop": [1.0] * 28 + [0.0] * 17 + [0.5] * 55,
                         "head_weight_own_recall_drop": [0.0] * 28 + [1.0] * 17 + [0.5] * 55})
    many = many.assign(other_accuracy_drop=0.0, random_own_recall_drop=0.0,
                       beats_head_weight=many.own_recall_drop > many.head_weight_own_recall_drop)
    s = paper2.disable_metrics(many)["cfe"]["disable_vs_head_weight"]
    assert (s["wins"], s["losses"], s["ties"]) == (28, 17, 55)
    assert s["sign_test_p"] == pytest.approx(2 * stats.binom.cdf(17, 45, 0.5), abs=1e-6)


def test_gate_control_one_sided_p_values_by_hand():
    """The 8-prediction gate of test_gate_control_by_hand: 1 error caught with 2 flags, pmf 0.2 / 0.6 / 0.2
    over 0 / 1 / 2 caught: P(>= 1) = 0.8, P(<= 1) = 0.8; table1's headline keeps both as gate_ columns."""
    correct = np.array([True, False, True, False, False, True, False, False])
    considered = np.array([True] * 6 + [False] * 2)
    flagged = np.array([False, True, True, False, False, False, False, False])
    out = gate_control(flagged, correct, considered, np.linspace(0, 1, 8))
    assert (out["random_p_more"], out["random_p_fewer"]) == pytest.approx((0.8, 0.8))
    both = np.array([False, True, False, True, False, False, False, False])  # 2 of 2 flags are errors
    out2 = gate_control(both, correct, considered, np.linspace(0, 1, 8))
    assert (out2["random_p_more"], out2["random_p_fewer"]) == pytest.approx((0.2, 1.0))
    assert {"gate_random_p_more", "gate_random_p_fewer"} <= set(paper2.GATE_KEYS)


def test_seed_metrics_record_best_epochs_ties_and_the_mde_interval():
    """The paired statistics carry the MDE's chi-square interval and the seeds where both arms tie; the
    seed table's best epochs per arm go to debugging.<arm>.best_epoch_min / _max."""
    a, b, gains = _disagreeing_seeds()
    b2 = b.copy()
    b2[0] = a[0]                                       # seed 0: the two arms right on the same images
    s = paired_statistics(a, b2, n_bootstrap=100, seed=0)
    assert s["n_seeds_tied"] == 1
    assert s["mde_ci_low"] == pytest.approx(s["mde"] * math.sqrt(3 / stats.chi2.ppf(0.975, 3)))
    assert s["mde_ci_low"] < s["mde"] < s["mde_ci_high"]
    seeds = pd.DataFrame({"arm": ["debugged"] * 2 + ["control"] * 2, "best_epoch": [2, 9, 3, 5],
                          "test_accuracy": [0.8, 0.81, 0.8, 0.8]})
    m = paper2.seed_metrics(seeds, s)["debugging"]
    assert (m["debugged"]["best_epoch_min"], m["debugged"]["best_epoch_max"]) == (2, 9)
    assert (m["control"]["best_epoch_min"], m["control"]["best_epoch_max"]) == (3, 5)
    assert m["difference"]["n_seeds_tied"] == 1 and "mde_ci_high" in m["difference"]
