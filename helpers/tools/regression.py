"""Regression of a run's headline numbers against a committed reference, each within a tolerance that
follows the number's own uncertainty.

**The reference** of a profile is ``tests/reference/<profile>/metrics.json``: a copy of the metrics of
the run the repository's figures, notebooks and README show.  No run writes it: ``make figures`` (or
Jupyter, or papermill) regenerates ``figures/<profile>/`` and the notebooks, never the reference, so a
run is always compared with the committed numbers and never with itself.  A developer whose change is
meant to move the numbers refreshes it explicitly (``make reference``: :func:`write_reference`), and the
diff of the reference shows what moved.

**The check.**  Each notebook's one ``NBVAL_CHECK_OUTPUT`` cell calls :func:`check` on the metrics it
wrote; it prints one line that does not depend on the numbers and fails (an exception, so nbval fails)
when a headline number moved by more than its tolerance or is missing.

**The tolerances** (:data:`RULES`, :func:`tolerance_of`) are computed from the reference itself:
``max(floor, K x SE)``, where SE is the standard error of the number as an estimate from a finite
sample, and the floor is the largest move measured across CPU kernels and thread counts
(``python -m helpers.tools.kernel_matrix``; docs/reproducibility.md).  Across CPUs floats differ in the last
bits, and training amplifies that into a few flipped predictions: a move within one standard error is
one a reader could not tell from a reseed of the same experiment; a real regression (a broken score,
a changed method) moves a number by several.  The standard errors:

- an accuracy or a recall: binomial, ``sqrt(p (1 - p) / n)`` over the n predictions (or the n errors,
  the n correct predictions) it is a share of;
- an AUROC: from its stored 95 % bootstrap interval (``(high - low) / 3.92``), else Hanley & McNeil's
  (1982) formula from the numbers of errors and correct predictions;
- a paired difference: from its stored bootstrap interval;
- a count of Table 1 (new errors, MSP's catches at the same new errors, the predictions and errors inside
  the confidence gate): binomial, ``sqrt(m p (1 - p))`` with p = count / m over the m predictions (test
  correct predictions, test errors, all test predictions) it is drawn from;
- a count of errors among the k flags inside the gate (random flags' mean and 95 % bounds, MSP's catches
  there): the spread of the random catch, ``(high - low) / 3.92`` of the same row's hypergeometric
  interval; an AUROC inside the gate: Hanley & McNeil's, from the gate's errors and correct predictions;
- a p-value: compared on the scale of the test statistic it comes from (:func:`p_value_scale`), where a
  move of the tested mean by one of its own standard errors moves the statistic by about 1;
- numbers with no sampling model (CFE mask statistics, the filter-disabling check): the floor alone.

A recall at a threshold chosen on validation is not compared for a score whose reference AUROC interval
includes 0.5 (on either split): the ROC of a score no better than chance is flat, so its equal-recall
threshold, and every recall at it, jumps when a few predictions flip (a move of 0.25 seen on an
AVX-512 CPU).  The AUROC of such a score is still compared.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from helpers.paths import REFERENCE_DIR, REPO_ROOT
from helpers.utils import atomic_write_json, cli_main

#: tolerance = max(floor, K x standard error)
K = 1.0


@dataclass(frozen=True)
class Tolerance:
    value: float | None  # None: the number is reported but deliberately not compared (see ``basis``)
    basis: str            # how the value was derived, for the messages and the kernel-matrix table


@dataclass(frozen=True)
class Rule:
    pattern: str   # on the dotted metrics key
    kind: str      # how the standard error is derived (see _standard_error)
    floor: float   # the measured cross-CPU spread, with margin (docs/reproducibility.md)


#: The headline numbers and their rules; the first matching pattern wins.  Keys that match no pattern
#: are not headline numbers and are not compared.  Floors: the largest move measured by
#: ``python -m helpers.tools.kernel_matrix`` on the default profile (SSE4.2 / AVX2 / AVX-512 kernels, 1 and 2
#: threads; docs/reproducibility.md), rounded up with a margin.
RULES: list[Rule] = [                                                # largest measured move (digits)
    Rule("model.accuracy.*", "accuracy", 0.005),                     # 0 (two of 450 test digits: 0.0044)
    Rule("detectors.*.auroc", "auroc", 0.01),                        # 0.0017 (joint RF + MSP)
    Rule("detectors.*.correct_recall", "recall", 0.02),              # 0.0075 (joint RF)
    Rule("detectors.*.wrong_recall", "recall", 0.04),                # 0 (two of 51 errors: 0.039)
    Rule("lcr.sprt.auroc", "auroc", 0.01),                           # 0
    Rule("relay.*.accuracy", "relay", 0.01),                         # 0
    Rule("cfe.generators.mean_active_filters", "none", 0.1),         # 0
    Rule("cfe.generators.masked_agreement", "none", 0.01),           # 0
    # cub100 moved by 6 of 145 errors (0.041) between 1 and 2 threads: the generators' training amplifies
    # float sums into another G_c, as training does for a model
    Rule("cfe.table1.*.errors_detected_fraction", "share_of_test_errors", 0.05),  # 0 (digits); 0.041 (cub100)
    Rule("cfe.disable.*", "none", 0.03),                             # 0
    Rule("debugging.*.test_accuracy", "test_accuracy", 0.005),       # 0
    Rule("debugging.*.test_accuracy_mean", "test_accuracy", 0.005),  # 0
    # the debugging result on the scale of its own values (tenths of a point): one SE of its own
    # interval, floors far below the effects in question (0.44 pt in the paper)
    Rule("debugging.difference.mean", "interval", 0.001),            # 0
    Rule("debugging.difference.ci_*", "interval", 0.001),            # 0
    Rule("debugging.difference.hier_ci_*", "interval", 0.001),       # 0
    # the MDE is a multiple of the seed-to-seed SD of the difference: its SE is that of an SD
    # estimated from n seeds, MDE / sqrt(2 (n - 1)), not the bootstrap interval of the mean
    Rule("debugging.difference.mde", "sd_estimate", 0.001),          # 0
    # a p-value on the scale of its t statistic (p_value_scale): one unit = the mean moved by one SE
    Rule("debugging.difference.p_value", "p_value", 0.1),            # 0 on digits (kernel matrix)
    # Table 1's counts and its gate control: a count is a binomial draw from the predictions behind it; the
    # floor is two flipped predictions
    Rule("cfe.table1.*.new_errors", "count_of_test_correct", 2.0),                             # 0
    Rule("cfe.table1.*.msp_errors_detected_at_same_new_errors", "count_of_test_errors", 2.0),  # 0
    Rule("cfe.table1.*.gate_n", "count_of_test", 2.0),                                         # 0
    Rule("cfe.table1.*.gate_errors", "count_of_test_errors", 2.0),                             # 0
    Rule("cfe.table1.*.gate_random_expected", "count_in_gate", 2.0),                           # 0
    Rule("cfe.table1.*.gate_random_low", "count_in_gate", 2.0),                                # 0
    Rule("cfe.table1.*.gate_random_high", "count_in_gate", 2.0),                               # 0
    Rule("cfe.table1.*.gate_msp_caught", "count_in_gate", 2.0),                                # 0
    Rule("cfe.table1.*.gate_*_auroc_in_gate", "auroc_in_gate", 0.01),                          # 0
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


def rule_of(key: str, rules=RULES) -> Rule | None:
    return next((r for r in rules if fnmatch.fnmatchcase(key, r.pattern)), None)


# --------------------------------------------------------------------------- standard errors
def split_size(ref: dict, split: str) -> tuple[int, int] | None:
    """(n predictions, n errors) of a split, from the reference's model section: ``model.n`` where
    recorded (notebook 00), else back from the errors and the (4-decimal) accuracy."""
    err, acc, n = ref.get(f"model.errors.{split}"), ref.get(f"model.accuracy.{split}"), ref.get(f"model.n.{split}")
    if err is None:
        return None
    if n is not None:
        return int(n), int(err)
    if acc is None or acc >= 1.0:
        return None
    return int(round(err / (1.0 - acc))), int(err)


def binomial_se(p: float, n: float) -> float:
    return math.sqrt(max(p * (1.0 - p), 0.0) / n) if n and n > 0 else float("nan")


def hanley_mcneil_se(auc: float, n_pos: int, n_neg: int) -> float:
    """Standard error of an AUROC (Hanley & McNeil 1982, eq. 2) with n_pos errors, n_neg correct ones:
    exact for exponentially distributed scores, somewhat larger than the truth for binormal ones."""
    q1, q2 = auc / (2.0 - auc), 2.0 * auc ** 2 / (1.0 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc ** 2) + (n_neg - 1) * (q2 - auc ** 2)) / (n_pos * n_neg)
    return math.sqrt(max(var, 0.0))


def p_value_scale(p: float, n_seeds: float | None) -> float:
    """A two-sided p-value as the |t| statistic it came from: ``t_{n-1}`` quantile of 1 - p / 2 (the normal
    quantile without a seed count).

    Why not compare p itself: p is a steep, non-linear function of the statistic.  When the tested mean
    moves by one of its own standard errors (what a reseed or another CPU does; the tolerance every other
    number gets), |t| moves by about 1, but p moves by 0.3 near p = 0.5 (3 seeds of `cifar10-pretrained`
    rerun on another CPU: 0.57 -> 0.77) and by 0.04 near p = 0.05.  A flat tolerance on p is therefore too
    loose where the verdict is at stake (it would let 0.28 become 0.01) or too tight far from it; one unit
    of |t| is the same move everywhere, and a verdict that crosses 0.05 needs about that."""
    from scipy import stats

    if math.isnan(p):
        return p
    p = min(max(p, 0.0), 1.0)
    return float(stats.t.isf(p / 2, n_seeds - 1) if n_seeds and n_seeds >= 2 else stats.norm.isf(p / 2))


def _interval_se(ref: dict, prefix: str) -> float | None:
    lo, hi = (ref.get(f"{prefix}_ci_low", ref.get(f"{prefix}.ci_low")),
              ref.get(f"{prefix}_ci_high", ref.get(f"{prefix}.ci_high")))
    if lo is None or hi is None:
        return None
    return (hi - lo) / (2 * 1.959964)


def chance_level(ref: dict, detector: str) -> bool:
    """True when the detector's reference AUROC interval includes 0.5 on val or test (a flat ROC)."""
    for split in ("val", "test"):
        lo, hi = (ref.get(f"detectors.{detector}.{split}.auroc_ci_low"),
                  ref.get(f"detectors.{detector}.{split}.auroc_ci_high"))
        if lo is not None and hi is not None and lo <= 0.5 <= hi:
            return True
    return False


