"""Error-detection metrics: AUROC (with bootstrap CI), AUPR, FPR@95TPR, AURC, recalls, thresholds; and the
comparisons the write-ups state as verdicts (a paired AUROC difference, a sign test, random flags, the
interval of a minimum detectable effect).

Conventions (used by every function here; docs/methods.md sections 2, 4, 5):

``y_wrong``
    0/1 array, 1 = the classifier's prediction is WRONG (the positive class).
``score``
    likelihood of being wrong (higher = more likely wrong).  A sample is
    *flagged* (discarded / sent to an expert) iff ``score >= threshold``.
correct recall
    fraction of correct predictions NOT flagged ("recall of class 0", paper 1,
    section 4.1.2).
wrong recall
    fraction of wrong predictions flagged ("recall of class 1").  The original
    CIFAR report swapped the two labels (docs/methods.md section 9); here they are
    never swapped: ``recalls_at`` always returns ``(correct_recall, wrong_recall)``.

Threshold-free metrics use scikit-learn (``roc_auc_score``, ``roc_curve``,
``average_precision_score``); AURC (Geifman et al. 2019) is not in scikit-learn and
is computed here from the risk-coverage curve.
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

REPORT_KEYS = (
    "auroc",
    "auroc_ci_low",
    "auroc_ci_high",
    "aupr_error",
    "fpr_at_95_tpr",
    "aurc",
    "correct_recall",
    "wrong_recall",
)


# --------------------------------------------------------------------------- validation
def _as_1d(x, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.ndim == 2 and 1 in a.shape:
        a = a.reshape(-1)
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {a.shape}")
    return a


def _check(y_wrong, score, *, need_both: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert ``(y_wrong, score)``; return ``(int8 labels, float64 scores)``."""
    y = _as_1d(y_wrong, "y_wrong")
    s = _as_1d(score, "score")
    if y.shape[0] != s.shape[0]:
        raise ValueError(
            f"y_wrong and score: lengths differ ({y.shape[0]} vs {s.shape[0]}); they must be equal"
        )
    if y.shape[0] == 0:
        raise ValueError("y_wrong: is empty; at least one sample is needed")
    uniq = np.unique(y)
    if not np.isin(uniq, [0, 1]).all():
        bad = [v for v in uniq.tolist() if v not in (0, 1)][:5]
        raise ValueError(f"y_wrong: values {bad} are not valid; valid values are 0 (correct) and 1 (wrong)")
    try:
        s = s.astype(np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"score: could not convert to float ({e}); a numeric array is needed") from None
    if not np.isfinite(s).all():
        raise ValueError(f"score: {int((~np.isfinite(s)).sum())} non-finite values (nan/inf); all must be finite")
    y = y.astype(np.int8)
    if need_both and uniq.size < 2:
        raise ValueError(
            f"y_wrong: contains only the class {int(uniq[0])}; this metric needs both "
            "correct (0) and wrong (1) predictions"
        )
    return y, s


def _check_target(target, name: str = "target") -> float:
    t = float(target)
    if not (0.0 < t <= 1.0):
        raise ValueError(f"{name}: {target!r} is not valid; it must lie in (0, 1]")
    return t


def _roc_counts(y: np.ndarray, s: np.ndarray):
    """sklearn ``roc_curve`` (all thresholds) plus exact integer FP/TP counts.

    The first threshold of sklearn (``inf``: nothing flagged) is replaced by the
    smallest float above ``max(score)`` so that thresholds stay finite (JSON-able)
    and ``score >= threshold`` still flags nothing.
    """
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    n_pos = int(y.sum())
    n_neg = int(y.shape[0] - n_pos)
    fp = np.rint(fpr * n_neg).astype(np.int64)
    tp = np.rint(tpr * n_pos).astype(np.int64)
    thr = thr.astype(np.float64).copy()
    if not np.isfinite(thr[0]):
        thr[0] = np.nextafter(s.max(), np.inf)
    return fp, tp, thr, n_neg, n_pos


# --------------------------------------------------------------------------- threshold-free metrics
def auroc(y_wrong, score) -> float:
    """Area under the ROC curve of error detection (paper 1, section 4.1.2; docs/methods.md section 2).

    Positives are wrong predictions (``y_wrong == 1``). 1 = perfect, 0.5 = chance,
    0 = perfectly reversed. Uses ``sklearn.metrics.roc_auc_score``; ties count 1/2.
    """
    y, s = _check(y_wrong, score)
    return float(roc_auc_score(y, s))


