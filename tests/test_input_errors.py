"""Mistyped and contradicting input gives a one-line error that names the file or parameter, before
any work: a YAML syntax error, overrides as a string, overrides a committed checkpoint would ignore, a
misspelled papermill parameter, out-of-range classes; and degenerate runs give a note, not a crash."""
import json
import os
import subprocess

import matplotlib
import pytest

from helpers.notebook import check_parameters, injected_names
from helpers.paths import REPO_ROOT
from helpers.profiles import ProfileError, load_profile, parse_overrides

from .test_papermill_cli import run_papermill

matplotlib.use("Agg")


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path):
    bad = tmp_path / "mine.yaml"
    bad.write_text("name: mine\ndataset: digits\ntraining:\n  epochs: [1, 2\n  lr: 0.1\n")
    with pytest.raises(ProfileError, match=r"mine\.yaml, line \d+, column \d+: not valid YAML"):
        load_profile(bad)


@pytest.mark.parametrize("text", ['{"conductance.n_steps": 5}', "conductance.n_steps: 5", "{conductance.n_steps: 5}"])
def test_overrides_given_as_a_json_or_yaml_string(text):
    assert parse_overrides(text) == {"conductance.n_steps": 5}
    assert load_profile("digits", text)["conductance"]["n_steps"] == 5


@pytest.mark.parametrize("text", ["[1, 2]", "conductance.n_steps: [", "5"])
def test_overrides_that_are_no_mapping_are_named(text):
    with pytest.raises(ProfileError, match="overrides: .* (not a mapping|not a JSON or YAML mapping)"):
        load_profile("digits", text)


@pytest.mark.parametrize("override", [{"training.epochs": 5}, {"split.limit_train": 100}, {"seed": 3},
                                      {"model": "resnet20"}])
def test_overrides_a_committed_checkpoint_would_ignore_are_refused(override):
    """An override such as the README's `--set training.epochs=5 ...` is refused while a committed checkpoint
    (the 8-epoch model) would be loaded and silently ignore it."""
    with pytest.raises(ProfileError, match=r"would train another model.*checkpoint=null"):
        load_profile("cifar10", override)
    cfg = load_profile("cifar10", {**override, "checkpoint": None})  # the explicit way: train with them
    assert cfg["checkpoint"] is None


def test_overrides_that_do_not_change_the_model_keep_the_checkpoint():
    cfg = load_profile("digits", {"threads": 2, "training.eval_batch_size": 100, "lcr.n_mutants": 5})
    assert cfg["checkpoint"] == "checkpoints/digits-small_cnn.pt"


def test_injected_parameters_are_read_from_papermills_cell():
    history = ["", "# Parameters\nprofle = \"cifar10\"\noverrides = {}\n", "x = 1"]
    assert injected_names(history) == ["profle", "overrides"]
    with pytest.raises(ProfileError, match=r"'profle' is unknown \(did you mean 'profile'\?\)"):
        check_parameters({"In": history})
    check_parameters({"In": ["", "# Parameters\nprofile = \"cifar10\"\noutput_dir = \"x\"\n"]})
    check_parameters({"In": ["", "profle = 1"], "profle": 1})  # typed by hand in Jupyter: not papermill's


@pytest.mark.slow
def test_a_misspelled_papermill_parameter_stops_the_notebook_before_any_work(tmp_path):
    out = tmp_path / "figures"
    proc = run_papermill(["notebooks/00_data_and_model.ipynb", str(tmp_path / "out.ipynb"), "-p", "profle", "cifar10"],
                      {"COMPANION_OUTPUT_DIR": str(out), "COMPANION_ARTIFACTS": str(tmp_path / "art")}, check=False)
    assert proc.returncode != 0
    assert "notebook parameter 'profle' is unknown" in proc.stdout + proc.stderr
    assert not out.exists() and not (tmp_path / "art").exists()  # nothing computed, nothing written


