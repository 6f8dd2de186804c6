"""The training seed's share of every AUROC: paper 1's detectors (conductance, LCR, the joint NN) and the
one-pass baselines (MSP and friends) on models trained with several training seeds, everything else
held fixed.

Every detector AUROC in ``metrics.json`` carries a bootstrap interval over evaluation images: it says
how much the number would move on other images from the same distribution, for *this* trained model.
A second training seed gives another model with other mistakes, and the number moves for that reason
too.  This tool measures that second part: for each seed ``s`` it trains the profile's model with
``training.seed = s`` (the initial weights and the order of the training batches; the splits, the
mutants' seeds and the classifiers' seeds stay those of the profile's ``seed``), runs paper 1's stages
on it and records each detector's validation and test AUROC.  The summary gives, per detector and
split, the mean, the standard deviation over seeds (ddof = 1), the range, and beside it the mean
one-seed bootstrap half-width, so the two kinds of uncertainty can be compared.

    python -m helpers.tools.seed_spread --profile digits --seeds 0 1 2 3 4
    python -m helpers.tools.seed_spread --profile cub100 --seeds 0 1 2 --jobs 2 --set lcr.operator=gf lcr.rate=0.003

``--jobs N`` trains and evaluates N seeds at once, each in its own process with its share of the cores
(``threads`` = cores / N unless the overrides set it): seeds are independent, so on a CPU N one-thread
runs finish sooner than one after another on all threads, and on a machine with N GPUs each process
takes its own (``CUDA_VISIBLE_DEVICES`` is set per job).  ``--set`` fixes what the seeds share, for
example the LCR setting the profile's own run chose, so that each seed skips the grid (its cost is then
one setting's mutants; the spread is then the spread at that setting, not of the selection rule).

Writes ``<outputs>/<profile>/seed_spread.json`` (each seed's AUROCs as soon as that seed is done, so a
rerun resumes: a finished seed is not computed again) and, where the profile's run is there, adds the
summary to its ``metrics.json`` (``seed_spread``) and the table beside its intervals (``seed_spread.md``,
as notebook 03 draws it).  Each seed's stages are cached like any run's (``artifacts/<profile>/``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import pandas as pd

from helpers.evaluation import baseline_table, evaluate_scores
from helpers.experiment import Experiment, write_table
from helpers.paper1.stages import joint_features, joint_scores
from helpers.paths import output_root
from helpers.profiles import load_profile, parse_set
from helpers.utils import atomic_write_json, cli_main

#: the detectors whose spread is measured: paper 1's three and the one-pass baselines
DETECTORS = ("conductance", "lcr", "joint_nn", "msp", "doctor_alpha", "energy", "entropy", "max_logit")
SPLITS = ("val", "test")


def seed_overrides(seed: int, overrides: dict | None = None) -> dict:
    """The overrides of one seed's run: the model trained here (no committed checkpoint) with
    ``training.seed = seed``."""
    return {**(overrides or {}), "checkpoint": None, "training": {**(overrides or {}).get("training", {}),
                                                                   "seed": int(seed)}}


def seed_aurocs(exp: Experiment) -> dict:
    """``{detector: {split: {"auroc", "ci_low", "ci_high"}}}`` of one trained model, and its accuracy."""
    feats = joint_features(exp)
    scores = feats[["id", "split", "conductance", "lcr"]].merge(
        joint_scores(exp, feats)[["id", "joint_nn"]], on="id", validate="one_to_one").merge(
        baseline_table(exp), on=["id", "split"], validate="one_to_one")
    reports, _ = evaluate_scores(exp, scores, DETECTORS)
    out = {d: {s: {k: round(float(reports[d][s][k]), 6) for k in ("auroc", "auroc_ci_low", "auroc_ci_high")}
               for s in SPLITS} for d in DETECTORS}
    acc = exp.predictions.groupby("split")["correct"].mean()
    return {"detectors": out, "accuracy": {s: round(float(acc[s]), 6) for s in ("train", *SPLITS)}}


def summarise(per_seed: dict) -> dict:
    """Per detector and split: the seeds' AUROC mean, sd (ddof 1), min, max, and the mean one-seed bootstrap
    half-width (the interval over images of a single seed's number), with their ratio."""
    seeds = sorted(per_seed, key=int)
    out: dict = {"seeds": [int(s) for s in seeds], "n_seeds": len(seeds), "detectors": {}}
    for d in DETECTORS:
        for s in SPLITS:
            a = np.array([per_seed[k]["detectors"][d][s]["auroc"] for k in seeds])
            half = np.array([(per_seed[k]["detectors"][d][s]["auroc_ci_high"]
                              - per_seed[k]["detectors"][d][s]["auroc_ci_low"]) / 2 for k in seeds])
            sd = float(a.std(ddof=1)) if len(a) > 1 else float("nan")
            out["detectors"].setdefault(d, {})[s] = {
                "mean": round(float(a.mean()), 4), "sd": round(sd, 4), "min": round(float(a.min()), 4),
                "max": round(float(a.max()), 4), "one_seed_ci_halfwidth": round(float(half.mean()), 4),
                # sd over seeds against the bootstrap's sd over images (half-width / 1.96)
                "seed_sd_over_image_sd": round(sd / float(half.mean() / 1.96), 2) if half.mean() > 0 else None}
    acc = {s: np.array([per_seed[k]["accuracy"][s] for k in seeds]) for s in ("train", *SPLITS)}
    out["accuracy"] = {s: {"mean": round(float(v.mean()), 4), "min": round(float(v.min()), 4),
                           "max": round(float(v.max()), 4)} for s, v in acc.items()}
    return out


def one_seed(profile: str, seed: int, overrides: dict | None = None, progress: bool = True,
             gpu: int | None = None) -> dict:
    """The AUROCs of the model trained with training seed ``seed`` (:func:`seed_aurocs`); its own outputs go
    to a temporary folder, its stages to the profile's cache.  ``gpu``: the CUDA device this process may see
    (a job of ``--jobs`` on a machine with several GPUs)."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    with tempfile.TemporaryDirectory(prefix="seed-spread-") as tmp:  # the seed's own outputs: not kept
        exp = Experiment(profile, seed_overrides(seed, overrides), output_dir=tmp, progress=progress)
        out = seed_aurocs(exp)
    import torch

    out["threads"] = torch.get_num_threads()  # float sums, and so the last digits, follow the thread count
    return out


def job_overrides(overrides: dict | None, jobs: int, cores: int | None = None) -> dict:
    """The overrides of each of ``jobs`` concurrent seeds: the user's, with ``threads`` = the cores shared
    out (at least 1) unless the user set it."""
    overrides = dict(overrides or {})
    if jobs > 1 and not overrides.get("threads"):
        overrides["threads"] = max(1, (cores or os.cpu_count() or 1) // jobs)
    return overrides


def _gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # no usable CUDA: CPU jobs
        return 0


def spread(profile: str, seeds: list[int], overrides: dict | None = None, output_dir: str | None = None,
           progress: bool = True, jobs: int = 1) -> dict:
    """Run every seed not yet in ``seed_spread.json`` (``jobs`` of them at once) and return the summary
    (also written to ``metrics.json``'s ``seed_spread``)."""
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds: {seeds} is not valid; valid: at least two different seeds, e.g. 0 1 2 3 4")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"--jobs: {jobs!r} is not valid; valid: a whole number of processes, 1 or more")
    run_overrides = job_overrides(overrides, jobs)
    cfg = load_profile(profile, seed_overrides(seeds[0], run_overrides))  # checked before any long work
    folder = Path(output_dir) if output_dir else output_root() / cfg["name"]
    path = folder / "seed_spread.json"
    record = json.loads(path.read_text()) if path.is_file() else {}
    done = record.get("per_seed", {})
    if done and record.get("overrides", overrides or {}) != (overrides or {}):
        raise ValueError(f"--set: {overrides or {}} differs from the overrides of the seeds in {path} "
                         f"({record.get('overrides')}); valid: the same overrides, or another --output-dir")
    head = {"profile": cfg["name"], "overrides": overrides or {}}

    def finished(s: int, result: dict) -> None:
        done[str(s)] = result
        atomic_write_json(path, {**head, "per_seed": done})  # each seed as soon as it is done: a rerun resumes
        print(f"[{cfg['name']}] training seed {s}: " + ", ".join(
            f"{d} {result['detectors'][d]['test']['auroc']:.3f}" for d in ("conductance", "lcr", "joint_nn",
                                                                       "msp")) + " (test AUROC)", flush=True)

    todo = [s for s in seeds if str(s) not in done]
    if jobs == 1 or len(todo) <= 1:
        for s in todo:
            finished(s, one_seed(profile, s, run_overrides, progress))
    else:
        import multiprocessing

        gpus = _gpus()
        with ProcessPoolExecutor(max_workers=min(jobs, len(todo)),
                                 mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(one_seed, profile, s, run_overrides, False,
                                   (i % gpus) if gpus else None): s for i, s in enumerate(todo)}
            for f in as_completed(futures):
                finished(futures[f], f.result())
    summary = summarise({str(s): done[str(s)] for s in seeds})
    atomic_write_json(path, {**head, "per_seed": done, "summary": summary})
    metrics = folder / "metrics.json"
    if metrics.is_file():  # the profile's run: its metrics and its table (notebook 03's, until that reruns)
        m = json.loads(metrics.read_text())
        m["seed_spread"] = summary
        atomic_write_json(metrics, m)
        if "detectors" in m:
            write_table(folder, spread_table(summary, m["detectors"]), "seed_spread")
    return summary


def recorded(output_dir) -> dict | None:
    """The summary of ``<output_dir>/seed_spread.json`` (None when the tool has not run for the profile)."""
    path = Path(output_dir) / "seed_spread.json"
    return json.loads(path.read_text()).get("summary") if path.is_file() else None


def spread_table(summary: dict, detectors: dict) -> pd.DataFrame:
    """One row per detector and split: this run's AUROC with its interval over evaluation images (``detectors``:
    metrics.json's section) beside the spread of the same AUROC over training seeds (``summary``).  Rows in
    sorted order of detector and split, whatever order ``summary`` has (read back from JSON or just made)."""
    rows = []
    for d, per_split in sorted(summary["detectors"].items()):
        for split, r in sorted(per_split.items()):
            one = detectors.get(d, {}).get(split, {})
            rows.append({"detector": d, "split": split, "this run's AUROC": one.get("auroc"),
                         "95% CI over images": (f"[{one['auroc_ci_low']:.3f}, {one['auroc_ci_high']:.3f}]"
                                                if "auroc_ci_low" in one else None),
                         f"seeds mean ± sd (n={summary['n_seeds']})": f"{r['mean']:.3f} ± {r['sd']:.3f}",
                         "seeds range": f"[{r['min']:.3f}, {r['max']:.3f}]",
                         "sd over seeds / sd over images": r["seed_sd_over_image_sd"]})
    return pd.DataFrame(rows)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", required=True, help="profile name (params/<name>.yaml) or a YAML path")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="training seeds (default 0-4)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="profile overrides, dotted keys")
    ap.add_argument("--output-dir", default=None, help="default: figures/<profile>/")
    ap.add_argument("--jobs", type=int, default=1, help="seeds computed at once, each in its own process (default 1)")
    a = ap.parse_args(argv)
    print(json.dumps(spread(a.profile, a.seeds, parse_set(a.set), a.output_dir, jobs=a.jobs), indent=1))


if __name__ == "__main__":
    sys.exit(cli_main(main))
