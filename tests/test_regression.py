"""The notebook regression (helpers.tools.regression): headline numbers are compared with the committed
reference (tests/reference/<profile>/metrics.json) within a tolerance that follows each number's own
standard error; a real regression (a number moved by more than it, a broken score) fails, and no run
writes the reference."""
import copy
import json
import math

import numpy as np
import pytest

from helpers.experiment import Experiment
from helpers.tools import regression

REFERENCE = regression.reference_metrics("digits")
FLAT = regression.flatten(REFERENCE)
ALL = ["model", "detectors", "lcr", "relay", "cfe", "debugging"]


def _set(d: dict, dotted: str, value) -> dict:
    d = copy.deepcopy(d)
    node = d
    *parents, leaf = dotted.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    return d


def test_every_committed_profile_has_a_reference_with_its_headline_numbers():
    for profile in ("digits", "cifar10", "cifar10-pretrained", "cub100"):
        ref = regression.reference_metrics(profile)
        assert ref is not None and ref["profile"] == profile
        assert (regression.REFERENCE_DIR / profile / "provenance.json").is_file()


def test_identical_runs_pass_and_every_rule_is_used():
    n, failures = regression.compare(REFERENCE, REFERENCE, ALL)
    assert failures == [] and n > 50
    for rule in regression.RULES:  # a mistyped pattern would silently check nothing
        assert any(regression.rule_of(k, [rule]) for k in FLAT), rule.pattern


def test_tolerances_follow_the_standard_error_of_each_number():
    # an AUROC: its bootstrap interval's half-width / 1.96 (above the floor on 52 test errors)
    key = "detectors.msp.test.auroc"
    se = (FLAT["detectors.msp.test.auroc_ci_high"] - FLAT["detectors.msp.test.auroc_ci_low"]) / 3.919928
    tol = regression.tolerance_of(key, FLAT)
    assert tol.value == pytest.approx(max(regression.K * se, regression.rule_of(key).floor))
    # a recall of errors at a threshold: binomial over the split's errors
    key = "detectors.msp.test.wrong_recall"
    p, n_err = FLAT[key], FLAT["model.errors.test"]
    assert regression.tolerance_of(key, FLAT).value == pytest.approx(
        max(regression.K * math.sqrt(p * (1 - p) / n_err), regression.rule_of(key).floor))
    # the correct recall has ~8x more predictions behind it: a tighter tolerance than the wrong recall
    assert regression.tolerance_of("detectors.msp.test.correct_recall", FLAT).value \
        < regression.tolerance_of("detectors.msp.test.wrong_recall", FLAT).value
    # the test accuracy: binomial over the test split (450 digits)
    assert regression.split_size(FLAT, "test")[0] == 450


