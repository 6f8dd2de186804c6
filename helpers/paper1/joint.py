"""Joint (unified) error detector from LCR and the conductance score (paper 1, 4.3; docs/methods.md section 4).

The paper feeds ``[LCR, conductance-detector score]`` to a small "unified" binary
classifier (NN, random forest, LDA or QDA).  The authors trained it on the
conductance detector's IN-SAMPLE training scores, which are optimistic (train AUROC
0.986 vs 0.941 validation): the unified classifier then learns to trust a score that
is less reliable on new data.  Here the training-split conductance scores are
CROSS-FITTED (:func:`out_of_fold_scores`): each training sample is scored by a
detector trained on the other folds.  Validation/test scores come from the detector
trained on the whole training split (the usual cross-fitting convention; the fold
detectors see 1 - 1/k of the data, so their scores are very slightly noisier).

Also: the expert relay of the paper's discussion (flagged inputs go to an expert who
is always right), :func:`relay_accuracy` and :func:`relay_curve`.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis, QuadraticDiscriminantAnalysis
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import StratifiedKFold
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from helpers.paper1.detectors import train_conductance_detector

UNIFIED_CLASSIFIERS = ("nn", "rf", "lda", "qda")


# --------------------------------------------------------------------------- cross-fitting
class OOFResult(NamedTuple):
    """Out-of-fold scores. Unpacks as ``scores, fold_ids = result``.

    ``scores[i]``: wrong-likelihood of training sample i from the detector that was
    trained WITHOUT fold ``fold_ids[i]`` (``fold_ids`` in ``0..k-1``).
    """

    scores: np.ndarray
    fold_ids: np.ndarray


def _predict_wrong(model, X) -> np.ndarray:
    """Wrong-likelihood from a fitted model: ``predict_proba[:, class 1]``, else ``.score(X)``, else ``model(X)``."""
    if hasattr(model, "predict_proba"):
        return unified_score(model, X)
    if hasattr(model, "score"):
        return np.asarray(model.score(X), dtype=np.float64).reshape(-1)
    if callable(model):
        return np.asarray(model(X), dtype=np.float64).reshape(-1)
    raise ValueError(
        f"fit_fn: returned a {type(model).__name__}; it must return an object with predict_proba(X), "
        "score(X) -> wrong-likelihood, or a callable X -> scores"
    )


def fit_predict_out_of_fold(fit_fn: Callable, X, y, *, k: int = 5, seed: int = 0) -> OOFResult:
    """Cross-fitted scores of ``X`` (docs/methods.md section 4: the fix for the authors' in-sample leak).

    ``StratifiedKFold(k, shuffle=True, random_state=seed)``; for each fold f,
    ``model = fit_fn(X[not f], y[not f])`` and the samples of fold f are scored by
    that model only.  ``fit_fn`` returns an estimator with ``predict_proba`` (class-1
    column is used), or an object with ``score(X)`` (e.g. :class:`ConductanceDetector`),
    or a callable ``X -> scores``.  Returns :class:`OOFResult` ``(scores, fold_ids)``.
    """
    X = np.asarray(X.detach().cpu().numpy() if hasattr(X, "detach") else X)
    y = np.asarray(y.detach().cpu().numpy() if hasattr(y, "detach") else y).reshape(-1)
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"X and y: lengths differ ({X.shape[0]} vs {y.shape[0]}); they must be equal")
    k = int(k)
    if k < 2:
        raise ValueError(f"k: {k} is not valid; cross-fitting needs k >= 2 folds")
    classes, counts = np.unique(y, return_counts=True)
    if counts.min() < k:
        raise ValueError(
            f"k: {k} folds need at least {k} samples of each class; y has counts "
            f"{dict(zip(classes.tolist(), counts.tolist()))}"
        )
    scores = np.full(X.shape[0], np.nan)
    fold_ids = np.full(X.shape[0], -1, dtype=np.int64)
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for f, (fit_idx, held_idx) in enumerate(skf.split(np.zeros(len(y)), y)):
        model = fit_fn(X[fit_idx], y[fit_idx])
        s = _predict_wrong(model, X[held_idx])
        if s.shape[0] != held_idx.shape[0]:
            raise ValueError(f"fit_fn: fold {f} model returned {s.shape[0]} scores for {held_idx.shape[0]} samples")
        scores[held_idx] = s
        fold_ids[held_idx] = f
    return OOFResult(scores=scores, fold_ids=fold_ids)


def out_of_fold_scores(X_train, y_train, X_val, y_val, *, k: int = 5, seed: int = 0, **detector_kwargs) -> OOFResult:
    """Cross-fitted conductance-detector scores of the TRAINING split (paper 1, 4.3; docs/methods.md section 4).

    Each fold's detector is :func:`train_conductance_detector` on the other k-1 folds,
    with epochs chosen on the real validation split ``(X_val, y_val)`` (never on the
    held-out fold), detector seed ``seed``; ``detector_kwargs`` (epochs, patience, ...)
    are passed on.  Returns :class:`OOFResult` ``(scores, fold_ids)``.
    """
    def fit_fn(X_fit, y_fit):
        return train_conductance_detector(X_fit, y_fit, X_val, y_val, seed=seed, **detector_kwargs)

    return fit_predict_out_of_fold(fit_fn, X_train, y_train, k=k, seed=seed)


class CrossFit(NamedTuple):
    """Cross-fitted detector scores of a whole pool (:func:`cross_fitted_detector`).

    ``scores[i]`` comes from the detector trained without fold ``fold_ids[i]``; ``n_train[f]`` is the
    number of photos fold f's detector learned from, ``train_auroc[f]`` its AUROC on them (in sample)."""

    scores: np.ndarray
    fold_ids: np.ndarray
    n_train: np.ndarray
    train_auroc: np.ndarray


def cross_fitted_detector(X, y, *, k: int = 5, seed: int = 0, inner_val: float = 0.2, fraction: float = 1.0,
                          **detector_kwargs) -> CrossFit:
    """The conductance detector (paper 1, 4.1.2) cross-fitted over a whole pool of held-out photos.

    For a pool too small to split once into a training and a validation split (``cub100``: 1,451
    training photos for 512 features, train AUROC 0.9995 against 0.79 on validation), every photo of
    the pool is scored by a detector trained on the other ``k - 1`` folds (``StratifiedKFold``, seeded).
    Inside those folds a stratified ``inner_val`` share picks the epoch (as the validation split does
    in the paper's protocol), never the scored fold.  ``fraction`` < 1 trains each fold's detector on a
    stratified, seeded subsample of its training photos (the points of a learning curve); the scored
    fold and the epoch-picking share stay the same.  Deviation from paper 1, which trains one detector
    on its training split: here no photo is wasted and none is scored by a detector that saw it.
    """
    from sklearn.model_selection import train_test_split

    from helpers.metrics import auroc

    if not 0 < float(fraction) <= 1:
        raise ValueError(f"fraction: {fraction!r} is not valid; valid: a share in (0, 1]")
    if not 0 < float(inner_val) < 1:
        raise ValueError(f"inner_val: {inner_val!r} is not valid; valid: a share in (0, 1)")
    n_train, train_auc = [], []

    def fit_fn(X_fit, y_fit):
        idx = np.arange(len(y_fit))
        tr, va = train_test_split(idx, test_size=float(inner_val), stratify=y_fit, random_state=seed)
        if fraction < 1:
            tr, _ = train_test_split(tr, train_size=float(fraction), stratify=y_fit[tr], random_state=seed)
        det = train_conductance_detector(X_fit[tr], y_fit[tr], X_fit[va], y_fit[va], seed=seed, **detector_kwargs)
        n_train.append(len(tr))
        train_auc.append(auroc(y_fit[tr], det.score(X_fit[tr])))
        return det

    res = fit_predict_out_of_fold(fit_fn, X, y, k=k, seed=seed)
    return CrossFit(res.scores, res.fold_ids, np.array(n_train), np.array(train_auc))


# --------------------------------------------------------------------------- unified classifiers
def make_unified_classifier(name: str, seed: int = 0):
    """Unfitted unified classifier of paper 1, 4.3 (features: LCR, conductance score).

    ``nn``: StandardScaler + ``MLPClassifier((10, 10), relu)``; the paper's net has a
    Dropout layer, which scikit-learn's MLP lacks: L2 (``alpha=1e-3``) regularises
    instead.  ``rf``: ``RandomForestClassifier(100 trees, max_depth=10)``.  ``lda`` /
    ``qda``: StandardScaler + Linear / Quadratic Discriminant Analysis (scaling does
    not change their decisions; it only helps numerically); QDA with ``reg_param=1e-3``
    (deviation: a tiny covariance shrinkage, so that a feature constant within one
    class, e.g. LCR = 0 for all correct predictions, does not make it undefined).
    """
    if name == "nn":
        return Pipeline([
            ("scale", StandardScaler()),
            ("clf", MLPClassifier(hidden_layer_sizes=(10, 10), activation="relu", alpha=1e-3,
                                  learning_rate_init=1e-3, max_iter=500, random_state=seed)),
        ])
    if name == "rf":
        return RandomForestClassifier(n_estimators=100, max_depth=10, random_state=seed, n_jobs=1)
    if name == "lda":
        return Pipeline([("scale", StandardScaler()), ("clf", LinearDiscriminantAnalysis())])
    if name == "qda":
        # reg_param: a 1e-3 shrinkage of each class covariance towards the identity keeps QDA defined
        # when a feature is constant within a class (e.g. LCR = 0 for every correct prediction)
        return Pipeline([("scale", StandardScaler()), ("clf", QuadraticDiscriminantAnalysis(reg_param=1e-3))])
    raise ValueError(f"name: {name!r} is not a unified classifier; valid: {', '.join(UNIFIED_CLASSIFIERS)}")


def _features(X, name: str = "X") -> np.ndarray:
    a = np.asarray(X.detach().cpu().numpy() if hasattr(X, "detach") else X, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (n_samples, n_features), got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: contains non-finite values (nan/inf); all must be finite")
    return a


def fit_unified(name: str, X_train, y_wrong_train, seed: int = 0):
    """Fit the unified classifier ``name`` on ``X_train`` (columns e.g. [LCR, OOF conductance score]).

    ``y_wrong_train``: 1 = wrong prediction.  Returns the fitted scikit-learn estimator.
    """
    est = make_unified_classifier(name, seed=seed)
    X = _features(X_train, "X_train")
    y = np.asarray(y_wrong_train).reshape(-1)
    if y.shape[0] != X.shape[0]:
        raise ValueError(f"y_wrong_train: length {y.shape[0]} differs from the {X.shape[0]} rows of X_train")
    uniq = np.unique(y)
    if not np.isin(uniq, [0, 1]).all() or uniq.size < 2:
        raise ValueError(f"y_wrong_train: classes {uniq.tolist()} are not valid; "
                         "both 0 (correct) and 1 (wrong) are needed")
    return est.fit(X, y.astype(int))


def unified_score(est, X) -> np.ndarray:
    """Wrong-likelihood ``predict_proba(X)[:, column of class 1]`` of a fitted unified classifier (paper 1, 4.3)."""
    classes = list(getattr(est, "classes_", [0, 1]))
    if 1 not in classes:
        raise ValueError(f"est: classes {classes} do not include 1 (wrong); fit it on y_wrong with both classes")
    return np.asarray(est.predict_proba(_features(X))[:, classes.index(1)], dtype=np.float64)


# --------------------------------------------------------------------------- expert relay
def _bool_1d(a, name: str) -> np.ndarray:
    a = np.asarray(a.detach().cpu().numpy() if hasattr(a, "detach") else a).reshape(-1)
    if a.dtype != bool:
        bad = np.setdiff1d(np.unique(a), [0, 1])
        if bad.size:
            raise ValueError(f"{name}: values {bad[:5].tolist()} are not valid; a boolean (or 0/1) array is needed")
        a = a.astype(bool)
    return a


def relay_accuracy(correct, flagged) -> dict:
    """Accuracy when flagged inputs are relayed to an expert who is always right (paper 1, 4.3 / 5).

    ``correct``: the classifier's prediction is right; ``flagged``: the detector
    discards it.  accuracy = (#correct and kept + #flagged) / n;
    ``discarded_fraction`` = #flagged / n; ``n_expert`` = #flagged.
    (Paper, ImageNet-100: 88.9% -> 98.4%.)
    """
    c = _bool_1d(correct, "correct")
    f = _bool_1d(flagged, "flagged")
    if c.shape[0] != f.shape[0]:
        raise ValueError(f"correct and flagged: lengths differ ({c.shape[0]} vs {f.shape[0]}); they must be equal")
    if c.shape[0] == 0:
        raise ValueError("correct: is empty; at least one sample is needed")
    n = c.shape[0]
    n_exp = int(f.sum())
    return {
        "accuracy": float(((c & ~f).sum() + n_exp) / n),
        "discarded_fraction": float(n_exp / n),
        "n_expert": n_exp,
    }


def relay_curve(correct, score) -> tuple[np.ndarray, np.ndarray]:
    """Relay accuracy as a function of the discarded fraction (risk-coverage style; paper 1, 5).

    Inputs with ``score >= t`` are discarded, for ``t`` running over every distinct
    score from the highest down (tied scores are discarded together), preceded by the
    point "nothing discarded".  Returns ``(discarded_fraction, accuracy)``, both
    increasing from ``(0, base accuracy)`` to ``(1, 1)``; each point equals
    ``relay_accuracy(correct, score >= t)``.
    """
    c = _bool_1d(correct, "correct")
    s = np.asarray(score.detach().cpu().numpy() if hasattr(score, "detach") else score, dtype=np.float64).reshape(-1)
    if c.shape[0] != s.shape[0]:
        raise ValueError(f"correct and score: lengths differ ({c.shape[0]} vs {s.shape[0]}); they must be equal")
    if c.shape[0] == 0:
        raise ValueError("correct: is empty; at least one sample is needed")
    if not np.isfinite(s).all():
        raise ValueError("score: contains non-finite values (nan/inf); all must be finite")
    n = c.shape[0]
    order = np.argsort(-s, kind="stable")
    s_desc, c_desc = s[order], c[order]
    last_of_group = np.concatenate([s_desc[1:] != s_desc[:-1], [True]])
    n_disc = np.arange(1, n + 1)[last_of_group]
    correct_discarded = np.cumsum(c_desc)[last_of_group]
    kept_correct = c.sum() - correct_discarded
    disc = np.concatenate([[0.0], n_disc / n])
    acc = np.concatenate([[c.sum() / n], (kept_correct + n_disc) / n])
    return disc, acc
