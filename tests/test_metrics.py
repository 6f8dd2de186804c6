"""Tests of helpers.metrics (paper 1, 4.1.2 and Tables 4-6; docs/methods.md sections 2, 4, 5)."""
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from helpers import metrics as M


def _noisy(n=2000, seed=0, rate=0.2, sep=1.5):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < rate).astype(int)
    s = rng.normal(size=n) + sep * y
    return y, s


def test_auroc_perfect_random_reversed():
    y, _ = _noisy(1000)
    assert M.auroc(y, y.astype(float)) == 1.0
    assert M.auroc(y, -y.astype(float)) == 0.0
    rng = np.random.default_rng(1)
    y2 = rng.integers(0, 2, 20000)
    assert abs(M.auroc(y2, rng.random(20000)) - 0.5) < 0.02


def test_aurc_perfect_and_constant():
    y, s = _noisy(1000)
    perfect = y + 0.01 * np.random.default_rng(0).random(y.size)  # errors all last, arbitrary order inside
    assert M.excess_aurc(y, perfect) == pytest.approx(0.0, abs=1e-12)
    assert M.aurc(y, perfect) == pytest.approx(M.optimal_aurc(y))
    # optimal AURC: sum over k of (#errors in first k)/k / n, errors placed last
    n, n_c = y.size, int((y == 0).sum())
    k = np.arange(1, n + 1)
    expect = np.mean(np.maximum(k - n_c, 0) / k)
    assert M.optimal_aurc(y) == pytest.approx(expect)
    assert M.aurc(y, perfect) > 0  # raw AURC is not 0 for a perfect ranking
    # a constant score gives a flat curve at the error rate (ties averaged)
    cov, risk = M.risk_coverage_curve(y, np.zeros(y.size))
    assert np.allclose(risk, y.mean()) and cov[-1] == 1.0 and cov[0] == 1 / y.size
    assert M.aurc(y, np.zeros(y.size)) == pytest.approx(y.mean())
    assert M.excess_aurc(y, s) > 0
    assert M.excess_aurc(y, -s) > M.excess_aurc(y, s)


def test_risk_coverage_hand_example():
    y = np.array([0, 1, 0, 1])
    s = np.array([0.1, 0.2, 0.3, 0.9])  # accepted order: 0, 1, 0, 1
    cov, risk = M.risk_coverage_curve(y, s)
    assert np.allclose(cov, [0.25, 0.5, 0.75, 1.0])
    assert np.allclose(risk, [0.0, 0.5, 1 / 3, 0.5])
    assert M.aurc(y, s) == pytest.approx(np.mean([0.0, 0.5, 1 / 3, 0.5]))


def test_bootstrap_ci():
    y, s = _noisy(2000)
    a = M.auroc(y, s)
    lo, hi = M.auroc_ci(y, s, n_bootstrap=500, seed=3)
    assert lo < a < hi
    assert (lo, hi) == M.auroc_ci(y, s, n_bootstrap=500, seed=3)
    assert (lo, hi) != M.auroc_ci(y, s, n_bootstrap=500, seed=4)
    yb, sb = _noisy(20000, seed=1)
    lo2, hi2 = M.auroc_ci(yb, sb, n_bootstrap=500, seed=3)
    assert hi2 - lo2 < 0.6 * (hi - lo)


def test_bootstrap_vectorised_matches_sklearn_and_fast():
    import time
    rng = np.random.default_rng(0)
    neg = np.sort(np.round(rng.normal(size=50), 1))
    pos = np.round(rng.normal(size=30) + 1, 1)
    c_neg = M._bootstrap_counts(rng, neg.size, 4)
    c_pos = M._bootstrap_counts(rng, pos.size, 4)
    got = M._auroc_weighted(neg, pos, c_neg, c_pos)
    for b in range(4):
        yy = np.r_[np.zeros(int(c_neg[b].sum())), np.ones(int(c_pos[b].sum()))]
        ss = np.r_[np.repeat(neg, c_neg[b].astype(int)), np.repeat(pos, c_pos[b].astype(int))]
        assert got[b] == pytest.approx(roc_auc_score(yy, ss))
    y, s = _noisy(5000)
    t = time.perf_counter()
    M.auroc_ci(y, s, n_bootstrap=1000)
    assert time.perf_counter() - t < 4.0  # a loose bound, with slack for shared CPUs


