"""The plain papermill CLI runs a notebook as papermill users call it: parameters with -p, or a
parameters file with -f (profile, overrides, output_dir).  The default profile, whose stages are
cached in artifacts/digits, so each run takes seconds; outputs go to a temporary folder."""
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

from helpers.paths import REPO_ROOT
from helpers.profiles import DEFAULT_PROFILE

pytestmark = pytest.mark.slow  # every test here starts processes

NOTEBOOK = "notebooks/00_data_and_model.ipynb"


def run_papermill(args: list[str], env_extra: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    # the kernel `make setup` registers ("python3", this environment's python), before any other "python3"
    env["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(Path(sys.prefix) / "share" / "jupyter"),
                                                        os.environ.get("JUPYTER_PATH")]))
    env.pop("COMPANION_OUTPUT_DIR", None)  # output_dir is a notebook parameter here
    env.update(env_extra or {})
    proc = subprocess.run([sys.executable, "-m", "papermill", *args, "--no-progress-bar"], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, (f"papermill exited {proc.returncode}:\n"
                                      f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def _check(out_nb: Path, out_dir: Path, expected: dict) -> None:
    m = json.loads((out_dir / "metrics.json").read_text())
    assert m["profile"] == DEFAULT_PROFILE
    assert set(m["model"]["accuracy"]) == {"train", "val", "test"}
    assert all(0.5 < a <= 1 for a in m["model"]["accuracy"].values())
    nb = nbformat.read(out_nb, as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1, "papermill found no cell tagged 'parameters'"
    ns: dict = {}
    exec(injected[0].source, ns)  # papermill's own Python assignments
    assert {k: ns[k] for k in expected} == expected
    assert nb.metadata.kernelspec.name == "python3"


def test_papermill_cli_with_p(tmp_path):
    """papermill notebooks/00_data_and_model.ipynb out.ipynb -p profile digits -p output_dir <dir>"""
    out_dir, out_nb = tmp_path / "figs", tmp_path / "out.ipynb"
    run_papermill([NOTEBOOK, str(out_nb), "-p", "profile", DEFAULT_PROFILE, "-p", "output_dir", str(out_dir)])
    _check(out_nb, out_dir, {"profile": DEFAULT_PROFILE, "output_dir": str(out_dir)})


def test_papermill_cli_with_params_file(tmp_path):
    """papermill ... -f my-params.yaml, here with --cwd notebooks (the working directory make figures gives)."""
    out_dir, out_nb = tmp_path / "figs", tmp_path / "out.ipynb"
    params = {"profile": DEFAULT_PROFILE, "overrides": {}, "output_dir": str(out_dir)}
    (tmp_path / "my-params.yaml").write_text(yaml.safe_dump(params))
    run_papermill([NOTEBOOK, str(out_nb), "-f", str(tmp_path / "my-params.yaml"), "--cwd", "notebooks"])
    _check(out_nb, out_dir, params)
