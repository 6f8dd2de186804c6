"""What both papers' stages share: the split order and each split's inputs, the join on sample id, the
wrong-prediction indicator, the one-pass baselines' table, and one evaluation for every error score
(paper 1, sec. 4.1.2: AUROC and the equal-recall operating point chosen on validation)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from helpers import metrics
from helpers.baselines import baseline_scores
from helpers.experiment import Experiment
from helpers.training import logits_of

SPLIT_ORDER = ("train", "val", "test")


def wrong(table: pd.DataFrame) -> np.ndarray:
    """1 for each wrong prediction of a table with a ``correct`` column, else 0: the label every error
    detector learns and is scored against."""
    return (~table["correct"].astype(bool)).to_numpy().astype(int)


#: image files are decoded once and kept as a tensor when a split fits in this many bytes (cub100's
#: test split at 224x224: 1.75 GB); larger splits are streamed from disk by a DataLoader
IN_MEMORY_BYTES = 4 * 1024 ** 3


def split_inputs(exp: Experiment, split: str):
    """A split's inputs in id order: one normalised tensor for in-memory data and for image files
    that fit in :data:`IN_MEMORY_BYTES` (decoded once per experiment), else a DataLoader."""
    ds = exp.data[split].dataset
    if hasattr(ds, "tensors") and getattr(ds, "nbytes", 0) <= IN_MEMORY_BYTES:
        if not hasattr(ds, "nbytes"):  # already in memory
            return ds.tensors()[0]
        return exp.memo.get(("inputs", exp.data_key, split), lambda: ds.tensors()[0])
    return exp.data.loader(split, batch_size=exp.eval_batch_size, **exp.loader_options)


def with_predictions(exp: Experiment, table: pd.DataFrame) -> pd.DataFrame:
    """Join a per-sample table with the prediction table on id (never on position)."""
    pred = exp.predictions[["id", "label", "prediction", "correct"]]
    out = table.merge(pred, on="id", how="inner", validate="one_to_one")
    if len(out) != len(table):
        raise ValueError(f"{len(table) - len(out)} ids of the table are not in the prediction table")
    return out


def baseline_table(exp: Experiment) -> pd.DataFrame:
    """One-forward-pass error scores of the same predictions: id, split, msp, entropy, energy, max_logit,
    doctor_alpha."""
    pred = exp.predictions
    scores = baseline_scores(logits_of(pred))
    return pd.concat([pred[["id", "split"]], pd.DataFrame(scores)], axis=1)


def evaluate_scores(exp: Experiment, scores: pd.DataFrame, names) -> tuple[dict, dict]:
    """Detection report of each score column on val and test; the threshold is the equal-recall
    point of the validation ROC (paper 1, 4.1.2), applied unchanged to test.

    Returns (reports[name][split] -> dict of metrics, thresholds[name])."""
    df = with_predictions(exp, scores)
    for split in ("val", "test"):  # a degenerate split: one line that says what to do, before any metric
        n_wrong, n = int(wrong(df[df.split == split]).sum()), int((df.split == split).sum())
        if n_wrong in (0, n):
            raise ValueError(f"{exp.name}: the {split} split has {'no wrong' if n_wrong == 0 else 'no correct'} "
                             f"predictions ({n} of {n} {'correct' if n_wrong == 0 else 'wrong'}), so error detection "
                             "cannot be evaluated on it; use a larger split (split.*) or a model that makes mistakes")
    nb = exp.cfg["metrics"]["n_bootstrap"]
    reports, thresholds = {}, {}
    for name in names:
        va = df[df.split == "val"]
        y_va = wrong(va)
        thr = metrics.equal_recall_threshold(y_va, va[name].to_numpy())
        thresholds[name] = float(thr)
        reports[name] = {}
        for split in ("val", "test"):
            d = df[df.split == split]
            reports[name][split] = metrics.detection_report(wrong(d), d[name].to_numpy(),
                                                            thr, n_bootstrap=nb, seed=exp.seed)
    return reports, thresholds


def rounded(reports: dict, nd: int = 6) -> dict:
    return {n: {s: {k: round(float(v), nd) for k, v in r.items()} for s, r in sp.items()} for n, sp in reports.items()}


def rounded_reports(reports: dict, names=None) -> dict:
    """``metrics.json``'s ``detectors`` section for the scores ``names`` (default: all of ``reports``)."""
    return {"detectors": rounded({n: reports[n] for n in (reports if names is None else names)})}


def model_metrics(exp: Experiment, acc: pd.DataFrame, own: dict) -> dict:
    """``metrics.json``'s ``model`` section: name, accuracy, errors and size of each split (the regression's
    split sizes), the accuracy on the model's own training photos where the analysis splits are held
    out (``split.analysis_from_test``), and the loaded checkpoint's path and sha256."""
    return {"model": {"name": exp.cfg["model"],
                      "accuracy": dict(zip(acc["split"], acc["accuracy"].round(4))),
                      **({"model_split_accuracy": {k: round(v, 4) for k, v in own.items()}} if own else {}),
                      "errors": dict(zip(acc["split"], acc["errors"].astype(int))),
                      "n": dict(zip(acc["split"], acc["n"].astype(int))),
                      # the checkpoint file the model came from, by content (none: trained here)
                      **({"checkpoint": exp.loaded_checkpoint} if exp.loaded_checkpoint else {})}}
