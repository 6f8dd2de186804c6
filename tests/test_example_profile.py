"""The worked example of docs/your-model.md: a torchvision ResNet-18 on the ImageFolder tree that ships in
examples/shapes/ runs all six notebooks, with the layers found, not declared."""
import json

import pytest

from helpers.experiment import Experiment
from helpers.tools import run_notebooks

pytestmark = pytest.mark.slow  # six notebook kernels


def test_the_layers_of_the_example_model_are_found(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPANION_ARTIFACTS", str(tmp_path / "art"))
    exp = Experiment("example-own-model", output_dir=tmp_path / "out", progress=False)
    model = exp.build_model(weights=None)
    assert model.last_conv_layer == "layer4" and model.gap_linear_head == ("layer4", "fc")
    assert exp.data.classes == ["circle", "square", "stripes"]


def test_the_example_profile_runs_all_six_notebooks(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the kernels: one thread each beside the other test worker
    monkeypatch.setenv("COMPANION_ARTIFACTS", str(tmp_path / "art"))
    monkeypatch.setenv("COMPANION_OUTPUT_DIR", str(tmp_path / "out"))
    seconds = run_notebooks.run("example-own-model")
    assert len(seconds) == 6
    out = tmp_path / "out" / "example-own-model"
    m = json.loads((out / "metrics.json").read_text())
    for detector in ("conductance", "lcr", "joint_nn", "msp", "cfe_outside"):
        assert 0 <= m["detectors"][detector]["val"]["auroc"] <= 1, detector
    assert "difference" in m["debugging"] and (out / "report.md").is_file()
    assert len(list((out / "notebooks").glob("0*.ipynb"))) == 6


def test_a_second_zoo_family_runs_all_six_notebooks(tmp_path, monkeypatch):
    """A copy of the example profile with only `model` changed, as docs/your-model.md tells a user to make:
    ShuffleNet-v2 (channel shuffles, depthwise convs, a pooled linear head after a 1x1 conv) runs through."""
    import yaml

    from helpers.paths import PARAMS_DIR, REPO_ROOT

    raw = yaml.safe_load((PARAMS_DIR / "example-own-model.yaml").read_text())
    raw.update(name="example-shufflenet", model="torchvision.shufflenet_v2_x0_5",
               data_dir=str(REPO_ROOT / "examples" / "shapes"))
    profile = tmp_path / "example-shufflenet.yaml"
    profile.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the kernels: one thread each beside the other test worker
    monkeypatch.setenv("COMPANION_ARTIFACTS", str(tmp_path / "art"))
    monkeypatch.setenv("COMPANION_OUTPUT_DIR", str(tmp_path / "out"))
    assert len(run_notebooks.run(str(profile))) == 6
    m = json.loads((tmp_path / "out" / "example-shufflenet" / "metrics.json").read_text())
    assert "skipped" not in m and m["model"]["name"] == "torchvision.shufflenet_v2_x0_5"
    for detector in ("conductance", "lcr", "joint_nn", "msp", "cfe_outside"):
        assert 0 <= m["detectors"][detector]["test"]["auroc"] <= 1, detector
    assert "difference" in m["debugging"]
