"""Paper 1's stages after the model: conductance (sec. 3), its detector (sec. 4.1), LCR (sec. 4.2) and
the joint classifier (sec. 4.3), each cached by its parameters.

Every function takes an :class:`~helpers.experiment.Experiment` and returns tables keyed by sample id,
computing (or loading) the upstream stages it needs, so any notebook runs on its own.  Per-sample
arrays are always joined on ``id`` (:func:`helpers.evaluation.with_predictions`).
"""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import torch

from helpers import metrics
from helpers.cache import FRAME, NPZ
from helpers.evaluation import SPLIT_ORDER, baseline_table, split_inputs, with_predictions, wrong
from helpers.experiment import Experiment
from helpers.paper1.conductance import conductance_dataset
from helpers.paper1.detectors import train_conductance_detector
from helpers.paper1.joint import (
    UNIFIED_CLASSIFIERS,
    cross_fitted_detector,
    fit_unified,
    out_of_fold_scores,
    relay_accuracy,
    unified_score,
)
from helpers.paper1.lcr import (
    ScreenBlock,
    ScreenExhausted,
    Screening,
    assemble_screen,
    candidate_seeds,
    choose_setting,
    label_change_rate,
    lcr_summary,
    mutant_predictions,
    prepare_screening,
    screen_candidates,
    screen_decided,
    screen_mutants,
    sprt_detect,
    sprt_score,
)
from helpers.paper1.mutation import MutantSpec
from helpers.training import iterate_batches


# --------------------------------------------------------------------------- conductance (paper 1, sec. 3)
def conductance_layer(exp: Experiment) -> str:
    return exp.cfg["conductance"]["layer"] or exp.model.last_conv_layer


def conductance_params(exp: Experiment) -> dict:
    cc = exp.cfg["conductance"]
    return {"model": exp.model_params, "checkpoint": exp.cfg["checkpoint"], "layer": conductance_layer(exp),
            "n_steps": cc["n_steps"], "method": cc["method"], "reduction": cc["reduction"]}


#: about this many images per conductance work unit of helpers.tools.precompute (rounded to whole eval batches)
CONDUCTANCE_PART = 2048


