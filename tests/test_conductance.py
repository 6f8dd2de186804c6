"""Feature-map conductance (paper 1, section 3, eq. 5): exact == riemann == captum."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers.models import build_model
from helpers.paper1.conductance import (
    conductance_dataset,
    exact_applicable,
    feature_map_summary,
    layer_conductance,
)


def _rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    m = build_model("resnet20", 10).double().eval()
    # non-trivial BatchNorm statistics, so that the layers are not near identity
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 2.0)
                mod.bias.uniform_(-0.2, 0.2)
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    return m, x


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(1)
    m = build_model("small_cnn", 10, in_channels=1).double().eval()
    x = torch.randn(5, 1, 8, 8, dtype=torch.float64)
    return m, x


class TinyVGG(nn.Module):
    """conv -> ReLU -> maxpool -> flatten -> linear -> ReLU -> linear: no exact shortcut."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.fc1 = nn.Linear(6 * 4 * 4, 12)
        self.fc2 = nn.Linear(12, 5)
        self.last_conv_layer, self.gap_linear_head = "conv", None

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv(x)), 2).flatten(1)
        return self.fc2(F.relu(self.fc1(x)))


class LyingHead(nn.Module):
    """Declares a GAP + linear head, but a shifted ReLU sits between the layer and GAP."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)
        self.last_conv_layer, self.gap_linear_head = "conv", ("conv", "fc")

    def forward(self, x):
        a = F.relu(self.conv(x) - 0.3)
        return self.fc(a.mean((2, 3)))


CASES = [("resnet", "layer3.2"), ("small", "block")]


@pytest.mark.parametrize("fixture,layer", CASES)
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_exact_riemann_captum_agree(request, fixture, layer, reduction):
    m, x = request.getfixturevalue(fixture)
    assert exact_applicable(m, layer)
    ref = layer_conductance(m, layer, x, method="captum", reduction=reduction)
    assert ref.shape[0] == x.shape[0] and ref.dim() == 2
    for method in ("exact", "riemann", "auto"):
        got = layer_conductance(m, layer, x, method=method, reduction=reduction)
        assert got.shape == ref.shape
        assert _rel(got, ref) < 1e-5, (method, _rel(got, ref))
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-7 * float(ref.abs().max()))


@pytest.mark.parametrize("fixture,layer", CASES)
def test_mean_is_sum_over_hw(request, fixture, layer):
    m, x = request.getfixturevalue(fixture)
    feats = {}
    h = m.get_submodule(layer).register_forward_hook(lambda mod, i, o: feats.setdefault("a", o))
    with torch.no_grad():
        m(x[:1])
    h.remove()
    hw = feats["a"][0, 0].numel()
    s = layer_conductance(m, layer, x, method="exact", reduction="sum")
    mn = layer_conductance(m, layer, x, method="exact", reduction="mean")
    torch.testing.assert_close(s, mn * hw)


@pytest.mark.parametrize("fixture,layer", CASES)
@pytest.mark.parametrize("method", ["exact", "riemann"])
def test_completeness(request, fixture, layer, method):
    m, x = request.getfixturevalue(fixture)
    with torch.no_grad():
        lg = m(x)
        lg0 = m(torch.zeros_like(x[:1]))
    t = lg.argmax(1)
    expected = lg.gather(1, t[:, None])[:, 0] - lg0[0, t]
    c = layer_conductance(m, layer, x, method=method, reduction="sum")
    torch.testing.assert_close(c.sum(1), expected, rtol=1e-9, atol=1e-9)


def test_nonlinear_head_auto_uses_riemann_and_matches_captum():
    torch.manual_seed(2)
    m = TinyVGG().double().eval()
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    assert not exact_applicable(m, "conv")
    ref = layer_conductance(m, "conv", x, method="captum")
    got = layer_conductance(m, "conv", x)  # auto
    assert _rel(got, ref) < 1e-5
    out = conductance_dataset(m, "conv", [(x, torch.zeros(4))], progress=False)
    assert out["method"] == "riemann"
    with pytest.raises(ValueError, match="method"):
        layer_conductance(m, "conv", x, method="exact")
    # with n_steps large the stepped sum approaches F(x) - F(x') (completeness in the limit)
    with torch.no_grad():
        lg, lg0 = m(x), m(torch.zeros_like(x[:1]))
    t = lg.argmax(1)
    expected = lg.gather(1, t[:, None])[:, 0] - lg0[0, t]
    fine = layer_conductance(m, "conv", x, n_steps=400).sum(1)
    torch.testing.assert_close(fine, expected, rtol=2e-2, atol=2e-2 * float(expected.abs().max()))


def test_resnet_intermediate_layer_auto_matches_captum(resnet):
    m, x = resnet
    assert not exact_applicable(m, "layer3.1")
    ref = layer_conductance(m, "layer3.1", x[:2], method="captum")
    got = layer_conductance(m, "layer3.1", x[:2], method="auto")
    assert _rel(got, ref) < 1e-5
    with pytest.raises(ValueError, match="method"):
        layer_conductance(m, "layer3.1", x[:2], method="exact")


def test_false_declaration_is_caught():
    torch.manual_seed(3)
    m = LyingHead().double().eval()
    x = torch.randn(3, 1, 6, 6, dtype=torch.float64)
    assert exact_applicable(m, "conv")  # declared ...
    with pytest.raises(ValueError, match="method"):  # ... but refused by the numerical check
        layer_conductance(m, "conv", x, method="exact")
    ref = layer_conductance(m, "conv", x, method="captum")
    with pytest.warns(UserWarning, match="riemann"):
        got = layer_conductance(m, "conv", x, method="auto")
    assert _rel(got, ref) < 1e-5


@pytest.mark.parametrize("ibs", [7, 11, 13, 30])
def test_riemann_internal_batch_size(resnet, ibs):
    m, x = resnet
    big = layer_conductance(m, "layer3.1", x[:3], method="riemann", internal_batch_size=512)
    small = layer_conductance(m, "layer3.1", x[:3], method="riemann", internal_batch_size=ibs)
    torch.testing.assert_close(small, big, rtol=1e-10, atol=1e-12)


def test_riemann_internal_batch_size_one(small):
    m, x = small
    big = layer_conductance(m, "block", x, method="riemann", internal_batch_size=512)
    one = layer_conductance(m, "block", x, method="riemann", internal_batch_size=1)
    torch.testing.assert_close(one, big, rtol=1e-10, atol=1e-12)


def test_captum_internal_batch_size_small(small):
    m, x = small
    a = layer_conductance(m, "block", x, method="captum", internal_batch_size=4)
    b = layer_conductance(m, "block", x, method="captum", internal_batch_size=512)
    torch.testing.assert_close(a, b)


def test_target_default_is_prediction(small):
    m, x = small
    with torch.no_grad():
        lg = m(x)
    pred = lg.argmax(1)
    other = (pred + 1) % lg.shape[1]
    for method in ("exact", "riemann", "captum"):
        d = layer_conductance(m, "block", x, method=method)
        torch.testing.assert_close(layer_conductance(m, "block", x, target=pred, method=method), d)
        o = layer_conductance(m, "block", x, target=other, method=method)
        assert not torch.allclose(o, d)
        ref = layer_conductance(m, "block", x, target=other, method="captum")
        assert _rel(o, ref) < 1e-5
    # one int for every input
    c3 = layer_conductance(m, "block", x, target=3, method="riemann")
    torch.testing.assert_close(c3, layer_conductance(m, "block", x, target=torch.full((5,), 3)))


def test_baseline_nonzero(small):
    m, x = small
    torch.manual_seed(4)
    shared = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    per = torch.randn_like(x)
    for b in (shared, per, 0.5):
        ref = layer_conductance(m, "block", x, baseline=b, method="captum")
        for method in ("exact", "riemann"):
            assert _rel(layer_conductance(m, "block", x, baseline=b, method=method), ref) < 1e-5
    with pytest.raises(ValueError, match="baseline"):
        layer_conductance(m, "block", x, baseline=torch.zeros(3, 1, 8, 8))


def test_conductance_dataset_order_and_state(resnet):
    ref_m, x = resnet
    m = copy.deepcopy(ref_m)
    m.train()
    m.layer1[0].bn1.eval()                 # a mixed state must come back as it was
    m.conv1.weight.requires_grad_(False)
    modes = {n: mod.training for n, mod in m.named_modules()}
    flags = {n: p.requires_grad for n, p in m.named_parameters()}
    y = torch.arange(4)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=3)
    for method, layer in (("auto", "layer3.2"), ("riemann", "layer3.1"), ("captum", "layer3.2")):
        out = conductance_dataset(m, layer, loader, method=method, progress=False)
        assert out["conductance"].dtype == np.float32 and out["conductance"].shape == (4, 64)
        assert out["logits"].shape == (4, 10)
        assert out["method"] == ("exact" if method == "auto" else method)
        assert {n: mod.training for n, mod in m.named_modules()} == modes
        assert {n: p.requires_grad for n, p in m.named_parameters()} == flags
        full = layer_conductance(ref_m, layer, x, method=method).float().numpy()
        with torch.no_grad():
            lg = ref_m(x).float().numpy()
        np.testing.assert_allclose(out["conductance"], full, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out["logits"], lg, rtol=1e-5, atol=1e-5)


def test_conductance_dataset_target_fn(small):
    m, x = small
    loader = [(x[:2], torch.tensor([1, 2])), (x[2:], torch.tensor([3, 4, 5]))]
    out = conductance_dataset(m, "block", loader, target_fn=lambda logits, y: y, progress=False,
                              method="riemann")
    ref = layer_conductance(m, "block", x, target=torch.tensor([1, 2, 3, 4, 5]), method="captum")
    np.testing.assert_allclose(out["conductance"], ref.float().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kw,param", [
    ({"method": "gausslegendre"}, "method"),
    ({"reduction": "max"}, "reduction"),
    ({"n_steps": 0}, "n_steps"),
    ({"internal_batch_size": 0}, "internal_batch_size"),
    ({"layer": "layer9"}, "layer"),
])
def test_bad_arguments(small, kw, param):
    m, x = small
    calls = []
    h = m.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        args = {"layer": "block", **kw}
        with pytest.raises(ValueError, match=param) as e:
            layer_conductance(m, args.pop("layer"), x, **args)
        assert repr(list(kw.values())[0]) in str(e.value) and "valid" in str(e.value)
        with pytest.raises(ValueError, match=param):
            conductance_dataset(m, {"layer": "block", **kw}["layer"], [(x, None)], progress=False,
                                **{k: v for k, v in kw.items() if k != "layer"})
    finally:
        h.remove()
    assert not calls  # refused before any work


def test_feature_map_summary():
    cond = np.array([
        [5.0, 1.0, 0.0, 2.0],  # label 0 pred 0: correct
        [3.0, 1.0, 0.0, 4.0],  # label 0 pred 0: correct
        [1.0, 2.0, 0.0, 0.0],  # label 1 pred 0: wrong
        [9.0, 9.0, 9.0, 9.0],  # label 0 pred 1: not predicted as 0, ignored
    ])
    labels, preds = [0, 0, 1, 0], [0, 0, 0, 1]
    df = feature_map_summary(cond, labels, preds, cls=0, top_k=2)
    assert list(df.columns) == ["feature_map", "mean_correct", "mean_wrong", "n_correct", "n_wrong"]
    assert df["feature_map"].tolist() == [0, 3]
    assert df["mean_correct"].tolist() == [4.0, 3.0]
    assert df["mean_wrong"].tolist() == [1.0, 0.0]
    assert df["n_correct"].tolist() == [2, 2] and df["n_wrong"].tolist() == [1, 1]
    assert feature_map_summary(cond, labels, preds, cls=2).empty
    with pytest.raises(ValueError, match="top_k"):
        feature_map_summary(cond, labels, preds, cls=0, top_k=0)


@pytest.mark.parametrize("method", ["exact", "riemann", "captum"])
def test_target_out_of_range(small, method):
    m, x = small
    with pytest.raises(ValueError, match="target"):
        layer_conductance(m, "block", x, target=10, method=method)


def test_progress_bar_env(small, capsys, monkeypatch):
    m, x = small
    monkeypatch.setenv("TQDM_DISABLE", "1")
    conductance_dataset(m, "block", [(x, None)], progress=True)
    assert "conductance" not in capsys.readouterr().err
    monkeypatch.delenv("TQDM_DISABLE")
    conductance_dataset(m, "block", [(x, None)], progress=True)
    assert "conductance" in capsys.readouterr().err


def test_float32_close_to_captum():
    torch.manual_seed(5)
    m = build_model("resnet20", 10).eval()
    x = torch.randn(3, 3, 32, 32)
    ref = layer_conductance(m, "layer3.2", x, method="captum")
    for method in ("exact", "riemann"):
        assert _rel(layer_conductance(m, "layer3.2", x, method=method), ref) < 1e-4
    ref = layer_conductance(m, "layer3.1", x, method="captum")
    assert _rel(layer_conductance(m, "layer3.1", x, method="riemann"), ref) < 1e-4