def _standard_error(key: str, kind: str, ref: dict) -> tuple[float | None, str]:
    """(standard error or None, how it was derived); (None, reason) marks a number not to compare."""
    value = ref[key]
    parts = key.split(".")
    if kind == "accuracy":
        size = split_size(ref, parts[-1])
        return (binomial_se(value, size[0]), f"binomial, n={size[0]}") if size else (float("nan"), "no split size")
    if kind == "auroc":
        se = None if key.startswith("lcr.sprt") else _interval_se(ref, key)
        if se is not None:
            return se, "bootstrap interval"
        size = split_size(ref, "test" if key.startswith("lcr.sprt") else parts[-2])
        if not size or not 0 < size[1] < size[0]:
            return float("nan"), "no split size"
        return hanley_mcneil_se(value, size[1], size[0] - size[1]), f"Hanley-McNeil, {size[1]} errors of {size[0]}"
    if kind == "recall":
        detector, split, which = parts[1], parts[2], parts[3]
        if chance_level(ref, detector):
            return None, "not compared: AUROC interval includes 0.5 (flat ROC, the threshold is undefined)"
        size = split_size(ref, split)
        if not size:
            return float("nan"), "no split size"
        m = size[1] if which == "wrong_recall" else size[0] - size[1]
        return binomial_se(value, m), f"binomial, n={m} {'errors' if which == 'wrong_recall' else 'correct'}"
    if kind == "relay":  # (correct kept + flagged) / all test predictions (joint.relay_accuracy)
        size = split_size(ref, "test")
        return (binomial_se(value, size[0]), f"binomial, n={size[0]}") if size else (float("nan"), "no split size")
    if kind in ("share_of_test_errors", "test_accuracy"):
        size = split_size(ref, "test")
        if not size:
            return float("nan"), "no split size"
        m = size[1] if kind == "share_of_test_errors" else size[0]
        return binomial_se(value, m), f"binomial, n={m}{' errors' if kind == 'share_of_test_errors' else ''}"
    if kind in ("count_of_test_correct", "count_of_test_errors", "count_of_test"):
        size = split_size(ref, "test")
        if not size:
            return float("nan"), "no split size"
        m = {"count_of_test_correct": size[0] - size[1], "count_of_test_errors": size[1],
             "count_of_test": size[0]}[kind]
        return (math.sqrt(max(value * (1 - value / m), 0.0)) if m else float("nan"),
                f"binomial count, m={m} {kind.removeprefix('count_of_test').strip('_') or 'predictions'}")
    if kind == "count_in_gate":
        row = key.rsplit(".", 1)[0]
        lo, hi = ref.get(f"{row}.gate_random_low"), ref.get(f"{row}.gate_random_high")
        if lo is None or hi is None:
            return float("nan"), "no random interval"
        return (hi - lo) / (2 * 1.959964), "spread of the random catch in the gate"
    if kind == "auroc_in_gate":
        row = key.rsplit(".", 1)[0]
        n, e = ref.get(f"{row}.gate_n"), ref.get(f"{row}.gate_errors")
        if not n or not e or e >= n or math.isnan(value):
            return float("nan"), "no errors and correct predictions in the gate"
        return hanley_mcneil_se(value, int(e), int(n - e)), f"Hanley-McNeil, {int(e)} errors of {int(n)} in the gate"
    if kind == "p_value":
        return 1.0, "one unit of |t|, the scale p comes from"
    if kind == "sd_estimate":
        n = ref.get("debugging.debugged.n_seeds")  # paired seeds: as many as the control's
        if not n or n < 2:
            return float("nan"), "no seed count"
        return abs(value) / math.sqrt(2 * (n - 1)), f"SD estimated from {int(n)} seeds"
    if kind == "interval":
        se = _interval_se(ref, key.rsplit(".", 1)[0])
        return (se, "bootstrap interval") if se is not None else (float("nan"), "no interval")
    return float("nan"), "no sampling model"


