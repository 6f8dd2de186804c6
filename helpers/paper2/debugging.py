"""Model debugging by retraining with counterfactual filters: paper 2, eq. 4-8 and sections 4.3-4.4.
docs/methods.md section 7 has the formulas and the authors' code's choices.

The loss, as the authors' code computes it (the printed eq. 4 and 8 double-negate the MC term,
which would PENALISE the class's own filters; the code does what the text intends):

    L = CE_mean - l1 * sum_{batch,k} f * M[y] + l2 * sum_{batch,k} f * (1 - M[y])

``f = ThresholdedReLU_0.5(sigmoid(g))`` from the pooled last-conv features ``g`` (before any
dropout): ``sigmoid(g)`` for an active filter (``g > 0``), 0 for an inactive one.  ``M[y]`` is
the global MC filter set of the TRUE class (built with frequency threshold 0 by default).

Fine-tuning trains only some modules (default: the model's last conv layer, as declared in
``models.LAYERS``, and the final linear layer).  Every run keeps the epoch with the best real
validation accuracy; the control is the same run with ``l1 = l2 = 0`` (same seed, same data
order).  With augmentation off, the frozen layers below the first trainable one give the same
output every epoch: that input is computed once and only the trainable suffix runs (exact:
tested against the full forward).
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers.devices import model_device, torch_threads
from helpers.metrics import mde_interval
from helpers.models import pooled_forward, pooled_head
from helpers.paper2.cfe import thresholded_relu
from helpers.progress import bar as progress_bar
from helpers.training import augment, module_names, set_trainable


@dataclass(frozen=True)
class DebugConfig:
    """Fine-tuning settings; the defaults are the authors' (docs/methods.md section 7)."""

    l1: float = 1e-3
    l2: float = 2e-5
    lr: float = 1e-4
    momentum: float = 0.9
    batch_size: int = 16
    epochs: int = 20
    trainable: str | tuple = "last_conv"
    augmentation: str = "none"

    @classmethod
    def from_profile(cls, cfg: dict, training: dict, **kw) -> "DebugConfig":
        aug = cfg.get("augmentation") or training.get("augmentation", "none")
        trainable = cfg.get("trainable", "last_conv")
        return cls(**{**{k: cfg[k] for k in ("lr", "momentum", "batch_size", "epochs") if k in cfg},
                      "trainable": tuple(trainable) if isinstance(trainable, list) else trainable,
                      "augmentation": aug, **kw})


def filter_activations(g: torch.Tensor) -> torch.Tensor:
    """f = ThresholdedReLU_0.5(sigmoid(g)): the approximate binary activation of each filter."""
    return thresholded_relu(torch.sigmoid(g))


def debugging_loss(logits: torch.Tensor, y: torch.Tensor, g: torch.Tensor, class_masks: torch.Tensor,
                   l1: float, l2: float) -> tuple[torch.Tensor, dict]:
    """The authors' debugging loss on one batch (CE a batch mean; the filter terms batch sums).
    ``class_masks`` (C, K) in {0, 1}: the global MC filters of each class.  Returns the total and
    its terms (ce, mc = sum f * M[y], non_mc = sum f * (1 - M[y])) as detached 0-dim tensors on the
    batch's device (no host sync per step: :func:`fine_tune` sums them and reads them once per epoch)."""
    f = filter_activations(g)
    m = class_masks[y]
    ce = F.cross_entropy(logits, y)
    mc = (f * m).sum()
    non_mc = (f * (1.0 - m)).sum()
    total = ce - l1 * mc + l2 * non_mc
    return total, {k: v.detach() for k, v in (("ce", ce), ("mc", mc), ("non_mc", non_mc), ("total", total))}


