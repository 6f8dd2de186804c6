"""Counterfactual (CFE) filters: paper 2, section 3 and 4.2 (Tariq & Zia), after the CFE model of
Tariq et al. (KBS 2022).  docs/methods.md section 6 has every formula and the authors' code's choices.

The pieces, in the paper's order:

* **Pooled features** ``g`` (K filters): the vector the model's head computes from its last conv
  layer just before the final linear layer (``models.pooled_head``).  The base model is frozen,
  so everything below works on cached ``g``.
* **CFE generators**, one per target ("alter") class ``c``: a single Dense K->K layer,
  ``m = ThresholdedReLU_0.5(sigmoid(Dense(g)))``; the frozen head sees ``g * m``.  Loss per batch
  (the authors' code): ``CE_mean(target c) + lam * s * sum|m| - s * sum z_c`` with
  ``lam = 2``, ``s = 0.001``.  All C generators train at once as one batched model (a C x K x K
  weight); SGD with momentum updates every weight elementwise, so this is exactly C separate runs
  with the same data order (tested).
* **MC filters** of a prediction: the generator of the PREDICTED class, ``m > 0`` and ``g > 0``.
* **Global MC filters** (eq. 1-3): per class, the count of each filter over the training images
  that are predicted correctly with ``p >= tau`` and still predicted ``c`` by the masked model;
  ``G_c = {k : count_k > f * max_k count}``.
* **Agreement** of a prediction with its class (recall, precision, F1) and the **detection rules**
  of Table 1.
* The **disabling check** of Tariq et al.: zero ``G_c`` in ``g`` and see class ``c``'s recall fall.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers.devices import torch_threads
from helpers.progress import bar as progress_bar


def thresholded_relu(x: torch.Tensor, theta: float = 0.5) -> torch.Tensor:
    """Keras ``ThresholdedReLU(theta)``: ``x`` where ``x > theta``, else exactly 0 (gradient 1 / 0)."""
    return torch.where(x > theta, x, torch.zeros((), dtype=x.dtype, device=x.device))


# --------------------------------------------------------------------------- the CFE generators
@dataclass(frozen=True)
class GeneratorConfig:
    """Training settings of the CFE generators; the defaults are the authors' (docs/methods.md section 6)."""

    sparsity: float = 2.0       # lambda: weight of the sparsity term
    loss_scale: float = 1e-3    # s: the sparsity and the logits terms are both scaled by 0.001
    lr: float = 1e-3
    momentum: float = 0.9
    batch_size: int = 16
    epochs: int = 10

    @classmethod
    def from_profile(cls, cfg: dict) -> "GeneratorConfig":
        keys = cls.__dataclass_fields__
        return cls(**{k: cfg[k] for k in keys if k in cfg})


class CFEGenerators(nn.Module):
    """C generators as one batched Dense layer: ``weight`` (C, K, K) as Keras stores a kernel
    (input x output), ``bias`` (C, K).  ``classes`` names the target class of each generator."""

    def __init__(self, n_features: int, classes: list[int] | range, seed: int = 0):
        super().__init__()
        self.classes = [int(c) for c in classes]
        k = n_features
        w = torch.empty(len(self.classes), k, k)
        bound = math.sqrt(6.0 / (k + k))  # Keras glorot_uniform for a square kernel
        for i, c in enumerate(self.classes):  # one generator per class: same init trained alone or together
            w[i].uniform_(-bound, bound, generator=torch.Generator().manual_seed(class_seed(seed, c)))
        self.weight = nn.Parameter(w)
        self.bias = nn.Parameter(torch.zeros(len(self.classes), k))

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        """Masks of every generator for every row of ``g`` (B, K): (C, B, K), values 0 or in (0.5, 1)."""
        h = torch.einsum("bi,cio->cbo", g, self.weight) + self.bias[:, None, :]
        return thresholded_relu(torch.sigmoid(h))

    def index_of(self, c: int) -> int:
        return self.classes.index(int(c))

    @torch.no_grad()
    def masks_for(self, g: torch.Tensor, targets, chunk: int = 4096) -> torch.Tensor:
        """The mask of generator ``targets[i]`` for row ``i`` of ``g``: (N, K).  Runs each class's
        generator only on the rows that target it (not all C on every row)."""
        targets = torch.from_numpy(np.array(targets, dtype=np.int64))
        out = torch.zeros_like(g)
        for c in targets.unique().tolist():
            rows = (targets == c).nonzero().flatten()
            i = self.index_of(c)
            for s in range(0, len(rows), chunk):
                r = rows[s:s + chunk]
                out[r] = thresholded_relu(torch.sigmoid(g[r] @ self.weight[i] + self.bias[i]))
        return out