def tolerance_of(key: str, ref: dict, rules=RULES) -> Tolerance | None:
    """The tolerance of a headline number (``ref``: the flattened reference), or None when ``key`` is
    no headline number."""
    rule = rule_of(key, rules)
    if rule is None:
        return None
    if key not in ref:
        return Tolerance(rule.floor, "floor (not in the reference)")
    se, how = _standard_error(key, rule.kind, ref)
    if se is None:
        return Tolerance(None, how)
    if math.isnan(se) or K * se <= rule.floor:
        return Tolerance(rule.floor, f"measured floor ({how}: SE {se:.4f})" if not math.isnan(se) else "measured floor")
    return Tolerance(K * se, f"{K:g} SE ({how})")


# --------------------------------------------------------------------------- comparison
def _selected(key: str, sections) -> bool:
    return any(fnmatch.fnmatchcase(key, s) or fnmatch.fnmatchcase(key, s + ".*") for s in sections)


def moves(reference: dict, actual: dict, sections=("*",), rules=RULES) -> list[dict]:
    """One row per headline number under ``sections``: reference, actual, |move|, tolerance, basis, ok."""
    ref, act = flatten(reference), flatten(actual)
    rows = []
    for k in sorted({k for k in (*ref, *act) if _selected(k, sections) and rule_of(k, rules) is not None}):
        tol = tolerance_of(k, ref, rules)
        r, a = ref.get(k), act.get(k)
        rs, as_ = r, a
        if r is not None and a is not None and rule_of(k, rules).kind == "p_value":  # moves on the |t| scale
            n = ref.get("debugging.debugged.n_seeds")
            rs, as_ = p_value_scale(r, n), p_value_scale(a, n)
        move = None if r is None or a is None else (0.0 if (math.isnan(as_) and math.isnan(rs)) or as_ == rs
                                                     else abs(as_ - rs))
        ok = tol.value is None or (move is not None and move <= tol.value)
        rows.append({"key": k, "reference": r, "actual": a, "move": move, "tolerance": tol.value,
                     "basis": tol.basis, "ok": ok})
    return rows


