"""Model debugging by retraining (paper 2 eq. 4-8, sec. 4.3-4.4): loss, trainable layers, fine-tuning,
selection rule, paired statistics, and the profile-level checks of paper 2's stages."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from scipy import stats

from helpers.models import build_model
from helpers.paper2.debugging import (
    DebugConfig,
    debugging_loss,
    filter_activations,
    fine_tune,
    paired_statistics,
    set_trainable,
    trainable_names,
)

pytestmark = pytest.mark.usefixtures("one_thread")

C, K = 4, 32  # small_cnn(4 classes, 1 channel): the pooled layer "block" has 2 * 16 filters


def _sig(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("small_cnn", C, 1).eval()


@pytest.fixture(scope="module")
def data():
    """40 training and 24 validation images (1 x 8 x 8, 4 classes) and random class masks (C, K)."""
    g = torch.Generator().manual_seed(0)
    x_tr, x_va = torch.randn(40, 1, 8, 8, generator=g), torch.randn(24, 1, 8, 8, generator=g)
    y_tr, y_va = torch.randint(0, C, (40,), generator=g), torch.randint(0, C, (24,), generator=g)
    masks = (torch.rand(C, K, generator=g) < 0.4).float()
    return x_tr, y_tr, x_va, y_va, masks


def _cfg(**kw) -> DebugConfig:
    return DebugConfig(**{"lr": 0.05, "momentum": 0.9, "batch_size": 16, "epochs": 2, **kw})


def _state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _val_acc(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


# --------------------------------------------------------------------------- loss and activations
def test_filter_activations_threshold_at_one_half():
    """f = sigmoid(g) for g > 0, exactly 0 for g <= 0 (sigmoid(0) = 0.5 is not > 0.5)."""
    g = torch.tensor([-3.0, -1e-6, 0.0, 1e-6, 0.5, 4.0])
    f = filter_activations(g)
    assert torch.equal(f[:3], torch.zeros(3))
    expected = torch.tensor([_sig(v) for v in (1e-6, 0.5, 4.0)])
    torch.testing.assert_close(f[3:], expected, rtol=0, atol=1e-7)
    assert (f[3:] > 0.5).all()


def test_debugging_loss_hand_computed():
    """L = CE_mean - l1 sum f M[y] + l2 sum f (1 - M[y]), f = sigmoid(g) on active filters, 0 elsewhere."""
    g = torch.tensor([[1.0, -0.5, 0.0, 2.0], [0.3, 0.7, -1.0, 0.0]])
    masks = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 1.0]])
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.5, 0.3]])  # sample 1 predicted 1, labelled 2
    y = torch.tensor([0, 2])
    l1, l2 = 0.3, 0.07
    ce = np.mean([-(2.0 - math.log(math.exp(2.0) + math.exp(0.5) + math.exp(-1.0))),
                  -(0.3 - math.log(math.exp(0.1) + math.exp(0.5) + math.exp(0.3)))])
    # sample 0 (class 0, M = 1100): active filters 0 (in M) and 3 (not in M); sample 1 (class 2, M = 1001):
    # active filters 0 (in M) and 1 (not in M)
    mc = _sig(1.0) + _sig(0.3)
    non_mc = _sig(2.0) + _sig(0.7)
    total, terms = debugging_loss(logits, y, g, masks, l1, l2)
    assert float(total) == pytest.approx(ce - l1 * mc + l2 * non_mc, rel=1e-6)
    assert float(terms["ce"]) == pytest.approx(ce, rel=1e-6)
    assert float(terms["mc"]) == pytest.approx(mc, rel=1e-6)
    assert float(terms["non_mc"]) == pytest.approx(non_mc, rel=1e-6)
    assert float(terms["total"]) == pytest.approx(ce - l1 * mc + l2 * non_mc, rel=1e-6)
    plain, t0 = debugging_loss(logits, y, g, masks, 0.0, 0.0)
    assert float(plain) == pytest.approx(ce, rel=1e-6) and float(t0["total"]) == pytest.approx(ce, rel=1e-6)


def test_debugging_loss_rewards_mc_filters_and_penalises_others():
    """d L / d g_k < 0 for an active filter in M[y] (l1 > 0); > 0 for one outside M[y] (l2 > 0, l1 = 0)."""
    g0 = torch.tensor([[1.0, 0.4, -0.5, 2.0]])
    masks = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]])
    y = torch.tensor([0])
    w = torch.tensor([[0.01, -0.02, 0.03, 0.01], [0.02, 0.01, -0.01, -0.02]])  # logits depend on g weakly
    s = torch.sigmoid(g0[0])

    g = g0.clone().requires_grad_(True)
    debugging_loss(g @ w.T, y, g, masks, l1=10.0, l2=0.0)[0].backward()
    assert g.grad[0, 0] < 0  # active, in M[0]: raising it lowers the loss
    g = g0.clone().requires_grad_(True)
    debugging_loss(torch.zeros(1, 2), y, g, masks, l1=10.0, l2=0.0)[0].backward()
    torch.testing.assert_close(g.grad[0], torch.tensor([-10.0 * s[0] * (1 - s[0]), 0.0, 0.0, 0.0]))

    g = g0.clone().requires_grad_(True)
    debugging_loss(g @ w.T, y, g, masks, l1=0.0, l2=5.0)[0].backward()
    assert g.grad[0, 1] > 0 and g.grad[0, 3] > 0  # active, outside M[0]: raising them raises the loss
    g = g0.clone().requires_grad_(True)
    debugging_loss(torch.zeros(1, 2), y, g, masks, l1=0.0, l2=5.0)[0].backward()
    torch.testing.assert_close(g.grad[0], torch.tensor([0.0, 5.0 * s[1] * (1 - s[1]), 0.0, 5.0 * s[3] * (1 - s[3])]))


# --------------------------------------------------------------------------- which layers train
def test_trainable_names_and_errors():
    """'last_conv' -> the declared last conv layer and head; module lists pass; unknown names raise."""
    model = _model()
    assert trainable_names(model, "last_conv") == ["block", "linear"]
    assert trainable_names(model, ["features", "linear"]) == ["features", "linear"]
    assert trainable_names(model, ("block.0",)) == ["block.0"]
    assert trainable_names(model, "linear") == ["linear"]
    with pytest.raises(ValueError) as e:
        trainable_names(model, ["linear", "blok"])
    msg = str(e.value)
    assert "blok" in msg and all(n in msg for n in ("features", "block", "linear", "last_conv"))
    params = set_trainable(model, trainable_names(model, "last_conv"))
    on = {n for n, p in model.named_parameters() if p.requires_grad}
    assert on == {"block.0.weight", "block.1.weight", "block.1.bias", "linear.weight", "linear.bias"}
    assert {id(p) for p in params} == {id(p) for n, p in model.named_parameters() if n in on}
    set_trainable(model, ["linear"])
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"linear.weight", "linear.bias"}


def test_fine_tune_trains_only_the_named_modules_of_a_copy(data):
    """One epoch: frozen parameters and all BN running stats bit-identical, trainable ones moved,
    the input model (in train mode here) untouched."""
    x_tr, y_tr, x_va, y_va, masks = data
    model = _model().train()
    before = _state(model)
    res = fine_tune(model, x_tr, y_tr, x_va, y_va, masks, _cfg(epochs=1), l1=1e-2, l2=1e-3, seed=0)
    assert res.best_epoch == 1 and len(res.history) == 1
    trainable = ("block.0.", "block.1.weight", "block.1.bias", "linear.")
    params = {n for n, _ in model.named_parameters()}
    for k, v in res.state_dict.items():
        if k in params and k.startswith(trainable):
            assert not torch.equal(v, before[k]), k
        else:  # frozen parameters and every buffer (running_mean / running_var / num_batches_tracked)
            assert torch.equal(v, before[k]), k
    assert any(k.startswith("features.") for k in params)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert model.training and all(p.requires_grad for p in model.parameters())


# --------------------------------------------------------------------------- cached prefix, selection, pairing
def test_cached_prefix_equals_full_forward(data):
    """cache_prefix=True (frozen prefix computed once) gives the same run as the full forward."""
    x_tr, y_tr, x_va, y_va, masks = data
    model = _model()
    cfg = _cfg(epochs=2, augmentation="none")
    a = fine_tune(model, x_tr, y_tr, x_va, y_va, masks, cfg, 1e-2, 1e-3, seed=3, cache_prefix=True)
    b = fine_tune(model, x_tr, y_tr, x_va, y_va, masks, cfg, 1e-2, 1e-3, seed=3, cache_prefix=False)
    assert a.cached_prefix and not b.cached_prefix
    assert a.state_dict.keys() == b.state_dict.keys()
    for k in a.state_dict:
        torch.testing.assert_close(a.state_dict[k].float(), b.state_dict[k].float(), rtol=0, atol=1e-5)
    assert a.history.val_acc.tolist() == b.history.val_acc.tolist() and a.best_epoch == b.best_epoch
    for col in ("ce", "mc", "non_mc", "train_acc_running"):
        np.testing.assert_allclose(a.history[col], b.history[col], rtol=1e-5, atol=1e-6)
    assert not torch.equal(a.state_dict["linear.weight"], model.state_dict()["linear.weight"])
    auto = fine_tune(model, x_tr, y_tr, x_va, y_va, masks, _cfg(epochs=1), 1e-2, 1e-3, seed=3)
    assert auto.cached_prefix  # augmentation off, last conv + head: cached by default
    with pytest.raises(ValueError, match="cache_prefix"):
        fine_tune(model, x_tr, y_tr, x_va, y_va, masks, _cfg(epochs=1, augmentation="crop_flip"), 1e-2, 1e-3,
                  cache_prefix=True)
    with pytest.raises(ValueError, match="cache_prefix"):
        fine_tune(model, x_tr, y_tr, x_va, y_va, masks, _cfg(epochs=1, trainable="all"), 1e-2, 1e-3,
                  cache_prefix=True)


def test_best_validation_epoch_is_kept_earliest_on_tie(data):
    """Non-monotone validation accuracy (1, 0, 1, 0 by construction): the state of epoch 2 — the earliest
    maximum, not the last epoch — is returned and reproduces its validation accuracy."""
    x_tr, y_tr, x_va, _, masks = data
    y_va = torch.full((len(x_va),), 2)
    # the head's bias decides every prediction; per epoch (3 steps of 16 over 40 images) it points at
    # a class: epoch 1 -> 0 (val acc 0), 2 -> 2 (1), 3 -> 1 (0), 4 -> 2 (1 again), 5 -> 3 (0)
    target = {1: 0, 2: 2, 3: 1, 4: 2, 5: 3}
    steps = []

    def on_step(m):
        steps.append(1)
        epoch = (len(steps) - 1) // 3 + 1
        with torch.no_grad():
            m.linear.bias.zero_()
            m.linear.bias[target[epoch]] = 1e4

    model = _model()
    res = fine_tune(model, x_tr, y_tr, x_va, y_va, masks, _cfg(epochs=5, lr=1e-3), 1e-3, 2e-5, seed=0,
                    on_step=on_step)
    assert len(steps) == 15
    assert res.history.val_acc.tolist() == [0.0, 1.0, 0.0, 1.0, 0.0]
    assert res.best_epoch == 2
    m = copy.deepcopy(model)
    m.load_state_dict(res.state_dict)
    assert _val_acc(m.eval(), x_va, y_va) == 1.0
    assert int(res.state_dict["linear.bias"].argmax()) == 2


def test_selection_rule_on_a_plain_run(data):
    """A plain run: best_epoch = the first epoch of maximal val_acc, and the returned state has that accuracy."""
    x_tr, y_tr, x_va, y_va, masks = data
    model = _model(1)
    res = fine_tune(model, x_tr, y_tr, x_va, y_va, masks, _cfg(epochs=6, lr=0.2), 1e-2, 1e-3, seed=1,
                    cache_prefix=False)
    va = res.history.val_acc.to_numpy()
    assert res.history.epoch.tolist() == list(range(1, 7))
    assert res.best_epoch == int(np.flatnonzero(va == va.max())[0]) + 1
    m = copy.deepcopy(model)
    m.load_state_dict(res.state_dict)
    assert _val_acc(m.eval(), x_va, y_va) == pytest.approx(va.max())


def test_control_runs_are_paired_by_seed(data):
    """l1 = l2 = 0 with one seed twice: bit-identical; another seed: a different run."""
    x_tr, y_tr, x_va, y_va, masks = data
    model = _model()
    cfg = _cfg(epochs=2)
    r1 = fine_tune(model, x_tr, y_tr, x_va, y_va, masks, cfg, 0.0, 0.0, seed=5)
    r2 = fine_tune(model, x_tr, y_tr, x_va, y_va, masks, cfg, 0.0, 0.0, seed=5)
    r3 = fine_tune(model, x_tr, y_tr, x_va, y_va, masks, cfg, 0.0, 0.0, seed=6)
    assert all(torch.equal(r1.state_dict[k], r2.state_dict[k]) for k in r1.state_dict)
    assert r1.history.equals(r2.history)
    assert not torch.equal(r1.state_dict["linear.weight"], r3.state_dict["linear.weight"])
    np.testing.assert_allclose(r1.history.total, r1.history.ce, rtol=1e-6)  # control: CE only


# --------------------------------------------------------------------------- is the gain real?
def test_paired_statistics_no_difference():
    """a = b: mean 0, interval [0, 0], p = 1 with several seeds (NaN with one)."""
    rng = np.random.default_rng(0)
    a = rng.random((3, 50)) < 0.7
    s = paired_statistics(a, a.copy(), n_bootstrap=200)
    assert s["mean"] == 0.0 and s["ci_low"] == 0.0 and s["ci_high"] == 0.0
    assert s["p_value"] == 1.0 and s["per_seed"] == [0.0, 0.0, 0.0] and s["n_seeds"] == 3
    assert math.isnan(paired_statistics(a[:1], a[:1], n_bootstrap=50)["p_value"])


def test_paired_statistics_detects_a_consistent_gain():
    """a fixes a fixed set of images in every seed (plus a per-seed extra): mean > 0, CI above 0, small p."""
    rng = np.random.default_rng(1)
    n_seeds, n = 4, 60
    b = rng.random((n_seeds, n)) < 0.6
    b[:, :20] = False
    a = b.copy()
    a[:, :10] = True                      # the same 10 images fixed for every seed
    for s in range(n_seeds):
        a[s, 10:10 + s] = True            # and s more: gains 10/60 .. 13/60
    res = paired_statistics(a, b, n_bootstrap=500, seed=0)
    gains = np.array([10, 11, 12, 13]) / n
    np.testing.assert_allclose(res["per_seed"], gains)
    assert res["mean"] == pytest.approx(gains.mean())
    assert 0 < res["ci_low"] <= res["mean"] <= res["ci_high"]
    assert res["p_value"] == pytest.approx(stats.ttest_1samp(gains, 0.0).pvalue) and res["p_value"] < 0.01
    flipped = paired_statistics(b, a, n_bootstrap=500, seed=0)
    assert flipped["mean"] == pytest.approx(-gains.mean()) and flipped["ci_high"] < 0


def test_paired_statistics_rejects_mismatched_shapes():
    """Arrays of different shape, or not (seeds, images), raise ValueError."""
    with pytest.raises(ValueError, match="paired_statistics"):
        paired_statistics(np.ones((3, 10)), np.ones((3, 11)))
    with pytest.raises(ValueError, match="paired_statistics"):
        paired_statistics(np.ones(10), np.ones(10))


# --------------------------------------------------------------------------- paper 2's stages (profile level)
@pytest.fixture
def experiment(tmp_path, monkeypatch):
    """Experiment("digits", overrides) with its caches under tmp_path; restores the thread count."""
    from helpers.experiment import Experiment

    monkeypatch.setenv("COMPANION_ARTIFACTS", str(tmp_path / "artifacts"))
    n = torch.get_num_threads()
    yield lambda overrides=None: Experiment("digits", overrides, output_dir=tmp_path / "x")
    torch.set_num_threads(n)


@pytest.mark.parametrize("grid", [
    [[0, 0], [0.1]],
    [[0, 0], [-1e-3, 2e-5]],
    [[0, 0], ["a", 0]],
    [[0, 0], [True, 0]],
    [[0, 0], [float("nan"), 0]],
    [[0, 0], [float("inf"), 0]],
    [[0, 0], 0.1],
    [[0, 0]],
    [[0.0, 0], [0, 0.0]],
])
def test_debug_grid_rejects_bad_cells(experiment, grid):
    """A malformed or negative cell, or a grid with no cell other than (0, 0), raises naming debugging.grid."""
    from helpers.paper2.stages import debug_grid

    with pytest.raises(ValueError, match=r"debugging\.grid"):
        debug_grid(experiment({"debugging.grid": grid}))


def test_debug_grid_and_config_from_profile(experiment):
    """A valid grid comes back as float pairs; the profile's debugging block becomes a DebugConfig."""
    from helpers.paper2.stages import debug_config, debug_grid

    exp = experiment({"debugging.grid": [[0, 0], [1e-3, 2e-5], [0, 1]], "debugging.trainable": ["block", "linear"],
                      "debugging.epochs": 3})
    cells = debug_grid(exp)
    assert cells == [(0.0, 0.0), (1e-3, 2e-5), (0.0, 1.0)] and all(type(v) is float for c in cells for v in c)
    cfg = debug_config(exp)
    assert cfg.trainable == ("block", "linear") and cfg.epochs == 3
    assert cfg.augmentation == exp.cfg["training"]["augmentation"] == "none"  # debugging.augmentation null


