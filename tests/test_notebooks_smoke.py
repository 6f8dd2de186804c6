"""The whole notebook sequence on the paper's cifar10 profile with tiny overrides, through
papermill, from the offline CIFAR-10 copy in ../shared/data."""
import json

import pytest

from .conftest import SHARED_DATA

pytestmark = pytest.mark.slow  # every test here starts processes

TINY_CIFAR = {"training.epochs": 1, "training.batch_size": 64, "split.limit_train": 300, "split.limit_val": 150,
              "split.limit_test": 150, "conductance.detector.epochs": 3, "joint.folds": 2,
              "lcr.grid_operators": ["filter_nai"], "lcr.grid_rates": [0.01], "lcr.grid_mutants": 2,
              "lcr.n_mutants": 4, "metrics.n_bootstrap": 50,
              # train the tiny model; no compilation for 4 mutants
              "checkpoint": None, "lcr.compile": False, "cfe.epochs": 2,
              "debugging.epochs": 1, "debugging.seeds": 2, "debugging.grid": [[0, 0], [1e-3, 2e-5]],
              "notebooks": ["00", "01", "02", "03", "04", "05"]}  # cifar10 lists 00-04: 05 added, with its settings


@pytest.mark.skipif(not (SHARED_DATA / "cifar10-jpeg.tar.gz").is_file(), reason="../shared/data absent")
def test_notebook_sequence_cifar10_tiny(tmp_path):
    from helpers.tools.run_notebooks import run

    out = tmp_path / "figs"
    run("cifar10", TINY_CIFAR, output_dir=str(out))
    m = json.loads((out / "metrics.json").read_text())
    assert m["profile"] == "cifar10"
    assert set(m["model"]["accuracy"]) == {"train", "val", "test"}
    for name in ("conductance", "msp", "lcr", "joint_nn", "joint_qda_msp"):
        assert set(m["detectors"][name]) == {"val", "test"}, name
    assert m["lcr"]["n_mutants"] == 4
    for name in ("cfe_recall", "cfe_f1", "joint_nn_cfe"):  # notebook 04: paper 2's detectors beside paper 1's
        assert set(m["detectors"][name]) == {"val", "test"}, name
    assert set(m["cfe"]["table1"]) == {"avg_recall", "avg_f1", "recall_lt_0.3"}
    assert 0 < m["cfe"]["generators"]["mean_active_filters"] <= 64
    d = m["debugging"]  # notebook 05, with crop+flip augmentation: the full-forward path
    assert d["debugged"]["n_seeds"] == d["control"]["n_seeds"] == 2 and len(d["grid"]) == 2
    assert d["difference"]["ci_low"] <= d["difference"]["mean"] <= d["difference"]["ci_high"]
    assert "airplane" in (out / "splits.md").read_text()
    assert (out / "report.md").is_file() and (out / "notebooks" / "05_model_debugging.ipynb").is_file()
    assert "Counterfactual filters" in (out / "report.md").read_text()
