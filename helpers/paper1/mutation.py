"""Model mutation operators for the Label Change Rate (LCR) of paper 1, section 4.2.

Paper 1 (arXiv 1910.00387, section 4.2) takes the LCR from Wang et al., "Adversarial
sample detection for deep neural network through model mutation testing" (ICSE 2019):
a *mutant* is a copy of the trained network with a small random subset of its
weights changed, and LCR(x) is the fraction of mutants whose prediction on ``x``
differs from the original network's prediction (see :mod:`helpers.paper1.lcr`).

Operators (``OPERATORS``); ``rate`` is always a fraction of a named population and the
number of selected items is ``n_selected(rate, population)`` =
``max(1, floor(rate * population + 0.5))``:

Wang et al.'s parameter-level operators
    ``"gf"``   Gaussian fuzzing: rate x (all scalar weights of the conv / linear
               layers); each selected scalar is replaced by a draw from
               N(mean, std) of its own weight tensor (biases are not fuzzed).
    ``"nai"``  neuron activation inverse: rate x (all output units = conv filters
               and linear rows); the unit's weights and bias are negated.
    ``"ws"``   weight shuffling: rate x (all output units); the unit's incoming
               weights are permuted (a random cyclic permutation, so every scalar
               moves).
    ``"ns"``   neuron switch: in each conv / linear layer, rate x (that layer's
               output units); the incoming weight rows (and biases) of the selected
               units are permuted among themselves (cyclically, so every selected
               unit changes).  A switch needs two units, so a layer's count is
               ``floor(rate * n + 0.5)`` raised to 2 when it is 1; if every layer
               rounds to 0, one layer (drawn in proportion to its size) switches 2.
Paper 1's filter-level operators (a "weight" is a whole conv output filter)
    ``"filter_nai"`` rate x (all conv filters); negate the kernel only (before any
               BatchNorm; a conv bias, if any, is untouched).  Paper 1 used this
               variant for CIFAR-10 at rate 0.01.
    ``"filter_gf"``  rate x (all conv filters); the whole kernel is replaced by
               draws from N(mean, std) of its layer's weight tensor.
For networks with normalisation layers
    ``"bn_nai"`` rate x (all channels of the affine normalisation layers: BatchNorm,
               InstanceNorm, GroupNorm, LayerNorm); negate the channel's gamma and
               beta.  After a bias-free conv this is the exact inversion of the
               channel's pre-activation (``filter_nai`` is not, because BN's running
               mean is not negated).  LayerNorm (ConvNeXt's LayerNorm2d, a
               transformer's) is treated like BatchNorm's affine parameters, not like
               a linear layer's weights: its gamma and beta are per-channel scale and
               shift, and negating both inverts the channel's normalised output
               exactly, as for BN; each element of a multi-dimensional
               ``normalized_shape`` counts as a channel.  A norm without bias has
               its gamma negated only.

Which modules.  Any module type: a module counts by its class, wherever it sits
(``nn.Linear`` and its subclasses, every ``Conv1d/2d/3d`` including depthwise and grouped
ones, whose output filters are the first weight dimension; squeeze-excite blocks are made of
such convs and linears).  Transposed convolutions count for ``gf`` only (their first weight
dimension is the input channels, not units).  A parameter counts once, where it is first
met, and only where the module holds it itself (a weight under ``torch.nn.utils.parametrize``
or shared with another module under another name is met once or not at all).  Parameters
outside these modules (an attention block's in-projection, ConvNeXt's layer scale, a class
token) are not mutated.  Activations, ``inplace=True`` or not, hold no parameters: a mutant
is its patch of parameters, so a model with in-place activations is restored bitwise by
``Patch.revert`` like any other.

Speed: a mutant is a :class:`MutantSpec` ``(operator, rate, seed)``; :func:`make_patch`
turns it deterministically (a private ``torch.Generator`` seeded by ``spec.seed``,
independent of the global RNG) into a :class:`Patch`: a few (parameter name, flat
indices, new values) triples.  ``Patch.apply`` / ``Patch.revert`` are in-place index
writes (the original values are saved on apply), so evaluating many mutants needs no
``deepcopy`` and storing them needs no weight files.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from helpers.names import MUTATION_OPERATORS

OPERATORS = MUTATION_OPERATORS

#: what the rate of each operator is a fraction of
RATE_OF = {
    "gf": "all scalar weights of conv/linear layers",
    "nai": "all output units (conv filters and linear rows)",
    "ws": "all output units (conv filters and linear rows)",
    "ns": "the output units of each conv/linear layer",
    "filter_nai": "all conv filters",
    "filter_gf": "all conv filters",
    "bn_nai": "all channels of the normalisation layers (BatchNorm, InstanceNorm, GroupNorm, LayerNorm)",
}


# ----------------------------------------------------------------------------- specs
def check_operator(operator) -> None:
    if operator not in OPERATORS:
        raise ValueError(f"operator: {operator!r} is not a known operator; valid: {', '.join(OPERATORS)}")


def check_rate(rate) -> None:
    try:
        ok = 0.0 < float(rate) <= 1.0
    except (TypeError, ValueError):
        ok = False
    if not ok or isinstance(rate, bool):
        raise ValueError(f"rate: {rate!r} is not valid; valid: a fraction in (0, 1]")


@dataclass(frozen=True)
class MutantSpec:
    """One mutant: operator name, mutation rate in (0, 1] and the seed of its draws."""

    operator: str
    rate: float
    seed: int

    def __post_init__(self):
        check_operator(self.operator)
        check_rate(self.rate)
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"seed: {self.seed!r} is not valid; valid: an integer >= 0")


def n_selected(rate: float, population: int) -> int:
    """Number of items a mutation at ``rate`` changes out of ``population``: max(1, round-half-up)."""
    check_rate(rate)
    if population <= 0:
        return 0
    return min(population, max(1, int(math.floor(rate * population + 0.5))))


# ----------------------------------------------------------------------------- layers
def _own(model: nn.Module, keep) -> list:
    """``(name, module)`` of the modules ``keep`` accepts whose ``weight`` is a parameter they hold themselves,
    each parameter once (where it is first met)."""
    out, seen = [], set()
    for n, m in model.named_modules():
        w = m._parameters.get("weight") if keep(m) else None
        if w is None or id(w) in seen:
            continue
        seen.add(id(w))
        out.append((n, m))
    return out


def _conv_linear(model: nn.Module, conv_only: bool = False, units: bool = True):
    """Conv (any dimension, depthwise and grouped too) and linear layers; ``units``: without transposed
    convolutions (whose first weight dimension is not their output units)."""
    types = (nn.modules.conv._ConvNd,) if conv_only else (nn.modules.conv._ConvNd, nn.Linear)
    return _own(model, lambda m: isinstance(m, types)
                and not (units and isinstance(m, nn.modules.conv._ConvTransposeNd)))


#: affine normalisation layers of ``bn_nai`` (LayerNorm treated like BatchNorm's affine parameters)
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def _batchnorms(model: nn.Module):
    return _own(model, lambda m: isinstance(m, _NORMS))


def _pname(module_name: str, attr: str) -> str:
    return f"{module_name}.{attr}" if module_name else attr


def unit_count(model: nn.Module, operator: str) -> int:
    """Size of the population ``rate`` is a fraction of (see ``RATE_OF``); for "ns" the total units."""
    check_operator(operator)
    if operator == "gf":
        return sum(m.weight.numel() for _, m in _conv_linear(model, units=False))
    if operator in ("nai", "ws", "ns"):
        return sum(m.weight.shape[0] for _, m in _conv_linear(model))
    if operator in ("filter_nai", "filter_gf"):
        return sum(m.weight.shape[0] for _, m in _conv_linear(model, conv_only=True))
    return sum(m.weight.numel() for _, m in _batchnorms(model))


# ----------------------------------------------------------------------------- patches
@dataclass(eq=False)
class Patch:
    """In-place, revertible change of a model's parameters: the content of one mutant.

    ``entries``: tuple of ``(parameter name, flat indices (int64), new values)``, on
    the CPU.  :meth:`apply` saves the current values at those indices and writes the
    new ones; :meth:`revert` writes the saved values back (bitwise restore).
    """

    spec: MutantSpec | None
    entries: tuple
    _saved: list | None = field(default=None, repr=False)
    _dev: dict = field(default_factory=dict, repr=False)

    @property
    def n_scalars(self) -> int:
        return int(sum(idx.numel() for _, idx, _ in self.entries))

    @property
    def param_names(self) -> tuple:
        return tuple(n for n, _, _ in self.entries)

    @property
    def applied(self) -> bool:
        return self._saved is not None

    def _on(self, params: dict):
        """Entries moved to the device / dtype of their parameters (cached per device)."""
        key = str(params[self.entries[0][0]].device)
        if key not in self._dev:
            self._dev[key] = [(n, i.to(params[n].device), v.to(device=params[n].device, dtype=params[n].dtype))
                              for n, i, v in self.entries]
        return self._dev[key]

    def _params(self, model: nn.Module) -> dict:
        params = dict(model.named_parameters())
        for n in self.param_names:
            if n not in params:
                raise KeyError(f"patch: model has no parameter {n!r} (patch made for another model?)")
        return params

    def apply(self, model: nn.Module, _params: dict | None = None) -> "Patch":
        """Write the mutant's values into ``model`` in place, saving the originals."""
        if self._saved is not None:
            raise RuntimeError("patch: already applied; revert it before applying again")
        params = _params if _params is not None else self._params(model)
        saved = []
        with torch.inference_mode(False), torch.no_grad():
            for name, idx, val in (self._on(params) if self.entries else []):
                flat = params[name].view(-1)
                saved.append((flat, idx, flat[idx].clone()))
                flat[idx] = val
        self._saved = saved
        return self

    def revert(self, model: nn.Module | None = None) -> "Patch":
        """Restore the values saved by :meth:`apply` (bitwise)."""
        if self._saved is None:
            raise RuntimeError("patch: not applied; nothing to revert")
        with torch.inference_mode(False), torch.no_grad():
            for flat, idx, old in reversed(self._saved):
                flat[idx] = old
        self._saved = None
        return self