# --------------------------------------------------------------------------- which layers train
def trainable_names(model: nn.Module, spec) -> list[str]:
    """Module names that fine-tuning trains: ``"last_conv"`` = the model's last conv layer
    (``models.LAYERS``) and its final linear layer; ``"all"``; or a list of module names."""
    layer, _ = pooled_head(model)
    linear = model.gap_linear_head[1]
    if spec == "last_conv":
        if not any(True for _ in model.get_submodule(layer).parameters()):
            # the pooled layer is a ReLU / max-pool (paper 2's VGG16: features.30): its conv is the
            # last nn.Conv2d before it in module order (block5_conv3, the layer the authors train)
            before = []
            for n, m in model.named_modules():
                if n == layer:
                    break
                if isinstance(m, nn.Conv2d):
                    before.append(n)
            layer = before[-1]
        return [layer, linear]
    if spec == "all":
        return [""]
    return module_names(model, spec, "debugging.trainable", special="'last_conv', 'all'")


def suffix_cacheable(model: nn.Module, names: list[str], augmentation: str) -> bool:
    """The frozen prefix can be computed once when nothing before the pooled layer trains and the
    inputs do not change from epoch to epoch (no augmentation)."""
    layer, _ = pooled_head(model)
    return augmentation == "none" and set(names) <= {layer, model.gap_linear_head[1]}


