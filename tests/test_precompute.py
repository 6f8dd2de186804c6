"""helpers.tools.precompute on torch.distributed (gloo, 2 CPU processes): the heavy stages' work units give
exactly the results of one process, with a shared cache or with one cache per rank, and a rank killed
mid-run resumes from the finished units."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers.experiment import Experiment
from helpers.paper1 import stages as paper1
from helpers.paper2 import stages as paper2
from helpers.paths import REPO_ROOT

pytestmark = pytest.mark.slow  # every test here starts processes

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def _precompute(launcher: list[str], env_extra: dict, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONHASHSEED": "0", **env_extra}
    env.pop("COMPANION_OUTPUT_DIR", None)
    proc = subprocess.run([*launcher, "-m", "helpers.tools.precompute", "--profile", "digits"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _results(artifacts, monkeypatch, tmp_path) -> dict:
    """Everything the heavy stages cached, read back through the notebooks' own functions (cache only)."""
    monkeypatch.setenv("COMPANION_ARTIFACTS", str(artifacts))
    exp = Experiment("digits", output_dir=tmp_path / f"out-{artifacts.name}", progress=False)
    with exp.cache.cached_only():  # nothing may be computed here: all of it must come from the precompute
        gens, hist = paper2.generators(exp)
        grid, chosen = paper2.debugging_grid(exp)
        seeds, stats, _ = paper2.debugging_seeds(exp, chosen)
        return {"conductance": paper1.conductance_table(exp), "lcr": paper1.lcr_matrix(exp)["preds"],
                "weight": gens.weight.detach().clone(), "history": hist, "grid": grid, "seeds": seeds, "stats": stats,
                "agreement": paper2.debugged_agreement(exp, *chosen, exp.seed)}


def _assert_same(a: dict, b: dict) -> None:
    import pandas as pd

    pd.testing.assert_frame_equal(a["conductance"], b["conductance"], check_exact=True)
    np.testing.assert_array_equal(a["lcr"], b["lcr"])
    assert torch.equal(a["weight"], b["weight"])
    pd.testing.assert_frame_equal(a["history"], b["history"], check_exact=True)
    pd.testing.assert_frame_equal(a["grid"], b["grid"], check_exact=True)
    pd.testing.assert_frame_equal(a["seeds"], b["seeds"], check_exact=True)
    assert a["stats"] == b["stats"]
    assert (json.dumps(a["agreement"], sort_keys=True, default=str)
            == json.dumps(b["agreement"], sort_keys=True, default=str))


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    art = tmp_path_factory.mktemp("single")
    proc = _precompute([sys.executable], {"COMPANION_ARTIFACTS": str(art)})
    assert json.loads(proc.stdout.strip().splitlines()[-1])["world"] == 1
    return art


def test_two_processes_on_a_shared_cache_give_the_single_process_results(single, tmp_path, monkeypatch):
    art = tmp_path / "two"
    proc = _precompute(TORCHRUN, {"COMPANION_ARTIFACTS": str(art)})
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["world"] == 2 and summary["shared_cache"] is True
    assert all(0 < s["mine"] < s["units"] for name, s in summary["stages"].items() if s["units"] > 1), summary
    _assert_same(_results(single, monkeypatch, tmp_path), _results(art, monkeypatch, tmp_path))


def test_two_processes_without_a_shared_cache_exchange_their_files(single, tmp_path, monkeypatch):
    private = tmp_path / "private"
    proc = _precompute(TORCHRUN, {"COMPANION_PRECOMPUTE_PRIVATE_CACHE": str(private)})
    assert json.loads(proc.stdout.strip().splitlines()[-1])["shared_cache"] is False
    ref = _results(single, monkeypatch, tmp_path)
    for rank in ("rank0", "rank1"):  # every machine's cache ends complete
        _assert_same(ref, _results(private / rank, monkeypatch, tmp_path))


def test_a_rank_killed_mid_run_resumes_from_the_finished_units(single, tmp_path, monkeypatch):
    art = tmp_path / "killed"
    proc = _precompute(TORCHRUN, {"COMPANION_ARTIFACTS": str(art), "COMPANION_PRECOMPUTE_CRASH_RANK": "1:3"},
                       check=False)
    assert proc.returncode != 0 and "simulated crash" in proc.stderr
    done = {p.name for p in (art / "digits").glob("*.json")}
    assert any(n.startswith("lcr_screen") for n in done)  # some units finished before the crash
    assert not list((art / "digits").glob("*.tmp"))  # nothing half-written
    _precompute(TORCHRUN, {"COMPANION_ARTIFACTS": str(art)})
    assert done <= {p.name for p in (art / "digits").glob("*.json")}
    _assert_same(_results(single, monkeypatch, tmp_path), _results(art, monkeypatch, tmp_path))


def test_conductance_parts_and_generator_groups_assemble_to_the_unsplit_results(tmp_path, monkeypatch):
    """Units smaller than digits' defaults (several conductance parts per split, several generator
    groups), cached one by one as other processes would, assemble into the unsplit results."""
    import pandas as pd

    from helpers.paper2 import cfe

    monkeypatch.setenv("COMPANION_ARTIFACTS", str(tmp_path / "art"))
    exp = Experiment("digits", {"training.eval_batch_size": 128}, output_dir=tmp_path / "out", progress=False)
    k, n = paper2.frozen_head(exp).in_features, len(exp.data.classes)
    monkeypatch.setattr(paper2, "generator_groups", lambda e: cfe.generator_groups(k, n, group_size=3))
    whole = paper1.conductance_table(exp)  # one part per split (CONDUCTANCE_PART >= each split)
    gens, hist = paper2.generators(exp)  # 4 groups, trained one after the other in this process
    for f in exp.artifacts_dir.glob("c*"):  # conductance and generators, not their inputs
        if f.name.startswith(("conductance-", "cfe_generators-")):
            f.unlink()
    monkeypatch.setattr(paper1, "CONDUCTANCE_PART", 256)  # 2 batches of 128 per part
    parts = paper1.conductance_parts(exp)
    assert len(parts) > 3 and all((b - a) % 128 == 0 or b == len(exp.data[s]) for s, a, b in parts)
    for p in parts[::-1]:  # in another order, as other ranks would
        paper1.conductance_part(exp, *p)
    for g in paper2.generator_groups(exp)[::-1]:
        paper2.generator_group(exp, g)
    pd.testing.assert_frame_equal(paper1.conductance_table(exp), whole, check_exact=True)
    gens2, hist2 = paper2.generators(exp)
    assert torch.equal(gens2.weight, gens.weight) and torch.equal(gens2.bias, gens.bias)
    pd.testing.assert_frame_equal(hist2, hist, check_exact=True)


def test_a_unit_that_fails_on_one_rank_stops_every_rank_at_once(tmp_path):
    proc = _precompute(TORCHRUN, {"COMPANION_ARTIFACTS": str(tmp_path / "art"),
                                  "COMPANION_PRECOMPUTE_CRASH_RANK": "1:3",
                                  "COMPANION_PRECOMPUTE_CRASH_HOW": "raise"}, check=False)
    assert proc.returncode != 0
    assert "simulated failure of rank 1" in proc.stderr  # the failing rank's own error
    assert "another rank failed" in proc.stderr  # rank 0 stops too, instead of waiting in a collective