def test_hanley_mcneil_is_the_sampling_error_of_an_auroc():
    """Exact for exponentially distributed scores (the formula's model), conservative for binormal ones."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = np.r_[np.ones(50), np.zeros(400)].astype(int)
    aucs = [roc_auc_score(y, np.r_[rng.exponential(3.0, 50), rng.exponential(1.0, 400)]) for _ in range(1000)]
    assert regression.hanley_mcneil_se(float(np.mean(aucs)), 50, 400) == pytest.approx(np.std(aucs), rel=0.1)
    aucs = [roc_auc_score(y, np.r_[rng.normal(1.3, 1, 50), rng.normal(0, 1, 400)]) for _ in range(1000)]
    assert np.std(aucs) < regression.hanley_mcneil_se(float(np.mean(aucs)), 50, 400) < 1.5 * np.std(aucs)


def test_recalls_of_a_chance_level_score_are_not_compared_but_its_auroc_is():
    ref = _set(REFERENCE, "detectors.msp.val.auroc_ci_low", 0.45)  # an interval that includes 0.5
    flat = regression.flatten(ref)
    assert regression.tolerance_of("detectors.msp.test.wrong_recall", flat).value is None
    assert regression.tolerance_of("detectors.msp.test.auroc", flat).value is not None
    _, failures = regression.compare(ref, _set(ref, "detectors.msp.test.wrong_recall", 0.0), ["detectors.msp"])
    assert failures == []
    _, failures = regression.compare(ref, _set(ref, "detectors.msp.test.auroc", 0.5), ["detectors.msp"])
    assert len(failures) == 1


@pytest.mark.parametrize("key", ["detectors.conductance.val.auroc", "model.accuracy.test",
                                 "detectors.lcr.test.wrong_recall", "cfe.table1.avg_recall.errors_detected_fraction",
                                 "debugging.difference.mean", "cfe.generators.mean_active_filters",
                                 "cfe.table1.avg_recall.new_errors", "cfe.table1.avg_f1.gate_random_expected",
                                 "cfe.table1.avg_recall.msp_errors_detected_at_same_new_errors",
                                 "cfe.table1.avg_recall.gate_rule_auroc_in_gate"])
def test_a_move_beyond_the_tolerance_fails_and_within_it_passes(key):
    tol = regression.tolerance_of(key, FLAT).value
    ref = FLAT[key]
    sign = -1 if ref + 2 * tol > 1 else 1
    _, failures = regression.compare(REFERENCE, _set(REFERENCE, key, ref + sign * 2 * tol), ALL)
    assert len(failures) == 1 and failures[0].startswith(key)
    _, failures = regression.compare(REFERENCE, _set(REFERENCE, key, ref + sign * 0.5 * tol), ALL)
    assert failures == []


def test_missing_headline_number_fails_and_other_numbers_are_not_compared():
    broken = copy.deepcopy(REFERENCE)
    del broken["detectors"]["msp"]["test"]["auroc"]
    _, failures = regression.compare(REFERENCE, broken, ["detectors.msp"])
    assert failures == ["detectors.msp.test.auroc: missing in this run"]
    # AURC is reported but is no headline number: a change there is not a regression of this check
    _, failures = regression.compare(REFERENCE, _set(REFERENCE, "detectors.msp.test.aurc", 0.9), ALL)
    assert failures == []


def test_sections_select_keys_with_wildcards():
    n_joint, _ = regression.compare(REFERENCE, REFERENCE, ["detectors.joint_*"])
    n_nn, _ = regression.compare(REFERENCE, REFERENCE, ["detectors.joint_nn"])
    assert n_joint > n_nn > 0


def test_check_compares_with_the_reference_not_with_the_run_itself(tmp_path):
    exp = Experiment("digits", output_dir=tmp_path / "digits")
    exp.update_metrics(copy.deepcopy(REFERENCE), fresh=True)
    assert "within tolerance of the reference" in regression.check(exp, ["model.accuracy"])
    exp.update_metrics({"model": {"accuracy": {"test": REFERENCE["model"]["accuracy"]["test"] - 0.05}}})
    with pytest.raises(AssertionError, match="model.accuracy.test"):
        regression.check(exp, ["model.accuracy"])


def test_check_skips_runs_with_overrides(tmp_path):
    exp = Experiment("digits", {"training.epochs": 1, "checkpoint": None}, output_dir=tmp_path / "digits")
    exp.update_metrics({"model": {"accuracy": {"test": 0.1}}}, fresh=True)
    assert "not compared" in regression.check(exp, ["model.accuracy"])


@pytest.fixture(scope="module")
def msp_reports(tmp_path_factory):
    """MSP's detection report recomputed from the committed digits checkpoint (as notebook 01 does), and
    the same with the score shuffled: a deliberately broken detector."""
    import os

    from helpers import evaluation

    old = os.environ.get("COMPANION_ARTIFACTS")
    os.environ["COMPANION_ARTIFACTS"] = str(tmp_path_factory.mktemp("artifacts"))
    try:
        exp = Experiment("digits", output_dir=tmp_path_factory.mktemp("figures") / "digits", progress=False)
        scores = evaluation.baseline_table(exp)
        broken = scores.copy()
        broken["msp"] = np.random.default_rng(0).permutation(broken["msp"].to_numpy())
        good, _ = evaluation.evaluate_scores(exp, scores, ["msp"])
        bad, _ = evaluation.evaluate_scores(exp, broken, ["msp"])
    finally:
        if old is None:
            os.environ.pop("COMPANION_ARTIFACTS")
        else:
            os.environ["COMPANION_ARTIFACTS"] = old
    return evaluation.rounded(good), evaluation.rounded(bad)


def test_the_real_score_passes_and_a_shuffled_score_fails(msp_reports):
    good, bad = msp_reports
    _, failures = regression.compare(REFERENCE, {"detectors": good}, ["detectors.msp"])
    assert failures == []
    _, failures = regression.compare(REFERENCE, {"detectors": bad}, ["detectors.msp"])
    assert any(f.startswith("detectors.msp.val.auroc") for f in failures)
    assert any(f.startswith("detectors.msp.test.auroc") for f in failures)


def test_write_reference_refuses_a_partial_run_and_writes_atomically(tmp_path):
    src = tmp_path / "metrics.json"
    root = tmp_path / "reference"
    src.write_text(json.dumps(REFERENCE))
    path = regression.write_reference("digits", src, root)
    assert json.loads(path.read_text()) == REFERENCE
    assert json.loads((root / "digits" / "provenance.json").read_text())["profile"] == "digits"
    partial = {"profile": "digits", "model": REFERENCE["model"]}  # an interrupted run: notebook 00 only
    src.write_text(json.dumps(partial))
    with pytest.raises(SystemExit, match="interrupted or partial"):
        regression.write_reference("digits", src, root)
    assert json.loads(path.read_text()) == REFERENCE
    assert not list(root.rglob("*.tmp"))
    src.write_text(json.dumps({**REFERENCE, "profile": "cifar10"}))
    with pytest.raises(SystemExit, match="not 'digits'"):
        regression.write_reference("digits", src, root)


def test_the_mde_tolerance_follows_the_seed_count_not_the_mean_interval():
    """The MDE is a multiple of the seeds' SD: its SE is that of an SD from n seeds, MDE / sqrt(2 (n - 1)),
    whatever the interval of the mean difference (which gave cub100's MDE a tolerance of 0.0038 for 0.0056)."""
    ref = {"debugging.difference.mde": 0.0056, "debugging.debugged.n_seeds": 6.0,
           "debugging.difference.ci_low": -0.0069, "debugging.difference.ci_high": 0.0080}
    tol = regression.tolerance_of("debugging.difference.mde", ref)
    assert tol.value == pytest.approx(0.0056 / 10 ** 0.5) and "6 seeds" in tol.basis
    ref["debugging.debugged.n_seeds"] = 51.0
    assert regression.tolerance_of("debugging.difference.mde", ref).value == 0.001  # the floor


def test_table1_counts_follow_the_predictions_they_are_drawn_from():
    """new errors: binomial over the test's correct predictions; MSP's catches: over the test errors; the
    random flags' mean and MSP's catches in the gate: the spread of the random catch (its 95 % interval
    / 3.92); a count never tolerates fewer than two flipped predictions."""
    ref = regression.flatten(regression.reference_metrics("cifar10-pretrained"))
    row = "cfe.table1.avg_recall."
    n_correct = ref["model.n.test"] - ref["model.errors.test"]
    new = ref[row + "new_errors"]
    assert regression.tolerance_of(row + "new_errors", ref).value == pytest.approx(
        math.sqrt(new * (1 - new / n_correct)))
    caught = ref[row + "msp_errors_detected_at_same_new_errors"]
    assert regression.tolerance_of(row + "msp_errors_detected_at_same_new_errors", ref).value == pytest.approx(
        math.sqrt(caught * (1 - caught / ref["model.errors.test"])))
    spread = (ref[row + "gate_random_high"] - ref[row + "gate_random_low"]) / 3.919928
    for key in ("gate_random_expected", "gate_random_low", "gate_random_high", "gate_msp_caught"):
        assert regression.tolerance_of(row + key, ref).value == pytest.approx(spread)
    assert regression.tolerance_of("cfe.table1.avg_recall.gate_errors", FLAT).value == 2.0  # digits: all 51 in it


def test_the_p_value_is_compared_on_the_scale_of_its_t_statistic():
    """One unit of |t| (a move of the tested mean by one of its standard errors): digits' p = 0.28 may become
    0.5 but not 0.04, although 0.28 -> 0.04 is a smaller move of p; cifar10-pretrained's p = 1.00 may
    become 0.7 (a move of 0.3) but not 0.2."""
    from scipy import stats

    key = "debugging.difference.p_value"
    for p, ok in ((0.5, True), (0.04, False), (0.28, True)):
        _, failures = regression.compare(REFERENCE, _set(REFERENCE, key, p), ["debugging.difference"])
        assert (failures == []) is ok, (p, failures)
    assert regression.p_value_scale(0.284819, 10) == pytest.approx(stats.t.isf(0.284819 / 2, 9))  # |t| = 1.14
    pre = regression.reference_metrics("cifar10-pretrained")
    for p, ok in ((0.7, True), (0.2, False)):
        _, failures = regression.compare(pre, _set(pre, key, p), ["debugging.difference"])
        assert (failures == []) is ok, (p, failures)
    rows = regression.moves(pre, _set(pre, key, 0.7), [key])
    assert rows[0]["reference"] == 1.0 and rows[0]["actual"] == 0.7 and rows[0]["tolerance"] == 1.0
    assert "|t|" in rows[0]["basis"]
