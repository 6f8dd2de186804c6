"""helpers.tools.precompute on torch.distributed (gloo, 2 CPU processes): the heavy stages' work units give
exactly the results of one process, with a shared cache or with one cache per rank; the cache folders of 1
and 2 ranks are identical file for file; a rank killed mid-run under ``torchrun --max-restarts 1`` is
restarted and the run ends with the uninterrupted run's files; nothing is left in the temporary folder."""
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.experiment import Experiment
from helpers.paper1 import stages as paper1
from helpers.paper2 import stages as paper2
from helpers.paths import REPO_ROOT

pytestmark = pytest.mark.slow  # every test here starts processes

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
TORCHRUN_1 = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]


def _precompute(launcher: list[str], env_extra: dict, check: bool = True, args=()) -> subprocess.CompletedProcess:
    """Run the precompute on digits with a temporary folder of its own (TMPDIR), and check that it left no
    ``precompute-*`` entry there."""
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONHASHSEED": "0", **env_extra}
    env.pop("COMPANION_OUTPUT_DIR", None)
    with tempfile.TemporaryDirectory(prefix="test-precompute-tmp-") as tmp:
        env["TMPDIR"] = tmp
        proc = subprocess.run([*launcher, "-m", "helpers.tools.precompute", "--profile", "digits", *args],
                              cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
        left = sorted(p.name for p in Path(tmp).glob("precompute-*"))
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not left, f"left in the temporary folder: {left}"
    return proc


def _summary(proc: subprocess.CompletedProcess) -> dict:
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _hashes(folder) -> dict:
    """sha256 of every file under ``folder`` (hidden ones included), by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


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
    """One rank (torchrun): the artifacts folder and the summary."""
    art = tmp_path_factory.mktemp("single")
    summary = _summary(_precompute(TORCHRUN_1, {"COMPANION_ARTIFACTS": str(art)}))
    assert summary["world"] == 1
    return art, summary


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """Two ranks on a shared cache: the artifacts folder, rank 0's summary and the ranks' stderr."""
    art = tmp_path_factory.mktemp("two")
    proc = _precompute(TORCHRUN, {"COMPANION_ARTIFACTS": str(art)})
    return art, _summary(proc), proc.stderr


def test_two_processes_on_a_shared_cache_give_the_single_process_results(single, two, tmp_path, monkeypatch):
    art, summary, _ = two
    assert summary["world"] == 2 and summary["shared_cache"] is True
    for name, s in summary["stages"].items():  # the queue: every unit run once, by one rank or the other
        assert sum(s["by_rank"]) == s["units"], (name, s)
    for name in ("lcr", "debugging"):  # many units: both ranks took some
        assert min(summary["stages"][name]["by_rank"]) > 0, summary
    _assert_same(_results(single[0], monkeypatch, tmp_path), _results(art, monkeypatch, tmp_path))


def test_each_rank_logs_its_units_as_they_end(two):
    """A long job is not silent: a line per unit and rank (step, unit i/n, its time, the step's ETA), and a
    line per stage from rank 0; the last unit of a step has nothing left."""
    log = two[2]
    for stage in ("conductance", "lcr", "cfe", "debugging"):
        assert f"precompute: digits, stage {stage} on 2 process(es)" in log
    for rank in (0, 1):
        assert f"precompute rank {rank}/2: LCR label-matrix parts " in log
    lines = [ln for ln in log.splitlines() if ln.startswith("precompute rank ")]
    assert len(lines) == sum(s["units"] for s in two[1]["stages"].values())
    assert any(": debugging fine-tunes " in ln and "about 0.0 s left" in ln for ln in lines)


def test_one_and_two_ranks_fill_byte_identical_cache_folders(single, two):
    """Every file of the cache folder (data files, sidecars) has the same sha256 after 1 and 2 ranks; the
    timings are beside it, in the cost records."""
    a, b = _hashes(single[0] / "digits"), _hashes(two[0] / "digits")
    assert len(a) > 100 and a == b, sorted(set(a.items()) ^ set(b.items()))[:6]
    assert len(_hashes(two[0] / ".stage-costs" / "digits")) > 100


def test_two_processes_without_a_shared_cache_exchange_their_files(single, tmp_path, monkeypatch):
    private = tmp_path / "private"
    proc = _precompute(TORCHRUN, {"COMPANION_PRECOMPUTE_PRIVATE_CACHE": str(private)})
    assert _summary(proc)["shared_cache"] is False
    ref = _results(single[0], monkeypatch, tmp_path)
    for rank in ("rank0", "rank1"):  # every machine's cache ends complete
        _assert_same(ref, _results(private / rank, monkeypatch, tmp_path))
    # and so do its cost records: a unit computed on the other machine counts its seconds on this one too
    costs = [_hashes(private / rank / ".stage-costs" / "digits") for rank in ("rank0", "rank1")]
    units = [k for k in costs[0] if k.startswith("lcr_preds_part-")]
    assert units and costs[0] == costs[1], sorted(set(costs[0].items()) ^ set(costs[1].items()))[:6]
    parts = {f"{n}.json" for n in _hashes(private / "rank0" / "digits")
             if n.startswith(("lcr_preds_part-", "lcr_screen_block-", "conductance_part-")) and not n.endswith(".json")}
    assert parts and set(costs[0]) >= parts, sorted(parts - set(costs[0]))[:6]


def test_a_rank_killed_mid_run_is_restarted_and_ends_with_the_uninterrupted_files(single, tmp_path):
    """``torchrun --max-restarts 1``: rank 1 sends itself SIGKILL after 3 units of the first LCR wave; torchrun
    restarts both ranks, which go on from the finished units (fewer stages computed than without the kill),
    and the cache holds exactly the uninterrupted run's files of those stages, byte for byte."""
    art = tmp_path / "killed"
    proc = _precompute([*TORCHRUN, "--max-restarts", "1"],
                       {"COMPANION_ARTIFACTS": str(art), "COMPANION_PRECOMPUTE_CRASH_RANK": "1:3",
                        "COMPANION_PRECOMPUTE_CRASH_HOW": "kill"}, args=("--only", "conductance,lcr"))
    assert "simulated kill after 3 units" in proc.stderr and "exitcode: -9" in proc.stderr
    summary = _summary(proc)
    assert summary["attempt"] == 1 and summary["stages"]["lcr"]["computed"] < single[1]["stages"]["lcr"]["computed"]
    ours = _hashes(art / "digits")
    stages = ("splits-", "predictions-", "conductance", "lcr_")
    assert ours == {k: v for k, v in _hashes(single[0] / "digits").items() if k.startswith(stages)}


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
