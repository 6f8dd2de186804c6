"""Paper 2's stages (Tariq & Zia): pooled features, CFE generators, global MC filters, agreement
scores and the Table 1 analogue, each keyed by sample id like paper 1's stages (``pipeline``).

Cached: the pooled features ``g`` of every sample and the trained generators.  Everything after
them (masks, global filters, agreement, detection) takes seconds and is computed in memory.
docs/methods.md section 6 has the method; ``helpers.paper2.cfe`` the pieces.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from helpers import metrics
from helpers.baselines import baseline_scores
from helpers.cache import NPZ, TENSORS, TENSORS_AND_ARRAYS
from helpers.datasets import denormalize
from helpers.evaluation import SPLIT_ORDER, baseline_table, evaluate_scores, split_inputs, with_predictions, wrong
from helpers.experiment import Experiment
from helpers.models import layer_output, load_state, pooled_features, pooled_head, pooled_head_missing
from helpers.paper1.joint import fit_unified, unified_score
from helpers.paper1.stages import conductance_for_joint, lcr_table
from helpers.paper2 import cfe
from helpers.paper2.debugging import (
    DebugConfig,
    Forward,
    fine_tune,
    paired_statistics,
    suffix_cacheable,
    trainable_names,
)
from helpers.training import iterate_batches, logits_of

#: Table 1's three settings (paper 2, sec. 4.2): score, skip threshold, frequency threshold, rule
TABLE1 = {
    "avg_recall": {"score": "recall", "skip": "cfe.skip", "frequency": "cfe.frequency", "rule": "class mean"},
    "avg_f1": {"score": "f1", "skip": "cfe.skip", "frequency": "cfe.frequency", "rule": "class mean"},
    "recall_lt_0.3": {"score": "recall", "skip": 0.0, "frequency": 0.0, "rule": "fixed"},
}


# --------------------------------------------------------------------------- pooled features g
def unavailable(exp: Experiment) -> str | None:
    """Why paper 2 cannot run on the experiment's model, or None: its method needs pooled features ``g``
    and the final linear layer they feed (sec. 3), which a model whose head is an MLP over flattened
    features, or a 1x1 convolution, does not have.  Notebooks 04-05 then step aside
    (:func:`helpers.notebook.step_aside`) while paper 1's notebooks run as usual."""
    return pooled_head_missing(exp.model)


def pooled_params(exp: Experiment) -> dict:
    return {"model": exp.model_params, "checkpoint": exp.cfg["checkpoint"], "layer": pooled_head(exp.model)[0]}