def compare(reference: dict, actual: dict, sections, rules=RULES) -> tuple[int, list[str]]:
    """Compare the headline numbers under ``sections`` (dotted prefixes, wildcards allowed, e.g.
    ``"detectors.msp"`` or ``"detectors.joint_*"``).

    Returns (how many numbers were compared, one message per failure): a number outside its
    tolerance, or a headline key present in one run and missing in the other."""
    rows = moves(reference, actual, sections, rules)
    failures = []
    for row in rows:
        if row["ok"]:
            continue
        if row["actual"] is None or row["reference"] is None:
            failures.append(f"{row['key']}: "
                            f"{'missing in this run' if row['actual'] is None else 'not in the reference'}")
        else:
            failures.append(f"{row['key']}: {row['actual']:.4f} vs reference {row['reference']:.4f} "
                            f"(tolerance {row['tolerance']:.4f}: {row['basis']})")
    return sum(r["tolerance"] is not None for r in rows), failures


# --------------------------------------------------------------------------- the reference
def reference_path(profile: str, root: Path | None = None) -> Path:
    return Path(root or REFERENCE_DIR) / profile / "metrics.json"


def reference_metrics(profile: str, root: Path | None = None) -> dict | None:
    """The committed reference metrics of a profile (tests/reference/<profile>/metrics.json), or None."""
    path = reference_path(profile, root)
    return json.loads(path.read_text()) if path.is_file() else None


