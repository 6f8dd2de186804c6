"""Regression of a run's headline numbers against the committed run, with stated tolerances.

Float results of MKL / oneDNN kernels differ between CPU families and thread counts in the last
bits; training and early stopping amplify that into a few flipped predictions.  So the committed
numbers are compared within a tolerance, never as text: each notebook's last (``NBVAL_CHECK_OUTPUT``)
cell calls :func:`check` on the metrics it wrote, prints one stable line, and fails (an
exception, so nbval fails) when a headline number moved by more than its tolerance.

Tolerances (absolute) come from measurement (README, "Regression tolerance"): the largest move
seen on the default profile between 1 and 2 threads and between AVX2 and SSE4.1 kernels, times
about 1.5-2 for the detectors, with a floor of a few flipped predictions where almost nothing
moved (CFE statistics, debugging accuracies).  A flipped prediction moves an accuracy by 1/450 on the default profile's test
split and a recall of errors by 1/52; recalls at a threshold chosen on validation move most,
because the threshold itself moves.
"""
from __future__ import annotations

import fnmatch
import json
import math
from pathlib import Path

from .profiles import REPO_ROOT

#: (pattern on the dotted metrics key, absolute tolerance); the first matching pattern wins.
#: Keys that match no pattern are not headline numbers and are not compared.
TOLERANCES: list[tuple[str, float]] = [
    # measured largest move (README, "Regression tolerance"): 1 vs 2 threads, AVX2 vs SSE4.1 kernels
    ("model.accuracy.*", 0.02),                           # 0.005
    ("detectors.*.auroc", 0.04),                          # 0.022
    ("detectors.*.correct_recall", 0.12),                 # 0.075 (a shifted equal-recall threshold)
    ("detectors.*.wrong_recall", 0.15),                   # 0.083 (4 of the 52 test errors)
    ("lcr.sprt.auroc", 0.03),                             # 0.006
    ("relay.*.accuracy", 0.04),                           # 0.020
    ("cfe.generators.mean_active_filters", 0.1),          # 0.017
    ("cfe.generators.masked_agreement", 0.01),            # 0.001
    ("cfe.table1.*.errors_detected_fraction", 0.12),      # 0.062
    ("cfe.disable.*", 0.06),                              # 0.027
    ("debugging.*.test_accuracy", 0.01),                  # 0.002 (one test digit is 0.0022)
    ("debugging.*.test_accuracy_mean", 0.01),             # 0.002
    ("debugging.difference.mean", 0.01),                  # 0.004
]


def flatten(d: dict, prefix: str = "") -> dict[str, float]:
    """Nested metrics -> {dotted key: number} (non-numbers are dropped)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = float(v)
    return out


def tolerance_of(key: str, tolerances=TOLERANCES) -> float | None:
    for pattern, tol in tolerances:
        if fnmatch.fnmatchcase(key, pattern):
            return tol
    return None


def compare(reference: dict, actual: dict, sections: list[str], tolerances=TOLERANCES) -> tuple[int, list[str]]:
    """Compare the headline numbers under ``sections`` (dotted prefixes, wildcards allowed, e.g.
    ``"detectors.msp"`` or ``"detectors.joint_*"``).

    Returns (how many numbers were compared, one message per failure): a number outside its
    tolerance, or a headline key present in one run and missing in the other."""
    ref, act = flatten(reference), flatten(actual)
    keys = sorted({k for k in (*ref, *act)
                   if any(fnmatch.fnmatchcase(k, s) or fnmatch.fnmatchcase(k, s + ".*") for s in sections)
                   and tolerance_of(k, tolerances) is not None})
    failures = []
    for k in keys:
        tol = tolerance_of(k, tolerances)
        if k not in ref or k not in act:
            failures.append(f"{k}: {'missing in this run' if k not in act else 'not in the committed run'}")
            continue
        a, r = act[k], ref[k]
        if math.isnan(a) and math.isnan(r):
            continue
        if not abs(a - r) <= tol:
            failures.append(f"{k}: {a:.4f} vs committed {r:.4f} (tolerance {tol})")
    return len(keys), failures


def committed_metrics(profile: str) -> dict | None:
    """The committed run's metrics of a profile (figures/<profile>/metrics.json in the repository)."""
    path = REPO_ROOT / "figures" / profile / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else None


def check(exp, sections: list[str]) -> str:
    """Compare this run's metrics (exp.metrics()) with the committed run's; raise AssertionError listing
    every headline number out of tolerance; return one line that does not depend on the numbers."""
    from .profiles import load_profile, profile_path

    ref = committed_metrics(exp.name)
    if ref is None:
        return f"{exp.name}: no committed run to compare with"
    try:
        same = exp.cfg == load_profile(profile_path(exp.name))
    except Exception:  # a profile given as a dict or a path outside params/
        same = False
    if not same:
        return f"{exp.name}: settings differ from the committed profile (overrides?); not compared"
    n, failures = compare(ref, exp.metrics(), sections)
    if failures:
        raise AssertionError(f"{len(failures)} of {n} headline numbers are missing or differ from the committed run "
                             f"(figures/{exp.name}/metrics.json) by more than their tolerance:\n  "
                             + "\n  ".join(failures))
    return f"{', '.join(sections)}: {n} headline numbers within tolerance of the committed run"