@contextlib.contextmanager
def mutated(model: nn.Module, spec_or_patch):
    """``with mutated(model, spec) as patch:`` the model is the mutant inside, the original after.

    Accepts a :class:`MutantSpec` (the patch is made from the model's current
    weights) or a ready :class:`Patch`.  The patch is reverted even on exceptions.
    """
    patch = spec_or_patch if isinstance(spec_or_patch, Patch) else make_patch(model, spec_or_patch)
    patch.apply(model)
    try:
        yield patch
    finally:
        patch.revert(model)


def _pick_global(sizes, k, g):
    """Pick k of sum(sizes) items uniformly without replacement; return [(layer, local idx tensor)]."""
    total = int(sum(sizes))
    chosen = torch.randperm(total, generator=g)[:k].sort().values.numpy()
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    layer = np.searchsorted(offsets, chosen, side="right") - 1
    out = []
    for li in np.unique(layer):
        local = chosen[layer == li] - offsets[li]
        out.append((int(li), torch.as_tensor(local, dtype=torch.int64)))
    return out


def _rows_flat(rows: torch.Tensor, row_size: int) -> torch.Tensor:
    return (rows[:, None] * row_size + torch.arange(row_size)[None, :]).reshape(-1)


def _weight_stats(w: torch.Tensor):
    w = w.detach().double()
    return float(w.mean()), float(w.std()) if w.numel() > 1 else 0.0


