"""Label Change Rate (LCR) of paper 1, section 4.2 (after Wang et al., ICSE 2019).

LCR(x) = |{f_i in F : f_i(x) != f(x)}| / |F|   (paper 1, eq. 6)

where ``f`` is the ORIGINAL network and ``F`` a set of mutants (see
:mod:`helpers.paper1.mutation`).  Pipeline:

1. :func:`screen_mutants` draws candidate mutants from a deterministic seed stream and
   keeps one only if its accuracy on the VALIDATION split is >= ``threshold`` (0.9) x
   the original model's validation accuracy (the authors screened on the CIFAR test
   set: leakage).  A candidate is abandoned as soon as it can no longer reach the
   threshold (early abort).
2. :func:`mutant_predictions` gives the (n_mutants, n_samples) matrix of predicted
   labels, iterating the data once and swapping mutants in place per batch.
3. :func:`label_change_rate`, :func:`lcr_auroc_by_n_mutants` (paper 1, Figure 4),
   :func:`choose_setting` (Table 3) and Wang et al.'s sequential probability ratio
   test :func:`sprt_detect` / :func:`sprt_score`, which stops drawing mutants once the
   decision is clear.

Data input (every function that runs the model): ``inputs`` is either
  * a ``torch.Tensor`` (N, C, H, W), already normalised (a NumPy array is accepted
    too), with labels given separately where needed, or
  * a ``torch.utils.data.DataLoader`` (any re-iterable) yielding ``(x, y)`` batches
    (or bare ``x``) in a FIXED order (``shuffle=False``); labels then come from the
    loader and its own batch size is used.
"""
from __future__ import annotations

import copy
import math
import time
import warnings
import weakref
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from helpers.devices import canonical_device, model_device
from helpers.paper1.mutation import MutantSpec, check_operator, check_rate, make_patch, make_patches
from helpers.progress import bar as progress_bar

#: default SPRT label-change-probability threshold and indifference half-width
#: (p0 = 0.30, p1 = 0.40).  Tuned for ranking at a fixed forward budget on the pretrained
#: CIFAR-10 ResNet20 with 100 bn_nai mutants at rate 0.01 (1000 lossless test images,
#: 30 random mutant orders): about 3.1x fewer forwards than 100 fixed mutants for
#: ~0.009 lower AUROC of the SPRT score.  For accept/reject DECISIONS calibrate the
#: threshold on validation data instead, as Wang et al. do (threshold = mu x mean LCR
#: of correct validation predictions): this default flags only ~56% of wrong predictions.
SPRT_THRESHOLD = 0.35
SPRT_INDIFFERENCE = 0.05

#: stride between the candidate-seed streams of different ``seed`` values
SEED_STRIDE = 100003

MODES = ("auto", "loop", "vmap")


class ScreenExhausted(RuntimeError):
    """:func:`screen_mutants` used up ``max_tries`` candidates before ``n_mutants`` passed."""


# ----------------------------------------------------------------------------- data helpers
def _is_tensor_like(x) -> bool:
    return isinstance(x, (torch.Tensor, np.ndarray))


def _as_tensor(x) -> torch.Tensor:
    return torch.from_numpy(x) if isinstance(x, np.ndarray) else x


def _n_samples(inputs) -> int | None:
    if _is_tensor_like(inputs):
        return int(inputs.shape[0])
    ds = getattr(inputs, "dataset", None)
    try:
        return len(ds) if ds is not None else None
    except TypeError:
        return None