@pytest.mark.slow
def test_papermill_p_overrides_as_a_json_string(tmp_path):
    out = tmp_path / "figs"
    proc = run_papermill(["notebooks/00_data_and_model.ipynb", str(tmp_path / "out.ipynb"), "-p", "overrides",
                       '{"training.eval_batch_size": 100}', "-p", "output_dir", str(out)],
                      {"COMPANION_ARTIFACTS": str(tmp_path / "art")})
    assert json.loads((out / "metrics.json").read_text())["profile"] == "digits"
    # the venv's kernel configuration (make setup) drops ipykernel's plain-TCP warning, and only it
    assert "without encryption" not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_make_lab_adds_allow_root_only_as_root():
    dry = subprocess.run(["make", "-n", "lab", "STAMP=Makefile"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert "jupyter-lab --notebook-dir=. --LabApp.default_url=/lab/tree/notebooks" in dry.stdout
    assert ("--allow-root" in dry.stdout) == (os.geteuid() == 0)


def test_out_of_range_conductance_classes_are_named_before_any_work(tmp_path, monkeypatch):
    from helpers.experiment import Experiment

    monkeypatch.setenv("COMPANION_ARTIFACTS", str(tmp_path / "art"))
    with pytest.raises(ProfileError, match=r"conductance.classes = \[3, 12\] is not valid: \[12\]; valid: .*0\.\.9"):
        Experiment("digits", {"conductance.classes": [3, 12]}, output_dir=tmp_path / "out", progress=False)
    assert not list((tmp_path / "art" / "digits").glob("model-*"))  # nothing trained or cached


def test_a_class_the_model_never_predicts_gives_a_note_not_a_crash():
    from helpers import plots

    fig = plots.conductance_profiles({}, [1, 2], "Conductance for predicted class '8'")
    assert "never predicts" in " ".join(t.get_text() for t in fig.axes[0].texts)


def test_the_joint_nn_of_notebook_04_names_its_features(tmp_path, monkeypatch):
    """Run before notebook 02 (no LCR cache), the joint NN is another computation under another key."""
    from helpers.experiment import Experiment
    from helpers.paper2 import stages as paper2

    monkeypatch.setenv("COMPANION_ARTIFACTS", str(tmp_path / "art"))
    exp = Experiment("digits", {"cfe.epochs": 2, "joint.folds": 2}, output_dir=tmp_path / "out", progress=False)
    a = paper2.analysis(exp, paper2.generators(exp)[0])
    scores, names = paper2.two_paper_scores(exp, a)  # nothing cached: no LCR
    assert names[-1] == "joint_nn_cfe_without_lcr" and "lcr" not in names
    assert scores.attrs["joint_features"] == ["conductance_oof", "cfe_recall"]


def test_an_all_correct_split_is_named_with_what_to_do(tmp_path, monkeypatch):
    from helpers import evaluation
    from helpers.experiment import Experiment

    monkeypatch.setenv("COMPANION_ARTIFACTS", str(tmp_path / "art"))
    exp = Experiment("digits", output_dir=tmp_path / "out", progress=False)
    scores = evaluation.baseline_table(exp)
    perfect = exp.predictions.copy()
    perfect.loc[perfect.split == "val", "correct"] = True  # as if the model made no validation mistake
    monkeypatch.setattr(evaluation, "with_predictions", lambda e, t: t.merge(perfect, on=["id", "split"]))
    with pytest.raises(ValueError, match="the val split has no wrong predictions .* use a larger split"):
        evaluation.evaluate_scores(exp, scores, ["msp"])


@pytest.mark.parametrize("override, match", [
    ({"conductance.layer": "block9"}, r"conductance.layer = 'block9' is not a module of 'small_cnn'; valid: null"),
    ({"training.trainable": ["linear", "head"]}, r"training.trainable = \['linear', 'head'\]: \['head'\] are not"),
    ({"debugging.trainable": ["conv9"]}, r"debugging.trainable = \['conv9'\]: \['conv9'\] are not modules"),
])
def test_settings_that_need_the_model_are_checked_when_the_experiment_starts(tmp_path, monkeypatch, override, match):
    from helpers.experiment import Experiment

    monkeypatch.setenv("COMPANION_ARTIFACTS", str(tmp_path / "art"))
    with pytest.raises(ProfileError, match=match):
        Experiment("digits", {**override, "checkpoint": None}, output_dir=tmp_path / "out", progress=False)
    assert not list((tmp_path / "art" / "digits").glob("model-*"))