def class_seed(seed: int, c: int) -> int:
    """The init seed of class ``c``'s generator: independent of which other classes train with it."""
    return int(seed) * 1_000_003 + int(c)


def generator_loss(masks: torch.Tensor, g: torch.Tensor, head: nn.Linear, classes: list[int],
                   cfg: GeneratorConfig) -> tuple[torch.Tensor, dict]:
    """The authors' loss of every generator on one batch, summed over generators (their parameters are
    disjoint, so each gets exactly its own gradient).  ``masks`` (C, B, K).  Returns the total and
    per-term batch values averaged over generators (for the training curves)."""
    z = F.linear(g[None] * masks, head.weight, head.bias)            # (C, B, classes)
    target = torch.as_tensor(classes, device=g.device)
    ce = F.cross_entropy(z.flatten(0, 1), target.repeat_interleave(g.shape[0]), reduction="none")
    ce = ce.view(len(classes), -1).mean(1)                            # CE_mean per generator
    sparsity = cfg.sparsity * cfg.loss_scale * masks.abs().sum((1, 2))
    logit = -cfg.loss_scale * z.gather(2, target[:, None, None].expand(-1, g.shape[0], 1)).sum((1, 2))
    total = (ce + sparsity + logit).sum()
    with torch.no_grad():
        stats = {"ce": ce.mean().item(), "sparsity": sparsity.mean().item(), "logits": logit.mean().item(),
                 "active": (masks > 0).sum(2).float().mean().item(),
                 "hits": (z.argmax(2) == target[:, None]).float().mean().item()}
    return total, stats


def train_generators(features: torch.Tensor | Callable[[torch.Tensor], torch.Tensor], n_samples: int,
                     head: nn.Linear, classes: list[int] | range, cfg: GeneratorConfig = GeneratorConfig(),
                     seed: int = 0, progress: bool = False, group_size: int | None = None,
                     threads: int | None = 1) -> tuple[CFEGenerators, pd.DataFrame]:
    """Train the CFE generators of ``classes`` on every training image (target = the generator's class,
    whatever the image's label), SGD with momentum, seeded data order.

    ``features``: the cached pooled features (N, K), or a function of a batch of sample indices that
    returns their pooled features (the naive way: a frozen forward pass per batch, per epoch; used by
    the tests and the benchmark to show that the cache changes nothing).  Returns the generators and
    the per-epoch history (loss terms, mean active filters, fraction of images the masked model
    assigns to the generator's class), averaged over the epoch's batches and the generators.

    Speed (``make bench``, cfe): the generators train in batched groups (all of them when the
    weights fit in a CPU cache, e.g. 10 x 64 x 64; groups of 7 at K = 512), every group over the
    same data order (another group size can move the last bits: batched kernels; helpers.tools.precompute
    trains the very same groups, so its results are identical); the gradient is written out by hand
    (:func:`_generator_step`, tested against autograd on :func:`generator_loss`); one thread
    (``threads``; None keeps torch's setting)."""
    k = head.in_features
    gens = CFEGenerators(k, classes, seed)
    n_gen = len(gens.classes)
    sums = torch.zeros(cfg.epochs, 5, dtype=torch.float64)   # ce, sparsity, logits, active, hits (summed)
    groups = generator_groups(k, n_gen, group_size)
    bar = progress_bar(total=cfg.epochs * len(groups), desc="CFE generators (epochs x groups)", enabled=progress,
                       mininterval=5.0)
    for sl in groups:
        w, b, group_sums = train_generator_group(features, n_samples, head, classes, sl, cfg, seed, threads, bar)
        gens.weight.data[sl] = w
        gens.bias.data[sl] = b
        sums += group_sums
    bar.close()
    return gens.eval(), generator_history(sums, n_samples, n_gen, cfg)


