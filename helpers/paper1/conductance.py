"""Feature-map conductance of a layer (paper 1, section 3, eq. 5).

Paper 1 ("Leveraging Model Interpretability and Stability to increase Model
Robustness", arXiv 1910.00387) describes each prediction by the conductance of
the feature maps of one conv layer for the pre-softmax logit of the predicted
class (section 3.1, eq. 5, after Dhamdhere et al. and Shrikumar et al.)::

    Cond_y(x) = sum_{k=1..n} dF_t/dy(x_{k-1}) * (y(x_k) - y(x_{k-1})),
    x_k = x' + (k/n) (x - x'),   x' = baseline (zeros in the normalised space),

summed (``reduction="sum"``, the paper's definition) or averaged
(``reduction="mean"``, what the authors' code did: the sum divided by H*W) over
the spatial positions of each feature map.  The result is one value per feature
map: an ``(N, C)`` tensor.

Gradient point.  The formula above takes the gradient at the *left* end of each
step, as Captum's ``LayerConductance(method="riemann_trapezoid")`` does (our
reference, see ``method="captum"``).  The authors' Keras code took it at the
*right* end (``x_k``).  Both converge to the same integral; we match Captum.
The 11 points are Captum's: ``alpha = torch.linspace(0, 1, n + 1)`` (float32
values 0, 0.1, ..., 1), except that the two end points are the baseline and the
input themselves, so completeness (sum over the layer of conductance =
F_t(x) - F_t(x'), paper eq. 3) holds exactly against ``model(x)``.

Methods (all give the same numbers where they apply):

``"exact"``
    When the layer reaches the logits only through global average pooling and
    one linear layer (``model.gap_linear_head``, set by
    :func:`helpers.models.build_model`: declared for ResNet20 ``layer3.2``, SmallCNN
    ``block``, InceptionV3 ``Mixed_7c``; found and checked numerically for
    ``torchvision.<builder>`` and models of your own, e.g. ResNet18 ``layer4``,
    EfficientNet ``features``), dF_t/dy = W[t, k] / (H*W) is constant
    along the path, and the stepped sum telescopes:
    ``Cond_k = W[t, k] * (GAP_k(y(x)) - GAP_k(y(x')))`` for ``reduction="sum"``
    (divided by H*W for ``"mean"``), for every ``n_steps``.  One forward pass
    (plus one of the baseline, cached), no backward.  The declaration is checked
    numerically on every batch: the logits must equal ``linear(GAP(y))`` at the
    input and at the baseline.
``"riemann"``
    The stepped formula, all (sample, point) rows batched at most
    ``internal_batch_size`` at a time, with the gradient taken only from the
    layer to the logits: a forward hook swaps the layer output for a detached
    leaf, the model's parameters are frozen, so no autograd graph is built below
    the layer.  The predicted class comes from the alpha = 1 row (no extra
    forward).  On CPU the rows run in channels-last memory format.  Memory is
    bounded by ``internal_batch_size`` rows, whatever the batch or dataset size.
``"captum"``
    ``captum.attr.LayerConductance(...).attribute(..., method="riemann_trapezoid")``
    summed/averaged over space: the reference.
``"auto"``
    ``"exact"`` where it applies (declared and numerically confirmed), else
    ``"riemann"``.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from helpers.progress import bar as progress_bar

METHODS = ("auto", "exact", "riemann", "captum")
REDUCTIONS = ("sum", "mean")

__all__ = [
    "METHODS",
    "REDUCTIONS",
    "exact_applicable",
    "layer_conductance",
    "conductance_dataset",
    "feature_map_summary",
]


# ----------------------------------------------------------------------------- validation
def exact_applicable(model: nn.Module, layer: str) -> bool:
    """True iff ``model.gap_linear_head`` declares that ``layer`` reaches the logits
    only through global average pooling and one linear layer (paper 1, section 3:
    then the eq. 5 sum telescopes and conductance needs no gradient)."""
    head = getattr(model, "gap_linear_head", None)
    return head is not None and head[0] == layer


def _check_args(model, layer, method, reduction, n_steps, internal_batch_size):
    if method not in METHODS:
        raise ValueError(f"method: {method!r} is not valid; valid: {', '.join(METHODS)}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: {reduction!r} is not valid; valid: {', '.join(REDUCTIONS)}")
    if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)) or n_steps < 1:
        raise ValueError(f"n_steps: {n_steps!r} is not valid; valid: an integer >= 1 (paper: 10)")
    if (isinstance(internal_batch_size, bool) or not isinstance(internal_batch_size, (int, np.integer))
            or internal_batch_size < 1):
        raise ValueError(
            f"internal_batch_size: {internal_batch_size!r} is not valid; valid: an integer >= 1"
        )
    names = [n for n, _ in model.named_modules() if n]
    if not isinstance(layer, str) or layer not in names:
        shown = ", ".join(names[:25]) + (", ..." if len(names) > 25 else "")
        raise ValueError(f"layer: {layer!r} is not a module of {type(model).__name__}; valid: {shown}")
    if method == "exact" and not exact_applicable(model, layer):
        head = getattr(model, "gap_linear_head", None)
        raise ValueError(
            f"method: 'exact' is not valid for layer {layer!r} of {type(model).__name__} "
            f"(model.gap_linear_head = {head!r}: the layer does not reach the logits through "
            f"average pooling + one linear layer only); valid here: 'auto', 'riemann', 'captum'"
        )


def _as_baseline(baseline, inputs: Tensor) -> Tensor:
    """Baseline as a tensor of shape (1, ...) (shared) or inputs.shape (per sample)."""
    if baseline is None:
        return torch.zeros((1, *inputs.shape[1:]), dtype=inputs.dtype, device=inputs.device)
    b = torch.as_tensor(baseline, dtype=inputs.dtype, device=inputs.device)
    try:
        torch.broadcast_shapes(b.shape, inputs.shape)
    except RuntimeError:
        raise ValueError(
            f"baseline: shape {tuple(b.shape)} does not broadcast to the inputs' shape "
            f"{tuple(inputs.shape)}; valid: None (zeros) or a tensor broadcastable to the inputs"
        ) from None
    if b.dim() == inputs.dim() and b.shape[0] == inputs.shape[0] and inputs.shape[0] > 1:
        return b.expand(inputs.shape).contiguous()
    return b.expand((1, *inputs.shape[1:])).contiguous()


def _as_target(target, logits_or_n, device) -> Tensor | None:
    if target is None:
        return None
    n = logits_or_n
    t = torch.as_tensor(target, device=device).long().reshape(-1)
    if t.numel() == 1:
        t = t.expand(n)
    if t.numel() != n:
        raise ValueError(
            f"target: {t.numel()} values for {n} inputs; valid: None (predicted class), one int, "
            "or one int per input"
        )
    return t.contiguous()


@contextlib.contextmanager
def _prepared(model: nn.Module, freeze: bool):
    """Eval mode (and frozen parameters if ``freeze``); restore every module's
    training flag and every parameter's requires_grad afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        if freeze:
            for p, _ in flags:
                p.requires_grad_(False)
        yield
    finally:
        for m, mode in modes:
            m.training = mode
        for p, rg in flags:
            p.requires_grad_(rg)