def _pooled_pass(exp: Experiment, dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """``(g, logits)`` of every image of ``dataset`` (one forward pass on the experiment's device, in
    its eval batches), on the CPU."""
    gs, zs = [], []
    for x, _ in iterate_batches(dataset, exp.eval_batch_size, **exp.loader_options):
        g, z = pooled_features(exp.model, x.to(exp.device, non_blocking=True))
        gs.append(g)
        zs.append(z)
    return torch.cat(gs).cpu(), torch.cat(zs).cpu()


def pooled_table(exp: Experiment) -> dict:
    """``g`` of every sample (cached): {"id", "split", "g" (N, K) float32}, in prediction-table order.
    Checks that the head's linear layer on ``g`` gives the prediction table's logits."""

    def compute():
        ids, splits, gs, logits = [], [], [], []
        for split in SPLIT_ORDER:
            sd = exp.data[split]
            g, z = _pooled_pass(exp, sd.dataset)
            gs.append(g)
            logits.append(z)
            ids.append(sd.ids)
            splits += [split] * len(sd)
        g, ref = torch.cat(gs), torch.cat(logits)
        _, linear = pooled_head(exp.model)
        with torch.no_grad():
            z = linear.cpu()(g) if exp.device.type == "cpu" else linear(g.to(exp.device)).cpu()
        if not torch.allclose(z, ref, atol=1e-3 * max(1.0, ref.abs().max().item()), rtol=1e-4):
            raise RuntimeError("cfe: the head on the pooled features does not give the model's logits; "
                               "models.LAYERS declares the wrong pooled layer or linear head for this model")
        return {"id": np.concatenate(ids).astype(str), "split": np.array(splits), "g": g.numpy().astype(np.float32)}

    pred_ids = exp.predictions["id"].to_numpy().astype(str)  # upstream first: each stage times only itself
    z = exp.cache.stage("pooled_features", pooled_params(exp), compute, NPZ)
    if not np.array_equal(z["id"].astype(str), pred_ids):
        raise RuntimeError("cfe: pooled features and the prediction table disagree on sample ids (stale cache?)")
    return z


def frozen_head(exp: Experiment) -> torch.nn.Linear:
    """A frozen CPU copy of the model's final linear layer (the CFE model's fixed head)."""
    head = copy.deepcopy(pooled_head(exp.model)[1]).cpu().eval()
    for p in head.parameters():
        p.requires_grad_(False)
    return head


# --------------------------------------------------------------------------- CFE generators
def generator_config(exp: Experiment) -> cfe.GeneratorConfig:
    """The profile's generator-training settings (``cfe.*``)."""
    return cfe.GeneratorConfig.from_profile(exp.cfg["cfe"])


def generator_groups(exp: Experiment) -> list[slice]:
    """The generators' batched groups: the work units of helpers.tools.precompute."""
    return cfe.generator_groups(frozen_head(exp).in_features, len(exp.data.classes))


#: what the generators can train on (:func:`generators`): the analysis training split, or, where the
#: analysis splits are held out from the model's training photos (cub100), those photos
GENERATOR_DATA = ("analysis_train", "model_train")


def _train_g(exp: Experiment, data: str = "analysis_train") -> torch.Tensor:
    """The cached pooled features ``g`` the generators train on (``data``, :data:`GENERATOR_DATA`)."""
    if data not in GENERATOR_DATA:
        raise ValueError(f"generators: data={data!r} is not valid; valid: {', '.join(GENERATOR_DATA)}")
    if data == "model_train":
        _require_model_splits(exp, "generators: data='model_train'")
        return torch.from_numpy(model_train_pooled(exp)["g"])
    z = pooled_table(exp)
    return torch.from_numpy(z["g"][z["split"] == "train"])


def generator_group(exp: Experiment, sl: slice, cache: bool = True, g: torch.Tensor | None = None) -> dict:
    """One group of generators, trained (cached as a stage of its own with ``cache=True``): weight,
    bias and the per-epoch loss sums (:func:`cfe.train_generator_group`).  ``g``: the training
    features when the caller holds them (read from the cache only when needed, otherwise)."""
    gcfg = generator_config(exp)

    def compute():
        nonlocal g
        g = _train_g(exp) if g is None else g
        w, b, sums = cfe.train_generator_group(g, len(g), frozen_head(exp), range(len(exp.data.classes)), sl, gcfg,
                                               seed=exp.seed)
        return {"weight": w, "bias": b, "sums": sums}

    if not cache:
        return compute()
    params = {"pooled": pooled_params(exp), "cfe": gcfg.__dict__, "seed": exp.seed, "group": [sl.start, sl.stop]}
    return exp.cache.stage("cfe_generator_group", params, compute, TENSORS)


def generators(exp: Experiment, data: str = "analysis_train") -> tuple[cfe.CFEGenerators, pd.DataFrame]:
    """The C generators, trained on the cached ``g`` of the training split (cached): one batched
    model, seeded, trained group by group (groups that ``helpers.tools.precompute`` cached are read
    instead, with identical results).  Returns the generators (CPU, eval) and the per-epoch history.

    ``data="model_train"``: trained instead on every one of the model's own training photos, as paper 2
    trains them (section 3), where the analysis splits are held out from those (cub100); the variant
    :func:`generator_data_rows` compares (its groups are not cut into precompute units)."""
    gcfg = generator_config(exp)
    params = {"pooled": pooled_params(exp), "cfe": gcfg.__dict__, "seed": exp.seed}
    if data != "analysis_train":
        params["data"] = data  # the default's key is unchanged
    n_classes = len(exp.data.classes)
    g = _train_g(exp, data)  # upstream outside compute(): each stage's logged cost is its own

    def compute():
        k = frozen_head(exp).in_features
        weight, bias = torch.empty(n_classes, k, k), torch.empty(n_classes, k)  # every row set by its group
        sums = torch.zeros(gcfg.epochs, 5, dtype=torch.float64)
        for sl in generator_groups(exp):
            if data != "analysis_train":
                part = generator_group(exp, sl, cache=False, g=g)
            else:
                part = exp.cache.if_cached(lambda sl=sl: generator_group(exp, sl),
                                           lambda sl=sl: generator_group(exp, sl, cache=False, g=g))
            weight[sl], bias[sl] = part["weight"], part["bias"]
            sums += part["sums"]
        hist = cfe.generator_history(sums, len(g), n_classes, gcfg)
        return {"weight": weight, "bias": bias, "classes": list(range(n_classes)), "history": hist.to_dict("records")}

    obj = exp.cache.stage("cfe_generators", params, compute, TENSORS_AND_ARRAYS)
    gens = cfe.CFEGenerators(obj["weight"].shape[1], obj["classes"])
    with torch.no_grad():
        gens.weight.copy_(obj["weight"])
        gens.bias.copy_(obj["bias"])
    return gens.eval(), pd.DataFrame(obj["history"])


# --------------------------------------------------------------------------- filters and agreement
@dataclass
class CFEAnalysis:
    """Everything after the generators, for one profile.

    ``table``: one row per sample (prediction-table order): id, split, label, prediction, correct,
    confidence (max softmax), masked_prediction (head on g * m of the predicted class's generator),
    n_active (mask size), n_mc (|MC(x)|), and the agreement with the predicted class's global
    filters: recall, precision, f1 (frequency threshold f) and recall_f0 (f = 0).  On TRAINING rows
    the ``*_oof`` columns hold the out-of-fold scores (global filters built without the image's
    fold); on val / test they equal the plain ones.  ``contributed``: the image built G_c.
    """
    table: pd.DataFrame
    g: np.ndarray
    masks: np.ndarray
    filters: cfe.GlobalFilters
    frequency: float
    n_classes: int
    source: str = "analysis_train"   # where G_c comes from (:data:`GC_SOURCES`)

    @property
    def class_filters(self) -> np.ndarray:
        """G (C, K) at the profile's frequency threshold."""
        return self.filters.filters(self.frequency)

    def split(self, split: str) -> pd.DataFrame:
        return self.table[self.table.split == split]


#: where the global filters G_c come from (:func:`analysis`)
GC_SOURCES = ("analysis_train", "model_train")


def gc_source(exp: Experiment, source: str | None = None) -> str:
    """``source``, or the default: the model's own training images (paper 2, eq. 2) wherever the
    analysis splits are held out from them (``split.analysis_from_test``: cub100), else the training
    split, which then IS the model's training data."""
    if source is None:
        return "model_train" if exp.data.extra.get("model_splits") else "analysis_train"
    if source not in GC_SOURCES:
        raise ValueError(f"gc_source: {source!r} is not valid; valid: {', '.join(GC_SOURCES)}")
    if source == "model_train":
        _require_model_splits(exp, "gc_source: 'model_train'")
    return source


def _require_model_splits(exp: Experiment, what: str) -> None:
    """``what`` needs the model's own training photos apart from the analysis splits."""
    if not exp.data.extra.get("model_splits"):
        raise ValueError(f"{what} needs held-out analysis splits (split.analysis_from_test); "
                         f"profile {exp.name!r} has none: its training split is the model's")


def model_train_pooled(exp: Experiment) -> dict:
    """``g`` and logits of the MODEL's own training photos (cached), where the analysis splits are
    held out from them (cub100): what eq. 2 builds G_c from."""
    ms = exp.data.extra["model_splits"]["train"]

    def compute():
        g, z = _pooled_pass(exp, ms.dataset)
        return {"id": np.asarray(ms.ids).astype(str), "label": np.asarray(ms.labels),
                "g": g.numpy().astype(np.float32), "logits": z.numpy()}

    return exp.cache.stage("pooled_features_model_train", {**pooled_params(exp), "split": "model_train"}, compute, NPZ)


def _masked_predictions(head, g: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    return torch.cat([cfe.masked_logits(head, g[i:i + 8192], masks[i:i + 8192]).argmax(1)
                      for i in range(0, len(g), 8192)]).numpy()


def analysis(exp: Experiment, gens: cfe.CFEGenerators | None = None, source: str | None = None) -> CFEAnalysis:
    """Masks of every prediction, global MC filters G_c, agreement scores with them.

    ``source`` (:func:`gc_source`): where G_c comes from.  ``analysis_train``: the training split (the
    authors also scanned their validation images; we keep validation for choosing and checking),
    with out-of-fold scores for its rows.  ``model_train``: the model's own training photos, correct
    and confident (eq. 2), where the analysis splits are held out (cub100); no analysis photo built
    G_c, so every score is out of sample, and the Table 1 class means come from the analysis
    training rows that would qualify (correct, p >= tau, masked prediction unchanged).

    With the cached generators (``gens=None``) the result is kept in ``exp.memo``: notebook 05
    needs it for every fine-tune's class masks."""
    source = gc_source(exp, source)
    if gens is None:
        return exp.memo.get(f"cfe_analysis_{source}", lambda: analysis(exp, generators(exp)[0], source))
    cc = exp.cfg["cfe"]
    z = pooled_table(exp)
    pred = exp.predictions
    g = torch.from_numpy(z["g"])
    prediction = pred["prediction"].to_numpy()
    masks = gens.masks_for(g, prediction)
    head = frozen_head(exp)
    masked_pred = _masked_predictions(head, g, masks)
    confidence = 1.0 - baseline_scores(logits_of(pred))["msp"]   # max softmax probability
    g, masks = g.numpy(), masks.numpy()
    n_classes = len(exp.data.classes)
    labels = pred["label"].to_numpy()
    train = (pred["split"] == "train").to_numpy()
    mc = cfe.mc_filters(masks, g)
    table = pred[["id", "split", "label", "prediction", "correct"]].copy()
    table["confidence"] = confidence
    table["masked_prediction"] = masked_pred
    table["n_active"] = (masks > 0).sum(1)
    table["n_mc"] = mc.sum(1)
    contributed = np.zeros(len(table), bool)
    if source == "analysis_train":
        gf = cfe.accumulate_global_filters(masks[train], g[train], labels[train], prediction[train],
                                           confidence[train], masked_pred[train], n_classes, cc["tau"])
        contributed[np.flatnonzero(train)[gf.contributed]] = True
    else:
        own = model_train_pooled(exp)
        g_own = torch.from_numpy(own["g"])
        p_own = own["logits"].argmax(1)
        m_own = gens.masks_for(g_own, p_own)
        conf_own = 1.0 - baseline_scores(own["logits"])["msp"]
        gf = cfe.accumulate_global_filters(m_own.numpy(), own["g"], own["label"], p_own, conf_own,
                                           _masked_predictions(head, g_own, m_own), n_classes, cc["tau"])
        contributed = train & (prediction == labels) & (confidence >= cc["tau"]) & (masked_pred == labels)
    table["contributed"] = contributed
    for freq, suffix in ((cc["frequency"], ""), (0.0, "_f0")):
        scores = cfe.agreement(mc, gf.filters(freq)[prediction])
        if source == "analysis_train":
            oof, _ = cfe.out_of_fold_agreement(masks[train], g[train], labels[train], prediction[train],
                                               confidence[train], masked_pred[train], n_classes, cc["tau"], freq,
                                               cc["folds"], exp.seed)
        for key in ("recall", "precision", "f1"):
            table[key + suffix] = scores[key]
            col = scores[key].copy()
            if source == "analysis_train":
                col[train] = oof[key]
            table[f"{key}{suffix}_oof"] = col
    return CFEAnalysis(table.reset_index(drop=True), g, masks, gf, cc["frequency"], n_classes, source)


def error_scores(a: CFEAnalysis) -> pd.DataFrame:
    """Beyond the paper: the agreement of a prediction's MC filters with its class's global filters
    as continuous error scores (higher = more likely wrong): id, split and

    - ``cfe_recall``, ``cfe_f1``: 1 - recall, 1 - F1 (the paper's rules threshold these);
    - ``cfe_precision``: 1 - precision, the share of the MC filters outside G_c;
    - ``cfe_outside``: the number of MC filters outside G_c (|MC| x (1 - precision));
    - ``cfe_mask_size``: |MC| itself, the control for the two above: wrong predictions get larger
      masks, which recall against G_c rewards (docs/methods.md section 8), so a score must beat mask size alone.

    Training rows are out of fold (for a joint classifier)."""
    t = a.table
    n_mc = t["n_mc"].to_numpy(np.float64)
    return pd.DataFrame({"id": t["id"], "split": t["split"], "cfe_recall": 1.0 - t["recall_oof"],
                         "cfe_f1": 1.0 - t["f1_oof"], "cfe_precision": 1.0 - t["precision_oof"],
                         "cfe_outside": n_mc * (1.0 - t["precision_oof"].to_numpy()), "cfe_mask_size": n_mc})


#: the CFE scores of :func:`error_scores`, in the order the notebooks show them
CFE_SCORES = ["cfe_recall", "cfe_f1", "cfe_precision", "cfe_outside", "cfe_mask_size"]


# --------------------------------------------------------------------------- Table 1 analogue
def _setting_value(exp: Experiment, v):
    return exp.cfg["cfe"][v.split(".")[1]] if isinstance(v, str) else float(v)


def table1(exp: Experiment, a: CFEAnalysis, msp_score: np.ndarray | None = None, split: str = "test") -> pd.DataFrame:
    """Paper 2, Table 1: per setting and per threshold source (the authors' in-sample class means,
    or out-of-fold ones), the errors detected, their share and the new errors on ``split``; and
    the errors MSP finds when it is allowed the same number of new errors.  With ``msp_score``, the
    gate-only controls of :func:`cfe.gate_control` (``gate_*`` columns): inside the predictions the
    skip gate leaves, the errors that random flagging (mean and 95 % interval) and MSP catch with
    as many flags as the rule, and both scores' AUROC there."""
    cc = exp.cfg["cfe"]
    t = a.table
    tr = t[t.split == "train"]
    ev = t[t.split == split]
    rows = []
    for name, s in TABLE1.items():
        freq = _setting_value(exp, s["frequency"])
        suffix = "" if freq == cc["frequency"] else "_f0"
        if freq not in (cc["frequency"], 0.0):
            raise ValueError(f"table1: frequency {freq} is not computed")
        score = f"{s['score']}{suffix}"
        skip = _setting_value(exp, s["skip"])
        sources = ["in-sample", "out-of-fold"] if s["rule"] == "class mean" else ["fixed"]
        for source in sources:
            if source == "fixed":
                flags = cfe.flag_predictions(ev[score], ev.prediction, ev.confidence, skip,
                                             fixed_threshold=cc["recall_threshold"])
                bar = f"{s['score']} < {cc['recall_threshold']}"
            else:
                col = score if source == "in-sample" else score + "_oof"
                built = tr[tr.contributed]
                means = cfe.class_means(built[col], built.label, a.n_classes)
                flags = cfe.flag_predictions(ev[score], ev.prediction, ev.confidence, skip, class_means=means)
                bar = f"{s['score']} < class mean ({source})"
            counts = cfe.detection_counts(flags, ev.correct)
            row = {"setting": name, "thresholds": source, "skip": skip, "frequency": freq, "rule": bar, **counts}
            if msp_score is not None:
                row["msp_errors_detected_at_same_new_errors"] = cfe.errors_at_same_new_errors(
                    msp_score, ev.correct.to_numpy(), counts["new_errors"])
                considered = cfe.in_gate(ev.confidence, skip)
                row.update({f"gate_{k}" if not k.startswith("gate_") else k: v for k, v in cfe.gate_control(
                    flags, ev.correct.to_numpy(), considered, msp_score, 1.0 - ev[score].to_numpy()).items()
                    if k not in ("flagged", "caught")})
            rows.append(row)
    return pd.DataFrame(rows)


#: which Table 1 thresholds the headline (metrics.json cfe.table1) uses: out of fold, like notebook 03
HEADLINE_THRESHOLDS = ("out-of-fold", "fixed")


def mask_statistics(exp: Experiment, gens: cfe.CFEGenerators, split: str = "train", chunk: int = 512) -> dict:
    """How the generators behave on ``split``: mean active filters of a mask, and the fraction of
    (image, target class) pairs that the masked model assigns to the target class (the paper:
    about 26-30 of 512 filters and 99.8 % on training images), averaged over all C generators.
    ``split="model_train"``: the model's own training photos (:func:`model_train_pooled`)."""
    if split == "model_train":
        g = _train_g(exp, "model_train")
    else:
        z = pooled_table(exp)
        g = torch.from_numpy(z["g"][z["split"] == split])
    head = frozen_head(exp)
    target = torch.as_tensor(gens.classes)
    active, hits, n = 0.0, 0.0, 0
    with torch.no_grad():
        for i in range(0, len(g), chunk):
            m = gens(g[i:i + chunk])                                  # (C, B, K)
            zc = cfe.masked_logits(head, g[i:i + chunk][None], m)
            active += (m > 0).sum(2).float().sum().item()
            hits += (zc.argmax(2) == target[:, None]).float().sum().item()
            n += m.shape[0] * m.shape[1]
    return {"mean_active_filters": active / n, "masked_agreement": hits / n, "split": split,
            "n_filters": int(g.shape[1])}


# --------------------------------------------------------------------------- both papers side by side
def lcr_if_cached(exp: Experiment) -> pd.DataFrame | None:
    """Paper 1's LCR of every sample when its label matrix is already cached for this profile (computing
    it runs every sample through every mutant), else None."""
    return exp.cache.if_cached(lambda: lcr_table(exp))


def two_paper_scores(exp: Experiment, a: CFEAnalysis, include_lcr: bool = True) -> tuple[pd.DataFrame, list[str]]:
    """Both papers' detectors on the same predictions: conductance (paper 1), LCR (where cached),
    the CFE scores (:data:`CFE_SCORES`), MSP, a joint NN on [MSP, 1 - precision, MC filters outside
    G_c] (``joint_nn_msp_cfe``: what CFE adds to confidence), and a joint NN on [LCR, conductance
    score, CFE recall] (the conductance score of notebook 03's joint classifier,
    :func:`paper1.conductance_for_joint`).  Returns (scores by id, the names of the columns that
    are scores; the paper-1-style joint NN last).

    The joint NN's name says its features, so that one metrics key never means two computations:
    ``joint_nn_cfe`` with LCR, ``joint_nn_cfe_without_lcr`` when LCR is not cached (notebook 04 run
    before notebook 02)."""
    df = error_scores(a)
    df = df.merge(conductance_for_joint(exp), on=["id", "split"], validate="one_to_one")
    df = df.merge(baseline_table(exp)[["id", "msp"]], on="id", validate="one_to_one")
    names = ["conductance", *CFE_SCORES, "msp"]
    feats = ["conductance_oof", "cfe_recall"]
    lcr = lcr_if_cached(exp) if include_lcr else None
    if lcr is not None:
        df = df.merge(lcr[["id", "lcr"]], on="id", validate="one_to_one")
        names.insert(1, "lcr")
        feats.insert(0, "lcr")
    full = with_predictions(exp, df)
    tr = full[full.split == "train"]
    y_tr = wrong(tr)
    # does CFE add anything beyond confidence?  The same joint NN on MSP and the two CFE scores that
    # rank errors above chance, against MSP alone (beyond the paper, docs/methods.md section 8)
    msp_feats = ["msp", "cfe_precision", "cfe_outside"]
    est = fit_unified("nn", tr[msp_feats].to_numpy(), y_tr, seed=exp.seed)
    df["joint_nn_msp_cfe"] = unified_score(est, df[msp_feats].to_numpy())
    names.append("joint_nn_msp_cfe")
    est = fit_unified("nn", tr[feats].to_numpy(), y_tr, seed=exp.seed)
    joint = "joint_nn_cfe" if lcr is not None else "joint_nn_cfe_without_lcr"
    df[joint] = unified_score(est, df[feats].to_numpy())
    names.append(joint)
    df.attrs["joint_features"] = feats
    df.attrs["joint_msp_features"] = msp_feats
    return df, names


# --------------------------------------------------------------------------- pictures of MC filters
def example(exp: Experiment, a: CFEAnalysis, sample_id: str) -> dict:
    """One prediction for :func:`plots.mc_overlays`: the image (de-normalised), the sum of its MC
    filters' activation maps at the pooled layer, and a title with label, prediction and scores."""
    row = a.table[a.table.id == sample_id].iloc[0]
    sd = exp.data[row.split]
    pos = int(np.flatnonzero(sd.ids.astype(str) == sample_id)[0])
    x, _ = sd.dataset[pos]
    with torch.no_grad():
        maps = layer_output(exp.model, pooled_head(exp.model)[0], x[None].to(exp.device))[1][0].float().cpu().numpy()
    mc = cfe.mc_filters(a.masks[row.name][None], a.g[row.name][None])[0]
    image = denormalize(sd.dataset, x)
    names = exp.data.classes
    return {"image": image, "maps": maps[mc].sum(0) if mc.any() else np.zeros(maps.shape[1:]),
            "title": f"{'correct' if row.correct else 'WRONG'}: {names[row.label]} -> {names[row.prediction]} "
                     f"(p {row.confidence:.2f})",
            "overlay_title": f"{int(mc.sum())} MC filters; recall {row.recall:.2f}, F1 {row.f1:.2f}"}


# --------------------------------------------------------------------------- debugging (sec. 4.3-4.4)
def debug_config(exp: Experiment) -> DebugConfig:
    """The profile's fine-tuning settings (``debugging.*``; augmentation from ``training`` when null)."""
    return DebugConfig.from_profile(exp.cfg["debugging"], exp.cfg["training"])


def debug_grid(exp: Experiment) -> list[tuple[float, float]]:
    """The (l1, l2) cells of the profile, checked before any work: pairs of numbers >= 0."""
    cells = []
    for cell in exp.cfg["debugging"]["grid"]:
        if (not isinstance(cell, (list, tuple)) or len(cell) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < math.inf
                           for v in cell)):
            raise ValueError(f"debugging.grid: {cell!r} is not valid; each cell is [l1, l2] with finite numbers >= 0, "
                             "e.g. [[0, 0], [0.001, 0.00002]]")
        cells.append((float(cell[0]), float(cell[1])))
    if not any(c != (0.0, 0.0) for c in cells):
        raise ValueError(f"debugging.grid: {exp.cfg['debugging']['grid']!r} has no cell with l1 or l2 > 0")
    return cells


def debug_masks(exp: Experiment) -> np.ndarray:
    """M (C, K): the global MC filters of each class at the debugging frequency threshold (0 by
    default: any filter counted at least once), from where notebook 04 builds G_c (:func:`gc_source`:
    the model's own training photos where the analysis splits are held out, else the training split)."""
    a = analysis(exp)
    return a.filters.filters(exp.cfg["debugging"]["frequency"])


def _split_tensors(exp: Experiment, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A split's inputs (in id order, all in memory) and labels as tensors."""
    x = split_inputs(exp, split)
    if not isinstance(x, torch.Tensor):  # a DataLoader over image files
        x = torch.cat([xb for xb, _ in x])
    return x, torch.as_tensor(np.asarray(exp.data[split].labels), dtype=torch.long)


class _DebugData:
    """The splits as tensors (on the CPU: each batch moves to the device as it is used) and, when the
    run is cacheable, the frozen prefix of every split, computed once per experiment on the
    experiment's device and kept there (it is what every epoch of every fine-tune reads)."""

    def __init__(self, exp: Experiment):

        cfg = debug_config(exp)
        model = exp.model
        self.tensors = {s: _split_tensors(exp, s) for s in SPLIT_ORDER}
        self.cacheable = suffix_cacheable(model, trainable_names(model, cfg.trainable), cfg.augmentation)
        self.prefix = None
        if self.cacheable:
            fwd = Forward(model)
            self.prefix = {s: fwd.prefix(x) for s, (x, _) in self.tensors.items()}


def _debug_data(exp: Experiment) -> _DebugData:
    return exp.memo.get("debug_data", lambda: _DebugData(exp))


def debug_run(exp: Experiment, l1: float, l2: float, seed: int) -> dict:
    """One fine-tune (cached): the debugging loss with (l1, l2), or the control with (0, 0); the
    best-validation epoch's logits on every split, its history, and what an epoch cost (``seconds_per_epoch``,
    from the stage's cost record: timings stay out of the cached file)."""
    cfg = debug_config(exp)
    masks = debug_masks(exp)
    _ = exp.predictions  # upstream outside compute(): each stage's logged cost is its own
    params = {"model": exp.model_params, "checkpoint": exp.cfg["checkpoint"], "cfg": cfg.__dict__, "l1": l1,
              "l2": l2, "seed": int(seed), "masks": np.packbits(masks).tobytes().hex()}

    def compute():
        d = _debug_data(exp)
        (x_tr, y_tr), (x_va, y_va) = d.tensors["train"], d.tensors["val"]
        prefix = (d.prefix["train"], d.prefix["val"]) if d.cacheable else None
        res = fine_tune(exp.model, x_tr, y_tr, x_va, y_va, torch.from_numpy(masks), cfg, l1, l2, seed,
                        cache_prefix=d.cacheable, prefix_inputs=prefix, progress=exp.progress, device=exp.device)
        model = copy.deepcopy(exp.model).eval()
        load_state(model, res.state_dict)
        fwd = Forward(model)
        logits = {}
        with torch.no_grad():
            for s in SPLIT_ORDER:
                inp = d.prefix[s] if d.cacheable else d.tensors[s][0]
                step = fwd.suffix if d.cacheable else fwd.full
                logits[s] = torch.cat([step(inp[i:i + 1000].to(exp.device))[0]
                                       for i in range(0, len(inp), 1000)]).cpu().numpy()
        exp.cache.note(seconds_per_epoch=res.seconds_per_epoch)  # a cost: in the cost record, not in the file
        return {"state_dict": res.state_dict, "history": res.history.to_dict("records"), "best_epoch": res.best_epoch,
                "cached_prefix": res.cached_prefix, "logits": logits, "device": res.device}

    run = exp.cache.stage("debug_run", params, compute, TENSORS_AND_ARRAYS)
    if "seconds_per_epoch" not in run:  # NaN where it ran on a machine that shares no cache root with this one
        cost = exp.cache.cost("debug_run", params, TENSORS_AND_ARRAYS)
        run["seconds_per_epoch"] = float(cost.get("seconds_per_epoch", float("nan")))
    return run


def run_accuracies(exp: Experiment, run: dict) -> dict:
    return {s: float((run["logits"][s].argmax(1) == exp.data[s].labels).mean()) for s in SPLIT_ORDER}


def debugging_grid(exp: Experiment) -> tuple[pd.DataFrame, tuple[float, float]]:
    """Table 2 analogue: train / val / test accuracy of every (l1, l2) cell at seed ``exp.seed``; the
    chosen cell = the best validation accuracy among cells with l1 or l2 > 0 (first on a tie)."""
    rows = []
    for l1, l2 in debug_grid(exp):
        run = debug_run(exp, l1, l2, exp.seed)
        acc = run_accuracies(exp, run)
        rows.append({"l1": l1, "l2": l2, "best_epoch": run["best_epoch"], "train_accuracy": acc["train"],
                     "val_accuracy": acc["val"], "test_accuracy": acc["test"]})
    grid = pd.DataFrame(rows)
    cand = grid[(grid.l1 > 0) | (grid.l2 > 0)]
    best = cand.loc[cand.val_accuracy.idxmax()]
    grid["chosen"] = (grid.l1 == best.l1) & (grid.l2 == best.l2)
    return grid, (float(best.l1), float(best.l2))


def debugging_seeds(exp: Experiment, chosen: tuple[float, float]) -> tuple[pd.DataFrame, dict, dict]:
    """The chosen cell and the control over ``debugging.seeds`` paired seeds: a row per (arm, seed)
    with train / val / test accuracy; the paired statistics of test accuracy; the runs' test
    correctness per arm (seeds x images)."""
    dc = exp.cfg["debugging"]
    seeds = [exp.seed + i for i in range(dc["seeds"])]
    y_test = exp.data["test"].labels
    rows, correct = [], {"debugged": [], "control": []}
    for arm, (l1, l2) in (("debugged", chosen), ("control", (0.0, 0.0))):
        for s in seeds:
            run = debug_run(exp, l1, l2, s)
            acc = run_accuracies(exp, run)
            rows.append({"arm": arm, "l1": l1, "l2": l2, "seed": s, "best_epoch": run["best_epoch"],
                         "train_accuracy": acc["train"], "val_accuracy": acc["val"], "test_accuracy": acc["test"]})
            correct[arm].append(run["logits"]["test"].argmax(1) == y_test)
    stats = paired_statistics(np.array(correct["debugged"]), np.array(correct["control"]), dc["n_bootstrap"], exp.seed)
    return pd.DataFrame(rows), stats, {k: np.array(v) for k, v in correct.items()}


def debugged_model(exp: Experiment, l1: float, l2: float, seed: int) -> torch.nn.Module:
    """The fine-tuned model of one run (eval mode, on the experiment's device)."""
    model = copy.deepcopy(exp.model)
    load_state(model, debug_run(exp, l1, l2, seed)["state_dict"])
    return model.eval()


def class_recall_table(exp: Experiment, runs: dict[str, list[np.ndarray]]) -> pd.DataFrame:
    """Table 3 analogue: per-class test recall of each arm (``runs``: arm -> list of test logits, one
    per seed; recall averaged over seeds), and debugged - control."""
    y = exp.data["test"].labels
    out = pd.DataFrame({"class": exp.data.classes, "n": np.bincount(y, minlength=len(exp.data.classes))})
    for arm, logits in runs.items():
        rec = np.mean([[(lg.argmax(1)[y == c] == c).mean() if (y == c).any() else np.nan
                        for c in range(len(exp.data.classes))] for lg in logits], 0)
        out[f"recall {arm}"] = rec
    if {"recall debugged", "recall control"} <= set(out.columns):
        out["debugged - control"] = out["recall debugged"] - out["recall control"]
    return out


def gradcam_examples(exp: Experiment, debugged: torch.nn.Module, debugged_test_logits: np.ndarray) -> list[dict]:
    """Figure 2 analogue: test images picked by rule, with captum's LayerGradCam (last conv layer, the
    predicted class) of the original and the debugged model: the correct prediction whose
    true-class confidence rose most, an error that was fixed (the most confident fix), a new error
    (the most confident one).  Kinds with no image are left out."""
    import warnings

    with warnings.catch_warnings():  # captum imports tqdm.auto, which warns without ipywidgets
        warnings.simplefilter("ignore")
        from captum.attr import LayerGradCam

    t = exp.split_table("test")
    y = t.label.to_numpy()
    p0 = torch.softmax(torch.from_numpy(logits_of(t)), 1).numpy()
    p1 = torch.softmax(torch.from_numpy(debugged_test_logits), 1).numpy()
    pred0, pred1 = p0.argmax(1), p1.argmax(1)
    rows = np.arange(len(y))
    picks = []
    both = (pred0 == y) & (pred1 == y)
    if both.any():
        rise = p1[rows, y] - p0[rows, y]
        picks.append(("confidence raised", int(rows[both][np.argmax(rise[both])])))
    fixed = (pred0 != y) & (pred1 == y)
    if fixed.any():
        picks.append(("error fixed", int(rows[fixed][np.argmax(p1[fixed, y[fixed]])])))
    new = (pred0 == y) & (pred1 != y)
    if new.any():
        picks.append(("new error", int(rows[new][np.argmax(p1[new].max(1))])))
    sd = exp.data["test"]
    names = exp.data.classes
    out = []
    for kind, i in picks:
        x, _ = sd.dataset[i]
        x = x[None].to(exp.device)
        cams = []
        for model, pred in ((exp.model, pred0[i]), (debugged, pred1[i])):
            gc = LayerGradCam(model, model.get_submodule(model.last_conv_layer))
            cams.append(gc.attribute(x, target=int(pred), relu_attributions=True)[0, 0].detach().cpu().numpy())
        image = denormalize(sd.dataset, x[0])
        out.append({"image": image, "cams": cams,
                    "titles": [f"{kind}: true {names[y[i]]}", f"original: {names[pred0[i]]} ({p0[i, pred0[i]]:.2f})",
                               f"debugged: {names[pred1[i]]} ({p1[i, pred1[i]]:.2f})"]})
    return out


def debugged_agreement(exp: Experiment, l1: float, l2: float, seed: int) -> dict:
    """Beyond the paper: do a fine-tuned model's own MC filters agree more with the class masks M
    that the debugged model was trained towards?  New CFE generators are trained for the fine-tuned
    model (on its pooled features, its head; the profile's CFE settings) and its test predictions'
    MC filters are compared with M of the predicted class, beside the original model's (cached).
    Run it for the debugged cell and for the control (0, 0): fine-tuning alone moves them too."""
    run = debug_run(exp, l1, l2, seed)
    masks = debug_masks(exp)
    params = {"run": {"model": exp.model_params, "l1": l1, "l2": l2, "seed": int(seed),
                      "cfg": debug_config(exp).__dict__}, "cfe": generator_config(exp).__dict__,
              "masks": np.packbits(masks).tobytes().hex()}

    def compute():
        model = debugged_model(exp, l1, l2, seed)  # on the device, where the cached prefix is
        d = _debug_data(exp)
        fwd = Forward(model)
        with torch.no_grad():
            g = {s: torch.cat([(fwd.suffix(d.prefix[s][i:i + 1000]) if d.cacheable
                                else fwd.full(d.tensors[s][0][i:i + 1000].to(exp.device)))[1]
                               for i in range(0, len(d.tensors[s][1]), 1000)]).cpu()
                 for s in ("train", "test")}
        head = copy.deepcopy(model.get_submodule(model.gap_linear_head[1])).cpu().eval()  # generators: CPU
        gens, _ = cfe.train_generators(g["train"], len(g["train"]), head, range(len(exp.data.classes)),
                                       generator_config(exp), seed=exp.seed, progress=exp.progress)
        pred = run["logits"]["test"].argmax(1)
        m = gens.masks_for(g["test"], pred)
        sc = cfe.agreement(cfe.mc_filters(m.numpy(), g["test"].numpy()), masks[pred])
        return {"recall": sc["recall"], "precision": sc["precision"],
                "n_mc": cfe.mc_filters(m.numpy(), g["test"].numpy()).sum(1)}

    debugged = exp.cache.stage("debug_agreement", params, compute, NPZ)
    a = analysis(exp)
    t = a.split("test")
    mc = cfe.mc_filters(a.masks[t.index], a.g[t.index])
    orig = cfe.agreement(mc, masks[t.prediction.to_numpy()])
    return {"original": {"recall": float(orig["recall"].mean()), "precision": float(orig["precision"].mean()),
                         "mc_filters": float(mc.sum(1).mean())},
            "fine-tuned": {"recall": float(debugged["recall"].mean()), "precision": float(debugged["precision"].mean()),
                           "mc_filters": float(debugged["n_mc"].mean())}}


def msp_auroc(y_wrong: np.ndarray, logits: np.ndarray) -> float:
    """AUROC of MSP (1 - max softmax) at detecting the wrong predictions of ``logits``."""
    return metrics.auroc(y_wrong, baseline_scores(logits)["msp"])


# --------------------------------------------------------------------------- metrics.json sections
def generator_metrics(stats: dict) -> dict:
    """``cfe.generators``: active filters per mask and how often the masked model keeps the target class
    (:func:`mask_statistics`)."""
    return {"cfe": {"generators": {"mean_active_filters": round(stats["mean_active_filters"], 4),
                                   "masked_agreement": round(stats["masked_agreement"], 4)}}}


#: the columns of :func:`cfe.disable_filters_check` that ``cfe.disable`` averages over classes
DISABLE_MEANS = ["own_recall_drop", "other_accuracy_drop", "random_own_recall_drop", "head_weight_own_recall_drop"]


def disable_summary(disable: pd.DataFrame) -> pd.Series:
    """The class means of the disabling check's drops (:data:`DISABLE_MEANS`)."""
    return disable[DISABLE_MEANS].mean()


def disable_metrics(disable: pd.DataFrame) -> dict:
    """``cfe.disable``: zeroing G_c's filters, beside random filters and the head's largest weights; and
    ``cfe.disable_vs_head_weight``: the classes where G_c lowers the class's recall more than the head's
    filters (wins), less (losses) or as much (ties), with the sign test of wins against losses
    (:func:`helpers.metrics.sign_test`)."""
    means = disable_summary(disable)
    g_c, head = disable.own_recall_drop.to_numpy(), disable.head_weight_own_recall_drop.to_numpy()
    wins, losses = int((g_c > head).sum()), int((g_c < head).sum())
    return {"cfe": {"disable": {"own_class_recall_drop": round(means.own_recall_drop, 4),
                                "other_accuracy_drop": round(means.other_accuracy_drop, 4),
                                "random_own_class_recall_drop": round(means.random_own_recall_drop, 4),
                                "head_weight_own_class_recall_drop": round(means.head_weight_own_recall_drop, 4),
                                "beats_head_weight_fraction": round(float(disable.beats_head_weight.mean()), 4)},
                    "disable_vs_head_weight": {"wins": wins, "losses": losses, "ties": len(disable) - wins - losses,
                                               "sign_test_p": round(metrics.sign_test(wins, losses), 6)}}}


#: Table 1's gate-control columns recorded beside each headline row
GATE_KEYS = ("gate_n", "gate_errors", "gate_random_expected", "gate_random_low", "gate_random_high", "gate_msp_caught",
             "gate_rule_auroc_in_gate", "gate_msp_auroc_in_gate", "gate_random_p_more", "gate_random_p_fewer")


def table1_headline(t1: pd.DataFrame) -> pd.DataFrame:
    """The headline rows of :func:`table1` (thresholds in :data:`HEADLINE_THRESHOLDS`), indexed by setting."""
    return t1[t1.thresholds.isin(HEADLINE_THRESHOLDS)].set_index("setting")


def table1_metrics(t1: pd.DataFrame) -> dict:
    """``cfe.table1`` (headline rows, with the gate control) and ``cfe.table1_in_sample``."""
    counts = ("errors_detected", "errors_detected_fraction", "new_errors", "msp_errors_detected_at_same_new_errors")
    return {"cfe": {"table1": {s: {k: r[k] for k in (*counts, *GATE_KEYS)} for s, r in table1_headline(t1).iterrows()},
                    "table1_in_sample": {s: {k: r[k] for k in ("errors_detected", "new_errors")}
                                         for s, r in t1[t1.thresholds == "in-sample"].set_index("setting").iterrows()}}}


def gc_source_rows(exp: Experiment, a: CFEAnalysis, gens: cfe.CFEGenerators, t1: pd.DataFrame, reports: dict,
                   msp: np.ndarray) -> dict:
    """Where G_c comes from, and whether it matters: for the analysis ``a`` (and, where the analysis splits
    are held out, the variant built from the analysis training photos), the median number of images per
    class, Table 1's headline catches and the CFE scores' test AUROC."""
    variants = {a.source: (a, t1, reports)}
    if exp.data.extra.get("model_splits"):
        alt = analysis(exp, gens, "analysis_train")
        alt_scores, alt_names = two_paper_scores(exp, alt)
        variants["analysis_train"] = (alt, table1(exp, alt, msp), evaluate_scores(exp, alt_scores, alt_names)[0])
    rows = {}
    for source, (an, tab, rep) in variants.items():
        hd = table1_headline(tab)
        rows[source] = {"images_per_class_median": float(np.median(an.filters.n_images)),
                        **{f"{s}_errors_detected": int(hd.loc[s, "errors_detected"]) for s in hd.index},
                        **{f"{n}_test_auroc": round(rep[n]["test"]["auroc"], 6)
                           for n in ("cfe_recall", "cfe_precision", "cfe_outside")}}
    return rows


def gc_source_metrics(a: CFEAnalysis, rows: dict) -> dict:
    """``cfe.gc_source`` and ``cfe.gc_sources`` (:func:`gc_source_rows`)."""
    return {"cfe": {"gc_source": a.source, "gc_sources": rows}}


def generator_data_rows(exp: Experiment, a: CFEAnalysis, t1: pd.DataFrame, reports: dict, msp: np.ndarray) -> dict:
    """Where the generators learn, and whether it matters (paper 2 trains them on the model's training
    set; the default here is the analysis training split).  Where the analysis splits are held out from
    the model's training photos (cub100), the generators are trained once more on all of those photos
    (:func:`generators` ``data="model_train"``), G_c is built from the same source as ``a``, and both
    rows give: the training photos and optimiser steps, the mask statistics on the model's training
    photos, how much of each class's G_c the two share (mean Jaccard over classes), the zeroing check's
    own-class recall drop on validation, Table 1's headline catches and the CFE scores' test AUROC.
    Elsewhere the two are the same data: ``{}``."""
    if not exp.data.extra.get("model_splits"):
        return {}
    gcfg = generator_config(exp)
    alt_gens = generators(exp, "model_train")[0]
    alt = analysis(exp, alt_gens, a.source)
    alt_reports = evaluate_scores(exp, error_scores(alt), CFE_SCORES)[0]
    variants = {"analysis_train": (generators(exp)[0], a, t1, reports),
                "model_train": (alt_gens, alt, table1(exp, alt, msp), alt_reports)}
    photos = {"analysis_train": len(exp.data["train"].ids),
              "model_train": len(exp.data.extra["model_splits"]["train"].ids)}
    head = frozen_head(exp)
    rows = {}
    for data, (gens, an, tab, rep) in variants.items():
        n = photos[data]
        stats = mask_statistics(exp, gens, "model_train")
        val = an.split("val")
        disable = cfe.disable_filters_check(head, torch.from_numpy(an.g[val.index]), val.label.to_numpy(),
                                            an.class_filters, n_random=1, seed=exp.seed)
        both, either = (an.class_filters & a.class_filters).sum(1), (an.class_filters | a.class_filters).sum(1)
        jaccard = np.where(either > 0, both / np.maximum(either, 1), 1.0)  # two empty sets are the same set
        hd = table1_headline(tab)
        rows[data] = {"training_photos": n, "steps": gcfg.epochs * -(-n // gcfg.batch_size),
                      "mean_active_filters": round(stats["mean_active_filters"], 4),
                      "masked_agreement": round(stats["masked_agreement"], 6),
                      "gc_jaccard_with_default": round(float(np.mean(jaccard)), 4),
                      "own_class_recall_drop": round(float(disable.own_recall_drop.mean()), 4),
                      **{f"{s}_errors_detected": int(hd.loc[s, "errors_detected"]) for s in hd.index},
                      **{f"{s}_new_errors": int(hd.loc[s, "new_errors"]) for s in hd.index},
                      **{f"{nm}_test_auroc": round(rep[nm]["test"]["auroc"], 6)
                         for nm in ("cfe_recall", "cfe_precision", "cfe_outside")}}
    return rows


def generator_data_metrics(rows: dict) -> dict:
    """``cfe.generator_data`` (:func:`generator_data_rows`); nothing where there is no variant."""
    return {"cfe": {"generator_data": rows}} if rows else {}


def debugging_grid_metrics(original: float, chosen: tuple[float, float], grid: pd.DataFrame) -> dict:
    """``debugging.original``, ``debugging.chosen`` and ``debugging.grid`` (:func:`debugging_grid`)."""
    return {"debugging": {"original": {"test_accuracy": round(float(original), 6)},
                          "chosen": {"l1": chosen[0], "l2": chosen[1]},
                          "grid": grid.round(6).to_dict("records")}}


def loss_terms_metrics(terms: pd.DataFrame) -> dict:
    """``debugging.loss_terms``: each run's loss terms (rows of :func:`debugging.loss_terms`)."""
    return {"debugging": {"loss_terms": {k: {c: round(v, 4) for c, v in r.items()} for k, r in terms.iterrows()}}}


def seed_summary(seeds: pd.DataFrame) -> pd.DataFrame:
    """Mean, standard deviation and count of the test accuracy of each arm over its seeds."""
    return seeds.groupby("arm", sort=False).test_accuracy.agg(["mean", "std", "count"])


#: the paired statistics of :func:`debugging_seeds` recorded in ``debugging.difference``
DIFFERENCE_KEYS = ("mean", "ci_low", "ci_high", "hier_ci_low", "hier_ci_high", "p_value", "sd_per_seed", "mde",
                   "mde_ci_low", "mde_ci_high", "n_seeds_tied")


def seed_metrics(seeds: pd.DataFrame, stats: dict) -> dict:
    """``debugging.<arm>`` (test accuracy over seeds; the earliest and latest best epoch of its runs: did the
    treatment run long enough to act?) and ``debugging.difference`` (debugged - control)."""
    epochs = seeds.groupby("arm", sort=False).best_epoch.agg(["min", "max"])
    return {"debugging": {
        **{arm: {"test_accuracy_mean": round(float(r["mean"]), 6), "test_accuracy_std": round(float(r["std"]), 6),
                 "n_seeds": int(r["count"]), "best_epoch_min": int(epochs.loc[arm, "min"]),
                 "best_epoch_max": int(epochs.loc[arm, "max"])} for arm, r in seed_summary(seeds).iterrows()},
        "difference": {k: round(stats[k], 6) for k in DIFFERENCE_KEYS if k in stats}}}


def beyond_metrics(agree: dict, msp: dict) -> dict:
    """``debugging.agreement`` (MC filters against the class masks) and ``debugging.msp_auroc`` of each model."""
    return {"debugging": {"agreement": agree, "msp_auroc": {k: round(v, 6) for k, v in msp.items()}}}


def agreement_of_runs(exp: Experiment, chosen: tuple[float, float]) -> dict:
    """MC filters against the class masks M (recall, precision, filters per image) on test for the original
    model, the debugged one (``chosen``) and the CE-only control, all of the profile's seed
    (:func:`debugged_agreement`)."""
    fine_tuned = {"debugged": debugged_agreement(exp, *chosen, exp.seed),
                  "control": debugged_agreement(exp, 0.0, 0.0, exp.seed)}
    return {"original": fine_tuned["debugged"]["original"], **{k: v["fine-tuned"] for k, v in fine_tuned.items()}}


def msp_aurocs(exp: Experiment, runs: dict) -> dict:
    """Test AUROC of MSP as an error detector for the original model and each fine-tuned run of ``runs``
    (name -> :func:`debug_run` result): did fine-tuning change how well confidence ranks errors?"""
    test, y_test = exp.split_table("test"), exp.data["test"].labels
    return {"original": msp_auroc(~test.correct.to_numpy(), logits_of(test)),
            **{k: msp_auroc(r["logits"]["test"].argmax(1) != y_test, r["logits"]["test"]) for k, r in runs.items()}}