def generator_groups(k: int, n_gen: int, group_size: int | None = None) -> list[slice]:
    """The batched groups the generators train in (all of them when their K x K weights fit in a CPU
    cache): the work units of helpers.tools.precompute."""
    group = group_size or max(1, 2_000_000 // (k * k))
    return [slice(g0, min(g0 + group, n_gen)) for g0 in range(0, n_gen, group)]


def train_generator_group(features, n_samples: int, head: nn.Linear, classes, sl: slice,
                          cfg: GeneratorConfig = GeneratorConfig(), seed: int = 0, threads: int | None = 1,
                          bar=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train the generators ``sl`` of ``classes`` (one group of :func:`train_generators`) from their
    seeded initial weights over the seeded data order every group shares; returns (weight, bias,
    per-epoch loss sums (epochs, 5) float64), on the CPU.  Seeded by what it is (the seed and the slice),
    so any process trains the same group.  Trains on the head's device (each batch of ``features`` is
    moved there; the data order is drawn on the CPU, so every device sees the same batches)."""
    head = head.eval()
    dev = head.weight.device
    batch_of = (lambda idx: features[idx]) if isinstance(features, torch.Tensor) else features
    init = CFEGenerators(head.in_features, list(classes)[sl], seed)  # per-class seeds: the rows of the full init
    hw, hb = head.weight.detach(), head.bias.detach()
    sums = torch.zeros(cfg.epochs, 5, dtype=torch.float64)
    ctx = torch_threads(threads) if threads else contextlib.nullcontext()
    with ctx, torch.no_grad():
        w, b = init.weight.data.clone().to(dev), init.bias.data.clone().to(dev)
        buf_w, buf_b = torch.zeros_like(w), torch.zeros_like(b)
        target = torch.as_tensor(init.classes, device=dev)
        order_gen = torch.Generator().manual_seed(int(seed))  # the same data order for every group
        step = 0
        for epoch in range(cfg.epochs):
            order = torch.randperm(n_samples, generator=order_gen)
            acc = torch.zeros(5, dtype=torch.float64, device=dev)
            for s in range(0, n_samples, cfg.batch_size):
                g = batch_of(order[s:s + cfg.batch_size]).detach().to(dev, non_blocking=True)
                acc += _generator_step(w, b, buf_w, buf_b, g, hw, hb, target, cfg, first=step == 0)
                step += 1
            sums[epoch] += acc.cpu()  # one read per epoch
            if bar is not None:
                bar.update(1)
    return w.cpu(), b.cpu(), sums


def generator_history(sums: torch.Tensor, n_samples: int, n_gen: int, cfg: GeneratorConfig) -> pd.DataFrame:
    """The per-epoch history of :func:`train_generators` from the loss sums of all groups."""
    n_batches = math.ceil(n_samples / cfg.batch_size)
    mean = (sums / (n_batches * n_gen)).numpy()
    history = pd.DataFrame(mean, columns=["ce", "sparsity", "logits", "active", "hits"])
    history.insert(0, "epoch", np.arange(1, cfg.epochs + 1))
    history["total"] = history["ce"] + history["sparsity"] + history["logits"]
    return history


def _generator_step(w: torch.Tensor, b: torch.Tensor, buf_w: torch.Tensor, buf_b: torch.Tensor, g: torch.Tensor,
                    head_w: torch.Tensor, head_b: torch.Tensor, target: torch.Tensor, cfg: GeneratorConfig,
                    first: bool) -> torch.Tensor:
    """One SGD step of a group of generators on one batch, in place, with the gradient of
    :func:`generator_loss` written out (masks are 0 or sigmoid > 0.5, so |m| = m and the threshold
    passes the sigmoid's derivative where it is open).  SGD with momentum exactly as
    ``torch.optim.SGD`` (first step: buffer = gradient).  Returns the batch's summed statistics
    over the group: ce, sparsity, logits terms, active filters per mask, hits per image."""
    c, bsz = w.shape[0], g.shape[0]
    h = torch.baddbmm(b[:, None, :], g.expand(c, -1, -1), w)           # (C, B, K)
    sig = torch.sigmoid(h)
    on = sig > 0.5
    m = sig * on
    z = torch.matmul(g * m, head_w.t()) + head_b                       # (C, B, classes)
    logp = torch.log_softmax(z, -1)
    onehot = torch.zeros(c, 1, z.shape[-1], dtype=z.dtype, device=z.device)
    onehot[torch.arange(c, device=z.device), 0, target] = 1.0
    dz = logp.exp() / bsz - onehot * (1.0 / bsz + cfg.loss_scale)
    dm = torch.matmul(dz, head_w) * g + cfg.sparsity * cfg.loss_scale
    dh = dm * on * sig * (1.0 - sig)
    grad_w = torch.matmul(g.t(), dh)                                   # (C, K, K)
    grad_b = dh.sum(1)
    for p, buf, grad in ((w, buf_w, grad_w), (b, buf_b, grad_b)):
        if first:
            buf.copy_(grad)
        else:
            buf.mul_(cfg.momentum).add_(grad)
        p.add_(buf, alpha=-cfg.lr)
    zc = (z * onehot).sum(-1)                                           # (C, B)
    ce = -(logp * onehot).sum(-1).mean(1)
    return torch.stack([ce.sum(), cfg.sparsity * cfg.loss_scale * m.sum(), -cfg.loss_scale * zc.sum(),
                        on.sum(2).double().mean(1).sum(), (z.argmax(2) == target[:, None]).double().mean(1).sum()]
                       ).double()


# --------------------------------------------------------------------------- MC filters (paper 2, eq. 3)
@torch.no_grad()
def masked_logits(head: nn.Linear, g: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Logits of the frozen head on ``g * m``."""
    return F.linear(g * masks, head.weight, head.bias)


def mc_filters(masks: torch.Tensor | np.ndarray, g: torch.Tensor | np.ndarray) -> np.ndarray:
    """MC(x) = {k : m_k > 0 and g_k > 0} (the authors' agreement code), as a boolean (N, K) array."""
    return (np.asarray(masks) > 0) & (np.asarray(g) > 0)


# --------------------------------------------------------------------------- global MC filters (eq. 1-2)
@dataclass
class GlobalFilters:
    """Per class: the count histogram (C, K), the summed magnitudes g * m (C, K), how many images
    contributed, and which samples did (a boolean over the rows given)."""

    counts: np.ndarray
    magnitudes: np.ndarray
    n_images: np.ndarray
    contributed: np.ndarray

    def filters(self, frequency: float) -> np.ndarray:
        """G_c = {k : count_k > f * max count of class c} (strict, as the authors): (C, K) bool.
        A class with no contributing image has an empty set."""
        return global_filters(self.counts, frequency)


def global_filters(counts: np.ndarray, frequency: float) -> np.ndarray:
    """G_c = {k : counts[c, k] > frequency * max_k counts[c, k]} (strict >)."""
    if not 0.0 <= frequency <= 1.0:
        raise ValueError(f"frequency: {frequency!r} must lie in [0, 1]")
    counts = np.asarray(counts)
    return (counts > frequency * counts.max(1, keepdims=True)) & (counts > 0)


def accumulate_global_filters(masks: np.ndarray, g: np.ndarray, labels: np.ndarray, predictions: np.ndarray,
                              confidence: np.ndarray, masked_predictions: np.ndarray, n_classes: int,
                              tau: float = 0.9) -> GlobalFilters:
    """Eq. 1-2: an image of class c adds its binary mask (m > 0) to hist_c when it is predicted
    correctly with probability >= tau and the masked model (generator c) still predicts c.

    ``masks``: the mask of the generator of each image's PREDICTED class (N, K); for the images
    that qualify, predicted = true class, so it is the generator of c."""
    masks, g = np.asarray(masks), np.asarray(g)
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    ok = (predictions == labels) & (np.asarray(confidence) >= tau) & (np.asarray(masked_predictions) == labels)
    k = masks.shape[1]
    counts = np.zeros((n_classes, k), np.int64)
    mags = np.zeros((n_classes, k), np.float64)
    binary = masks > 0
    np.add.at(counts, labels[ok], binary[ok].astype(np.int64))
    np.add.at(mags, labels[ok], (g * masks)[ok].astype(np.float64))
    n_images = np.bincount(labels[ok], minlength=n_classes)
    return GlobalFilters(counts, mags, n_images, ok)


# --------------------------------------------------------------------------- agreement (sec. 4.2)
def agreement(mc: np.ndarray, class_filters: np.ndarray) -> dict[str, np.ndarray]:
    """Agreement of each prediction's MC filters with the global filters of its predicted class:
    recall = |MC & G| / |G|, precision = |MC & G| / |MC|, F1.  Rows pair up (N, K) with (N, K).

    Where a denominator is 0 the score is 0, and F1 is 0 where precision + recall = 0 (the
    authors' code gives NaN there, which silently drops the image from their means)."""
    mc, gc = np.asarray(mc, bool), np.asarray(class_filters, bool)
    inter = (mc & gc).sum(1).astype(np.float64)
    n_g, n_mc = gc.sum(1), mc.sum(1)
    recall = np.divide(inter, n_g, out=np.zeros_like(inter), where=n_g > 0)
    precision = np.divide(inter, n_mc, out=np.zeros_like(inter), where=n_mc > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(inter), where=denom > 0)
    return {"recall": recall, "precision": precision, "f1": f1}


# --------------------------------------------------------------------------- detection (Table 1)
def in_gate(confidence: np.ndarray, skip: float) -> np.ndarray:
    """Table 1's confidence gate: the predictions the rule looks at, those with max probability at
    most ``skip`` (skip 0 skips none); the others are assumed correct."""
    confidence = np.asarray(confidence)
    return ~(confidence > skip) if skip > 0 else np.ones(len(confidence), bool)


def flag_predictions(score: np.ndarray, predictions: np.ndarray, confidence: np.ndarray, skip: float,
                     class_means: np.ndarray | None = None, fixed_threshold: float | None = None) -> np.ndarray:
    """Table 1's rule: predictions with max probability above ``skip`` are assumed correct (skip 0
    skips none); the rest are flagged when their agreement ``score`` is below the predicted class's
    mean training score (``class_means``), or below ``fixed_threshold`` (the "recall < 0.3" row)."""
    if (class_means is None) == (fixed_threshold is None):
        raise ValueError("flag_predictions: give exactly one of class_means and fixed_threshold")
    score, predictions = np.asarray(score), np.asarray(predictions)
    bar = np.asarray(class_means)[predictions] if class_means is not None else fixed_threshold
    return in_gate(confidence, skip) & (score < bar)


def detection_counts(flagged: np.ndarray, correct: np.ndarray) -> dict:
    """Errors detected (wrong predictions flagged), their share of all errors, and new errors
    (correct predictions flagged), as in Table 1."""
    flagged, wrong = np.asarray(flagged, bool), ~np.asarray(correct, bool)
    n_err = int(wrong.sum())
    det = int((flagged & wrong).sum())
    return {"errors": n_err, "errors_detected": det, "errors_detected_fraction": det / n_err if n_err else float("nan"),
            "new_errors": int((flagged & ~wrong).sum())}


def gate_control(flagged: np.ndarray, correct: np.ndarray, considered: np.ndarray, msp_error_score: np.ndarray,
                 rule_error_score: np.ndarray | None = None) -> dict:
    """What Table 1's rule adds beyond its confidence gate (beyond the paper).  Inside the set the
    gate does not skip (``considered``: max probability <= skip), the rule flags k predictions and
    catches some errors.  Controls at the same budget k, inside the same set:

    - random: flag k of the N considered predictions at random; the errors caught follow a
      hypergeometric law (N, E errors, k draws): its mean and central 95 % interval;
    - MSP: flag the k least confident considered predictions (ties broken by order).

    ``random_p_more`` / ``random_p_fewer``: the one-sided p-values of the rule's catches under that
    hypergeometric law (:func:`helpers.metrics.random_flags_p`): does the rule catch more, or fewer,
    errors than random flags in the gate?

    Also the AUROC, inside the gate, of the rule's own continuous score (``rule_error_score``,
    higher = more likely wrong, e.g. 1 - recall) and of MSP: 0.5 means no ranking beyond the gate."""
    from scipy.stats import hypergeom

    from helpers.metrics import auroc, random_flags_p

    flagged, wrong, considered = (np.asarray(a, bool) for a in (flagged, ~np.asarray(correct, bool), considered))
    if (flagged & ~considered).any():
        raise ValueError("gate_control: a flagged prediction lies outside the considered set")
    n, e, k = int(considered.sum()), int((wrong & considered).sum()), int(flagged.sum())
    dist = hypergeom(n, e, k) if n and e and k else None  # no error or no flag: random flags catch 0
    order = np.argsort(-np.asarray(msp_error_score, np.float64)[considered], kind="stable")[:k]
    msp_caught = int(wrong[considered][order].sum())
    caught = int((flagged & wrong).sum())
    p_more, p_fewer = random_flags_p(caught, n, e, k)
    out = {"gate_n": n, "gate_errors": e, "flagged": k, "caught": caught,
           "random_expected": k * e / n if dist else 0.0,  # the law's mean; scipy's .mean() warns when e or k = n
           "random_low": float(dist.ppf(0.025)) if dist else 0.0,
           "random_high": float(dist.ppf(0.975)) if dist else 0.0,
           "random_p_more": p_more, "random_p_fewer": p_fewer,
           "msp_caught": msp_caught}
    both = 0 < e < n
    for name, score in (("rule", rule_error_score), ("msp", msp_error_score)):
        if score is not None:
            out[f"{name}_auroc_in_gate"] = (float(auroc(wrong[considered], np.asarray(score, np.float64)[considered]))
                                           if both else float("nan"))
    return out


def errors_at_same_new_errors(error_score: np.ndarray, correct: np.ndarray, new_errors: int) -> int:
    """How many errors a score (higher = more likely wrong, e.g. MSP's 1 - max p) flags when it is
    allowed exactly ``new_errors`` flagged correct predictions: the threshold is the
    (new_errors)-th highest score among correct predictions; ties at it are not flagged."""
    s, correct = np.asarray(error_score, np.float64), np.asarray(correct, bool)
    if new_errors <= 0:
        thr = s[correct].max() if correct.any() else -np.inf
        return int((s[~correct] > thr).sum())
    sc = np.sort(s[correct])[::-1]
    if new_errors >= len(sc):
        return int((~correct).sum())
    thr = sc[new_errors]  # the first correct prediction NOT flagged: flag strictly above it
    return int((s[~correct] > thr).sum())


def class_means(score: np.ndarray, classes: np.ndarray, n_classes: int) -> np.ndarray:
    """Mean score per class (NaN for a class with no sample: nothing is flagged against it)."""
    score, classes = np.asarray(score, np.float64), np.asarray(classes)
    sums = np.bincount(classes, weights=score, minlength=n_classes)
    n = np.bincount(classes, minlength=n_classes)
    return np.divide(sums, n, out=np.full(n_classes, np.nan), where=n > 0)


def out_of_fold_agreement(masks: np.ndarray, g: np.ndarray, labels: np.ndarray, predictions: np.ndarray,
                          confidence: np.ndarray, masked_predictions: np.ndarray, n_classes: int, tau: float,
                          frequency: float, folds: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Agreement scores of the TRAINING images against global filters built without them: k-fold
    (seeded); fold j's images are scored against the histograms of the other folds.  Returns the
    scores (recall, precision, f1) of every row and its fold id."""
    n = len(labels)
    fold = np.random.default_rng(seed).permutation(n) % folds
    mc = mc_filters(masks, g)
    out = {k: np.zeros(n) for k in ("recall", "precision", "f1")}
    for j in range(folds):
        rest, here = fold != j, fold == j
        gf = accumulate_global_filters(masks[rest], g[rest], labels[rest], predictions[rest], confidence[rest],
                                       masked_predictions[rest], n_classes, tau)
        scores = agreement(mc[here], gf.filters(frequency)[predictions[here]])
        for key in out:
            out[key][here] = scores[key]
    return out, fold


# --------------------------------------------------------------------------- do the filters matter?
@torch.no_grad()
def disable_filters_check(head: nn.Linear, g: torch.Tensor, labels: np.ndarray, filters: np.ndarray,
                          n_random: int = 5, seed: int = 0) -> pd.DataFrame:
    """Tariq et al.'s check: zero class c's global MC filters in ``g`` and measure class c's recall
    and the accuracy on the other classes, against two controls of the same size: random filters
    (``n_random`` seeded draws, averaged), and the filters with the largest head weight ``W[c]`` for
    the class (beyond the paper: zeroing what carries the class's logit must lower its recall, so only
    beating this control shows that the CFE generators find more than the head's own weights).  One
    row per class with a non-empty filter set; ``beats_head_weight``: the MC filters' own-class drop
    exceeds the head-weight control's."""
    labels = np.asarray(labels)
    base_pred = head(g).argmax(1).numpy()
    rng = np.random.default_rng(seed)
    k = g.shape[1]
    rows = []
    for c in range(filters.shape[0]):
        own, other = labels == c, labels != c
        sel = np.flatnonzero(filters[c])
        if len(sel) == 0 or not own.any():
            continue

        def accuracies(drop, own=own, other=other, c=c):
            keep = torch.ones(k)
            keep[torch.as_tensor(drop, dtype=torch.long)] = 0
            pred = head(g * keep).argmax(1).numpy()
            return float((pred[own] == c).mean()), float((pred[other] == labels[other]).mean())

        recall0, other0 = float((base_pred[own] == c).mean()), float((base_pred[other] == labels[other]).mean())
        recall1, other1 = accuracies(sel)
        rand = [accuracies(rng.choice(k, len(sel), replace=False)) for _ in range(n_random)]
        top_w = np.argsort(-head.weight[c].detach().cpu().numpy(), kind="stable")[:len(sel)]
        head_recall, head_other = accuracies(top_w)
        rows.append({"class": c, "n_filters": len(sel), "own_recall": recall0, "own_recall_disabled": recall1,
                     "own_recall_drop": recall0 - recall1, "other_accuracy": other0,
                     "other_accuracy_disabled": other1, "other_accuracy_drop": other0 - other1,
                     "random_own_recall_drop": recall0 - float(np.mean([r[0] for r in rand])),
                     "random_other_accuracy_drop": other0 - float(np.mean([r[1] for r in rand])),
                     "head_weight_own_recall_drop": recall0 - head_recall,
                     "head_weight_other_accuracy_drop": other0 - head_other,
                     "beats_head_weight": (recall0 - recall1) > (recall0 - head_recall)})
    return pd.DataFrame(rows, columns=DISABLE_COLUMNS)


DISABLE_COLUMNS = ["class", "n_filters", "own_recall", "own_recall_disabled", "own_recall_drop", "other_accuracy",
                   "other_accuracy_disabled", "other_accuracy_drop", "random_own_recall_drop",
                   "random_other_accuracy_drop", "head_weight_own_recall_drop", "head_weight_other_accuracy_drop",
                   "beats_head_weight"]