def _reduce(x: Tensor, reduction: str) -> Tensor:
    if x.dim() <= 2:
        return x
    dims = tuple(range(2, x.dim()))
    return x.sum(dims) if reduction == "sum" else x.mean(dims)


class _Capture:
    """Forward hook on the layer: keep (a copy of) its output, optionally swap it
    for a detached leaf that requires grad so that autograd starts at the layer.
    A module that runs more than once per forward pass (one activation module
    reused, as torchvision's ResNet blocks reuse their ReLU) is refused: its
    conductance is not one layer's."""

    def __init__(self, module: nn.Module, leaf: bool):
        self.leaf = leaf
        self.out: Tensor | None = None
        self.calls = 0
        self.handle = module.register_forward_hook(self)

    def forward(self, model: nn.Module, x: Tensor) -> Tensor:
        """``model(x)``, this layer's output captured once."""
        self.calls = 0
        return model(x)

    def __call__(self, module, inp, out):
        self.calls += 1
        if self.calls > 1:
            raise ValueError("layer: the module runs more than once per forward pass (a reused module); valid: "
                             "a module that runs once, e.g. the block that contains it")
        if not isinstance(out, Tensor):
            raise TypeError(f"layer output is a {type(out).__name__}, conductance needs a single tensor")
        if self.leaf:
            y = out.detach().requires_grad_(True)
            self.out = y
            return y.clone()  # the model may modify its input in place downstream
        self.out = out.detach().clone()
        return None

    def remove(self):
        self.handle.remove()