def test_class_recall_table(experiment):
    """Per-class recall averaged over seeds, n per class, and debugged - control, on the digits test split."""
    from helpers.paper2.stages import class_recall_table

    exp = experiment()
    y = np.asarray(exp.data["test"].labels)
    n_cls = len(exp.data.classes)
    perfect = np.eye(n_cls, dtype=np.float32)[y] * 5
    broken = perfect.copy()
    broken[y == 3] = np.eye(n_cls, dtype=np.float32)[5] * 5  # every 3 predicted as 5 in one seed
    t = class_recall_table(exp, {"debugged": [perfect, broken], "control": [perfect, perfect]})
    assert t["n"].tolist() == np.bincount(y, minlength=n_cls).tolist()
    expected = np.ones(n_cls)
    expected[3] = 0.5
    np.testing.assert_allclose(t["recall debugged"], expected)
    np.testing.assert_allclose(t["recall control"], 1.0)
    np.testing.assert_allclose(t["debugged - control"], expected - 1.0)
    assert "debugged - control" not in class_recall_table(exp, {"control": [perfect]}).columns


def test_msp_auroc():
    """MSP AUROC: confident correct / flat wrong predictions -> 1; the reverse -> 0; all equal -> 0.5."""
    from helpers.paper2.stages import msp_auroc

    confident, flat = [8.0, 0.0, 0.0], [0.2, 0.1, 0.0]
    logits = np.array([confident, confident, flat, flat, confident, flat])
    wrong = np.array([0, 0, 1, 1, 0, 1])
    assert msp_auroc(wrong, logits) == 1.0
    assert msp_auroc(1 - wrong, logits) == 0.0
    assert msp_auroc(wrong, np.zeros((6, 3))) == 0.5