def _w_cpu(m) -> torch.Tensor:
    w = m.weight.detach()
    if not w.is_contiguous():
        raise ValueError("mutation: non-contiguous weight (e.g. channels_last); use contiguous weights")
    return w.cpu()


def _redraw(n: int, tensor: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    mean, std = _weight_stats(tensor)
    return (torch.randn(n, generator=g, dtype=torch.float64) * std + mean).to(tensor.dtype)


def gaussian_fuzzing(model: nn.Module, rate: float, generator: torch.Generator) -> list:
    """GF (Wang et al. 2019): ``rate`` is a fraction of ALL scalar weights of the conv and
    linear layers (biases excluded), drawn uniformly across layers; each selected scalar
    is replaced by a draw from N(mean, std) of its own weight tensor.

    Like every operator function it returns patch entries ``[(parameter name, flat
    indices, new values)]`` and leaves the model unchanged.
    """
    layers = _conv_linear(model, units=False)
    sizes = [m.weight.numel() for _, m in layers]
    entries = []
    for li, flat in _pick_global(sizes, n_selected(rate, sum(sizes)), generator):
        name, m = layers[li]
        entries.append((_pname(name, "weight"), flat, _redraw(flat.numel(), _w_cpu(m), generator)))
    return entries


def _unit_rows(model, rate, generator, conv_only):
    layers = _conv_linear(model, conv_only=conv_only)
    sizes = [m.weight.shape[0] for _, m in layers]
    for li, rows in _pick_global(sizes, n_selected(rate, sum(sizes)), generator):
        name, m = layers[li]
        w = _w_cpu(m)
        yield name, m, w, rows, _rows_flat(rows, w[0].numel())


def neuron_activation_inverse(model: nn.Module, rate: float, generator: torch.Generator) -> list:
    """NAI (Wang et al. 2019): ``rate`` is a fraction of ALL output units (conv filters and
    linear rows together); each selected unit's incoming weights and bias are negated."""
    entries = []
    for name, m, w, rows, flat in _unit_rows(model, rate, generator, conv_only=False):
        entries.append((_pname(name, "weight"), flat, -w.reshape(-1)[flat]))
        if m.bias is not None:
            entries.append((_pname(name, "bias"), rows.clone(), -m.bias.detach().cpu()[rows]))
    return entries


def weight_shuffling(model: nn.Module, rate: float, generator: torch.Generator) -> list:
    """WS (Wang et al. 2019): ``rate`` is a fraction of ALL output units (conv filters and
    linear rows); each selected unit's incoming weights are permuted among themselves
    (a random cyclic permutation, so that every scalar moves)."""
    entries = []
    for name, _, w, rows, flat in _unit_rows(model, rate, generator, conv_only=False):
        row_size = w[0].numel()
        src = torch.empty((rows.numel(), row_size), dtype=torch.int64)
        for j in range(rows.numel()):
            order = torch.randperm(row_size, generator=generator)
            src[j, order] = order.roll(-1)  # new[order[i]] = old[order[i+1]]
        old = w.reshape(w.shape[0], -1)[rows]
        entries.append((_pname(name, "weight"), flat, torch.gather(old, 1, src).reshape(-1)))
    return entries


def neuron_switch(model: nn.Module, rate: float, generator: torch.Generator) -> list:
    """NS (Wang et al. 2019): ``rate`` is a fraction of EACH conv / linear layer's output
    units; within the layer the selected units' incoming weight rows (and biases) are
    permuted cyclically among themselves.  Per layer ``floor(rate*n + 0.5)`` units, raised
    to 2 when it is 1 (a switch needs two); if every layer rounds to 0, one layer (drawn
    in proportion to its size) switches two units."""
    layers = _conv_linear(model)
    counts = []
    for _, m in layers:
        n = m.weight.shape[0]
        k = int(math.floor(rate * n + 0.5)) if n >= 2 else 0
        counts.append(2 if k == 1 else min(k, n))
    if sum(counts) == 0:
        eligible = [i for i, (_, m) in enumerate(layers) if m.weight.shape[0] >= 2]
        if eligible:
            p = torch.tensor([float(layers[i][1].weight.shape[0]) for i in eligible])
            counts[eligible[int(torch.multinomial(p, 1, generator=generator))]] = 2
    entries = []
    for (name, m), k in zip(layers, counts):
        if k < 2:
            continue
        w = _w_cpu(m)
        n = w.shape[0]
        rows = torch.randperm(n, generator=generator)[:k]
        perm = torch.randperm(k, generator=generator)
        dst, src = rows[perm], rows[perm.roll(-1)]  # cyclic: every selected unit changes
        order = torch.argsort(dst)
        dst, src = dst[order], src[order]
        w2 = w.reshape(n, -1)
        entries.append((_pname(name, "weight"), _rows_flat(dst, w2.shape[1]), w2[src].reshape(-1).clone()))
        if m.bias is not None:
            entries.append((_pname(name, "bias"), dst.clone(), m.bias.detach().cpu()[src].clone()))
    return entries


def filter_activation_inverse(model: nn.Module, rate: float, generator: torch.Generator) -> list:
    """Filter-level NAI (paper 1, section 4.2: a "weight" is a whole conv kernel):
    ``rate`` is a fraction of ALL conv output filters; the selected filters' kernels are
    negated (before any BatchNorm; a conv bias is left alone)."""
    return [(_pname(name, "weight"), flat, -w.reshape(-1)[flat])
            for name, _, w, _, flat in _unit_rows(model, rate, generator, conv_only=True)]


def filter_gaussian_fuzzing(model: nn.Module, rate: float, generator: torch.Generator) -> list:
    """Filter-level GF (paper 1, section 4.2): ``rate`` is a fraction of ALL conv output
    filters; each selected filter's whole kernel is replaced by draws from N(mean, std)
    of its layer's weight tensor."""
    return [(_pname(name, "weight"), flat, _redraw(flat.numel(), w, generator))
            for name, _, w, _, flat in _unit_rows(model, rate, generator, conv_only=True)]


def bn_activation_inverse(model: nn.Module, rate: float, generator: torch.Generator) -> list:
    """Clean NAI for BatchNorm networks: ``rate`` is a fraction of ALL channels of the affine
    normalisation layers (BatchNorm, InstanceNorm, GroupNorm, LayerNorm); the selected channels'
    gamma and beta are negated, which inverts the channel's normalised pre-activation exactly
    (negating a bias-free conv kernel does not, because BN's running mean keeps its sign)."""
    layers = _batchnorms(model)
    sizes = [m.weight.numel() for _, m in layers]
    entries = []
    for li, ch in _pick_global(sizes, n_selected(rate, sum(sizes)), generator):
        name, m = layers[li]
        entries.append((_pname(name, "weight"), ch, -m.weight.detach().cpu().reshape(-1)[ch]))
        if m._parameters.get("bias") is not None:
            entries.append((_pname(name, "bias"), ch.clone(), -m.bias.detach().cpu().reshape(-1)[ch]))
    return entries


#: operator name -> function (model, rate, generator) -> patch entries
OPERATOR_FUNCTIONS = {
    "gf": gaussian_fuzzing,
    "nai": neuron_activation_inverse,
    "ws": weight_shuffling,
    "ns": neuron_switch,
    "filter_nai": filter_activation_inverse,
    "filter_gf": filter_gaussian_fuzzing,
    "bn_nai": bn_activation_inverse,
}


def make_patch(model: nn.Module, spec: MutantSpec) -> Patch:
    """Compute the mutant ``spec`` of ``model`` as a :class:`Patch` (the model is not changed).

    Deterministic: every draw comes from a ``torch.Generator`` seeded with
    ``spec.seed`` (the global RNG is neither used nor advanced), and the new values
    depend only on the spec and the model's current weights.  Operators and rates:
    ``OPERATOR_FUNCTIONS`` and the module docstring (Wang et al. ICSE 2019; paper 1
    section 4.2).
    """
    if not isinstance(spec, MutantSpec):
        raise TypeError(f"spec: expected a MutantSpec, got {type(spec).__name__}")
    g = torch.Generator(device="cpu")
    g.manual_seed(int(spec.seed))
    entries = OPERATOR_FUNCTIONS[spec.operator](model, spec.rate, g)
    entries = tuple((n, i.to(torch.int64).contiguous(), v.detach().clone().contiguous()) for n, i, v in entries)
    return Patch(spec, entries)


def make_patches(model: nn.Module, specs) -> list:
    """``[make_patch(model, s) for s in specs]`` (patches pass through unchanged)."""
    return [s if isinstance(s, Patch) else make_patch(model, s) for s in specs]


__all__ = [
    "OPERATORS", "OPERATOR_FUNCTIONS", "RATE_OF", "MutantSpec", "Patch", "make_patch", "make_patches", "mutated",
    "n_selected", "unit_count", "gaussian_fuzzing", "neuron_activation_inverse", "weight_shuffling",
    "neuron_switch", "filter_activation_inverse", "filter_gaussian_fuzzing", "bn_activation_inverse",
]
