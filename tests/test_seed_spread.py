"""The training seed's share of every AUROC (helpers.tools.seed_spread): another training seed trains
another model on the same splits, the summary is the seeds' spread, and a rerun resumes."""
import json

import pytest

from helpers.experiment import Experiment
from helpers.tools import seed_spread

TINY = {"lcr": {"grid_operators": ["filter_nai"], "grid_rates": [0.05], "grid_mutants": 3, "n_mutants": 5},
        "conductance": {"detector": {"epochs": 2}}, "joint": {"folds": 2}, "metrics": {"n_bootstrap": 50},
        "training": {"epochs": 1}}


@pytest.fixture
def art(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPANION_ARTIFACTS", str(tmp_path / "art"))
    return tmp_path


def test_a_training_seed_changes_the_model_and_nothing_else(art):
    a, b = (Experiment("digits", seed_spread.seed_overrides(s, TINY), output_dir=art / f"o{s}", progress=False)
            for s in (1, 2))
    assert a.train_seed == 1 and b.train_seed == 2 and a.seed == b.seed
    assert a.data_key == b.data_key  # the same splits
    assert a.model_params != b.model_params
    wa, wb = (next(iter(e.model.state_dict().values())) for e in (a, b))
    assert not bool((wa == wb).all())
    # the default (training.seed null) keeps the profile's model and its cache key
    plain = Experiment("digits", output_dir=art / "plain", progress=False)
    assert "seed" not in plain.model_params["training"] and plain.train_seed == plain.seed


def test_the_spread_is_summarised_and_a_rerun_resumes(art, monkeypatch):
    out = art / "out"
    summary = seed_spread.spread("digits", [0, 1], TINY, str(out), progress=False)
    assert summary["seeds"] == [0, 1]
    per_seed = json.loads((out / "seed_spread.json").read_text())["per_seed"]
    for d in ("conductance", "lcr", "joint_nn", "msp"):
        a, b = (per_seed[s]["detectors"][d]["test"]["auroc"] for s in ("0", "1"))
        row = summary["detectors"][d]["test"]
        assert row["min"] == round(min(a, b), 4) and row["max"] == round(max(a, b), 4)
        assert row["sd"] == pytest.approx(abs(a - b) / 2 ** 0.5, abs=1e-4)  # sd (ddof 1) of two values
    assert len({per_seed[s]["accuracy"]["val"] for s in ("0", "1")} | {
        per_seed[s]["detectors"]["msp"]["val"]["auroc"] for s in ("0", "1")}) > 2  # two different models

    def no_recompute(exp):
        raise AssertionError(f"training seed {exp.train_seed} was computed again")

    monkeypatch.setattr(seed_spread, "seed_aurocs", no_recompute)
    assert seed_spread.spread("digits", [1, 0], TINY, str(out), progress=False) == summary


def test_the_profiles_run_gets_the_summary_and_the_table_beside_its_intervals(art, monkeypatch):
    """Where the profile's run is in the output folder, its metrics.json gains ``seed_spread`` and the folder
    the table notebook 03 draws; elsewhere only seed_spread.json is written."""
    def fake_seed(profile, seed, overrides=None, progress=True, gpu=None):
        r = {"auroc": 0.8 + seed / 100, "auroc_ci_low": 0.75, "auroc_ci_high": 0.85}
        return {"detectors": {d: {s: dict(r) for s in seed_spread.SPLITS} for d in seed_spread.DETECTORS},
                "accuracy": {s: 0.9 for s in ("train", *seed_spread.SPLITS)}}

    monkeypatch.setattr(seed_spread, "one_seed", fake_seed)
    run = art / "run"
    run.mkdir()
    one = {"auroc": 0.81, "auroc_ci_low": 0.76, "auroc_ci_high": 0.86}
    (run / "metrics.json").write_text(json.dumps({"profile": "digits", "detectors": {"lcr": {"val": one,
                                                                                               "test": one}}}))
    summary = seed_spread.spread("digits", [0, 2], TINY, str(run), progress=False)
    assert json.loads((run / "metrics.json").read_text())["seed_spread"] == summary
    table = (run / "seed_spread.md").read_text()
    assert "[0.760, 0.860]" in table and "0.810 ± 0.014" in table  # this run's interval beside the seeds' spread
    # the same table, row for row, as notebook 03 draws from the summary read back from seed_spread.json
    again = seed_spread.spread_table(seed_spread.recorded(run), json.loads((run / "metrics.json").read_text())
                                     ["detectors"])
    assert again.equals(seed_spread.spread_table(summary, {"lcr": {"val": one, "test": one}}))
    assert list(again["split"][:2]) == sorted(seed_spread.SPLITS) and again["detector"].is_monotonic_increasing
    bare = art / "bare"
    seed_spread.spread("digits", [0, 2], TINY, str(bare), progress=False)
    assert sorted(p.name for p in bare.iterdir()) == ["seed_spread.json"]


def test_bad_seeds_are_refused_before_any_work(art):
    for seeds in ([3], [1, 1]):
        with pytest.raises(ValueError, match=r"--seeds: .* valid: at least two different seeds"):
            seed_spread.spread("digits", seeds, TINY, str(art / "x"))


@pytest.mark.slow
def test_seeds_run_as_parallel_jobs_give_the_numbers_of_one_process(art, monkeypatch):
    """``--jobs 2``: two seeds at once, each in its own process and from an empty cache, give exactly what
    this process gives for the same seed (the same thread count: one), and the record names the overrides
    the seeds share (here a fixed LCR setting: no grid)."""
    one = {**TINY, "threads": 1, "lcr": {**TINY["lcr"], "operator": "filter_nai", "rate": 0.05}}
    here = seed_spread.one_seed("digits", 1, one, progress=False)
    monkeypatch.setenv("COMPANION_ARTIFACTS", str(art / "art-parallel"))  # nothing cached: the jobs compute
    summary = seed_spread.spread("digits", [0, 1], one, str(art / "parallel"), progress=False, jobs=2)
    assert len(list((art / "art-parallel").rglob("model-*.pt"))) == 2  # each job trained its own model
    record = json.loads((art / "parallel" / "seed_spread.json").read_text())
    assert record["per_seed"]["1"] == here and record["overrides"] == one and record["summary"] == summary
    assert record["per_seed"]["0"]["detectors"] != here["detectors"]  # another seed, another model
    assert {r["threads"] for r in record["per_seed"].values()} == {1}


def test_the_jobs_share_the_cores_unless_the_threads_are_set():
    assert seed_spread.job_overrides({}, 2, cores=16)["threads"] == 8
    assert seed_spread.job_overrides({}, 4, cores=2)["threads"] == 1
    assert seed_spread.job_overrides({"threads": 3}, 2, cores=16)["threads"] == 3
    assert "threads" not in seed_spread.job_overrides({}, 1, cores=16)


def test_bad_jobs_and_other_overrides_are_refused_before_any_work(art):
    for jobs in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match=r"--jobs: .* valid: a whole number of processes, 1 or more"):
            seed_spread.spread("digits", [0, 1], TINY, str(art / "x"), jobs=jobs)
    (art / "y").mkdir()
    (art / "y" / "seed_spread.json").write_text(json.dumps(
        {"profile": "digits", "overrides": {"lcr": {"n_mutants": 7}}, "per_seed": {"0": {}}}))
    with pytest.raises(ValueError, match=r"--set: .* differs from the overrides of the seeds in"):
        seed_spread.spread("digits", [0, 1], TINY, str(art / "y"))
