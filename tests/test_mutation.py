"""Mutation operators (paper 1 section 4.2; Wang et al. ICSE 2019): scope, counts, seeds, revert."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from helpers.models import SmallCNN, build_model
from helpers.paper1.mutation import (
    OPERATORS,
    MutantSpec,
    Patch,
    make_patch,
    mutated,
    n_selected,
    unit_count,
)

pytestmark = pytest.mark.usefixtures("one_thread")


class BiasNet(nn.Module):
    """Conv with bias -> BN -> ReLU -> bias-free conv -> BN -> GAP -> linear (every kind of parameter)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 12, 3, padding=1, bias=True)
        self.b1 = nn.BatchNorm2d(12)
        self.c2 = nn.Conv2d(12, 20, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(20)
        self.fc = nn.Linear(20, 10)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)))
        return self.fc(x.mean((2, 3)))


def _randomise(model):
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            elif isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g))
    return model.eval()


@pytest.fixture(params=["biasnet", "small_cnn"])
def model(request):
    torch.manual_seed(0)
    return _randomise(BiasNet() if request.param == "biasnet" else SmallCNN(10, 1))


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _mutant_state(model, spec):
    with mutated(model, spec):
        return _snapshot(model)


def _layers(model, kinds):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, kinds)]


def _rows_changed(a, b):
    return (a.reshape(a.shape[0], -1) != b.reshape(b.shape[0], -1)).any(1)


RATE = 0.25


def _targets(model, op):
    """Names of the state-dict entries an operator may touch."""
    convlin = _layers(model, (nn.Conv2d, nn.Linear))
    if op == "gf":
        return {f"{n}.weight" for n, _ in convlin}
    if op in ("nai", "ns"):
        return {f"{n}.{a}" for n, m in convlin for a in ("weight", "bias") if getattr(m, a) is not None}
    if op == "ws":
        return {f"{n}.weight" for n, _ in convlin}
    if op in ("filter_nai", "filter_gf"):
        return {f"{n}.weight" for n, _ in _layers(model, nn.Conv2d)}
    return {f"{n}.{a}" for n, _ in _layers(model, nn.BatchNorm2d) for a in ("weight", "bias")}


@pytest.mark.parametrize("op", OPERATORS)
def test_operator_touches_only_its_targets(model, op):
    before = _snapshot(model)
    after = _mutant_state(model, MutantSpec(op, RATE, 7))
    targets = _targets(model, op)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, op
    assert changed <= targets, (op, changed - targets)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # reverted


def test_gf_changes_fraction_of_scalars(model):
    before, after = _snapshot(model), _mutant_state(model, MutantSpec("gf", RATE, 3))
    names = [f"{n}.weight" for n, _ in _layers(model, (nn.Conv2d, nn.Linear))]
    total = sum(before[n].numel() for n in names)
    n_changed = sum(int((before[n] != after[n]).sum()) for n in names)
    assert total == unit_count(model, "gf")
    assert n_changed == n_selected(RATE, total)
    assert n_selected(RATE, total) == math.floor(RATE * total + 0.5)


@pytest.mark.parametrize("op", ["nai", "ws", "filter_nai", "filter_gf"])
def test_unit_operators_change_fraction_of_units(model, op):
    before, after = _snapshot(model), _mutant_state(model, MutantSpec(op, RATE, 11))
    kinds = nn.Conv2d if op.startswith("filter_") else (nn.Conv2d, nn.Linear)
    layers = _layers(model, kinds)
    population = sum(m.weight.shape[0] for _, m in layers)
    assert population == unit_count(model, op)
    n_changed = 0
    for n, m in layers:
        w0, w1 = before[f"{n}.weight"], after[f"{n}.weight"]
        rows = _rows_changed(w0, w1)
        n_changed += int(rows.sum())
        if op in ("nai", "filter_nai"):
            assert torch.equal(w1[rows], -w0[rows])
        if op == "filter_gf":  # the whole filter is redrawn
            assert bool((w0[rows] != w1[rows]).all())
        if op == "ws":  # a permutation of the unit's own incoming weights
            a = w0.reshape(w0.shape[0], -1)[rows].sort(1).values
            b = w1.reshape(w1.shape[0], -1)[rows].sort(1).values
            assert torch.equal(a, b)
        if m.bias is not None:
            b0, b1 = before[f"{n}.bias"], after[f"{n}.bias"]
            if op == "nai":
                assert torch.equal(b1[rows], -b0[rows]) and torch.equal(b1[~rows], b0[~rows])
            else:  # filter-level NAI / GF touch the kernel only
                assert torch.equal(b0, b1)
    assert n_changed == n_selected(RATE, population)


def test_ns_switches_rows_within_each_layer(model):
    before, after = _snapshot(model), _mutant_state(model, MutantSpec("ns", RATE, 5))
    for n, m in _layers(model, (nn.Conv2d, nn.Linear)):
        w0, w1 = before[f"{n}.weight"], after[f"{n}.weight"]
        rows = _rows_changed(w0, w1)
        k = math.floor(RATE * w0.shape[0] + 0.5)
        assert int(rows.sum()) == (2 if k == 1 else k)
        r0 = w0.reshape(w0.shape[0], -1)[rows]
        r1 = w1.reshape(w1.shape[0], -1)[rows]
        # the same set of rows, none left in place
        assert sorted(map(tuple, r0.tolist())) == sorted(map(tuple, r1.tolist()))
        if m.bias is not None:
            assert sorted(before[f"{n}.bias"][rows].tolist()) == sorted(after[f"{n}.bias"][rows].tolist())