def _auroc_weighted(neg_sorted: np.ndarray, pos: np.ndarray, c_neg: np.ndarray, c_pos: np.ndarray) -> np.ndarray:
    """AUROC of many bootstrap resamples given multiplicity matrices (Mann-Whitney form).

    ``c_neg`` (B, n_neg) counts each negative (in ``neg_sorted`` order) in each
    resample; ``c_pos`` (B, n_pos) counts each positive.  AUROC_b =
    sum_ij c_pos[b,i] c_neg[b,j] (1[s_i > s_j] + 1/2 1[s_i = s_j]) / (N_pos N_neg).
    """
    cum = np.concatenate([np.zeros((c_neg.shape[0], 1)), np.cumsum(c_neg, axis=1)], axis=1)
    lo = np.searchsorted(neg_sorted, pos, side="left")  # negatives strictly below
    hi = np.searchsorted(neg_sorted, pos, side="right")  # negatives <= pos
    below = cum[:, lo]
    ties = cum[:, hi] - below
    num = np.einsum("bi,bi->b", c_pos, below + 0.5 * ties)
    return num / (c_pos.sum(axis=1) * c_neg.sum(axis=1))


def _bootstrap_counts(rng: np.random.Generator, n: int, n_bootstrap: int) -> np.ndarray:
    idx = rng.integers(0, n, size=(n_bootstrap, n))
    flat = idx + (np.arange(n_bootstrap)[:, None] * n)
    return np.bincount(flat.ravel(), minlength=n_bootstrap * n).reshape(n_bootstrap, n).astype(np.float64)