# ----------------------------------------------------------------------------- exact
def _gap(a: Tensor) -> Tensor:
    return a.flatten(2).mean(2) if a.dim() > 2 else a


def _check_target_range(t: Tensor, n_classes: int) -> None:
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= n_classes):
        raise ValueError(
            f"target: values in [{int(t.min())}, {int(t.max())}]; valid: class indices in [0, {n_classes - 1}]"
        )


def _gap_linear_check(a: Tensor, logits: Tensor, linear: nn.Module) -> bool:
    pooled = _gap(a)
    recon = F.linear(pooled, linear.weight, getattr(linear, "bias", None))
    if recon.shape != logits.shape:
        return False
    tol = {torch.float64: 1e-9, torch.float32: 1e-4}.get(logits.dtype, 1e-2)
    scale = max(1.0, float(logits.abs().max()))
    return bool((recon - logits).abs().max() <= tol * scale)


def _exact_batch(model, layer_mod, linear, inputs, target, base, reduction, cache, strict):
    """Returns (cond, logits) or None when the numerical check fails and not ``strict``."""
    cap = _Capture(layer_mod, leaf=False)
    try:
        with torch.no_grad():
            logits = cap.forward(model, inputs)
            a = cap.out
            # the baseline is fixed within one conductance_dataset call: key on its shape only
            key = ("exact", tuple(base.shape), base.dtype, base.device)
            if base.shape[0] == 1 and cache is not None and key in cache:
                a0, logits0 = cache[key]
            else:
                logits0 = cap.forward(model, base)
                a0 = cap.out
                if base.shape[0] == 1 and cache is not None:
                    cache[key] = (a0, logits0)
    finally:
        cap.remove()
    ok = _gap_linear_check(a, logits, linear) and _gap_linear_check(a0, logits0, linear)
    if not ok:
        if strict:
            raise ValueError(
                "method: 'exact' is not valid here: the logits differ from linear(GAP(layer output)), "
                "so model.gap_linear_head is wrong for this model; valid: 'auto', 'riemann', 'captum'"
            )
        return None
    t = logits.argmax(1) if target is None else target
    _check_target_range(t, logits.shape[1])
    g = _gap(a) - _gap(a0)  # (N, C) - (1|N, C)
    cond = linear.weight[t] * g
    if reduction == "mean" and a.dim() > 2:
        cond = cond / a[0, 0].numel()
    return cond, logits


# ----------------------------------------------------------------------------- riemann
def _alphas(n_steps: int) -> list[float]:
    # Captum riemann_trapezoid with n_steps: alphas_func(n_steps + 1) = torch.linspace(0, 1, n + 1)
    return torch.linspace(0, 1, n_steps + 1).tolist()