def test_recalls_not_swapped():
    # 4 correct (scores 0.1,0.2,0.3,0.8), 2 wrong (0.9, 0.4); threshold 0.5 flags 0.8 and 0.9
    y = np.array([0, 0, 0, 0, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.8, 0.9, 0.4])
    cr, wr = M.recalls_at(y, s, 0.5)
    assert cr == pytest.approx(3 / 4)  # correct predictions NOT flagged
    assert wr == pytest.approx(1 / 2)  # wrong predictions flagged
    # flagged iff score >= threshold
    assert M.recalls_at(y, s, 0.8) == (pytest.approx(3 / 4), pytest.approx(1 / 2))


def test_equal_recall_threshold():
    y, s = _noisy(4000, seed=2)
    t = M.equal_recall_threshold(y, s)
    cr, wr = M.recalls_at(y, s, t)
    assert abs(cr - wr) < 0.01
    # exact constructed case: perfectly balanced at 3/4
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.6, 0.5, 0.7, 0.8, 0.9])
    cr, wr = M.recalls_at(y, s, M.equal_recall_threshold(y, s))
    assert cr == wr == 0.75


@pytest.mark.parametrize("target", [0.5, 0.9, 0.982, 0.995, 1.0])
def test_targets_reached(target):
    y, s = _noisy(3000, seed=5)
    t = M.threshold_for_correct_recall(y, s, target)
    cr, wr = M.recalls_at(y, s, t)
    assert cr >= target
    # no lower threshold keeps the target with higher wrong recall
    lower = np.sort(np.unique(s[s < t]))[-1:] if (s < t).any() else []
    for tl in lower:
        cr2, wr2 = M.recalls_at(y, s, tl)
        assert cr2 < target or wr2 <= wr
    t = M.threshold_for_wrong_recall(y, s, target)
    cr, wr = M.recalls_at(y, s, t)
    assert wr >= target
    higher = np.sort(np.unique(s[s > t]))[:1]
    for th in higher:
        cr2, wr2 = M.recalls_at(y, s, th)
        assert wr2 < target or cr2 <= cr


def test_fpr_at_95_tpr_and_aupr():
    # 20 wrong with scores 1..20, 10 correct with scores 0.5 + i: 19 wrong flagged (95%) at t=2
    y = np.r_[np.ones(20), np.zeros(10)].astype(int)
    s = np.r_[np.arange(1, 21), [0.5, 1.5, 2.5, 3.5, 100, 101, 0.1, 0.2, 0.3, 0.4]]
    # t = 2: flags wrong 2..20 (19/20 = 95%), correct 2.5, 3.5, 100, 101 -> 4/10
    assert M.fpr_at_95_tpr(y, s) == pytest.approx(0.4)
    yb, _ = _noisy(500)
    assert M.aupr_error(yb, yb.astype(float)) == 1.0
    assert M.fpr_at_95_tpr(yb, yb.astype(float)) == 0.0


def test_bad_input_raises():
    with pytest.raises(ValueError, match="y_wrong and score"):
        M.auroc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="y_wrong.*only the class 0"):
        M.auroc([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="y_wrong.*valid"):
        M.auroc([0, 2, 1], [0.1, 0.2, 0.3])
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"target: .* \(0, 1\]"):
            M.threshold_for_correct_recall([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4], bad)
        with pytest.raises(ValueError, match="target"):
            M.threshold_for_wrong_recall([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4], bad)
    with pytest.raises(ValueError, match="score"):
        M.auroc([0, 1], [0.1, np.nan])


def test_detection_report_and_table():
    y, s = _noisy(1000)
    t = M.equal_recall_threshold(y, s)
    rep = M.detection_report(y, s, t, n_bootstrap=200)
    assert tuple(rep) == M.REPORT_KEYS
    assert set(rep) == {"auroc", "auroc_ci_low", "auroc_ci_high", "aupr_error", "fpr_at_95_tpr", "aurc",
                        "correct_recall", "wrong_recall"}
    assert all(type(v) is float for v in rep.values())
    assert rep["auroc_ci_low"] <= rep["auroc"] <= rep["auroc_ci_high"]
    df = M.results_table({"conductance": {"val": rep, "test": rep}, "msp": {"val": rep, "test": rep}})
    assert isinstance(df, pd.DataFrame) and list(df.index) == ["conductance", "msp"]
    for c in ["auroc", "ci_low", "ci_high", M.VAL_AUROC_COLUMN, "val correct recall", "val wrong recall",
              "test correct recall", "test wrong recall"]:
        assert c in df.columns
    assert "over val images" in M.VAL_AUROC_COLUMN
    formatted = f"{rep['auroc']:.3f} [{rep['auroc_ci_low']:.3f}, {rep['auroc_ci_high']:.3f}]"
    assert df.loc["msp", M.VAL_AUROC_COLUMN] == formatted
    with pytest.raises(ValueError, match="test"):
        M.results_table({"x": {"val": rep}})


