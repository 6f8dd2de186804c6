"""Tests of helpers.baselines (docs/methods.md section 5)."""
import numpy as np
import pytest
import torch

from helpers.baselines import BASELINES, baseline_scores


def test_keys_shapes_and_torch_input():
    z = np.random.default_rng(0).normal(size=(7, 10))
    out = baseline_scores(z)
    assert tuple(out) == BASELINES
    assert all(v.shape == (7,) and v.dtype == np.float64 for v in out.values())
    out_t = baseline_scores(torch.tensor(z, dtype=torch.float32, requires_grad=True))
    for k in BASELINES:
        assert np.allclose(out[k], out_t[k], atol=1e-5)


def test_confident_vs_uniform():
    C = 10
    conf = np.zeros((1, C))
    conf[0, 3] = 60.0  # one-hot-ish
    uni = np.zeros((1, C))
    a, b = baseline_scores(conf), baseline_scores(uni)
    for k in ("msp", "entropy", "doctor_alpha"):
        assert a[k][0] == pytest.approx(0.0, abs=1e-12)
    assert b["msp"][0] == pytest.approx(1 - 1 / C)
    assert b["entropy"][0] == pytest.approx(np.log(C))
    assert b["doctor_alpha"][0] == pytest.approx(1 - 1 / C)
    # uniform is the maximum of msp / entropy / doctor over random logits
    z = np.random.default_rng(1).normal(size=(500, C)) * 3
    r = baseline_scores(z)
    for k in ("msp", "entropy", "doctor_alpha"):
        assert (r[k] <= b[k][0] + 1e-12).all() and (r[k] >= 0).all()
    assert a["energy"][0] < b["energy"][0]
    assert a["max_logit"][0] < b["max_logit"][0]


def test_monotonic_in_margin_and_stable():
    # two-class logits [m, 0]: all scores decrease as the margin m grows
    m = np.linspace(0, 50, 30)
    z = np.stack([m, np.zeros_like(m)], axis=1)
    r = baseline_scores(z)
    for k in ("energy", "max_logit"):
        assert (np.diff(r[k]) < 0).all()
    for k in ("msp", "entropy", "doctor_alpha"):  # saturate at 0 for huge margins
        assert (np.diff(r[k]) <= 0).all() and (np.diff(r[k][:10]) < 0).all()
    # huge logits: no overflow / nan
    big = np.array([[1e4, 0.0, -1e4], [1e4, 1e4, 1e4]])
    rb = baseline_scores(big)
    assert all(np.isfinite(v).all() for v in rb.values())
    assert rb["entropy"][1] == pytest.approx(np.log(3))
    assert rb["energy"][0] == pytest.approx(-1e4)


def test_temperature_and_energy():
    z = np.random.default_rng(2).normal(size=(20, 5))
    T = 2.0
    r = baseline_scores(z, temperature=T)
    lse = np.log(np.exp(z / T).sum(axis=1))
    assert np.allclose(r["energy"], -T * lse)
    p = np.exp(z / T) / np.exp(z / T).sum(axis=1, keepdims=True)
    assert np.allclose(r["msp"], 1 - p.max(1))
    assert np.allclose(r["doctor_alpha"], 1 - (p ** 2).sum(1))
    assert np.allclose(r["entropy"], -(p * np.log(p)).sum(1))
    assert np.allclose(r["max_logit"], -z.max(1))


def test_bad_input():
    with pytest.raises(ValueError, match="temperature"):
        baseline_scores(np.zeros((2, 3)), temperature=0)
    with pytest.raises(ValueError, match="logits"):
        baseline_scores(np.zeros(3))
    with pytest.raises(ValueError, match="logits"):
        baseline_scores(np.array([[0.0, np.nan]]))