def _batches(inputs, labels=None, batch_size: int = 512):
    """Yield ``(x, y_or_None)`` from a tensor (+ labels) or a loader of (x, y) / x batches."""
    if _is_tensor_like(inputs):
        x = _as_tensor(inputs)
        y = None if labels is None else torch.as_tensor(
            np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
        if y is not None and y.shape[0] != x.shape[0]:
            raise ValueError(f"labels: {y.shape[0]} labels for {x.shape[0]} inputs")
        for s in range(0, x.shape[0], batch_size):
            yield x[s:s + batch_size], (None if y is None else y[s:s + batch_size])
        return
    if labels is not None:
        raise ValueError("labels: give labels only with tensor inputs; a DataLoader supplies its own")
    for b in inputs:
        if isinstance(b, (tuple, list)):
            yield b[0], (b[1] if len(b) > 1 else None)
        else:
            yield b, None


def _resolve(model: nn.Module, device):
    """The model to run (the model itself, or ONE copy when another device is asked for)."""
    here = model_device(model)
    dev = here if device is None else torch.device(device)
    if canonical_device(dev) != canonical_device(here):
        model = copy.deepcopy(model).to(dev)
    return model, dev


#: model -> its torch.compile wrapper (one compilation per model and process).  The wrapper holds
#: its model, so an entry lives as long as the process: fine for the few models of a run.
_COMPILED: "weakref.WeakKeyDictionary[nn.Module, nn.Module]" = weakref.WeakKeyDictionary()


def forward_fn(model: nn.Module, compile: bool = False):
    """The callable that runs the mutants: ``model`` itself, or with ``compile=True`` a
    ``torch.compile`` (inductor, static shapes) wrapper of the SAME module, made once per
    model.  Parameters stay graph inputs, so the in-place patches of :mod:`helpers.paper1.mutation`
    are seen without recompiling.  A pure speed option (docs/benchmarks.md, ``lcr_matrix``),
    after a one-off compilation per batch shape; predictions agree
    with eager mode up to float rounding (see ``tests/test_lcr.py``).  The original model's
    own predictions are always computed eagerly."""
    if not compile:
        return model
    run = _COMPILED.get(model)
    if run is None:
        run = _COMPILED[model] = torch.compile(model, dynamic=False)
    return run


def _label_dtype(num_classes: int):
    return np.int16 if num_classes <= np.iinfo(np.int16).max else np.int32


class _eval_mode:
    """Put a model in eval mode for the block and restore its previous training flags."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.flags = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        return self.model

    def __exit__(self, *exc):
        for m, t in self.flags:
            m.training = t
        return False


# ----------------------------------------------------------------------------- predictions
def predict(model: nn.Module, inputs, *, batch_size: int = 512, device=None) -> np.ndarray:
    """Predicted labels (N,) of ``model`` (eval mode, inference_mode)."""
    model, dev = _resolve(model, device)
    out = []
    with _eval_mode(model), torch.inference_mode():
        for x, _ in _batches(inputs, None, batch_size):
            out.append(model(x.to(dev, non_blocking=True)).argmax(1).cpu())
    preds = torch.cat(out).numpy() if out else np.zeros(0, np.int64)
    return preds.astype(np.int32)


def _stacked_params(model: nn.Module, patches):
    """{name: (M, *shape) tensor} for every parameter any of ``patches`` touches."""
    params = dict(model.named_parameters())
    names = sorted({n for p in patches for n in p.param_names})
    stacked = {}
    for n in names:
        base = params[n].detach()
        st = base.unsqueeze(0).repeat(len(patches), *([1] * base.dim())).contiguous()
        stacked[n] = st
    for j, p in enumerate(patches):
        for n, idx, val in p.entries:
            stacked[n][j].view(-1)[idx.to(stacked[n].device)] = val.to(stacked[n].device, stacked[n].dtype)
    return stacked


def vmap_chunk_for(model: nn.Module, x: torch.Tensor, patches: list, device, fraction: float = 0.5,
                   most: int = 64) -> int:
    """How many mutants one vmapped forward may hold on ``device``: the free memory
    (``mem_get_info`` of the device's module) times ``fraction``, over what one mutant costs on this
    batch (its activations, estimated from the module outputs of one image, and its stacked copy of
    the patched weights), between 1 and ``most``."""
    mod = getattr(torch, torch.device(device).type, None)
    if not hasattr(mod, "mem_get_info"):
        return 16
    free, _ = mod.mem_get_info(torch.device(device))
    sizes = []
    hooks = [m.register_forward_hook(lambda m, i, o: sizes.append(o.numel() * o.element_size())
                                     if isinstance(o, torch.Tensor) else None) for m in model.modules()]
    try:
        model(x[:1])
    finally:
        for h in hooks:
            h.remove()
    params = dict(model.named_parameters())
    touched = {n for p in patches for n in p.param_names}
    per_mutant = sum(sizes) * x.shape[0] + sum(params[n].numel() * params[n].element_size() for n in touched
                                                 if n in params)
    return int(max(1, min(most, fraction * free // max(per_mutant, 1))))


def mutant_predictions(model: nn.Module, specs_or_patches, inputs, *, batch_size: int = 512,
                       device=None, progress: bool = True, mode: str = "auto",
                       vmap_chunk: int | None = None, with_original: bool = False, compile: bool = False):
    """Predicted labels of every mutant: array (n_mutants, n_samples), int16 (int32 if > 32767 classes).

    ``specs_or_patches``: :class:`MutantSpec` s (turned into patches once, from the
    model's current weights) or :class:`Patch` es.  ``inputs``: see the module
    docstring.  The data are iterated ONCE.

    ``mode``:
      * ``"loop"``: per batch, for each mutant apply its patch in place, run the
        batch (eval mode, ``torch.inference_mode``), revert.  No copies of the model;
        the per-mutant overhead is a few index writes, so on a CPU the cost is that
        of plain inference times the number of mutants.
      * ``"vmap"``: ``torch.func.functional_call`` vectorised with ``torch.func.vmap``
        over the stacked parameters that the patches touch (``vmap_chunk`` mutants at
        a time; None: :func:`vmap_chunk_for`, bounded by the device's free memory): fewer,
        larger kernels; may be faster on a GPU for small models.  Not compiled.
      * ``"auto"``: ``"vmap"`` on an accelerator, ``"loop"`` on the CPU.

    The predictions of a batch stay on the device until all its mutants ran: one copy to the
    host per batch.

    ``with_original=True`` also returns the original model's predictions from the same
    pass: ``(mutant_preds, original_preds)``.  The model is bitwise unchanged after.
    ``compile=True`` runs the mutants through :func:`forward_fn` (loop mode only).
    """
    if mode not in MODES:
        raise ValueError(f"mode: {mode!r} is not valid; valid: {', '.join(MODES)}")
    if batch_size < 1:
        raise ValueError(f"batch_size: {batch_size!r} is not valid; valid: an integer >= 1")
    model, dev = _resolve(model, device)
    patches = make_patches(model, specs_or_patches)
    if mode == "auto":
        mode = "vmap" if dev.type != "cpu" else "loop"
    if compile and mode == "vmap":
        warnings.warn("lcr: compile applies to the loop mode only; the vmapped forwards run uncompiled", stacklevel=2)
    m = len(patches)
    n = _n_samples(inputs)
    chunks, orig_chunks = [], []
    prog = progress_bar(total=n, desc=f"{m} mutants on the samples", unit="sample", enabled=progress)
    params = dict(model.named_parameters())
    run = forward_fn(model, compile and mode == "loop")
    with _eval_mode(model), torch.inference_mode():
        groups = None
        for x, _ in _batches(inputs, None, batch_size):
            x = x.to(dev, non_blocking=True)
            if mode == "vmap" and m and groups is None:
                from torch.func import functional_call, vmap

                if vmap_chunk is None:
                    vmap_chunk = vmap_chunk_for(model, x, patches, dev)
                groups = [_stacked_params(model, patches[s:s + vmap_chunk]) for s in range(0, m, vmap_chunk)]

                def f(p, x):
                    return functional_call(model, p, (x,), strict=False).argmax(-1)
            if with_original:
                orig_chunks.append(model(x).argmax(1))
            out = torch.empty((m, x.shape[0]), dtype=torch.int64, device=dev)
            if mode == "loop":
                for j, p in enumerate(patches):
                    p.apply(model, params)
                    try:
                        out[j] = run(x).argmax(1)
                    finally:
                        p.revert(model)
            else:
                s = 0
                for st in groups:
                    k = next(iter(st.values())).shape[0] if st else 0
                    if k == 0:  # patches touching nothing: the original model
                        k = min(vmap_chunk, m - s)
                        out[s:s + k] = model(x).argmax(1)[None]
                    else:
                        out[s:s + k] = vmap(f, in_dims=(0, None))(st, x)
                    s += k
            chunks.append(out.cpu())
            prog.update(x.shape[0])
    prog.close()
    preds = (torch.cat(chunks, 1) if chunks else torch.zeros((m, 0), dtype=torch.int64)).numpy()
    ncls = int(preds.max()) + 1 if preds.size else 1
    preds = preds.astype(_label_dtype(ncls))
    if with_original:
        orig = torch.cat(orig_chunks).cpu().numpy().astype(np.int32) if orig_chunks else np.zeros(0, np.int32)
        return preds, orig
    return preds


# ----------------------------------------------------------------------------- screening
@dataclass
class ScreenResult:
    """Outcome of :func:`screen_mutants`.

    ``samples_evaluated``: mutant forwards actually spent (aborted candidates
    included; the original model's own ``original_forwards`` pass is not in it);
    ``samples_evaluated_without_abort``: ``tried x n_val``, what fully evaluating
    every candidate would have cost.  ``predictions``: (n_accepted, n_val) labels of
    the accepted mutants on the validation inputs (a free by-product: accepted
    mutants are always evaluated in full); ``original_predictions``: (n_val,).
    """

    accepted: list
    accuracies: list
    tried: int
    rejected: int
    original_accuracy: float
    samples_evaluated: int
    samples_evaluated_without_abort: int
    seconds: float
    n_val: int
    threshold: float
    original_forwards: int = 0
    predictions: np.ndarray | None = field(default=None, repr=False)
    original_predictions: np.ndarray | None = field(default=None, repr=False)

    @property
    def forwards_per_accepted(self) -> float:
        return self.samples_evaluated / max(1, len(self.accepted))

    @property
    def forwards_per_accepted_without_abort(self) -> float:
        return self.samples_evaluated_without_abort / max(1, len(self.accepted))

    @property
    def seconds_per_accepted(self) -> float:
        return self.seconds / max(1, len(self.accepted))


def candidate_seeds(seed: int, n: int) -> list:
    """The deterministic candidate-seed stream of :func:`screen_mutants`: seed*100003 + i."""
    return [int(seed) * SEED_STRIDE + i for i in range(n)]


class Screening:
    """What every candidate of a screening shares (paper 1, 4.2.1): the model to run, the validation batches
    (in margin order, or as given), the original model's predictions and the number of correct
    predictions a candidate needs.  :func:`screen_mutants` and :func:`screen_candidates` share it, so a
    candidate's decision, accuracy, cost and predictions are the same whichever of them evaluates it;
    :func:`prepare_screening` makes one that several blocks of candidates reuse (the original model's pass
    over the validation split then runs once).  ``model`` is on ``dev``; build it inside eval mode and
    ``torch.inference_mode()``."""

    def __init__(self, model, dev, val_inputs, val_labels, threshold: float, batch_size: int, order: str,
                 compile: bool):
        self.model, self.dev = model, dev
        self.params = dict(model.named_parameters())
        self.run = forward_fn(model, compile)
        self.perm = None
        if _is_tensor_like(val_inputs):
            if val_labels is None:
                raise ValueError("val_labels: required with tensor inputs")
            xs = _as_tensor(val_inputs)
            yt = torch.as_tensor(np.asarray(val_labels) if not isinstance(val_labels, torch.Tensor) else val_labels)
            if yt.shape[0] != xs.shape[0]:
                raise ValueError(f"val_labels: {yt.shape[0]} labels for {xs.shape[0]} inputs")
            logits = torch.cat([model(x.to(self.dev)).float() for x, _ in _batches(xs, None, batch_size)])
            if order == "margin" and logits.shape[1] > 1:
                top2 = logits.topk(2, dim=1).values
                self.perm = torch.argsort((top2[:, 0] - top2[:, 1]).cpu(), stable=True)
                xs, yt, logits = xs[self.perm], yt[self.perm], logits[self.perm.to(logits.device)]
            cached = [(x.to(self.dev), y.to(self.dev)) for x, y in _batches(xs, yt, batch_size)]
            self.batches = lambda: cached
            self.orig_pred, s0 = [], 0
            for _, y in cached:
                self.orig_pred.append(logits[s0:s0 + y.numel()].argmax(1))
                s0 += y.numel()
        else:
            def batches():
                for x, y in _batches(val_inputs, val_labels, batch_size):
                    if y is None:
                        raise ValueError("val_inputs: the DataLoader must yield (x, y) batches")
                    yield x.to(self.dev), torch.as_tensor(y).to(self.dev)
            self.batches = batches
            self.orig_pred = [model(x).argmax(1) for x, _ in batches()]
        ys = [y for _, y in self.batches()]
        self.n_val = sum(int(y.numel()) for y in ys)
        if self.n_val == 0:
            raise ValueError("val_inputs: empty validation set")
        self.orig_correct = int(sum(int((p == y).sum()) for p, y in zip(self.orig_pred, ys)))
        self.needed = math.ceil(threshold * self.orig_correct - 1e-9)

    def candidate(self, spec: MutantSpec, early_abort: bool):
        """``(accepted, correct, seen, predictions)`` of one candidate: with ``early_abort`` it is rejected
        as soon as ``correct so far + samples left < needed``; ``predictions`` (in screening order) of an
        accepted candidate, else None."""
        patch = make_patch(self.model, spec)
        correct = seen = 0
        ok = True
        cand = []
        patch.apply(self.model, self.params)
        try:
            for x, y in self.batches():
                p = self.run(x).argmax(1)
                cand.append(p)
                correct += int((p == y).sum())
                seen += int(y.numel())
                if early_abort and correct + (self.n_val - seen) < self.needed:
                    ok = False
                    break
        finally:
            patch.revert(self.model)
        accepted = ok and correct >= self.needed
        return accepted, correct, seen, (torch.cat(cand).cpu() if accepted else None)

    def in_caller_order(self, mutant_preds: list):
        """The original predictions (n_val,) and the stacked ``mutant_preds`` (k, n_val), back in the caller's
        sample order, as label arrays."""
        orig_pred = torch.cat(self.orig_pred).cpu()
        mpreds = torch.stack(mutant_preds) if mutant_preds else torch.zeros((0, self.n_val), dtype=torch.int64)
        if self.perm is not None:
            inv = torch.argsort(self.perm)
            orig_pred, mpreds = orig_pred[inv], mpreds[:, inv]
        ncls = 1 + max(int(orig_pred.max()), int(mpreds.max()) if mpreds.numel() else 0)
        return orig_pred.numpy().astype(np.int32), mpreds.numpy().astype(_label_dtype(ncls))


def _check_screen_args(operator: str, rate: float, threshold: float, order: str) -> None:
    check_operator(operator)
    check_rate(rate)
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold: {threshold!r} is not valid; valid: a fraction in (0, 1]")
    if order not in ("margin", "given"):
        raise ValueError(f"order: {order!r} is not valid; valid: margin, given")


def _exhausted(operator, rate, accepted, n_mutants, tried, max_tries, threshold, original_accuracy) -> ScreenExhausted:
    return ScreenExhausted(
        f"screen_mutants: operator {operator!r} at rate {rate}: only {accepted} of {n_mutants} "
        f"mutants accepted after {tried} tries (max_tries={max_tries}); a mutant must keep "
        f">= {threshold} x the original validation accuracy ({original_accuracy:.4f}). "
        f"Lower the rate, or raise max_tries."
    )


def screen_mutants(model: nn.Module, val_inputs, val_labels, operator: str, rate: float, n_mutants: int, *,
                   threshold: float = 0.9, max_tries: int | None = None, seed: int = 0, batch_size: int = 512,
                   device=None, progress: bool = True, early_abort: bool = True,
                   order: str = "margin", compile: bool = False) -> ScreenResult:
    """Draw mutants until ``n_mutants`` pass the accuracy filter on the VALIDATION split.

    Candidate ``i`` is ``MutantSpec(operator, rate, seed*100003 + i)``.  It is kept iff
    its validation accuracy >= ``threshold`` x the original model's validation
    accuracy (paper 1, 4.2.1; Wang et al. regenerate rejected mutants the same way).
    With ``early_abort`` a candidate is evaluated batch by batch and rejected as soon
    as ``correct so far + samples left < needed``, i.e. even if every remaining sample
    were right it could not pass: the decisions are exactly those of a full
    evaluation.  The batch size sets how often that check runs (smaller batches abort
    sooner, larger ones run faster).  ``order="margin"`` (tensor inputs only) evaluates
    the validation samples in ascending order of the original model's top-1 minus top-2
    logit margin: the fragile samples a bad mutant gets wrong come first, so it is
    rejected sooner; accuracies and decisions do not depend on the order (returned
    predictions are in the caller's order).  ``order="given"`` keeps the input order
    (a DataLoader is always used in its own order).

    ``val_inputs`` / ``val_labels``: a tensor and its labels, or a DataLoader of (x, y)
    with ``val_labels=None`` (re-iterated for every candidate; keep it in a fixed
    order).  ``max_tries`` (default ``20 * n_mutants``) bounds the candidates: when it
    is used up a RuntimeError says so (it never loops forever).  ``compile=True`` runs the
    candidates through :func:`forward_fn` (the original model always runs eagerly).

    Each candidate is decided on its own, so the stream can also be screened in blocks on many
    processes (:func:`screen_candidates`) and the blocks joined (:func:`assemble_screen`): the same result.
    """
    _check_screen_args(operator, rate, threshold, order)
    if not (isinstance(n_mutants, (int, np.integer)) and n_mutants >= 1):
        raise ValueError(f"n_mutants: {n_mutants!r} is not valid; valid: an integer >= 1")
    max_tries = 20 * int(n_mutants) if max_tries is None else int(max_tries)
    if max_tries < n_mutants:
        raise ValueError(f"max_tries: {max_tries} is not valid; valid: an integer >= n_mutants ({n_mutants})")
    t0 = time.perf_counter()
    model, dev = _resolve(model, device)
    prog = progress_bar(total=n_mutants, desc=f"screen {operator}@{rate} (accepted mutants)", enabled=progress)
    with _eval_mode(model), torch.inference_mode():
        s = Screening(model, dev, val_inputs, val_labels, threshold, batch_size, order, compile)
        accepted, accs, preds = [], [], []
        evaluated = tried = 0
        for cs in candidate_seeds(seed, max_tries):
            if len(accepted) >= n_mutants:
                break
            spec = MutantSpec(operator, rate, cs)
            tried += 1
            ok, correct, seen, p = s.candidate(spec, early_abort)
            evaluated += seen
            if ok:
                accepted.append(spec)
                accs.append(correct / s.n_val)
                preds.append(p)
                prog.update(1)
            prog.set_postfix(tried=tried)
    prog.close()
    seconds = time.perf_counter() - t0
    if len(accepted) < n_mutants:
        raise _exhausted(operator, rate, len(accepted), n_mutants, tried, max_tries, threshold,
                         s.orig_correct / s.n_val)
    orig, mpreds = s.in_caller_order(preds)
    return ScreenResult(
        accepted=accepted, accuracies=accs, tried=tried, rejected=tried - len(accepted),
        original_accuracy=s.orig_correct / s.n_val, samples_evaluated=evaluated,
        samples_evaluated_without_abort=tried * s.n_val, seconds=seconds, n_val=s.n_val,
        threshold=threshold, original_forwards=s.n_val, predictions=mpreds, original_predictions=orig,
    )


@dataclass
class ScreenBlock:
    """Every candidate of a contiguous block of the seed stream, decided (:func:`screen_candidates`).

    ``seeds``, ``accepted``, ``correct`` (validation samples right) and ``seen`` (samples evaluated: fewer
    where early abort stopped a candidate) per candidate; ``predictions`` (n_accepted, n_val): the
    accepted candidates' validation labels in the caller's order; ``original_predictions`` (n_val,),
    ``original_correct`` and ``n_val`` as the screening saw them."""

    seeds: np.ndarray
    accepted: np.ndarray
    correct: np.ndarray
    seen: np.ndarray
    predictions: np.ndarray
    original_predictions: np.ndarray
    original_correct: int
    n_val: int


def prepare_screening(model: nn.Module, val_inputs, val_labels, *, threshold: float = 0.9, batch_size: int = 512,
                      device=None, order: str = "margin", compile: bool = False) -> Screening:
    """The :class:`Screening` that :func:`screen_candidates` would make (the original model's predictions on
    the validation split, their order, the batches), to be passed to it for block after block."""
    if order not in ("margin", "given"):
        raise ValueError(f"order: {order!r} is not valid; valid: margin, given")
    model, dev = _resolve(model, device)
    with _eval_mode(model), torch.inference_mode():
        return Screening(model, dev, val_inputs, val_labels, threshold, batch_size, order, compile)


def screen_candidates(model: nn.Module, val_inputs, val_labels, operator: str, rate: float, seeds, *,
                      threshold: float = 0.9, batch_size: int = 512, device=None, progress: bool = True,
                      early_abort: bool = True, order: str = "margin", compile: bool = False,
                      screening: Screening | None = None) -> ScreenBlock:
    """Decide each candidate ``MutantSpec(operator, rate, s)`` of ``seeds`` (a block of
    :func:`candidate_seeds`) as :func:`screen_mutants` does, all of them, without stopping at an accepted
    count: blocks of the stream can be screened on different processes in any order and joined with
    :func:`assemble_screen` into exactly the serial result.  ``screening``: one made by
    :func:`prepare_screening` with the same arguments, reused instead of made again."""
    _check_screen_args(operator, rate, threshold, order)
    seeds = [int(s) for s in seeds]
    rows, preds = [], []
    s = screening or prepare_screening(model, val_inputs, val_labels, threshold=threshold, batch_size=batch_size,
                                       device=device, order=order, compile=compile)
    with _eval_mode(s.model), torch.inference_mode():
        for cs in progress_bar(seeds, desc=f"screen {operator}@{rate} (candidates)", enabled=progress):
            ok, correct, seen, p = s.candidate(MutantSpec(operator, rate, cs), early_abort)
            rows.append((ok, correct, seen))
            if ok:
                preds.append(p)
    orig, mpreds = s.in_caller_order(preds)
    return ScreenBlock(seeds=np.asarray(seeds, np.int64), accepted=np.array([r[0] for r in rows], bool),
                       correct=np.array([r[1] for r in rows], np.int64), seen=np.array([r[2] for r in rows], np.int64),
                       predictions=mpreds, original_predictions=orig, original_correct=s.orig_correct, n_val=s.n_val)


def screen_decided(blocks, n_mutants: int, max_tries: int) -> bool:
    """Whether ``blocks`` (consecutive, from the stream's start) decide a screening for ``n_mutants`` within
    ``max_tries``: they hold ``n_mutants`` accepted candidates, or every one of the ``max_tries``."""
    acc = np.concatenate([b.accepted for b in blocks]) if blocks else np.zeros(0, bool)
    acc = acc[:max_tries]
    return int(acc.sum()) >= n_mutants or len(acc) >= max_tries


def assemble_screen(blocks, operator: str, rate: float, n_mutants: int, *, max_tries: int | None = None,
                    seed: int = 0, threshold: float = 0.9) -> ScreenResult:
    """The :class:`ScreenResult` of :func:`screen_mutants` from consecutive blocks of its candidates
    (:func:`screen_candidates`): candidates are taken in seed order up to the ``n_mutants``-th accepted
    one, so accepted seeds, accuracies, tried, samples evaluated and predictions are the serial run's.
    Raises :class:`ScreenExhausted` as the serial run does when ``max_tries`` candidates were not enough,
    and ValueError when the blocks do not reach that far (:func:`screen_decided`).  ``seconds`` is 0: the
    blocks' costs are their own."""
    max_tries = 20 * int(n_mutants) if max_tries is None else int(max_tries)
    blocks = list(blocks)
    seeds = np.concatenate([b.seeds for b in blocks]) if blocks else np.zeros(0, np.int64)
    if not np.array_equal(seeds, candidate_seeds(seed, len(seeds))):
        raise ValueError(f"blocks: their seeds are not the stream's first {len(seeds)} candidates of seed {seed}")
    if not screen_decided(blocks, n_mutants, max_tries):
        raise ValueError(f"blocks: {len(seeds)} candidates decide neither {n_mutants} accepted mutants nor the "
                         f"{max_tries} tries; screen more blocks")
    first = blocks[0]
    for b in blocks[1:]:
        if b.original_correct != first.original_correct or not np.array_equal(b.original_predictions,
                                                                               first.original_predictions):
            raise ValueError("blocks: screened with different original predictions (another model or split?)")
    n_val = first.n_val
    accepted_flags = np.concatenate([b.accepted for b in blocks])[:max_tries]
    correct = np.concatenate([b.correct for b in blocks])
    seen = np.concatenate([b.seen for b in blocks])
    kept = np.flatnonzero(accepted_flags)[:n_mutants]
    tried = int(kept[-1]) + 1 if len(kept) == n_mutants else max_tries
    if len(kept) < n_mutants:
        raise _exhausted(operator, rate, len(kept), n_mutants, tried, max_tries, threshold,
                         first.original_correct / n_val)
    preds = np.concatenate([b.predictions for b in blocks], 0)[:n_mutants]
    ncls = 1 + max(int(first.original_predictions.max()), int(preds.max()))
    return ScreenResult(
        accepted=[MutantSpec(operator, rate, int(seeds[i])) for i in kept],
        accuracies=[int(correct[i]) / n_val for i in kept], tried=tried, rejected=tried - n_mutants,
        original_accuracy=first.original_correct / n_val, samples_evaluated=int(seen[:tried].sum()),
        samples_evaluated_without_abort=tried * n_val, seconds=0.0, n_val=n_val, threshold=threshold,
        original_forwards=n_val, predictions=preds.astype(_label_dtype(ncls)),
        original_predictions=first.original_predictions.astype(np.int32))


# ----------------------------------------------------------------------------- LCR
def _changed(mutant_preds, original_preds) -> np.ndarray:
    mp = np.asarray(mutant_preds)
    op = np.asarray(original_preds)
    if mp.ndim != 2 or op.ndim != 1 or mp.shape[1] != op.shape[0]:
        raise ValueError(
            f"mutant_preds {mp.shape} / original_preds {op.shape}: expected (n_mutants, n_samples) and (n_samples,)"
        )
    return mp != op[None, :]


def label_change_rate(mutant_preds, original_preds) -> np.ndarray:
    """LCR per sample (paper 1, eq. 6): fraction of mutants whose label differs from the
    ORIGINAL model's prediction ``original_preds`` (not from the true label)."""
    ch = _changed(mutant_preds, original_preds)
    if ch.shape[0] == 0:
        raise ValueError("mutant_preds: no mutants")
    return ch.mean(0)


def lcr_auroc_by_n_mutants(mutant_preds, original_preds, y_wrong, ns) -> np.ndarray:
    """AUROC of LCR (using the first n mutants) for detecting wrong predictions, per n in ``ns``.

    Paper 1, Figure 4.  ``y_wrong``: 1 where the original prediction is wrong.
    """
    from sklearn.metrics import roc_auc_score

    ch = _changed(mutant_preds, original_preds)
    y = np.asarray(y_wrong).astype(int)
    csum = np.cumsum(ch, axis=0, dtype=np.int64)
    out = []
    for n in ns:
        n = int(n)
        if not 1 <= n <= ch.shape[0]:
            raise ValueError(f"ns: {n} is not valid; valid: 1..{ch.shape[0]} (the number of mutants)")
        out.append(roc_auc_score(y, csum[n - 1] / n))
    return np.asarray(out, dtype=float)


def lcr_summary(lcr, y_wrong) -> dict:
    """Mean / std of LCR over correct and wrong predictions and both LCR differences (Table 3)."""
    lcr = np.asarray(lcr, float)
    w = np.asarray(y_wrong).astype(bool)
    c_m, c_s = float(lcr[~w].mean()), float(lcr[~w].std())
    w_m, w_s = float(lcr[w].mean()), float(lcr[w].std())
    return {"lcr_correct_mean": c_m, "lcr_correct_std": c_s, "lcr_wrong_mean": w_m, "lcr_wrong_std": w_s,
            "mean_difference": w_m - c_m, "lcr_difference": (w_m - w_s) - (c_m + c_s)}


def choose_setting(table, criterion: str = "auto"):
    """Pick the (operator, rate) row with the largest LCR difference (paper 1, Table 3).

    ``table``: a sequence of mappings (or a pandas DataFrame) with ``lcr_correct_mean``
    and ``lcr_wrong_mean`` (validation predictions), optionally ``lcr_correct_std`` /
    ``lcr_wrong_std``.  ``criterion``:
      * ``"paper"``: Table 3's "LCR difference" = (mean_wrong - std_wrong) -
        (mean_correct + std_correct) (reproduces the published numbers);
      * ``"mean"``: mean_wrong - mean_correct;
      * ``"auto"``: ``"paper"`` when every row has the std columns, else ``"mean"``.
    Returns the winning row as given (a pandas Series for a DataFrame); ties go to the
    first row.
    """
    if criterion not in ("auto", "paper", "mean"):
        raise ValueError(f"criterion: {criterion!r} is not valid; valid: auto, paper, mean")
    rows = [r for _, r in table.iterrows()] if hasattr(table, "iterrows") else list(table)
    if not rows:
        raise ValueError("table: empty")
    has_std = all("lcr_correct_std" in r and "lcr_wrong_std" in r for r in rows)
    if criterion == "auto":
        criterion = "paper" if has_std else "mean"
    if criterion == "paper" and not has_std:
        raise ValueError("table: criterion 'paper' needs lcr_correct_std and lcr_wrong_std in every row")

    def diff(r):
        if criterion == "paper":
            return (r["lcr_wrong_mean"] - r["lcr_wrong_std"]) - (r["lcr_correct_mean"] + r["lcr_correct_std"])
        return r["lcr_wrong_mean"] - r["lcr_correct_mean"]

    return rows[int(np.argmax([diff(r) for r in rows]))]


# ----------------------------------------------------------------------------- SPRT
def _sprt(mutant_preds, original_preds, alpha, beta, threshold, indifference, max_mutants):
    threshold = SPRT_THRESHOLD if threshold is None else float(threshold)
    delta = float(indifference)
    p0, p1 = threshold - delta, threshold + delta
    if not (0.0 < p0 < p1 < 1.0):
        raise ValueError(
            f"threshold/indifference: {threshold}/{delta} give p0={p0}, p1={p1}; valid: 0 < threshold-indifference "
            "< threshold+indifference < 1"
        )
    for name, v in (("alpha", alpha), ("beta", beta)):
        if not 0.0 < v < 0.5:
            raise ValueError(f"{name}: {v!r} is not valid; valid: in (0, 0.5)")
    ch = _changed(mutant_preds, original_preds)
    m = ch.shape[0] if max_mutants is None else int(max_mutants)
    if not 1 <= m <= ch.shape[0]:
        raise ValueError(f"max_mutants: {max_mutants!r} is not valid; valid: 1..{ch.shape[0]}")
    ch = ch[:m]
    z = np.cumsum(ch, axis=0, dtype=np.int64)
    n = np.arange(1, m + 1, dtype=np.int64)[:, None]
    llr = z * math.log(p1 / p0) + (n - z) * math.log((1 - p1) / (1 - p0))
    upper, lower = math.log((1 - beta) / alpha), math.log(beta / (1 - alpha))
    hi, lo = llr >= upper, llr <= lower
    stop = hi | lo
    any_stop = stop.any(0)
    first = stop.argmax(0)
    cols = np.arange(ch.shape[1])
    decision = np.where(any_stop, np.where(hi[first, cols], 1, 0), -1).astype(np.int8)
    n_used = np.where(any_stop, first + 1, m).astype(np.int64)
    n_changed = z[n_used - 1, cols] if ch.shape[1] else np.zeros(0, np.int64)
    return decision, n_used, n_changed


def sprt_detect(mutant_preds, original_preds, *, alpha: float = 0.05, beta: float = 0.05,
                threshold: float | None = None, indifference: float = SPRT_INDIFFERENCE,
                max_mutants: int | None = None):
    """Wang et al.'s sequential probability ratio test on the label changes, per sample.

    Mutants are drawn in row order.  With ``p0 = threshold - indifference`` and
    ``p1 = threshold + indifference`` (the indifference region), after ``n`` mutants of
    which ``z`` changed the original label the log likelihood ratio is
    ``z log(p1/p0) + (n - z) log((1-p1)/(1-p0))``.  The test stops with
    "likely wrong" (label-change probability > p1; Wang et al.'s "adversarial") when it
    reaches ``log((1-beta)/alpha)`` and with "likely correct" (< p0) when it reaches
    ``log(beta/(1-alpha))``; otherwise it continues until ``max_mutants`` (default:
    all rows) and reports "undecided".  ``threshold=None`` uses ``SPRT_THRESHOLD``
    (Wang et al. set it to mu x the mean LCR of normal inputs).  Vectorised over samples
    with cumulative sums.

    Returns ``(decision, n_used)``: int8 array of 1 (likely wrong), 0 (likely correct),
    -1 (undecided), and the number of mutants each sample used.
    """
    decision, n_used, _ = _sprt(mutant_preds, original_preds, alpha, beta, threshold, indifference, max_mutants)
    return decision, n_used


def sprt_score(mutant_preds, original_preds, *, alpha: float = 0.05, beta: float = 0.05,
               threshold: float | None = None, indifference: float = SPRT_INDIFFERENCE,
               max_mutants: int | None = None, kind: str = "lcr") -> np.ndarray:
    """A continuous score from the SPRT run of :func:`sprt_detect`, for AUROC comparisons.

    ``kind="lcr"``: the LCR over the mutants the test used, ``n_changed / n_used``
    (the estimate of the label-change probability at stopping time; equals the
    fixed-N LCR for undecided samples).  ``kind="smoothed"``: ``(n_changed + 0.5) /
    (n_used + 1)``, which also ranks early "likely correct" stops (few draws, no change)
    above samples with no change in many draws.
    """
    if kind not in ("lcr", "smoothed"):
        raise ValueError(f"kind: {kind!r} is not valid; valid: lcr, smoothed")
    _, n_used, n_changed = _sprt(mutant_preds, original_preds, alpha, beta, threshold, indifference, max_mutants)
    if kind == "lcr":
        return n_changed / n_used
    return (n_changed + 0.5) / (n_used + 1.0)


__all__ = [
    "SPRT_THRESHOLD", "SPRT_INDIFFERENCE", "ScreenBlock", "ScreenExhausted", "ScreenResult", "Screening",
    "assemble_screen", "candidate_seeds", "choose_setting", "label_change_rate", "lcr_auroc_by_n_mutants",
    "lcr_summary", "mutant_predictions", "predict", "prepare_screening", "screen_candidates", "screen_decided",
    "screen_mutants", "sprt_detect", "sprt_score",
]