def write_reference(profile: str, source: Path | None = None, root: Path | None = None) -> Path:
    """Make ``source`` (default: figures/<profile>/metrics.json) the reference of ``profile``, atomically,
    with a provenance note beside it.  Refuses a run that lacks sections the old reference had (an
    interrupted run)."""
    import platform

    import torch

    source = Path(source or REPO_ROOT / "figures" / profile / "metrics.json")
    if not source.is_file():
        raise SystemExit(f"reference: no metrics at {source}; run `make figures PROFILE={profile}` first")
    new = json.loads(source.read_text())
    if new.get("profile") != profile:
        raise SystemExit(f"reference: {source} is the run of profile {new.get('profile')!r}, not {profile!r}")
    old = reference_metrics(profile, root)
    if old is not None:
        lost = sorted(k for k in flatten(old) if rule_of(k) is not None and k not in flatten(new))
        if lost:
            raise SystemExit(f"reference: {source} lacks {len(lost)} headline numbers of the current reference "
                             f"(e.g. {lost[0]}): an interrupted or partial run? Rerun `make figures PROFILE={profile}`")
    path = reference_path(profile, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, new)
    atomic_write_json(path.with_name("provenance.json"), {
        "profile": profile,
        "source": str(source.relative_to(REPO_ROOT)) if source.is_relative_to(REPO_ROOT) else str(source),
        "written": time.strftime("%Y-%m-%d"), "cpu": cpu_name(), "torch": torch.__version__,
        "python": platform.python_version()})
    return path


def cpuinfo(field: str) -> str | None:
    """The first ``field`` line of /proc/cpuinfo (e.g. "model name", "flags"), None where there is none."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    import platform

    return cpuinfo("model name") or platform.processor() or platform.machine()


def check(exp, sections: list[str]) -> str:
    """Compare this run's metrics (exp.metrics()) with the profile's committed reference; raise
    AssertionError listing every headline number out of tolerance; return one line that does not
    depend on the numbers."""
    from helpers.profiles import load_profile, profile_path

    if os.environ.get("COMPANION_REGRESSION") == "skip":  # a change that adds or moves headline numbers:
        # COMPANION_REGRESSION=skip make figures, then make reference, then make figures again
        return f"{exp.name}: regression check skipped (COMPANION_REGRESSION=skip)"
    ref = reference_metrics(exp.name)
    if ref is None:
        return f"{exp.name}: no committed reference (tests/reference/{exp.name}/) to compare with"
    try:
        same = exp.cfg == load_profile(profile_path(exp.name))
    except Exception:  # a profile given as a dict or a path outside params/
        same = False
    if not same:
        return f"{exp.name}: settings differ from the committed profile (overrides?); not compared"
    n, failures = compare(ref, exp.metrics(), sections)
    if failures:
        raise AssertionError(f"{len(failures)} of {n} headline numbers are missing or differ from the reference "
                             f"(tests/reference/{exp.name}/metrics.json) by more than their tolerance:\n  "
                             + "\n  ".join(failures))
    return f"{', '.join(sections)}: {n} headline numbers within tolerance of the reference"


def main(argv=None) -> int:
    """``python -m helpers.tools.regression update digits`` (``make reference``): the run in figures/<profile>/
    becomes the reference.  ``python -m helpers.tools.regression compare digits path/to/metrics.json``: every
    headline number's move and tolerance, as JSON; exit status 1 when one is out of tolerance."""
    ap = argparse.ArgumentParser(description=main.__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("update", help="make figures/<profile>/metrics.json the committed reference")
    up.add_argument("profiles", nargs="+")
    cp = sub.add_parser("compare", help="compare a metrics.json with a profile's reference")
    cp.add_argument("profile")
    cp.add_argument("metrics")
    a = ap.parse_args(argv)
    if a.cmd == "update":
        for p in a.profiles:
            print(write_reference(p))
        from helpers.tools.report import refresh_readme

        print("README comparison block", "refreshed" if refresh_readme() else "unchanged")
        return 0
    ref = reference_metrics(a.profile)
    if ref is None:
        raise SystemExit(f"compare: no reference for profile {a.profile!r} in {REFERENCE_DIR}")
    rows = moves(ref, json.loads(Path(a.metrics).read_text()))
    print(json.dumps(rows, indent=1))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(cli_main(main))
