"""The notebook regression (helpers.regression): committed headline numbers are compared within a
stated tolerance, and a real regression (a number moved by more than it) fails."""
import copy
import json

import pytest

from helpers import regression
from helpers.experiment import Experiment
from helpers.profiles import REPO_ROOT

COMMITTED = json.loads((REPO_ROOT / "figures" / "digits" / "metrics.json").read_text())
ALL = ["model", "detectors", "lcr", "relay", "cfe"]


def _set(d: dict, dotted: str, value) -> dict:
    d = copy.deepcopy(d)
    node = d
    *parents, leaf = dotted.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    return d


def _get(d: dict, dotted: str):
    for p in dotted.split("."):
        d = d[p]
    return d


def test_identical_runs_pass_and_every_tolerance_pattern_is_used():
    n, failures = regression.compare(COMMITTED, COMMITTED, ALL)
    assert failures == [] and n > 50
    keys = regression.flatten(COMMITTED)
    for pattern, _ in regression.TOLERANCES:  # a mistyped pattern would silently check nothing
        assert any(regression.tolerance_of(k, [(pattern, 1.0)]) for k in keys), pattern


@pytest.mark.parametrize("key", ["detectors.conductance.val.auroc", "model.accuracy.test",
                                 "detectors.lcr.test.wrong_recall", "cfe.table1.avg_recall.errors_detected_fraction"])
def test_a_move_beyond_the_tolerance_fails_and_within_it_passes(key):
    tol = regression.tolerance_of(key)
    ref = _get(COMMITTED, key)
    sign = -1 if ref + 2 * tol > 1 else 1
    _, failures = regression.compare(COMMITTED, _set(COMMITTED, key, ref + sign * 2 * tol), ALL)
    assert len(failures) == 1 and failures[0].startswith(key)
    _, failures = regression.compare(COMMITTED, _set(COMMITTED, key, ref + sign * 0.5 * tol), ALL)
    assert failures == []


def test_missing_headline_number_fails_and_other_numbers_are_not_compared():
    broken = copy.deepcopy(COMMITTED)
    del broken["detectors"]["msp"]["test"]["auroc"]
    _, failures = regression.compare(COMMITTED, broken, ["detectors.msp"])
    assert failures == ["detectors.msp.test.auroc: missing in this run"]
    # AURC is reported but is no headline number: a change there is not a regression of this check
    _, failures = regression.compare(COMMITTED, _set(COMMITTED, "detectors.msp.test.aurc", 0.9), ALL)
    assert failures == []


def test_sections_select_keys_with_wildcards():
    n_joint, _ = regression.compare(COMMITTED, COMMITTED, ["detectors.joint_*"])
    n_nn, _ = regression.compare(COMMITTED, COMMITTED, ["detectors.joint_nn"])
    assert n_joint > n_nn > 0


def test_check_fails_a_perturbed_run_of_the_default_profile(tmp_path):
    exp = Experiment("digits", output_dir=tmp_path / "digits")
    exp.update_metrics(copy.deepcopy(COMMITTED), fresh=True)
    assert "within tolerance" in regression.check(exp, ["model.accuracy"])
    exp.update_metrics({"model": {"accuracy": {"test": COMMITTED["model"]["accuracy"]["test"] - 0.05}}})
    with pytest.raises(AssertionError, match="model.accuracy.test"):
        regression.check(exp, ["model.accuracy"])


def test_check_skips_runs_with_overrides(tmp_path):
    exp = Experiment("digits", {"training.epochs": 1}, output_dir=tmp_path / "digits")
    exp.update_metrics({"model": {"accuracy": {"test": 0.1}}}, fresh=True)
    assert "not compared" in regression.check(exp, ["model.accuracy"])