class Forward:
    """The model's forward returning (logits, g), either from images (full forward) or from the
    cached input of the pooled layer (the trainable suffix only)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.layer_name, self.linear = pooled_head(model)
        self.layer = model.get_submodule(self.layer_name)

    def full(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return pooled_forward(self.model, x)

    def suffix(self, a_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.layer(a_in).mean((2, 3))
        return self.linear(g), g

    @torch.no_grad()
    def prefix(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """The input of the pooled layer for every image (frozen layers, eval mode), on the model's
        device (``x`` may stay on the CPU: each batch is moved there)."""
        out = []
        dev = model_device(self.model)
        for i in range(0, len(x), batch_size):
            seen = {}
            hook = self.layer.register_forward_pre_hook(lambda m, inp, seen=seen: seen.__setitem__("a", inp[0]))
            try:
                self.model(x[i:i + batch_size].to(dev, non_blocking=True))
            finally:
                hook.remove()
            out.append(seen["a"].detach().clone())
        return torch.cat(out)


@dataclass
class FineTuneResult:
    state_dict: dict
    history: pd.DataFrame
    best_epoch: int
    cached_prefix: bool
    seconds_per_epoch: float = 0.0
    device: str = "cpu"   # where it trained


@torch.no_grad()
def _accuracy(fwd: Callable, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    correct = torch.zeros((), dtype=torch.long, device=labels.device)
    for i in range(0, len(inputs), batch_size):
        xb = inputs[i:i + batch_size].to(labels.device, non_blocking=True)  # images stay on the CPU
        correct += (fwd(xb)[0].argmax(1) == labels[i:i + batch_size]).sum()
    return int(correct) / max(len(inputs), 1)


def fine_tune(model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor,
              y_val: torch.Tensor, class_masks: torch.Tensor, cfg: DebugConfig, l1: float, l2: float,
              seed: int = 0, cache_prefix: bool | None = None, progress: bool = False,
              on_step: Callable | None = None, prefix_inputs: tuple | None = None,
              threads: int | None = 1, device=None) -> FineTuneResult:
    """Fine-tune a copy of ``model`` with the debugging loss (``l1 = l2 = 0``: the CE-only control).

    BatchNorm layers keep their running statistics (the model stays in eval mode: with batch 16
    their batch statistics would be noise; the ResNet20 and the small CNN have no dropout).  Data
    order: a ``torch.Generator`` seeded with ``seed``, the same for the debugged run and its
    control.  Returns the state of the epoch with the best validation accuracy (the earliest on a
    tie, as CPU tensors) and the per-epoch history (loss terms, running train accuracy, validation
    accuracy).

    ``device`` (None: the model's): where the copy trains.  Images stay where they are given (the CPU)
    and each batch moves to the device after augmentation; cached prefix inputs are moved there once.
    ``threads``: intra-op CPU threads while fine-tuning on the CPU (1: the CPU numbers do not depend on
    the machine's core count)."""
    dev = torch.device(device) if device is not None else model_device(model)
    ctx = torch_threads(threads) if threads and dev.type == "cpu" else contextlib.nullcontext()
    with ctx:
        return _fine_tune(model, x_train, y_train, x_val, y_val, class_masks, cfg, l1, l2, seed, cache_prefix,
                          progress, on_step, prefix_inputs, dev)


def _cpu_state(model: nn.Module) -> dict:
    return {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}


def _fine_tune(model, x_train, y_train, x_val, y_val, class_masks, cfg, l1, l2, seed, cache_prefix, progress,
               on_step, prefix_inputs, dev) -> FineTuneResult:
    import time

    model = copy.deepcopy(model).to(dev).eval()
    names = trainable_names(model, cfg.trainable)
    params = set_trainable(model, names)
    fwd = Forward(model)
    cache = suffix_cacheable(model, names, cfg.augmentation) if cache_prefix is None else cache_prefix
    if cache and not suffix_cacheable(model, names, cfg.augmentation):
        raise ValueError("fine_tune: cache_prefix=True needs augmentation 'none' and only the last conv layer "
                         "and the head trainable")
    if cache:
        inputs_tr, inputs_va = (prefix_inputs if prefix_inputs is not None
                                else (fwd.prefix(x_train), fwd.prefix(x_val)))
        inputs_tr, inputs_va = inputs_tr.to(dev), inputs_va.to(dev)
        step_fwd = fwd.suffix
    else:
        inputs_tr, inputs_va, step_fwd = x_train, x_val, fwd.full
    y_train, y_val = y_train.to(dev), y_val.to(dev)
    masks = class_masks.float().to(dev)
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum)
    gen = torch.Generator().manual_seed(int(seed))
    aug_gen = torch.Generator().manual_seed(int(seed) + 1)
    n = len(y_train)
    best = (-1.0, 0, _cpu_state(model))
    history = []
    seconds = []
    bar = progress_bar(range(cfg.epochs), desc=f"fine-tune l1={l1:g} l2={l2:g} (epochs)", enabled=progress,
                       mininterval=5.0)
    for epoch in bar:
        t0 = time.perf_counter()
        order = torch.randperm(n, generator=gen)
        sums, correct, n_batches = {}, torch.zeros((), dtype=torch.long, device=dev), 0
        for s in range(0, n, cfg.batch_size):
            idx = order[s:s + cfg.batch_size]
            xb = inputs_tr[idx]
            if not cache:
                xb = augment(xb, cfg.augmentation, aug_gen).to(dev, non_blocking=True)
            logits, g = step_fwd(xb)
            loss, terms = debugging_loss(logits, y_train[idx], g, masks, l1, l2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if on_step is not None:
                on_step(model)
            for k, v in terms.items():  # float64 sums of the float32 terms, as Python floats would be
                sums[k] = sums.get(k, 0.0) + v.double()
            correct += (logits.argmax(1) == y_train[idx]).sum()
            n_batches += 1
        correct = int(correct)  # the epoch's one wait for the device: the time below is its training
        seconds.append(time.perf_counter() - t0)
        val_acc = _accuracy(step_fwd, inputs_va, y_val)
        row = {"epoch": epoch + 1, **{k: float(v) / n_batches for k, v in sums.items()},
               "train_acc_running": correct / n, "val_acc": val_acc}
        history.append(row)
        if val_acc > best[0]:
            best = (val_acc, epoch + 1, _cpu_state(model))
        bar.set_postfix(val_acc=f"{val_acc:.4f}", refresh=False)  # shown at the bar's own pace (mininterval)
    return FineTuneResult(best[2], pd.DataFrame(history), best[1], cache,
                          float(np.mean(seconds)) if seconds else 0.0, str(dev))


# --------------------------------------------------------------------------- is the gain real?
def paired_statistics(correct_a: np.ndarray, correct_b: np.ndarray, n_bootstrap: int = 2000,
                      seed: int = 0, alpha: float = 0.05, power: float = 0.8) -> dict:
    """Debugged (a) against control (b), paired by seed (rows) and test image (columns); the
    difference is always a - b (debugged minus control: positive = the debugging loss helped).

    - ``mean``: the mean over seeds of the difference of test accuracy;
    - ``ci_low`` / ``ci_high``: a bootstrap 95 % interval over test images (the same resampled images
      for every seed and both arms): conditional on these trained runs;
    - ``hier_ci_low`` / ``hier_ci_high``: a hierarchical bootstrap that resamples the seeds (paired runs)
      and, within the resample, the test images: the interval for a new set of runs, the one that
      speaks about the method (it is as wide as the seed-to-seed spread makes it);
    - ``p_value``: a paired t-test over seeds (NaN with one seed);
    - ``mde``: the minimum detectable effect of that t-test (two-sided ``alpha``, ``power``), from
      the per-seed spread: (t_{1-alpha/2, n-1} + t_{power, n-1}) x sd / sqrt(n), NaN with one seed;
      an effect smaller than it would usually go unnoticed with this many seeds;
    - ``mde_ci_low`` / ``mde_ci_high``: the 95 % interval of that MDE, which is itself estimated from the
      seeds' SD (:func:`helpers.metrics.mde_interval`, chi-square); NaN with one seed;
    - ``n_seeds_tied``: the seeds whose two arms have the same test accuracy (a treatment that barely
      acted leaves many)."""
    from scipy import stats

    a, b = np.asarray(correct_a, float), np.asarray(correct_b, float)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"paired_statistics: need two (seeds, images) arrays of one shape, got {a.shape}, {b.shape}")
    d = a - b                                         # (seeds, images)
    diff_per_image = d.mean(0)                        # mean over seeds, per test image
    rng = np.random.default_rng(seed)
    n_seeds, n = d.shape
    boots = np.array([diff_per_image[rng.integers(0, n, n)].mean() for _ in range(n_bootstrap)])
    hier = np.empty(n_bootstrap)
    for i in range(n_bootstrap):
        rows = rng.integers(0, n_seeds, n_seeds)
        hier[i] = d[rows][:, rng.integers(0, n, n)].mean()
    per_seed = a.mean(1) - b.mean(1)
    sd = float(np.std(per_seed, ddof=1)) if n_seeds > 1 else float("nan")
    if n_seeds > 1 and sd > 0:
        p = float(stats.ttest_rel(a.mean(1), b.mean(1)).pvalue)
    else:  # one seed, or the same difference in every seed: the t-test is undefined (no difference: 1)
        p = 1.0 if n_seeds > 1 and per_seed[0] == 0 else float("nan")
    if n_seeds > 1:
        df = n_seeds - 1
        mde = float((stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * sd / np.sqrt(n_seeds))
    else:
        mde = float("nan")
    mde_low, mde_high = mde_interval(mde, n_seeds)
    return {"mean": float(per_seed.mean()), "ci_low": float(np.quantile(boots, 0.025)),
            "ci_high": float(np.quantile(boots, 0.975)), "hier_ci_low": float(np.quantile(hier, 0.025)),
            "hier_ci_high": float(np.quantile(hier, 0.975)), "p_value": p, "per_seed": per_seed.tolist(),
            "sd_per_seed": sd, "mde": mde, "mde_ci_low": mde_low, "mde_ci_high": mde_high,
            "n_seeds_tied": int((per_seed == 0).sum()), "n_seeds": int(n_seeds)}


def loss_terms(history: pd.DataFrame, first_epoch: int = 1) -> dict:
    """How much each term of the debugging loss moved over a fine-tune: the per-batch sums of the
    filter activations inside (``mc``) and outside (``non_mc``) the class masks at the first and last
    epoch, and their rises.  The loss is not selective when ``non_mc`` rises about as much as ``mc``:
    ``f = ThresholdedReLU_0.5(sigmoid(g))`` has zero gradient for a filter that is off, so the
    terms can only act on filters that are already on, and both rise as the features grow."""
    h = history.set_index("epoch")
    first, last = h.loc[first_epoch], h.iloc[-1]
    return {"mc_first": float(first["mc"]), "mc_last": float(last["mc"]), "mc_rise": float(last["mc"] - first["mc"]),
            "non_mc_first": float(first["non_mc"]), "non_mc_last": float(last["non_mc"]),
            "non_mc_rise": float(last["non_mc"] - first["non_mc"])}