# --------------------------------------------------------------------------- comparisons
def test_paired_auroc_difference_is_the_bootstrap_of_both_scores_on_the_same_resamples():
    """Each resample scores both detectors on the same predictions: by hand with roc_auc_score on the
    resampled arrays (negatives drawn first, then positives, as the function draws them); the p-value is
    twice the smaller tail, (k + 1) / (B + 1)."""
    y, a = _noisy(300, seed=3)
    b = a + np.random.default_rng(4).normal(size=a.size)
    B = 60
    r = M.paired_auroc_difference(y, a, b, n_bootstrap=B, seed=7)
    assert r["difference"] == pytest.approx(roc_auc_score(y, a) - roc_auc_score(y, b))
    rng = np.random.default_rng(7)
    neg, pos = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
    i_neg, i_pos = rng.integers(0, neg.size, (B, neg.size)), rng.integers(0, pos.size, (B, pos.size))
    d = []
    for k in range(B):
        idx = np.r_[neg[i_neg[k]], pos[i_pos[k]]]
        d.append(roc_auc_score(y[idx], a[idx]) - roc_auc_score(y[idx], b[idx]))
    d = np.array(d)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx(tuple(np.quantile(d, [0.025, 0.975])))
    tail = min((d <= 0).sum(), (d >= 0).sum())
    assert r["p_value"] == pytest.approx(min(1.0, 2 * (tail + 1) / (B + 1)))


def test_paired_auroc_difference_separates_a_better_score_and_not_a_copy():
    y, a = _noisy(2000, seed=5)
    noisy = a + 2.0 * np.random.default_rng(6).normal(size=a.size)
    r = M.paired_auroc_difference(y, a, noisy, n_bootstrap=300)
    assert r["difference"] > 0 and r["ci_low"] > 0 and r["p_value"] < 0.01
    s = M.paired_auroc_difference(y, noisy, a, n_bootstrap=300)
    assert s["difference"] == pytest.approx(-r["difference"]) and s["ci_high"] < 0
    same = M.paired_auroc_difference(y, a, a.copy(), n_bootstrap=100)
    assert same == {"difference": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p_value": 1.0}


def test_sign_test_random_flags_and_mde_interval_by_hand():
    import math

    from scipy import stats

    # sign test: twice the binomial tail at 1/2, ties left out (28 wins, 17 losses: p = 0.135)
    assert M.sign_test(28, 17) == pytest.approx(2 * stats.binom.cdf(17, 45, 0.5))
    assert M.sign_test(28, 17) == pytest.approx(0.1352, abs=1e-4) and M.sign_test(0, 0) == 1.0
    # random flags: 6 predictions with 3 errors, 2 flags: P(caught = 0, 1, 2) = 0.2, 0.6, 0.2
    assert M.random_flags_p(2, 6, 3, 2) == pytest.approx((0.2, 1.0))
    assert M.random_flags_p(1, 6, 3, 2) == pytest.approx((0.8, 0.8))
    pmf = [math.comb(100, x) * math.comb(78, 70 - x) / math.comb(178, 70) for x in range(71)]
    assert M.random_flags_p(45, 178, 100, 70)[0] == pytest.approx(sum(pmf[45:]))  # cub100: 0.054
    assert M.random_flags_p(3, 10, 0, 4) == (1.0, 1.0)                              # no error: no test
    # the MDE's interval: MDE x sqrt((n - 1) / chi2 quantiles); it holds the MDE and narrows with seeds
    lo, hi = M.mde_interval(0.002015, 6)
    assert lo == pytest.approx(0.002015 * math.sqrt(5 / stats.chi2.ppf(0.975, 5)))
    assert (round(100 * lo, 2), round(100 * hi, 2)) == (0.13, 0.49)                # cifar10-pretrained
    lo30, hi30 = M.mde_interval(0.002015, 30)
    assert lo < lo30 < 0.002015 < hi30 < hi
    assert all(math.isnan(x) for x in M.mde_interval(0.002, 1))