def auroc_ci(y_wrong, score, n_bootstrap: int = 1000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap ``(1 - alpha)`` confidence interval of the AUROC.

    Stratified bootstrap: correct and wrong predictions are resampled separately
    (with replacement, keeping their counts), so no resample is one-class.  The
    AUROC of all resamples is computed at once from resample multiplicities (rank /
    Mann-Whitney form, ties 1/2: identical to ``roc_auc_score`` on the resample).
    Deterministic under ``seed``.  Reported beside the paper's validation AUROCs
    (paper 1, Tables 4-6 give point values only; docs/methods.md section 4).
    """
    y, s = _check(y_wrong, score)
    n_bootstrap = int(n_bootstrap)
    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap: {n_bootstrap} is not valid; it must be a positive integer")
    if not (0.0 < float(alpha) < 1.0):
        raise ValueError(f"alpha: {alpha!r} is not valid; it must lie in (0, 1)")
    rng = np.random.default_rng(seed)
    neg = np.sort(s[y == 0])
    pos = s[y == 1]
    # Process in chunks to bound memory (B x n matrices).
    chunk = max(1, int(2e7 // max(1, neg.size + pos.size)))
    vals = []
    done = 0
    while done < n_bootstrap:
        b = min(chunk, n_bootstrap - done)
        c_neg = _bootstrap_counts(rng, neg.size, b)
        c_pos = _bootstrap_counts(rng, pos.size, b)
        vals.append(_auroc_weighted(neg, pos, c_neg, c_pos))
        done += b
    v = np.concatenate(vals)
    low, high = np.quantile(v, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


def aupr_error(y_wrong, score) -> float:
    """Area under the precision-recall curve with ERRORS as positives (docs/methods.md section 5).

    ``sklearn.metrics.average_precision_score``; a perfect score gives 1, a random
    one gives about the error rate.  Needs at least one wrong prediction.
    """
    y, s = _check(y_wrong, score, need_both=False)
    if y.sum() == 0:
        raise ValueError("y_wrong: contains no wrong predictions (1); AUPR of errors needs at least one")
    return float(average_precision_score(y, s))


def fpr_at_95_tpr(y_wrong, score) -> float:
    """Fraction of CORRECT predictions flagged at the first threshold flagging >= 95% of wrong ones.

    From ``sklearn.metrics.roc_curve`` (all thresholds): the smallest FPR whose TPR
    (wrong recall) is at least 0.95 (docs/methods.md section 5).  Lower is better.
    """
    y, s = _check(y_wrong, score)
    fp, tp, _thr, n_neg, n_pos = _roc_counts(y, s)
    ok = tp >= np.ceil(0.95 * n_pos - 1e-9)
    return float(fp[ok].min() / n_neg)


def risk_coverage_curve(y_wrong, score) -> tuple[np.ndarray, np.ndarray]:
    """Risk-coverage curve of selective prediction (Geifman et al. 2019; docs/methods.md section 5).

    Samples are accepted in order of increasing ``score`` (most confident first).
    For ``k = 1..n`` accepted samples, ``coverage = k / n`` and ``risk`` = error
    rate among the accepted.  Tied scores have no defined order; each tie group
    contributes its mean error rate per accepted sample, i.e. the risk is the
    EXPECTATION over random tie-breaking (so a constant score gives a flat curve at
    the overall error rate).  Returns ``(coverage, risk)``, both of length n.
    """
    y, s = _check(y_wrong, score, need_both=False)
    order = np.argsort(s, kind="stable")
    s_sorted = s[order]
    y_sorted = y[order].astype(np.float64)
    # group ids of ties, then replace each label by its tie-group mean
    new_group = np.concatenate([[True], s_sorted[1:] != s_sorted[:-1]])
    gid = np.cumsum(new_group) - 1
    g_sum = np.bincount(gid, weights=y_sorted)
    g_cnt = np.bincount(gid)
    y_exp = (g_sum / g_cnt)[gid]
    k = np.arange(1, y.shape[0] + 1, dtype=np.float64)
    risk = np.cumsum(y_exp) / k
    coverage = k / y.shape[0]
    return coverage, risk


def aurc(y_wrong, score) -> float:
    """Area under the risk-coverage curve, RAW (Geifman et al. 2019): mean risk over coverages k/n.

    This is NOT zero for a perfect score: a perfect ranking still has a positive
    AURC (the "optimal" AURC, which depends only on the error rate r, roughly
    ``r + (1 - r) ln(1 - r)``).  Use :func:`excess_aurc` for the E-AURC, which is 0
    for a perfect score.  Lower is better; a constant score gives the error rate.
    """
    _cov, risk = risk_coverage_curve(y_wrong, score)
    return float(risk.mean())


def optimal_aurc(y_wrong) -> float:
    """AURC of a perfect ranking (all correct accepted before any wrong; Geifman et al. 2019;
    docs/methods.md section 5)."""
    y = _as_1d(y_wrong, "y_wrong")
    return aurc(y, y.astype(np.float64))


def excess_aurc(y_wrong, score) -> float:
    """E-AURC = AURC - optimal AURC (Geifman et al. 2019); 0 for a perfect score, >= 0 otherwise."""
    y, s = _check(y_wrong, score, need_both=False)
    return aurc(y, s) - aurc(y, y.astype(np.float64))


# --------------------------------------------------------------------------- operating points
def recalls_at(y_wrong, score, threshold: float) -> tuple[float, float]:
    """``(correct_recall, wrong_recall)`` when samples with ``score >= threshold`` are flagged wrong.

    correct recall = fraction of correct predictions NOT flagged (recall of class 0);
    wrong recall = fraction of wrong predictions flagged (recall of class 1)
    (paper 1, section 4.1.2 and Tables 4-6; never swapped, cf. docs/methods.md section 9).
    """
    y, s = _check(y_wrong, score)
    t = float(threshold)
    if np.isnan(t):
        raise ValueError("threshold: nan is not valid; a number is needed")
    flagged = s >= t
    correct_recall = float((~flagged[y == 0]).mean())
    wrong_recall = float(flagged[y == 1].mean())
    return correct_recall, wrong_recall


def equal_recall_threshold(y_wrong, score) -> float:
    """Threshold where correct recall ~= wrong recall on this data (paper 1, 4.1.2; docs/methods.md section 2).

    The authors chose this point on the validation ROC by hand and hard-coded it;
    here it is computed from ``sklearn.metrics.roc_curve`` (every distinct score a
    candidate) by minimising ``|tpr - (1 - fpr)|`` (first minimum, i.e. the
    highest such threshold).  Apply it unchanged to the test split.
    """
    y, s = _check(y_wrong, score)
    fp, tp, thr, n_neg, n_pos = _roc_counts(y, s)
    gap = np.abs(tp / n_pos - (1.0 - fp / n_neg))
    return float(thr[int(np.argmin(gap))])


def threshold_for_correct_recall(y_wrong, score, target: float) -> float:
    """Threshold with correct recall >= ``target`` on this data and the largest wrong recall.

    The paper's "high correct-recall" operating point (98.2% / 50.4% on the
    ImageNet-100 validation split, section 4.3).  Among thresholds with maximal
    wrong recall, the one with the highest correct recall is returned.  ``target``
    must lie in (0, 1].
    """
    t = _check_target(target)
    y, s = _check(y_wrong, score)
    fp, tp, thr, n_neg, n_pos = _roc_counts(y, s)
    cr = (n_neg - fp) / n_neg
    ok = np.flatnonzero(cr >= t - 1e-12)  # index 0 (nothing flagged) always qualifies
    best_tp = tp[ok].max()
    cand = ok[tp[ok] == best_tp]
    return float(thr[cand[np.argmin(fp[cand])]])


def threshold_for_wrong_recall(y_wrong, score, target: float) -> float:
    """Threshold with wrong recall >= ``target`` on this data and the highest correct recall.

    The paper's "minimise residual wrong predictions" operating point (section 4.3:
    43.0% / 99.5% on the test split).  Among thresholds with maximal correct recall,
    the one with the highest wrong recall is returned.  ``target`` must lie in (0, 1].
    """
    t = _check_target(target)
    y, s = _check(y_wrong, score)
    fp, tp, thr, n_neg, n_pos = _roc_counts(y, s)
    wr = tp / n_pos
    ok = np.flatnonzero(wr >= t - 1e-12)  # last index (everything flagged) always qualifies
    best_fp = fp[ok].min()
    cand = ok[fp[ok] == best_fp]
    return float(thr[cand[np.argmax(tp[cand])]])


# --------------------------------------------------------------------------- reports
def detection_report(y_wrong, score, threshold: float, n_bootstrap: int = 1000, seed: int = 0) -> dict:
    """All detection metrics of one detector on one split, as plain floats.

    Keys (exactly): auroc, auroc_ci_low, auroc_ci_high (95% stratified percentile
    bootstrap), aupr_error, fpr_at_95_tpr, aurc (RAW Geifman AURC; see
    :func:`excess_aurc` for E-AURC), correct_recall, wrong_recall (at ``score >=
    threshold``).  Written to metrics.json as ``detectors.<name>.<split>.<metric>``
    (paper 1, Tables 4-6; docs/methods.md sections 2, 4, 5).
    """
    y, s = _check(y_wrong, score)
    low, high = auroc_ci(y, s, n_bootstrap=n_bootstrap, seed=seed)
    cr, wr = recalls_at(y, s, threshold)
    rep = {
        "auroc": auroc(y, s),
        "auroc_ci_low": low,
        "auroc_ci_high": high,
        "aupr_error": aupr_error(y, s),
        "fpr_at_95_tpr": fpr_at_95_tpr(y, s),
        "aurc": aurc(y, s),
        "correct_recall": cr,
        "wrong_recall": wr,
    }
    return {k: float(rep[k]) for k in REPORT_KEYS}


#: the formatted validation AUROC of :func:`results_table`: the interval resamples the validation images of
#: one trained model, not the training seed
VAL_AUROC_COLUMN = "val AUROC [95 % CI over val images]"


def results_table(rows: Mapping[str, Mapping[str, Mapping[str, float]]]) -> pd.DataFrame:
    """Paper 1 Table 4-6 layout: one row per setting (conductance, LCR, joint NN, baselines...).

    ``rows`` maps a setting name to ``{"val": report, "test": report}`` (reports from
    :func:`detection_report`).  Columns: numeric ``auroc``, ``ci_low``, ``ci_high``
    (validation AUROC and its CI), :data:`VAL_AUROC_COLUMN` (formatted ``"0.927 [0.915,
    0.938]"``, its header naming what the interval resamples), ``val correct recall``,
    ``val wrong recall``, ``test correct recall``, ``test wrong recall``.
    """
    if not isinstance(rows, Mapping):
        raise ValueError(f"rows: {type(rows).__name__} is not valid; "
                         "a dict name -> {'val': report, 'test': report} is needed")
    records = {}
    for name, splits in rows.items():
        for split in ("val", "test"):
            if split not in splits:
                raise ValueError(f"rows[{name!r}]: missing the {split!r} report; keys needed: 'val', 'test'")
        v, t = splits["val"], splits["test"]
        records[name] = {
            "auroc": float(v["auroc"]),
            "ci_low": float(v["auroc_ci_low"]),
            "ci_high": float(v["auroc_ci_high"]),
            VAL_AUROC_COLUMN: f"{v['auroc']:.3f} [{v['auroc_ci_low']:.3f}, {v['auroc_ci_high']:.3f}]",
            "val correct recall": float(v["correct_recall"]),
            "val wrong recall": float(v["wrong_recall"]),
            "test correct recall": float(t["correct_recall"]),
            "test wrong recall": float(t["wrong_recall"]),
        }
    cols = ["auroc", "ci_low", "ci_high", VAL_AUROC_COLUMN, "val correct recall", "val wrong recall",
            "test correct recall", "test wrong recall"]
    df = pd.DataFrame.from_dict(records, orient="index", columns=cols)
    df.index.name = "setting"
    return df


# --------------------------------------------------------------------------- comparisons (beyond the papers)
def paired_auroc_difference(y_wrong, score_a, score_b, n_bootstrap: int = 1000, alpha: float = 0.05,
                            seed: int = 0) -> dict:
    """AUROC(a) - AUROC(b) of two scores of the SAME predictions, with a paired bootstrap.

    Each resample draws the predictions once (stratified, as :func:`auroc_ci`) and scores both
    detectors on it, so the interval is that of the difference, narrower than two overlapping
    intervals suggest when the scores are correlated.  Keys: ``difference``, ``ci_low``,
    ``ci_high`` (percentile, ``1 - alpha``) and ``p_value``: the two-sided bootstrap p-value of "no
    difference", twice the smaller share of resampled differences on either side of 0, counted as
    (k + 1) / (B + 1) so that it is never 0 (Davison & Hinkley 1997, sec. 4.4).  DeLong's test would do
    the same job; neither SciPy nor scikit-learn has it, and this reuses the bootstrap of the intervals."""
    y, a = _check(y_wrong, score_a)
    _, b = _check(y_wrong, score_b)
    n_bootstrap = int(n_bootstrap)
    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap: {n_bootstrap} is not valid; it must be a positive integer")
    rng = np.random.default_rng(seed)
    neg, pos = y == 0, y == 1
    order_a, order_b = np.argsort(a[neg], kind="stable"), np.argsort(b[neg], kind="stable")
    chunk = max(1, int(2e7 // max(1, y.size)))
    diffs, done = [], 0
    while done < n_bootstrap:
        k = min(chunk, n_bootstrap - done)
        c_neg, c_pos = _bootstrap_counts(rng, int(neg.sum()), k), _bootstrap_counts(rng, int(pos.sum()), k)
        diffs.append(_auroc_weighted(a[neg][order_a], a[pos], c_neg[:, order_a], c_pos)
                     - _auroc_weighted(b[neg][order_b], b[pos], c_neg[:, order_b], c_pos))
        done += k
    d = np.concatenate(diffs)
    low, high = np.quantile(d, [alpha / 2.0, 1.0 - alpha / 2.0])
    tail = min(int((d <= 0).sum()), int((d >= 0).sum()))
    return {"difference": auroc(y, a) - auroc(y, b), "ci_low": float(low), "ci_high": float(high),
            "p_value": float(min(1.0, 2.0 * (tail + 1) / (n_bootstrap + 1)))}


def sign_test(wins: int, losses: int) -> float:
    """Two-sided sign test of wins against losses, ties left out (``scipy.stats.binomtest`` at 1/2);
    1.0 when there is neither."""
    from scipy.stats import binomtest

    wins, losses = int(wins), int(losses)
    return 1.0 if wins + losses == 0 else float(binomtest(wins, wins + losses, 0.5).pvalue)


def random_flags_p(caught: int, n: int, errors: int, flagged: int) -> tuple[float, float]:
    """One-sided p-values of a rule that catches ``caught`` errors with ``flagged`` flags among ``n``
    predictions holding ``errors`` errors, against flags drawn at random from the same ``n``
    (hypergeometric, ``scipy.stats.hypergeom``): (P(random catches >= caught), P(random catches <=
    caught)).  A small first value: the rule catches more than chance; a small second: fewer."""
    from scipy.stats import hypergeom

    n, errors, flagged, caught = int(n), int(errors), int(flagged), int(caught)
    if not (n and errors and flagged):
        return 1.0, 1.0
    dist = hypergeom(n, errors, flagged)
    return float(dist.sf(caught - 1)), float(dist.cdf(caught))


def mde_interval(mde: float, n_seeds: int, level: float = 0.95) -> tuple[float, float]:
    """Interval of a minimum detectable effect computed from the SD of ``n_seeds`` paired differences.

    The MDE is a fixed multiple of that SD, and an SD from n values is itself uncertain:
    (n - 1) s^2 / sigma^2 follows a chi-square law with n - 1 degrees of freedom
    (``scipy.stats.chi2``), so the MDE's ``level`` interval is MDE x sqrt((n - 1) / chi2 quantiles).
    NaN with fewer than two seeds."""
    from scipy.stats import chi2

    n = int(n_seeds)
    if n < 2 or not math.isfinite(float(mde)):
        return float("nan"), float("nan")
    q = (1.0 - level) / 2.0
    df = n - 1
    return (float(mde) * math.sqrt(df / chi2.ppf(1.0 - q, df)), float(mde) * math.sqrt(df / chi2.ppf(q, df)))