def test_ns_small_rate_still_switches_two_units(model):
    before, after = _snapshot(model), _mutant_state(model, MutantSpec("ns", 0.001, 5))
    n_changed = sum(int(_rows_changed(before[f"{n}.weight"], after[f"{n}.weight"]).sum())
                    for n, _ in _layers(model, (nn.Conv2d, nn.Linear)))
    assert n_changed == 2


def test_bn_nai_negates_gamma_and_beta(model):
    before, after = _snapshot(model), _mutant_state(model, MutantSpec("bn_nai", RATE, 9))
    layers = _layers(model, nn.BatchNorm2d)
    population = sum(m.weight.shape[0] for _, m in layers)
    n_changed = 0
    for n, _ in layers:
        g0, g1 = before[f"{n}.weight"], after[f"{n}.weight"]
        ch = g0 != g1
        n_changed += int(ch.sum())
        assert torch.equal(g1[ch], -g0[ch])
        assert torch.equal(after[f"{n}.bias"][ch], -before[f"{n}.bias"][ch])
        assert torch.equal(after[f"{n}.bias"][~ch], before[f"{n}.bias"][~ch])
        for buf in ("running_mean", "running_var"):
            assert torch.equal(before[f"{n}.{buf}"], after[f"{n}.{buf}"])
    assert n_changed == n_selected(RATE, population) == n_selected(RATE, unit_count(model, "bn_nai"))


def test_bn_nai_inverts_the_channel_output():
    torch.manual_seed(1)
    bn = _randomise(nn.Sequential(nn.BatchNorm2d(4)))
    x = torch.randn(2, 4, 3, 3)
    y0 = bn(x)
    with mutated(bn, MutantSpec("bn_nai", 0.25, 0)):  # one channel
        y1 = bn(x)
    ch = (y0 != y1).flatten(2).any(2).any(0)
    assert int(ch.sum()) == 1
    assert torch.allclose(y1[:, ch], -y0[:, ch])


def _same_patch(a: Patch, b: Patch) -> bool:
    return len(a.entries) == len(b.entries) and all(
        na == nb and torch.equal(ia, ib) and torch.equal(va, vb)
        for (na, ia, va), (nb, ib, vb) in zip(a.entries, b.entries)
    )


@pytest.mark.parametrize("op", OPERATORS)
def test_patch_reproducible_and_independent_of_global_rng(model, op):
    spec = MutantSpec(op, 0.2, 42)
    torch.manual_seed(1)
    a = make_patch(model, spec)
    torch.manual_seed(999)
    torch.rand(100)
    state = torch.get_rng_state()
    b = make_patch(model, spec)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is not advanced
    assert _same_patch(a, b)
    others = [make_patch(model, MutantSpec(op, 0.2, s)) for s in (43, 44, 45)]
    assert not all(_same_patch(a, o) for o in others)
    assert not _same_patch(a, others[0]) or not _same_patch(a, others[1])


def test_apply_revert_bitwise_and_context_manager(model):
    before = _snapshot(model)
    patch = make_patch(model, MutantSpec("gf", 0.5, 1))
    patch.apply(model)
    with pytest.raises(RuntimeError, match="already applied"):
        patch.apply(model)
    patch.revert(model)
    with pytest.raises(RuntimeError, match="not applied"):
        patch.revert(model)
    with pytest.raises(ZeroDivisionError):
        with mutated(model, MutantSpec("nai", 0.5, 1)):
            assert not all(torch.equal(before[k], v) for k, v in model.state_dict().items())
            1 / 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # a patch can be applied again later and gives the same mutant
    s1 = _mutant_state(model, patch)
    s2 = _mutant_state(model, patch)
    assert all(torch.equal(s1[k], s2[k]) for k in s1)


def test_invalid_operator_and_rate():
    with pytest.raises(ValueError, match=r"operator: 'bogus'.*valid: gf, nai"):
        MutantSpec("bogus", 0.1, 0)
    for bad in (0, 0.0, -0.1, 1.5, float("nan"), "x"):
        with pytest.raises(ValueError, match=r"rate: .*valid: a fraction in \(0, 1\]"):
            MutantSpec("gf", bad, 0)
    with pytest.raises(ValueError, match="seed"):
        MutantSpec("gf", 0.1, -1)
    MutantSpec("gf", 1.0, 0)  # rate 1 is allowed


def test_resnet20_populations_and_paper_rate():
    m = build_model("resnet20", 10)
    assert unit_count(m, "filter_nai") == 688 == unit_count(m, "bn_nai")
    assert unit_count(m, "nai") == 698
    p = make_patch(m, MutantSpec("filter_nai", 0.01, 0))  # paper 1's CIFAR setting: 7 filters
    assert p.n_scalars % 9 == 0 and sum(i.numel() // m.get_parameter(n)[0].numel() for n, i, _ in p.entries) == 7


def test_operator_functions_documented_and_pure(model):
    from helpers.paper1.mutation import OPERATOR_FUNCTIONS

    assert tuple(OPERATOR_FUNCTIONS) == OPERATORS
    before = _snapshot(model)
    for op, fn in OPERATOR_FUNCTIONS.items():
        assert "fraction" in fn.__doc__ and "rate" in fn.__doc__, op
        entries = fn(model, 0.2, torch.Generator().manual_seed(0))
        assert entries and all(isinstance(n, str) and i.numel() == v.numel() for n, i, v in entries)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