def conductance_parts(exp: Experiment) -> list[tuple[str, int, int]]:
    """The work units of the conductance pass: (split, start, stop) ranges of whole eval batches, so
    that each unit computes exactly the batches of the single-process pass.  Laid out by the profile's
    ``training.eval_batch_size``, not the accelerator-scaled batch, so the units and their cache keys are
    the same on every device (a GPU run's parts finish on a CPU machine)."""
    bs = exp.cfg["training"]["eval_batch_size"]
    per = bs * max(1, CONDUCTANCE_PART // bs)
    return [(s, a, min(a + per, len(exp.data[s]))) for s in SPLIT_ORDER for a in range(0, len(exp.data[s]), per)]


def conductance_part(exp: Experiment, split: str, start: int, stop: int, cache: bool = True) -> np.ndarray:
    """Conductance (N, C) float32 of the samples [start, stop) of a split.  ``cache=True`` (the
    precompute units): a cached stage of its own; inside :func:`conductance_table` only read when cached."""
    cc = exp.cfg["conductance"]

    def compute():
        batches = iterate_batches(exp.data[split].dataset, exp.eval_batch_size, start=start, stop=stop,
                                  **exp.loader_options)
        out = conductance_dataset(exp.model, conductance_layer(exp), batches, n_steps=cc["n_steps"],
                                  method=cc["method"], reduction=cc["reduction"], device=exp.device,
                                  progress=exp.progress)
        return {"conductance": out["conductance"]}

    if not cache:
        return compute()["conductance"]
    params = {**conductance_params(exp), "split": split, "start": start, "stop": stop,
              "batch": exp.cfg["training"]["eval_batch_size"]}
    return exp.cache.stage("conductance_part", params, compute, NPZ)["conductance"]


def conductance_table(exp: Experiment) -> pd.DataFrame:
    """Feature-map conductance of the predicted class for every sample: id, split, cond_0..cond_{C-1}.

    Computed part by part (:func:`conductance_parts`); parts that ``helpers.tools.precompute`` cached (on
    other processes or machines) are read instead, with identical results."""
    params = conductance_params(exp)

    def part(split, a, b):
        return exp.cache.if_cached(lambda: conductance_part(exp, split, a, b),
                             lambda: conductance_part(exp, split, a, b, cache=False))

    def compute():
        parts = []
        for split in SPLIT_ORDER:
            sd = exp.data[split]
            cond = np.concatenate([part(s, a, b) for s, a, b in conductance_parts(exp) if s == split], 0)
            df = pd.DataFrame(cond, columns=[f"cond_{k}" for k in range(cond.shape[1])])
            df.insert(0, "split", split)
            df.insert(0, "id", sd.ids)
            parts.append(df)
        return pd.concat(parts, ignore_index=True)

    return exp.cache.stage("conductance", params, compute, FRAME)


def feature_columns(df: pd.DataFrame, prefix: str = "cond_") -> list[str]:
    return [c for c in df.columns if c.startswith(prefix)]


def detector_kwargs(exp: Experiment) -> dict:
    d = exp.cfg["conductance"]["detector"]
    return {"epochs": d["epochs"], "batch_size": d["batch_size"], "lr": d["lr"], "patience": d["patience"],
            "seed": exp.seed, "device": str(exp.device)}


def conductance_detector(exp: Experiment) -> dict:
    """Paper 1, 4.1.2: the MLP detector trained on the train split's conductance, epoch chosen on val.

    Returns {"scores": DataFrame(id, split, conductance), "history": DataFrame, "best_epoch": int}.
    """
    params = {"conductance": conductance_params(exp), "detector": exp.cfg["conductance"]["detector"]}

    def compute():
        table = with_predictions(exp, conductance_table(exp))
        cols = feature_columns(table)
        tr, va = table[table.split == "train"], table[table.split == "val"]
        det = train_conductance_detector(tr[cols].to_numpy(), wrong(tr),
                                         va[cols].to_numpy(), wrong(va),
                                         progress=False, **detector_kwargs(exp))
        return {"id": table["id"].to_numpy().astype(str), "split": table["split"].to_numpy().astype(str),
                "score": det.score(table[cols].to_numpy()),
                "history": np.array(json.dumps(det.history)), "best_epoch": np.array(det.best_epoch)}

    z = exp.cache.stage("conductance_detector", params, compute, NPZ)
    return {"scores": pd.DataFrame({"id": z["id"].astype(str), "split": z["split"].astype(str),
                                    "conductance": z["score"]}),
            "history": pd.DataFrame(json.loads(str(z["history"]))), "best_epoch": int(z["best_epoch"])}


def cross_fit_folds(exp: Experiment) -> int | None:
    """``conductance.cross_fit.folds`` of the profile; None where cross-fitting is off (the paper's protocol)."""
    return exp.cfg["conductance"]["cross_fit"]["folds"]


def conductance_cross_fit(exp: Experiment) -> dict:
    """The conductance detector cross-fitted over every analysis photo (train + val + test), and its
    learning curve (:func:`joint.cross_fitted_detector`; a deviation for small held-out pools).

    Returns {"scores": DataFrame(id, split, conductance_cf, fold), "curve": DataFrame(fraction,
    n_train, train_auroc, heldout_auroc, heldout_auroc_ci_low, heldout_auroc_ci_high, msp_auroc)}: one
    curve row per ``cross_fit.fractions``, where n_train is the mean number of photos a fold's detector
    learned from, train_auroc its mean AUROC on them, heldout_auroc the AUROC of the pooled out-of-fold
    scores over all photos (95 % bootstrap interval) and msp_auroc MSP's AUROC on the same photos (the
    control).  The scores are those of the largest fraction, 1."""
    cf = exp.cfg["conductance"]["cross_fit"]
    if cf["folds"] is None:
        raise ValueError(f"{exp.name}: conductance.cross_fit.folds is null (cross-fitting off); set it, e.g. 5")
    params = {"conductance": conductance_params(exp), "detector": exp.cfg["conductance"]["detector"],
              "cross_fit": cf, "seed": exp.seed}

    def compute():
        table = with_predictions(exp, conductance_table(exp))
        cols = feature_columns(table)
        X, y = table[cols].to_numpy(), wrong(table)
        kw = detector_kwargs(exp)
        seed = kw.pop("seed")
        msp = table[["id"]].merge(baseline_table(exp)[["id", "msp"]], on="id", validate="one_to_one")["msp"].to_numpy()
        rows, full = [], None
        for fraction in sorted(set(float(f) for f in cf["fractions"])):
            res = cross_fitted_detector(X, y, k=cf["folds"], seed=seed, inner_val=cf["inner_val"],
                                        fraction=fraction, **kw)
            lo, hi = metrics.auroc_ci(y, res.scores, n_bootstrap=exp.cfg["metrics"]["n_bootstrap"], seed=seed)
            rows.append({"fraction": fraction, "n_train": float(res.n_train.mean()),
                         "train_auroc": float(res.train_auroc.mean()), "heldout_auroc": metrics.auroc(y, res.scores),
                         "heldout_auroc_ci_low": lo, "heldout_auroc_ci_high": hi, "msp_auroc": metrics.auroc(y, msp)})
            if fraction == 1.0:
                full = res
        return {"id": table["id"].to_numpy().astype(str), "split": table["split"].to_numpy().astype(str),
                "score": full.scores, "fold": full.fold_ids, "curve": np.array(json.dumps(rows))}

    z = exp.cache.stage("conductance_crossfit", params, compute, NPZ)
    return {"scores": pd.DataFrame({"id": z["id"].astype(str), "split": z["split"].astype(str),
                                    "conductance_cf": z["score"], "fold": z["fold"]}),
            "curve": pd.DataFrame(json.loads(str(z["curve"])))}


def detector_learning_curve(exp: Experiment) -> pd.DataFrame:
    """Learning curve of the conductance detector: the paper's protocol (one detector trained on the
    train split, its epoch chosen on val; held-out AUROC on val) beside the cross-fitted points of
    :func:`conductance_cross_fit` (held-out AUROC over every analysis photo), each with MSP's AUROC on
    the same photos and the detector's in-sample AUROC on the photos it learned from."""
    det = with_predictions(exp, conductance_detector(exp)["scores"].merge(
        baseline_table(exp)[["id", "msp"]], on="id", validate="one_to_one"))
    tr, va = det[det.split == "train"], det[det.split == "val"]
    lo, hi = metrics.auroc_ci(wrong(va), va.conductance, n_bootstrap=exp.cfg["metrics"]["n_bootstrap"],
                              seed=exp.seed)
    paper = {"protocol": "train split, epoch on val (paper 1)", "fraction": 1.0, "n_train": float(len(tr)),
             "train_auroc": metrics.auroc(wrong(tr), tr.conductance),
             "heldout_auroc": metrics.auroc(wrong(va), va.conductance),
             "heldout_auroc_ci_low": lo, "heldout_auroc_ci_high": hi,
             "msp_auroc": metrics.auroc(wrong(va), va.msp)}
    curve = conductance_cross_fit(exp)["curve"].assign(
        protocol=f"cross-fitted over all photos ({cross_fit_folds(exp)} folds)")
    return pd.concat([pd.DataFrame([paper]), curve], ignore_index=True)[list(paper)]


# --------------------------------------------------------------------------- LCR (paper 1, sec. 4.2)
def _screen_to_dict(res) -> dict:
    """A screening's cached arrays.  What it cost is no part of the result: it is in the stage's cost record
    (:mod:`helpers.cache`), so the file has the same bytes whoever computed it."""
    return {"seeds": np.array([s.seed for s in res.accepted], np.int64), "accuracies": np.array(res.accuracies),
            "tried": np.array(res.tried), "rejected": np.array(res.rejected),
            "original_accuracy": np.array(res.original_accuracy), "samples_evaluated": np.array(res.samples_evaluated),
            "samples_evaluated_without_abort": np.array(res.samples_evaluated_without_abort),
            "val_predictions": res.predictions.astype(np.int16),
            "val_original": res.original_predictions.astype(np.int16)}


#: screening batch: small enough that early abort can stop a hopeless candidate after a few batches
SCREEN_BATCH = 128
#: label-matrix batch: on a CPU small batches keep activations in cache (docs/benchmarks.md,
#: lcr_matrix); 125 divides the CIFAR-10 splits, so a compiled model sees one shape.  Not in the cache key.
LCR_BATCH = 125
#: candidates per screening block, a work unit of helpers.tools.precompute (:func:`screen_block`); the blocks
#: of one (operator, rate) serve its grid cell and its final screening alike (the block's key has no ``n``)
SCREEN_BLOCK = 4
#: a screening wave (:func:`next_screen_blocks`) screens this many times the candidates it expects to need
SCREEN_MARGIN = 1.25


def screen_params(exp: Experiment, operator: str, rate: float, n_mutants: int) -> dict:
    """The cache key's parameters of :func:`screen`."""
    lc = exp.cfg["lcr"]
    return {"model": exp.model_params, "checkpoint": exp.cfg["checkpoint"], "operator": operator, "rate": rate,
            "n": n_mutants, "threshold": lc["accept_threshold"], "tries": lc["max_tries_factor"], "seed": exp.seed}


def _val_inputs(exp: Experiment):
    inputs = split_inputs(exp, "val")
    labels = exp.data["val"].labels if isinstance(inputs, torch.Tensor) else None  # a loader yields its own
    return inputs, labels


def screen(exp: Experiment, operator: str, rate: float, n_mutants: int) -> dict:
    """Screened mutants of one (operator, rate): accepted iff val accuracy >= threshold x original (cached).

    Returns the accepted seeds, their validation predictions and the screening's forward counts; a setting
    that rejects everything within the try budget returns ``{"error": message}``.  Where
    ``helpers.tools.precompute`` screened the candidate stream in blocks (:func:`screen_block`), the blocks
    are joined (:func:`lcr.assemble_screen`; missing ones are screened here), with exactly the serial
    result; otherwise the stream is screened here, serially (:func:`lcr.screen_mutants`)."""
    lc = exp.cfg["lcr"]
    max_tries = lc["max_tries_factor"] * n_mutants

    def compute():
        try:
            if exp.cache.if_cached(lambda: screen_block(exp, operator, rate, 0)) is not None:
                blocks = []
                while not screen_decided(blocks, n_mutants, max_tries):
                    blocks.append(_as_block(screen_block(exp, operator, rate, len(blocks) * SCREEN_BLOCK)))
                # the blocks' cost goes into this stage's record as units_seconds (helpers.cache.UNIT_STAGES)
                res = assemble_screen(blocks, operator, rate, n_mutants, max_tries=max_tries, seed=exp.seed,
                                      threshold=lc["accept_threshold"])
            else:
                inputs, labels = _val_inputs(exp)
                res = screen_mutants(exp.model, inputs, labels, operator, rate, n_mutants,
                                     threshold=lc["accept_threshold"], max_tries=max_tries, seed=exp.seed,
                                     batch_size=SCREEN_BATCH, device=exp.device, progress=exp.progress,
                                     compile=lc["compile"])
        except ScreenExhausted as exc:  # a real result of this setting; any other error propagates
            return {"error": np.array(str(exc))}
        return _screen_to_dict(res)

    return exp.cache.stage("lcr_screen", screen_params(exp, operator, rate, n_mutants), compute, NPZ)


def screen_seconds(exp: Experiment, operator: str, rate: float, n_mutants: int) -> float:
    """What screening (operator, rate) for ``n_mutants`` cost where it was computed (its cost record, with its
    blocks'), NaN when unknown (computed on a machine that shares no cache root with this one)."""
    cost = exp.cache.cost("lcr_screen", screen_params(exp, operator, rate, n_mutants), NPZ)
    seconds = cost.get("units_seconds", cost.get("blocks_seconds", cost.get("seconds")))  # blocks_: older records
    return float("nan") if seconds is None else float(seconds)


def screen_block_params(exp: Experiment, operator: str, rate: float, start: int) -> dict:
    """The cache key's parameters of :func:`screen_block`."""
    lc = exp.cfg["lcr"]
    return {"model": exp.model_params, "checkpoint": exp.cfg["checkpoint"], "operator": operator, "rate": rate,
            "threshold": lc["accept_threshold"], "seed": exp.seed, "start": start, "stop": start + SCREEN_BLOCK}


def screen_block(exp: Experiment, operator: str, rate: float, start: int) -> dict:
    """Candidates ``start .. start + SCREEN_BLOCK`` of the seed stream of (operator, rate), each decided as
    :func:`screen` decides it (:func:`lcr.screen_candidates`; cached): a work unit of
    ``helpers.tools.precompute``.  Arrays: seeds, accepted, correct, seen, val_predictions (the accepted
    candidates'), val_original, original_correct, n_val."""
    lc = exp.cfg["lcr"]

    def compute():
        inputs, labels = _val_inputs(exp)
        b = screen_candidates(exp.model, inputs, labels, operator, rate,
                              candidate_seeds(exp.seed, start + SCREEN_BLOCK)[start:], threshold=lc["accept_threshold"],
                              batch_size=SCREEN_BATCH, device=exp.device, progress=exp.progress, compile=lc["compile"],
                              screening=_screening(exp))
        return {"seeds": b.seeds, "accepted": b.accepted, "correct": b.correct, "seen": b.seen,
                "val_predictions": b.predictions.astype(np.int16),
                "val_original": b.original_predictions.astype(np.int16),
                "original_correct": np.array(b.original_correct), "n_val": np.array(b.n_val)}

    return exp.cache.stage("lcr_screen_block", screen_block_params(exp, operator, rate, start), compute, NPZ)


def _screening(exp: Experiment) -> Screening:
    """The validation split prepared for screening (:func:`lcr.prepare_screening`), once per experiment: the
    original model's pass over it runs once for all the blocks a process screens."""
    lc = exp.cfg["lcr"]

    def make():
        inputs, labels = _val_inputs(exp)
        return prepare_screening(exp.model, inputs, labels, threshold=lc["accept_threshold"], batch_size=SCREEN_BATCH,
                                 device=exp.device, compile=lc["compile"])

    return exp.memo.get("lcr_screening", make)


def _as_block(z: dict) -> ScreenBlock:
    return ScreenBlock(seeds=z["seeds"], accepted=z["accepted"].astype(bool), correct=z["correct"], seen=z["seen"],
                       predictions=z["val_predictions"], original_predictions=z["val_original"],
                       original_correct=int(z["original_correct"]), n_val=int(z["n_val"]))


def next_screen_blocks(done: dict[int, int], n_mutants: int, max_tries: int, start: tuple[int, int] = (0, 0),
                       block: int | None = None, margin: float | None = None) -> tuple[list[int], int, int]:
    """The waves of a screening cut in blocks, replayed from the blocks screened so far (``done``: start ->
    accepted count): ``(todo, covered, accepted)``, where ``todo`` are the starts of the blocks the first
    unfinished wave still lacks, and ``covered`` / ``accepted`` what the finished waves hold; ``todo`` is []
    once they decide the screening (``n_mutants`` accepted, or ``max_tries`` candidates covered).

    A wave starts where the previous one ended and covers ``margin`` x the candidates still missing at the
    acceptance rate of the waves before it (100 % before any; half a success where none was accepted yet),
    in whole blocks, up to ``max_tries``.  So the waves, and the blocks screened, depend on the blocks'
    results only, never on when a run was interrupted: a resumed run screens the blocks an uninterrupted
    one screens.  ``start``: (covered, accepted) to go on from, e.g. where the grid cell of the same setting
    ended.  A pure function of its arguments: the plan (:func:`helpers.tools.precompute.lcr_plan`) and the
    run make the same waves."""
    block, margin = block or SCREEN_BLOCK, margin or SCREEN_MARGIN
    covered, accepted = start
    while accepted < n_mutants and covered < max_tries:
        rate = max(accepted, 0.5) / covered if covered else 1.0
        end = min(max_tries, covered + math.ceil((n_mutants - accepted) / rate * margin))
        wave = list(range(covered, end, block))
        todo = [s for s in wave if s not in done]
        if todo:
            return todo, covered, accepted
        accepted += sum(done[s] for s in wave)
        covered = wave[-1] + block
    return [], covered, accepted


def screen_wave(exp: Experiment, operator: str, rate: float, n_mutants: int,
                start: tuple[int, int] = (0, 0)) -> tuple[list[int], int, int]:
    """:func:`next_screen_blocks` of (operator, rate) for ``n_mutants`` over the blocks cached so far."""
    max_tries = exp.cfg["lcr"]["max_tries_factor"] * n_mutants
    known = exp.memo.get("lcr_screen_block_accepted", dict)  # a cached block never changes: read it once
    for s in range(0, max_tries, SCREEN_BLOCK):
        if (operator, rate, s) not in known:
            z = exp.cache.if_cached(lambda s=s: screen_block(exp, operator, rate, s))
            if z is not None:
                known[operator, rate, s] = int(z["accepted"].sum())
    done = {s: known[operator, rate, s] for s in range(0, max_tries, SCREEN_BLOCK) if (operator, rate, s) in known}
    return next_screen_blocks(done, n_mutants, max_tries, start)


def lcr_grid_cells(exp: Experiment) -> list[tuple[str, float]]:
    """The grid's (operator, rate) cells: ``grid_operators x grid_rates``, then the ``grid_extra`` pairs
    (a stronger rate for one operator, without the product's other cells), each once, in that order."""
    lc = exp.cfg["lcr"]
    cells = [(op, float(r)) for op in lc["grid_operators"] for r in lc["grid_rates"]]
    cells += [(str(op), float(r)) for op, r in lc["grid_extra"]]
    return list(dict.fromkeys(cells))


def lcr_grid(exp: Experiment) -> pd.DataFrame:
    """Table 3 analogue: per operator x rate, accepted / tried mutants and LCR of correct vs wrong
    validation predictions (mean +- std) and their difference; ``val_auroc`` (LCR from the cell's
    mutants) is context, not part of the paper's selection rule.  Each cell is cached on its own;
    ``screen_seconds`` is what its screening cost (:func:`screen_seconds`)."""
    lc = exp.cfg["lcr"]
    val = exp.split_table("val")
    y_wrong = (~val.correct).to_numpy()
    rows = []
    for op, rate in lcr_grid_cells(exp):
        z = screen(exp, op, rate, lc["grid_mutants"])
        row = {"operator": op, "rate": rate}
        if "error" in z:
            row.update(accepted=0, tried=lc["max_tries_factor"] * lc["grid_mutants"], note=str(z["error"]))
        else:
            if not np.array_equal(z["val_original"], val.prediction.to_numpy()):
                raise RuntimeError("lcr: the screening's original predictions disagree with the prediction "
                                   "table; clear artifacts/<profile>/ (stale cache?)")
            lcr = label_change_rate(z["val_predictions"], val.prediction.to_numpy())
            seconds = float(z["seconds"]) if "seconds" in z else screen_seconds(exp, op, rate, lc["grid_mutants"])
            row.update(accepted=len(z["seeds"]), tried=int(z["tried"]), **lcr_summary(lcr, y_wrong),
                       val_auroc=metrics.auroc(y_wrong, lcr) if 0 < y_wrong.sum() < len(y_wrong) else np.nan,
                       screen_seconds=seconds, note="")
        rows.append(row)
    return pd.DataFrame(rows)


def lcr_setting(exp: Experiment, grid: pd.DataFrame | None = None) -> tuple[str, float]:
    """The profile's (operator, rate), or the grid cell with the largest LCR difference (paper 1, Table 3)."""
    lc = exp.cfg["lcr"]
    if lc["operator"] and lc["rate"]:
        return lc["operator"], float(lc["rate"])
    grid = lcr_grid(exp) if grid is None else grid
    ok = grid[grid.accepted > 0]
    if ok.empty:
        raise RuntimeError("lcr: no grid setting produced an accepted mutant; lower lcr.grid_rates")
    best = choose_setting(ok)
    return str(best["operator"]), float(best["rate"])


#: accepted mutants per cached label-matrix chunk
LCR_CHUNK = 10
#: about this many images per label-matrix part (a work unit of helpers.tools.precompute), in whole batches
LCR_PART = 1000


def lcr_final_screen(exp: Experiment) -> tuple[str, float, dict]:
    """(operator, rate, screening) of the final LCR: the chosen setting screened to ``lcr.n_mutants``
    (kept in ``exp.memo`` once screened: every label-matrix chunk needs it)."""
    def compute():
        operator, rate = lcr_setting(exp)
        z = screen(exp, operator, rate, exp.cfg["lcr"]["n_mutants"])
        if "error" in z:
            raise RuntimeError(f"lcr: {z['error']}")
        return operator, rate, z

    return exp.memo.get("lcr_final_screen", compute)


def lcr_chunks(exp: Experiment, chunk: int = LCR_CHUNK) -> list[tuple[str, int]]:
    """The label matrix's cached chunks (split, first mutant)."""
    n = len(lcr_final_screen(exp)[2]["seeds"])
    return [(split, i) for split in ("train", "test") for i in range(0, n, chunk)]


def lcr_part_ranges(n_images: int, batch: int) -> list[tuple[int, int]]:
    """The image ranges of the label matrix's parts of a split of ``n_images``: about :data:`LCR_PART`
    images each, in whole batches of ``batch``, so that every part runs exactly the batches of a pass over
    the whole split."""
    per = batch * max(1, LCR_PART // batch)
    return [(a, min(a + per, n_images)) for a in range(0, n_images, per)]


def _lcr_inputs(exp: Experiment, split: str, start: int | None = None, stop: int | None = None):
    """A split's inputs for the label matrix (images [start, stop)) and the batch their pass runs in:
    :data:`LCR_BATCH` for a split held in memory, the loader's (the evaluation batch) for one streamed."""
    inputs = split_inputs(exp, split)
    if isinstance(inputs, torch.Tensor):
        return (inputs if start is None else inputs[start:stop]), LCR_BATCH
    if start is None:
        return inputs, exp.eval_batch_size
    return iterate_batches(exp.data[split].dataset, exp.eval_batch_size, start=start, stop=stop,
                           **exp.loader_options), exp.eval_batch_size


def _chunk_specs(exp: Experiment, i: int, chunk: int) -> list[MutantSpec]:
    operator, rate, z = lcr_final_screen(exp)
    return [MutantSpec(operator, rate, int(s)) for s in z["seeds"]][i:i + chunk]


def _chunk_params(exp: Experiment, split: str, specs: list[MutantSpec]) -> dict:
    return {"model": exp.model_params, "checkpoint": exp.cfg["checkpoint"], "split": split,
            "data": exp.data_key, "specs": [(s.operator, s.rate, s.seed) for s in specs]}


def lcr_parts(exp: Experiment, chunk: int = LCR_CHUNK, todo: bool = False) -> list[tuple[str, int, int, int]]:
    """The label matrix's parts (split, first mutant, start, stop): each chunk of ``chunk`` mutants x the
    split's image ranges (:func:`lcr_part_ranges`); the work units of helpers.tools.precompute.  ``todo``:
    only the parts of chunks not cached yet."""
    out = []
    for split, i in lcr_chunks(exp, chunk):
        if todo and exp.cache.if_cached(lambda s=split, i=i: lcr_chunk(exp, s, i, chunk) is not None, lambda: False):
            continue
        batch = _lcr_inputs(exp, split)[1]
        out += [(split, i, a, b) for a, b in lcr_part_ranges(len(exp.data[split]), batch)]
    return out


def lcr_part(exp: Experiment, split: str, i: int, start: int, stop: int, chunk: int = LCR_CHUNK,
             cache: bool = True) -> np.ndarray:
    """Predicted labels (chunk, stop - start) of accepted mutants i..i+chunk on images [start, stop) of a
    split; each mutant is seeded by its own spec, so any process computes the same part.  ``cache=True``
    (the precompute units): a cached stage of its own; inside :func:`lcr_chunk` only read when cached."""
    specs = _chunk_specs(exp, i, chunk)

    def compute():
        inputs, batch = _lcr_inputs(exp, split, start, stop)
        return {"preds": mutant_predictions(exp.model, specs, inputs, batch_size=batch, device=exp.device,
                                            progress=exp.progress,
                                            compile=exp.cfg["lcr"]["compile"]).astype(np.int16)}

    if not cache:
        return compute()["preds"]
    params = {**_chunk_params(exp, split, specs), "start": start, "stop": stop}
    return exp.cache.stage("lcr_preds_part", params, compute, NPZ)["preds"]


def lcr_chunk(exp: Experiment, split: str, i: int, chunk: int = LCR_CHUNK) -> np.ndarray:
    """Predicted labels (chunk, n_samples) of accepted mutants i..i+chunk on a split (cached), computed
    part by part (:func:`lcr_parts`); parts that ``helpers.tools.precompute`` cached (on other processes or
    machines) are read instead, with identical results: every part runs the batches of the whole pass."""
    specs = _chunk_specs(exp, i, chunk)

    def part(a, b):
        return exp.cache.if_cached(lambda: lcr_part(exp, split, i, a, b, chunk),
                                   lambda: lcr_part(exp, split, i, a, b, chunk, cache=False))

    def compute():
        ranges = lcr_part_ranges(len(exp.data[split]), _lcr_inputs(exp, split)[1])
        if not ranges:
            return {"preds": np.zeros((len(specs), 0), np.int16)}
        return {"preds": np.concatenate([part(a, b) for a, b in ranges], 1)}

    return exp.cache.stage("lcr_preds", _chunk_params(exp, split, specs), compute, NPZ)["preds"]


def lcr_matrix(exp: Experiment, chunk: int = LCR_CHUNK) -> dict:
    """Predicted labels of every accepted mutant on every sample: {"ids", "split", "original", "preds"
    (n_mutants, n_samples)}, in prediction-table order.  Validation predictions come free from the
    screening; train and test are evaluated in cached chunks of ``chunk`` mutants (:func:`lcr_chunk`),
    so an interrupted run resumes from the last finished chunk, and ``helpers.tools.precompute`` can
    compute their parts on many processes first."""
    operator, rate, z = lcr_final_screen(exp)
    parts = {"val": z["val_predictions"]}
    jobs = lcr_chunks(exp, chunk)
    blocks = {(split, i): lcr_chunk(exp, split, i, chunk) for split, i in jobs}
    for split in ("train", "test"):
        parts[split] = np.concatenate([blocks[s, i] for s, i in jobs if s == split], 0)
    ids = np.concatenate([exp.data[s].ids for s in SPLIT_ORDER])
    return {"operator": operator, "rate": rate, "screen": z, "ids": ids,
            "split": np.concatenate([[s] * len(exp.data[s]) for s in SPLIT_ORDER]),
            "preds": np.concatenate([parts[s] for s in SPLIT_ORDER], 1)}


def lcr_table(exp: Experiment, matrix: dict | None = None) -> pd.DataFrame:
    """LCR of every sample (fraction of mutants that change the ORIGINAL prediction): id, split, lcr."""
    m = lcr_matrix(exp) if matrix is None else matrix
    original = exp.predictions.set_index("id").loc[m["ids"], "prediction"].to_numpy()
    return pd.DataFrame({"id": m["ids"], "split": m["split"], "lcr": label_change_rate(m["preds"], original)})


def lcr_against_base(exp: Experiment, table: pd.DataFrame) -> dict:
    """What fixing LCR's setting changes: for a variant (``base: P``) whose ``lcr`` section differs from P's
    (e.g. an operator and rate fixed where P applies the paper's selection rule, Table 3), this LCR's AUROC
    minus P's LCR AUROC on the same predictions, per split, with a paired bootstrap
    (:func:`helpers.metrics.paired_auroc_difference`): two intervals that overlap do not say which is better.

    ``table``: this profile's LCR (id, split, lcr).  P's label matrix is read from the cache the two share,
    never computed here: {} for a profile that is not such a variant, or where P's LCR is not cached yet
    (run P's notebook 02 or ``helpers.tools.precompute --profile P --only lcr`` first).  Returns
    ``{"lcr": {"against_base": {"profile", "operator", "rate", "n_mutants", "val": {...}, "test": {...}}}}``."""
    from helpers.profiles import load_profile

    base = exp.cfg.get("base")
    if not base:
        return {}
    base_lcr = load_profile(base)["lcr"]
    if base_lcr == exp.cfg["lcr"]:
        return {}
    view = exp.with_section("lcr", base_lcr)  # the same model and cache, the base's LCR settings
    m = exp.cache.if_cached(lambda: lcr_matrix(view))
    if m is None:
        return {}
    theirs = lcr_table(view, m).rename(columns={"lcr": "base_lcr"})
    both = table[["id", "split", "lcr"]].merge(theirs[["id", "base_lcr"]], on="id", validate="one_to_one")
    paired = msp_comparison_metrics(exp, both, ["lcr"], baseline="base_lcr")["detectors"]["lcr"]
    df = with_predictions(exp, both)
    out = {"profile": base, "operator": m["operator"], "rate": m["rate"], "n_mutants": int(m["preds"].shape[0])}
    for split in ("val", "test"):
        d = df[df.split == split]
        out[split] = {"auroc": round(metrics.auroc(wrong(d), d["lcr"].to_numpy()), 6),
                      "base_auroc": round(metrics.auroc(wrong(d), d["base_lcr"].to_numpy()), 6),
                      **{k.replace("base_lcr_", "").replace("difference_", ""): v for k, v in paired[split].items()}}
    return {"lcr": {"against_base": out}}


def sprt_evaluation(exp: Experiment, matrix: dict, lcr_threshold: float, fixed_auroc: float) -> dict:
    """LCR with early stopping (paper 1, sec. 4.2: the SPRT of Wang et al.) on the test split.

    The SPRT's threshold on LCR is ``lcr.sprt_threshold`` or, when null, the fixed-sample detector's
    equal-recall threshold ``lcr_threshold`` (chosen on validation), kept inside the indifference region's
    bounds.  Returns the threshold, the mean and total number of mutants, the SPRT score's test AUROC beside
    the fixed-sample one (``fixed_auroc``), the undecided fraction and the decision's recalls."""
    lc = exp.cfg["lcr"]
    delta = lc["sprt_indifference"]
    thr = lc["sprt_threshold"] or float(np.clip(lcr_threshold, delta + 0.01, 1 - delta - 0.01))
    test_pos = np.flatnonzero(matrix["split"] == "test")
    test_tab = exp.predictions.set_index("id").loc[matrix["ids"][test_pos]]
    kw = dict(alpha=lc["sprt_alpha"], beta=lc["sprt_beta"], threshold=thr, indifference=delta)
    decision, n_used = sprt_detect(matrix["preds"][:, test_pos], test_tab.prediction.to_numpy(), **kw)
    s_score = sprt_score(matrix["preds"][:, test_pos], test_tab.prediction.to_numpy(), **kw)
    y_test = wrong(test_tab)
    return {"threshold": thr, "mean_mutants": float(n_used.mean()), "n_mutants": int(matrix["preds"].shape[0]),
            "auroc": metrics.auroc(y_test, s_score), "fixed_auroc": fixed_auroc,
            "undecided_fraction": float((decision == -1).mean()),
            "decision_wrong_recall": float((decision[y_test == 1] == 1).mean()),
            "decision_correct_recall": float((decision[y_test == 0] == 0).mean())}


def lcr_metrics(matrix: dict, sprt: dict) -> dict:
    """``metrics.json``'s ``lcr`` section: the chosen setting, accepted and tried mutants, the SPRT summary."""
    return {"lcr": {"operator": matrix["operator"], "rate": matrix["rate"], "n_mutants": int(matrix["preds"].shape[0]),
                    "tried": int(matrix["screen"]["tried"]),
                    "sprt": {k: round(v, 4) if isinstance(v, float) else v for k, v in sprt.items()}}}


def learning_curve_metrics(curve: pd.DataFrame) -> dict:
    """``metrics.json``'s ``conductance.learning_curve``: the rows of :func:`detector_learning_curve`."""
    return {"conductance": {"learning_curve": curve.round(6).to_dict("records")}}


# --------------------------------------------------------------------------- joint classifier (paper 1, sec. 4.3)
def conductance_oof(exp: Experiment) -> pd.DataFrame:
    """Out-of-fold conductance-detector scores of the TRAINING split (k-fold cross-fitting):
    id, conductance_oof, fold.  No training sample is scored by a detector that saw it."""
    params = {"conductance": conductance_params(exp), "detector": exp.cfg["conductance"]["detector"],
              "folds": exp.cfg["joint"]["folds"]}

    def compute():
        table = with_predictions(exp, conductance_table(exp))
        cols = feature_columns(table)
        tr, va = table[table.split == "train"], table[table.split == "val"]
        kw = detector_kwargs(exp)
        seed = kw.pop("seed")
        res = out_of_fold_scores(tr[cols].to_numpy(), wrong(tr), va[cols].to_numpy(),
                                 wrong(va), k=exp.cfg["joint"]["folds"], seed=seed, **kw)
        return pd.DataFrame({"id": tr["id"].to_numpy(), "conductance_oof": res.scores, "fold": res.fold_ids})

    return exp.cache.stage("conductance_oof", params, compute, FRAME)


def conductance_for_joint(exp: Experiment) -> pd.DataFrame:
    """id, split, conductance, conductance_oof: the conductance score a joint classifier learns from
    and is applied to.  Training rows carry their out-of-fold score (:func:`conductance_oof`), val / test rows
    the score of the detector trained on the whole train split; where ``conductance.cross_fit`` is on,
    every row carries its cross-fitted score (:func:`conductance_cross_fit`)."""
    det = conductance_detector(exp)["scores"][["id", "split", "conductance"]]
    df = det.merge(conductance_oof(exp)[["id", "conductance_oof"]], on="id", how="left", validate="one_to_one")
    if df.loc[df.split == "train", "conductance_oof"].isna().any():
        raise RuntimeError("joint: a training sample has no out-of-fold conductance score (stale cache?)")
    held_out = df.split != "train"
    df.loc[held_out, "conductance_oof"] = df.loc[held_out, "conductance"]  # val/test: the full detector
    if cross_fit_folds(exp) is not None:  # cross-fitted over every photo: each row's score is out of fold
        cf = conductance_cross_fit(exp)["scores"].set_index("id")["conductance_cf"]
        df["conductance_oof"] = df["id"].map(cf)
        if df["conductance_oof"].isna().any():
            raise RuntimeError("joint: a sample has no cross-fitted conductance score (stale cache?)")
    return df[["id", "split", "conductance", "conductance_oof"]]


def joint_features(exp: Experiment) -> pd.DataFrame:
    """Per sample: id, split, label, prediction, correct, lcr, conductance (detector trained on all of
    train: in-sample on train), conductance_oof (:func:`conductance_for_joint`), msp."""
    df = conductance_for_joint(exp).merge(lcr_table(exp)[["id", "lcr"]], on="id", validate="one_to_one")
    df = df.merge(baseline_table(exp)[["id", "msp"]], on="id", validate="one_to_one")
    if len(df) != len(exp.predictions):
        raise RuntimeError(f"joint: {len(exp.predictions) - len(df)} samples lost joining the feature tables")
    return with_predictions(exp, df)


#: joint settings: name -> feature columns (train rows use the out-of-fold conductance score)
JOINT_FEATURES = {"": ["lcr", "conductance_oof"], "_msp": ["lcr", "conductance_oof", "msp"]}


def joint_scores(exp: Experiment, feats: pd.DataFrame | None = None) -> pd.DataFrame:
    """Scores of the unified classifiers (paper 1, 4.3: NN, RF, LDA, QDA) fitted on the training
    split's [LCR, out-of-fold conductance score] (and + MSP, beyond the paper): id, split, joint_<name>[_msp]."""
    feats = joint_features(exp) if feats is None else feats
    tr = feats[feats.split == "train"]
    out = feats[["id", "split"]].copy()
    for suffix, cols in JOINT_FEATURES.items():
        for name in UNIFIED_CLASSIFIERS:
            est = fit_unified(name, tr[cols].to_numpy(), wrong(tr), seed=exp.seed)
            out[f"joint_{name}{suffix}"] = unified_score(est, feats[cols].to_numpy())
    return out


def leak_comparison(exp: Experiment, feats: pd.DataFrame | None = None) -> pd.DataFrame:
    """The authors' leak, measured: the joint NN fitted on IN-SAMPLE training conductance scores vs on
    OUT-OF-FOLD ones; AUROC of the conductance score and of the joint NN on train and validation."""
    feats = joint_features(exp) if feats is None else feats
    tr, va = feats[feats.split == "train"], feats[feats.split == "val"]
    y_tr, y_va = wrong(tr), wrong(va)
    rows = []
    for label, col in (("in-sample (authors' code)", "conductance"),
                       ("out-of-fold (this companion)", "conductance_oof")):
        est = fit_unified("nn", tr[["lcr", col]].to_numpy(), y_tr, seed=exp.seed)
        rows.append({"training conductance scores": label,
                     "conductance AUROC train": metrics.auroc(y_tr, tr[col].to_numpy()),
                     "conductance AUROC val": metrics.auroc(y_va, va["conductance"].to_numpy()),
                     "joint NN AUROC train": metrics.auroc(y_tr, unified_score(est, tr[["lcr", col]].to_numpy())),
                     "joint NN AUROC val": metrics.auroc(
                         y_va, unified_score(est, va[["lcr", "conductance"]].to_numpy()))})
    return pd.DataFrame(rows)


def operating_points(exp: Experiment, df: pd.DataFrame, score: str) -> pd.DataFrame:
    """Thresholds chosen on validation (equal recall; a target correct recall; a target wrong recall),
    applied to test, with the expert-relay accuracy on test (paper 1, 4.3 and discussion)."""
    jc = exp.cfg["joint"]
    va, te = df[df.split == "val"], df[df.split == "test"]
    y_va, s_va = wrong(va), va[score].to_numpy()
    thresholds = {
        "equal_recall": metrics.equal_recall_threshold(y_va, s_va),
        "high_correct_recall": metrics.threshold_for_correct_recall(y_va, s_va, jc["correct_recall_target"]),
        "high_wrong_recall": metrics.threshold_for_wrong_recall(y_va, s_va, jc["wrong_recall_target"]),
    }
    rows = []
    for op, thr in thresholds.items():
        row = {"operating_point": op, "score": score, "threshold": float(thr)}
        for split, d in (("val", va), ("test", te)):
            cr, wr = metrics.recalls_at(wrong(d), d[score].to_numpy(), thr)
            row[f"{split} correct recall"], row[f"{split} wrong recall"] = cr, wr
        relay = relay_accuracy(te.correct.to_numpy(), te[score].to_numpy() >= thr)
        row.update({"test accuracy before": float(te.correct.mean()), "test accuracy with expert": relay["accuracy"],
                    "test discarded fraction": relay["discarded_fraction"], "expert sees": relay["n_expert"]})
        rows.append(row)
    return pd.DataFrame(rows)


def relay_metrics(ops: pd.DataFrame, score: str = "joint_nn") -> dict:
    """``metrics.json``'s ``relay`` section: test accuracy with the expert and the discarded fraction at each
    operating point of ``score`` (rows of :func:`operating_points`)."""
    rows = ops[ops.score == score].set_index("operating_point")
    return {"relay": {op: {"accuracy": round(r["test accuracy with expert"], 4),
                           "discarded_fraction": round(r["test discarded fraction"], 4)} for op, r in rows.iterrows()}}


def msp_comparison_metrics(exp: Experiment, scores: pd.DataFrame, names, baseline: str = "msp") -> dict:
    """``detectors.<name>.<split>.msp_difference`` with ``_ci_low``, ``_ci_high`` and ``_p_value``: each
    score's AUROC minus the one-pass baseline's (``baseline``, MSP) on the same predictions, with a paired
    bootstrap (:func:`helpers.metrics.paired_auroc_difference`).  Two AUROC intervals that overlap do not
    say whether one detector beats the other; the paired difference does."""
    df = with_predictions(exp, scores)
    nb = exp.cfg["metrics"]["n_bootstrap"]
    out: dict = {}
    for name in (n for n in names if n != baseline):
        for split in ("val", "test"):
            d = df[df.split == split]
            r = metrics.paired_auroc_difference(wrong(d), d[name].to_numpy(), d[baseline].to_numpy(),
                                                n_bootstrap=nb, seed=exp.seed)
            out.setdefault(name, {})[split] = {f"{baseline}_difference" + ("" if k == "difference" else f"_{k}"):
                                               round(v, 6) for k, v in r.items()}
    return {"detectors": out}
