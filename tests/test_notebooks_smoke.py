"""Notebook 00 on the paper's cifar10 profile with tiny overrides, through papermill, offline."""
import json
import os

import pytest

from helpers.profiles import REPO_ROOT

from .conftest import SHARED_DATA


@pytest.mark.skipif(not (SHARED_DATA / "cifar10-jpeg.tar.gz").is_file(), reason="../shared/data absent")
def test_notebook00_cifar10_tiny(tmp_path):
    papermill = pytest.importorskip("papermill")
    out = tmp_path / "figs"
    overrides = {"training.epochs": 1, "split.limit_train": 300, "split.limit_val": 100, "split.limit_test": 100,
                 "training.batch_size": 64}
    papermill.execute_notebook(
        str(REPO_ROOT / "notebooks" / "00_data_and_model.ipynb"), str(tmp_path / "00.ipynb"),
        parameters={"profile": "cifar10", "overrides": overrides, "output_dir": str(out)},
        kernel_name="python3", cwd=str(REPO_ROOT / "notebooks"), progress_bar=False,
    )
    m = json.loads((out / "metrics.json").read_text())
    assert m["profile"] == "cifar10"
    assert set(m["model"]["accuracy"]) == {"train", "val", "test"}
    assert (out / "training_curves.png").is_file() and (out / "splits.md").is_file()
    assert "airplane" in (out / "splits.md").read_text()
