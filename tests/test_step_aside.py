"""A model without a pooled linear head (an MLP over flattened features): paper 1's notebooks run, and
notebooks 04-05 step aside, saying why, instead of failing (helpers.notebook.step_aside)."""
import json

import nbformat
import pytest
import yaml

from helpers.notebook import step_aside
from helpers.paths import PARAMS_DIR, REPO_ROOT


class _Metrics:
    """The part of an Experiment that step_aside uses: metrics.json in a folder."""

    def __init__(self, path):
        self.path = path

    def metrics(self):
        return json.loads(self.path.read_text()) if self.path.is_file() else {}

    def update_metrics(self, updates, fresh=False):
        m = {} if fresh else self.metrics()
        for k, v in updates.items():
            m[k] = {**m.get(k, {}), **v} if isinstance(v, dict) and isinstance(m.get(k), dict) else v
        self.path.write_text(json.dumps(m))


def test_later_cells_do_nothing_and_the_reason_is_recorded(tmp_path):
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    try:
        exp = _Metrics(tmp_path / "metrics.json")
        shell.user_ns.update(step_aside=step_aside, exp=exp)
        assert shell.run_cell("ran = []; step_aside(None, exp, '04_x')").result is False
        shell.run_cell("ran.append(1)")
        assert shell.user_ns["ran"] == [1] and exp.metrics() == {}  # no reason: nothing changes
        assert shell.run_cell("step_aside('no pooled head', exp, '04_x')").result is True
        assert shell.run_cell("ran.append(2); 1 / 0").success  # an empty cell: neither runs nor fails
        assert shell.user_ns["ran"] == [1] and exp.metrics() == {"skipped": {"04_x": "no pooled head"}}
    finally:
        InteractiveShell.clear_instance()
    # a later run that can go ahead drops the stale reason
    step_aside(None, exp, "04_x")
    assert exp.metrics() == {"skipped": {}}


@pytest.mark.slow  # two notebook kernels
def test_notebooks_04_and_05_step_aside_on_a_model_without_a_pooled_head(tmp_path, monkeypatch, capsys):
    from helpers.tools import run_notebooks

    raw = yaml.safe_load((PARAMS_DIR / "example-own-model.yaml").read_text())
    raw.update(name="mlp-head", model="tests.zoo_model:build_mlp_head", image_size=32,
               data_dir=str(REPO_ROOT / "examples" / "shapes"))
    profile = tmp_path / "mlp-head.yaml"
    profile.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))  # the kernels import tests.zoo_model
    monkeypatch.setenv("COMPANION_ARTIFACTS", str(tmp_path / "art"))
    monkeypatch.setenv("COMPANION_OUTPUT_DIR", str(tmp_path / "out"))
    assert len(run_notebooks.run(str(profile), only=["04", "05"])) == 2
    out = tmp_path / "out" / "mlp-head"
    skipped = json.loads((out / "metrics.json").read_text())["skipped"]
    assert set(skipped) == {"04_cfe_filters", "05_model_debugging"}
    assert all("no global-average-pool + linear head" in why for why in skipped.values())
    assert capsys.readouterr().out.count("stepped aside") == 2
    for stem in skipped:
        nb = nbformat.read(out / "notebooks" / f"{stem}.ipynb", as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        at = next(i for i, c in enumerate(code) if "step_aside(" in c.source)
        assert "steps aside" in code[at].outputs[-1]["data"]["text/markdown"]
        assert len(code) > at + 2 and not any(c.outputs for c in code[at + 1:])  # the rest ran as empty cells
    assert not (out / "cfe_generator_history.csv").exists()