def _riemann_batch(model, layer_mod, inputs, target, base, n_steps, reduction, ibs, channels_last=None):
    """Stepped eq. 5 (gradient at the left end of each step, Captum's grid).

    Samples are processed in groups of ``m`` and the 11 points of each group in
    chunks of ``s`` points, ``m * s <= internal_batch_size`` rows per forward.
    Points run from alpha = 1 down to 0 so that the predicted class (from the
    alpha = 1 row, i.e. the input itself) is known before any gradient is taken.
    """
    alphas = _alphas(n_steps)
    if channels_last is None:  # NHWC convolutions are faster on CPU (oneDNN)
        channels_last = inputs.dim() == 4 and inputs.device.type == "cpu"
    channels_last = bool(channels_last) and inputs.dim() == 4
    P = n_steps + 1
    N = inputs.shape[0]
    if ibs >= P:
        m, s = max(1, ibs // P), P
    else:
        m, s = 1, ibs
    conds, logits_out = [], []
    cap = _Capture(layer_mod, leaf=True)
    try:
        for i0 in range(0, N, m):
            x = inputs[i0:i0 + m]
            mg = x.shape[0]
            b = base if base.shape[0] == 1 else base[i0:i0 + m]
            diff = x - b
            t = None if target is None else target[i0:i0 + m]
            acc = None
            y_prev = None
            lg_group = None
            order = list(range(n_steps, -1, -1))
            for c0 in range(0, P, s):
                J = order[c0:c0 + s]
                parts = []
                for j in J:
                    if j == n_steps:
                        parts.append(x)
                    elif j == 0:
                        parts.append(b.expand_as(x))
                    else:
                        parts.append(b + alphas[j] * diff)
                rows = torch.cat(parts, 0) if len(parts) > 1 else parts[0]
                if channels_last:
                    rows = rows.contiguous(memory_format=torch.channels_last)
                logits = cap.forward(model, rows)
                y = cap.out
                cap.out = None
                if J[0] == n_steps:
                    lg_group = logits[:mg].detach()
                    if t is None:
                        t = lg_group.argmax(1)
                    _check_target_range(t, logits.shape[1])
                L = len(J)
                Y = y.detach().view(L, mg, *y.shape[1:])
                need_grad = J[-1] < n_steps
                if need_grad:
                    sel = logits.gather(1, t.repeat(L).unsqueeze(1)).sum()
                    (g,) = torch.autograd.grad(sel, y)
                    G = g.view(L, mg, *y.shape[1:])
                    if y_prev is None:  # this chunk starts at alpha = 1 (no gradient needed there)
                        contrib = G[1:] * (Y[:-1] - Y[1:])
                    else:
                        Yp = torch.cat([y_prev.unsqueeze(0), Y[:-1]], 0)
                        contrib = G * (Yp - Y)
                    r = _reduce(contrib.flatten(0, 1), reduction).view(-1, mg, Y.shape[2]).sum(0)
                    acc = r if acc is None else acc + r
                y_prev = Y[-1]
                del logits, y, Y
            if acc is None:  # n_steps >= 1 guarantees at least one step, kept for safety
                acc = torch.zeros(mg, inputs.shape[1], dtype=inputs.dtype, device=inputs.device)
            conds.append(acc.detach())
            logits_out.append(lg_group)
    finally:
        cap.remove()
    return torch.cat(conds, 0), torch.cat(logits_out, 0)


# ----------------------------------------------------------------------------- captum
def _captum_batch(model, layer_mod, inputs, target, base, n_steps, reduction, ibs):
    from captum.attr import LayerConductance

    with torch.no_grad():
        logits = model(inputs)
    t = logits.argmax(1) if target is None else target
    _check_target_range(t, logits.shape[1])
    lc = LayerConductance(model, layer_mod)
    N = inputs.shape[0]
    # Captum needs internal_batch_size >= 2 * (examples per call); split the samples if not.
    group = N if ibs >= 2 * N else max(1, ibs // 2)
    out = []
    for i0 in range(0, N, group):
        b = base if base.shape[0] == 1 else base[i0:i0 + group]
        attr = lc.attribute(
            inputs[i0:i0 + group], baselines=b, target=t[i0:i0 + group], n_steps=n_steps,
            method="riemann_trapezoid", internal_batch_size=max(ibs, 2 * min(group, N - i0)),
        )
        out.append(_reduce(attr.detach(), reduction))
    return torch.cat(out, 0), logits


# ----------------------------------------------------------------------------- public API
def _conductance_batch(model, layer, inputs, target, baseline, n_steps, method, reduction, ibs,
                       cache=None, channels_last=None):
    """Core of :func:`layer_conductance`: returns (cond (N, C), logits (N, K), method used)."""
    if not isinstance(inputs, Tensor) or inputs.dim() < 2:
        raise ValueError("inputs: expected a tensor of shape (N, ...) with N >= 1")
    layer_mod = model.get_submodule(layer)
    base = _as_baseline(baseline, inputs)
    t = _as_target(target, inputs.shape[0], inputs.device)
    use = method
    if method in ("auto", "exact") and exact_applicable(model, layer):
        linear = model.get_submodule(model.gap_linear_head[1])
        with _prepared(model, freeze=True):
            res = _exact_batch(model, layer_mod, linear, inputs, t, base, reduction, cache,
                               strict=(method == "exact"))
        if res is not None:
            return res[0], res[1], "exact"
        warnings.warn(
            f"conductance: model.gap_linear_head declares {layer!r} exact, but the logits differ from "
            "linear(GAP(layer)); using the stepped (riemann) formula", stacklevel=3,
        )
        use = "riemann"
    elif method == "auto":
        use = "riemann"
    if use == "riemann":
        with _prepared(model, freeze=True), torch.enable_grad():
            cond, logits = _riemann_batch(model, layer_mod, inputs, t, base, n_steps, reduction, ibs,
                                          channels_last)
        return cond, logits, "riemann"
    with _prepared(model, freeze=False), torch.enable_grad():
        cond, logits = _captum_batch(model, layer_mod, inputs, t, base, n_steps, reduction, ibs)
    return cond, logits, "captum"


def layer_conductance(model: nn.Module, layer: str, inputs: Tensor, target: Tensor | None = None,
                      baseline=None, n_steps: int = 10, method: str = "auto", reduction: str = "sum",
                      internal_batch_size: int = 512, channels_last: bool | None = None) -> Tensor:
    """Feature-map conductance (paper 1, section 3, eq. 5) of ``layer`` for a batch.

    ``model``: a classifier returning logits (N, K); it is run in eval mode and its
    modules' training flags and parameters' requires_grad are restored afterwards.
    ``layer``: dotted module name (e.g. ``model.last_conv_layer``).
    ``target``: None (the predicted class, as in the paper), one int, or one per input.
    ``baseline``: None (zeros in the normalised input space, as in the paper) or a
    tensor broadcastable to ``inputs``.
    ``n_steps``: steps of the Riemann sum (paper: 10; 11 points).
    ``method``: ``"auto"`` | ``"exact"`` | ``"riemann"`` | ``"captum"`` (module docstring).
    ``reduction``: ``"sum"`` over space (the paper's definition; then sum over
    channels = F_t(x) - F_t(x')) or ``"mean"`` (the authors' code: sum / (H*W)).
    ``internal_batch_size``: most (sample, point) rows per forward pass (riemann,
    captum).
    ``channels_last``: run the riemann rows in NHWC memory format (None: on CPU
    for 4-D inputs, where oneDNN convolutions are faster; float rounding then
    differs from a plain NCHW forward at the 1e-7 level).

    Returns an (N, C) tensor on the inputs' device, one value per feature map.
    Gradient at the left end of each step (Captum); the authors' code used the
    right end.
    """
    _check_args(model, layer, method, reduction, n_steps, internal_batch_size)
    cond, _, _ = _conductance_batch(model, layer, inputs, target, baseline, int(n_steps), method,
                                    reduction, int(internal_batch_size), channels_last=channels_last)
    return cond


def conductance_dataset(model: nn.Module, layer: str, loader: Iterable, *,
                        target_fn: Callable[[Tensor, Tensor], Tensor] | None = None, n_steps: int = 10,
                        method: str = "auto", reduction: str = "sum", device=None, progress: bool = True,
                        internal_batch_size: int = 512, baseline=None,
                        channels_last: bool | None = None) -> dict:
    """Conductance (paper 1, section 3, eq. 5) of every image of a DataLoader.

    ``loader`` yields ``(x, y)`` batches (or bare ``x``); rows of the outputs follow
    the loader's order.  The target is the predicted class unless ``target_fn`` is
    given: ``target_fn(logits, y) -> (N,) class indices`` (costs one extra forward
    pass per batch with the stepped methods).  ``device``: move the model (in
    place) and each batch there; None = the model's current device.  Progress bar:
    ``tqdm`` (text, also in notebooks), off with ``progress=False`` or env ``TQDM_DISABLE=1``.  Memory is
    bounded by one batch and ``internal_batch_size`` rows, whatever the dataset size.

    ``baseline``, ``channels_last``: as in :func:`layer_conductance`.

    Returns ``{"conductance": (N, C) float32, "logits": (N, K) float32, "method":
    the method used ("exact", "riemann", "captum", or e.g. "exact+riemann" if auto
    had to fall back on some batch), "layer", "reduction", "n_steps"}``.
    """
    _check_args(model, layer, method, reduction, n_steps, internal_batch_size)
    if device is not None:
        device = torch.device(device)
        model.to(device)
    else:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    conds, logits_all, used = [], [], []
    cache: dict = {}
    try:
        total = len(loader)
    except TypeError:
        total = None
    bar = progress_bar(loader, total=total, desc=f"conductance {layer} (batches)", unit="batch", enabled=progress)
    for batch in bar:
        if isinstance(batch, (list, tuple)):
            x, y = batch[0], (batch[1] if len(batch) > 1 else None)
        else:
            x, y = batch, None
        x = x.to(device, non_blocking=True)
        target = None
        if target_fn is not None:
            with _prepared(model, freeze=True), torch.no_grad():
                lg = model(x)
            target = target_fn(lg, None if y is None else torch.as_tensor(y).to(device))
        c, lg, m = _conductance_batch(model, layer, x, target, baseline, int(n_steps), method, reduction,
                                      int(internal_batch_size), cache=cache, channels_last=channels_last)
        conds.append(c.detach().float().cpu().numpy())
        logits_all.append(lg.detach().float().cpu().numpy())
        if m not in used:
            used.append(m)
    C = conds[0].shape[1] if conds else 0
    return {
        "conductance": np.concatenate(conds, 0) if conds else np.zeros((0, C), np.float32),
        "logits": np.concatenate(logits_all, 0) if logits_all else np.zeros((0, 0), np.float32),
        "method": "+".join(used) if used else method,
        "layer": layer,
        "reduction": reduction,
        "n_steps": int(n_steps),
    }


# ----------------------------------------------------------------------------- Tables 1-2
def feature_map_summary(conductance: np.ndarray, labels, preds, cls: int, top_k: int = 5):
    """Tables 1-2 of paper 1 (section 3.2): class-specific feature maps FM_high(c, L).

    Following the captions of Tables 1 and 2, only images *predicted* as ``cls``
    are used (conductance is computed for the predicted class): "correct" = label
    == cls, "wrong" = label != cls (images of other classes predicted as ``cls``).
    FM_high = the ``top_k`` feature maps with the highest mean conductance over
    the correct ones, in decreasing order.  Returns a DataFrame with columns
    ``feature_map, mean_correct, mean_wrong, n_correct, n_wrong`` (``mean_wrong``
    is NaN when there is no wrong prediction; an empty frame when there is no
    correct one, FM_high being undefined).
    """
    import pandas as pd

    cond = np.asarray(conductance, dtype=np.float64)
    labels = np.asarray(labels).reshape(-1)
    preds = np.asarray(preds).reshape(-1)
    if cond.ndim != 2 or not (cond.shape[0] == labels.shape[0] == preds.shape[0]):
        raise ValueError(
            f"conductance: shape {cond.shape} with {labels.shape[0]} labels and {preds.shape[0]} preds; "
            "valid: (N, C) with N labels and N predictions"
        )
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ValueError(f"top_k: {top_k!r} is not valid; valid: an integer >= 1")
    cols = ["feature_map", "mean_correct", "mean_wrong", "n_correct", "n_wrong"]
    pred_c = preds == cls
    correct = pred_c & (labels == cls)
    wrong = pred_c & (labels != cls)
    n_c, n_w = int(correct.sum()), int(wrong.sum())
    if n_c == 0:
        return pd.DataFrame(columns=cols)
    mean_c = cond[correct].mean(0)
    mean_w = cond[wrong].mean(0) if n_w else np.full(cond.shape[1], np.nan)
    top = np.argsort(-mean_c, kind="stable")[: min(int(top_k), cond.shape[1])]
    return pd.DataFrame({
        "feature_map": top.astype(int),
        "mean_correct": mean_c[top],
        "mean_wrong": mean_w[top],
        "n_correct": n_c,
        "n_wrong": n_w,
    }, columns=cols)
