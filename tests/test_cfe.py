"""CFE filters (paper 2, section 3 and 4.2; docs/methods.md section 6): generators, global MC filters,
agreement, Table 1's detection rules, the out-of-fold scores and the disabling check."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from helpers.models import build_model, pooled_features, pooled_head
from helpers.paper2.cfe import (
    CFEGenerators,
    GeneratorConfig,
    GlobalFilters,
    accumulate_global_filters,
    agreement,
    class_means,
    detection_counts,
    disable_filters_check,
    errors_at_same_new_errors,
    flag_predictions,
    generator_loss,
    global_filters,
    mc_filters,
    out_of_fold_agreement,
    thresholded_relu,
    train_generators,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _separable(n=160, c=4, per=4, seed=1):
    """g >= 0 (as after a ReLU): class y has its own ``per`` filters large, the rest small; a head whose
    class-c logit reads only class c's filters."""
    gen = torch.Generator().manual_seed(seed)
    k = c * per
    y = torch.arange(n) % c
    g = torch.rand(n, k, generator=gen) * 0.5
    head = nn.Linear(k, c)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        for j in range(c):
            g[y == j, per * j:per * (j + 1)] += 3.0
            head.weight[j, per * j:per * (j + 1)] = 1.0
    return g, y, head


# --------------------------------------------------------------------------- thresholded ReLU
def test_thresholded_relu_values_and_gradient():
    """x <= 0.5 -> exactly 0, x > 0.5 -> x unchanged; d/dx is 1 above the threshold and 0 at or below."""
    x = torch.tensor([-1.0, 0.0, 0.25, 0.4999, 0.5, 0.5001, 0.75, 1.0, 3.0], requires_grad=True)
    y = thresholded_relu(x)
    assert y.tolist() == pytest.approx([0.0, 0.0, 0.0, 0.0, 0.0, 0.5001, 0.75, 1.0, 3.0], abs=0, rel=1e-7)
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    # theta is honoured and the dtype kept
    z = thresholded_relu(torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64), theta=0.2)
    assert z.dtype == torch.float64 and z.tolist() == [0.0, 0.0, 0.3]


def test_generator_masks_and_mc_filters():
    """Masks are 0 or in (0.5, 1); ``masks_for`` gives row i the mask of generator targets[i]; MC = m > 0 and g > 0."""
    torch.manual_seed(0)
    gens = CFEGenerators(6, [0, 2, 5], seed=1)
    assert torch.equal(gens.bias, torch.zeros(3, 6))  # Keras: zero bias
    with torch.no_grad():
        gens.bias.uniform_(-1.0, 1.0)  # as after training
    g = torch.randn(9, 6)
    m = gens(g)
    assert m.shape == (3, 9, 6)
    nz = m[m > 0]
    assert ((m == 0) | ((m > 0.5) & (m < 1))).all() and len(nz) > 0 and (m == 0).any()
    targets = np.array([5, 0, 2, 2, 5, 0, 0, 2, 5])
    mt = gens.masks_for(g, targets, chunk=2)  # chunks smaller than a class's rows
    for i, c in enumerate(targets):
        torch.testing.assert_close(mt[i], m[gens.index_of(c), i], atol=1e-6, rtol=0)
    mc = mc_filters(mt, g)
    assert mc.dtype == bool and mc.shape == (9, 6)
    assert not mc[(g.numpy() <= 0)].any() and not mc[mt.numpy() == 0].any()
    # by hand: a filter is an MC filter only when its mask is on AND its feature is positive
    hand = mc_filters(torch.tensor([[0.6, 0.0, 0.7, 0.9, 0.55, 0.0]]), torch.tensor([[1.0, 2.0, 0.0, -1.0, 1e-6, 0.0]]))
    assert hand.tolist() == [[True, False, False, False, True, False]]
    assert mc_filters(np.array([[0.0, 0.8]]), np.array([[3.0, 0.5]])).tolist() == [[False, True]]  # numpy in


# --------------------------------------------------------------------------- training
def test_batched_generators_equal_one_class_alone_and_seeded():
    """Training all classes at once gives class 2's generator exactly as training class 2 alone; the same
    seed reproduces the weights bit for bit, another seed does not."""
    torch.manual_seed(0)
    g = torch.randn(70, 8)
    head = nn.Linear(8, 4)
    cfg = GeneratorConfig(epochs=2, batch_size=16, lr=0.05)
    both, hist = train_generators(g, 70, head, range(4), cfg, seed=3)
    alone, _ = train_generators(g, 70, head, [2], cfg, seed=3)
    i = both.index_of(2)
    assert both.classes == [0, 1, 2, 3] and alone.classes == [2]
    torch.testing.assert_close(both.weight[i], alone.weight[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(both.bias[i], alone.bias[0], atol=1e-5, rtol=0)
    # the generators did train (else the agreement above would be trivial)
    init = CFEGenerators(8, [2], seed=3)
    assert (alone.weight[0] - init.weight[0]).abs().max() > 1e-2
    assert list(hist["epoch"]) == [1, 2]
    again, _ = train_generators(g, 70, head, range(4), cfg, seed=3)
    assert torch.equal(again.weight, both.weight) and torch.equal(again.bias, both.bias)
    other, _ = train_generators(g, 70, head, range(4), cfg, seed=4)
    assert not torch.allclose(other.weight, both.weight, atol=1e-3)


def _reference_training(g, head, classes, cfg, seed, batches):
    """Autograd on ``generator_loss`` + torch.optim.SGD over the given batches (the order the code used)."""
    gens = CFEGenerators(g.shape[1], classes, seed)
    head = head.requires_grad_(False)
    opt = torch.optim.SGD(gens.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    stats = []
    for idx in batches:
        loss, st = generator_loss(gens(g[idx]), g[idx], head, gens.classes, cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        stats.append(st)
    return gens, stats


def test_training_equals_autograd_sgd_on_generator_loss():
    """The trained generators and the per-epoch history equal plain autograd + torch SGD (momentum) on
    ``generator_loss`` over the same batches, whatever the generator grouping."""
    gen = torch.Generator().manual_seed(5)
    g = torch.relu(torch.randn(37, 8, generator=gen)) * 2
    head = nn.Linear(8, 4)
    cfg = GeneratorConfig(epochs=2, batch_size=8, lr=0.05)
    seen = []
    gens, hist = train_generators(lambda idx: seen.append(idx.clone()) or g[idx], 37, head, range(4), cfg, seed=2)
    assert len(seen) == 2 * 5  # one group: each batch fetched once
    ref, stats = _reference_training(g, head, range(4), cfg, 2, seen)
    assert (ref.weight - CFEGenerators(8, range(4), 2).weight).abs().max() > 1e-2  # it did train
    torch.testing.assert_close(gens.weight, ref.weight, atol=1e-5, rtol=0)
    torch.testing.assert_close(gens.bias, ref.bias, atol=1e-5, rtol=0)
    for col in ("ce", "sparsity", "logits", "active", "hits"):
        want = [np.mean([st[col] for st in stats[5 * e:5 * (e + 1)]]) for e in range(2)]
        np.testing.assert_allclose(hist[col], want, atol=1e-5, err_msg=col)
    for group_size in (1, 3):
        other, h = train_generators(g, 37, head, range(4), cfg, seed=2, group_size=group_size)
        torch.testing.assert_close(other.weight, gens.weight, atol=1e-5, rtol=0)
        torch.testing.assert_close(other.bias, gens.bias, atol=1e-5, rtol=0)
        np.testing.assert_allclose(h["total"], hist["total"], atol=1e-6)


def test_every_sample_once_per_epoch_in_seeded_order():
    """Each epoch visits every sample exactly once in batches of batch_size; the order changes between
    epochs, repeats with the seed and changes with it."""
    g = torch.randn(37, 5, generator=torch.Generator().manual_seed(0))
    head = nn.Linear(5, 3)
    cfg = GeneratorConfig(epochs=3, batch_size=8)

    def orders(seed):
        seen = []
        train_generators(lambda idx: seen.append(idx.clone()) or g[idx], 37, head, [1], cfg, seed=seed)
        assert [len(b) for b in seen] == [8, 8, 8, 8, 5] * 3
        return [torch.cat(seen[5 * e:5 * (e + 1)]) for e in range(3)]

    first = orders(7)
    for o in first:
        assert sorted(o.tolist()) == list(range(37))
    assert not torch.equal(first[0], first[1])
    assert all(torch.equal(a, b) for a, b in zip(first, orders(7)))
    assert not torch.equal(first[0], orders(8)[0])


def test_cached_features_equal_frozen_model_pass():
    """g from ``pooled_features`` through the head gives the model's logits; generators trained on cached
    g equal those trained through the frozen model per batch, and the model is left unchanged."""
    torch.manual_seed(0)
    model = build_model("small_cnn", 4, 1).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.randn(40, 1, 8, 8)
    layer, head = pooled_head(model)
    assert layer == "block" and head is model.linear
    g, logits = pooled_features(model, images)
    assert g.shape == (40, head.in_features) and logits.shape == (40, 4)
    torch.testing.assert_close(head(g), logits, atol=1e-5, rtol=0)
    assert (g >= 0).all()  # the pooled layer ends with a ReLU
    cfg = GeneratorConfig(epochs=2, batch_size=16, lr=0.05)
    cached, h1 = train_generators(g, 40, head, range(4), cfg, seed=0)
    naive, h2 = train_generators(lambda idx: pooled_features(model, images[idx])[0], 40, head, range(4), cfg,
                                 seed=0)
    torch.testing.assert_close(cached.weight, naive.weight, atol=1e-5, rtol=0)
    torch.testing.assert_close(cached.bias, naive.bias, atol=1e-5, rtol=0)
    np.testing.assert_allclose(h1["total"], h2["total"], atol=1e-5)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_pooled_head_refuses_a_model_without_gap_linear_head():
    """No global-average-pool + linear head: a ValueError naming the model; a non-Linear head is refused too."""
    model = build_model("small_cnn", 3, 1)
    model.gap_linear_head = None
    with pytest.raises(ValueError, match="'small_cnn' has no global-average-pool"):
        pooled_head(model)
    with pytest.raises(ValueError, match="'small_cnn'"):
        pooled_features(model, torch.zeros(1, 1, 8, 8))
    model.gap_linear_head = ("block", "block")
    with pytest.raises(ValueError, match="not the final nn.Linear"):
        pooled_head(model)


def test_generator_loss_terms_by_hand():
    """Loss = CE_mean + lam * s * sum|m| - s * sum z_c per generator, summed over generators; raising the
    target logit lowers it (and the logits term by exactly s * B per unit)."""
    head = nn.Linear(3, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]]))
        head.bias.copy_(torch.tensor([0.5, -0.5]))
    g = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.0, 1.0]])
    masks = torch.tensor([[[0.6, 0.0, 0.9], [0.0, 0.7, 0.8]],     # generator of class 0
                          [[0.0, 0.75, 0.0], [1.0, 0.0, 0.55]]])  # generator of class 1
    cfg = GeneratorConfig(sparsity=3.0, loss_scale=0.01)
    # float32 arithmetic against float64 hand values: rel 1e-5
    total, stats = generator_loss(masks[:1], g, head, [0], cfg)
    # generator 0: g * m = [0.6, 0, 2.7] -> z = (0.6 + 5.4 + 0.5, -2.7 - 0.5) = (6.5, -3.2);
    #              g * m = [0, 0, 0.8]   -> z = (1.6 + 0.5, -0.8 - 0.5)       = (2.1, -1.3)
    ce = (math.log1p(math.exp(-3.2 - 6.5)) + math.log1p(math.exp(-1.3 - 2.1))) / 2
    sparsity, logits = 3.0 * 0.01 * (0.6 + 0.9 + 0.7 + 0.8), -0.01 * (6.5 + 2.1)
    assert stats["sparsity"] == pytest.approx(sparsity, rel=1e-5)
    assert stats["logits"] == pytest.approx(logits, rel=1e-5)
    assert stats["ce"] == pytest.approx(ce, rel=1e-5)
    assert total.item() == pytest.approx(ce + sparsity + logits, rel=1e-5)
    assert stats["active"] == pytest.approx(2.0) and stats["hits"] == pytest.approx(1.0)  # both rows -> class 0
    # generator 1 (target 1): g * m = [0, 1.5, 0] -> z = (0.5, 1.0); g * m = [0.5, 0, 0.55] -> z = (2.1, -1.05);
    # two generators together: the sum of each alone
    ce1 = (math.log1p(math.exp(0.5 - 1.0)) + math.log1p(math.exp(2.1 + 1.05))) / 2
    t1_hand = ce1 + 3.0 * 0.01 * (0.75 + 1.0 + 0.55) - 0.01 * (1.0 - 1.05)
    t1, _ = generator_loss(masks[1:], g, head, [1], cfg)
    assert t1.item() == pytest.approx(t1_hand, rel=1e-5)
    t2, _ = generator_loss(masks, g, head, [0, 1], cfg)
    assert t2.item() == pytest.approx(ce + sparsity + logits + t1_hand, rel=1e-5)
    # raise the target (class 0) logit by 1 on every row: loss falls, the logits term by s * B
    with torch.no_grad():
        head.bias[0] += 1.0
    higher, st = generator_loss(masks[:1], g, head, [0], cfg)
    assert higher.item() < total.item() and st["ce"] < stats["ce"]
    assert st["logits"] - stats["logits"] == pytest.approx(-0.01 * 2)
    assert st["sparsity"] == pytest.approx(stats["sparsity"])


def test_training_makes_masks_sparser():
    """Default settings (but epochs) on separable g: the mean active filters fall from the first epoch and
    the masked model hits the target class more; a larger sparsity weight leaves fewer active filters."""
    g, _, head = _separable()
    init = (CFEGenerators(16, range(4), seed=0)(g) > 0).sum(2).float().mean().item()
    _, hist = train_generators(g, len(g), head, range(4), GeneratorConfig(epochs=4), seed=0)
    assert list(hist.columns[:1]) == ["epoch"] and {"ce", "sparsity", "logits", "active", "hits", "total"} <= set(hist)
    active = hist["active"].to_numpy()
    assert active[-1] < active[0] - 1.0 and active[-1] < init - 1.0
    assert hist["hits"].iloc[-1] > hist["hits"].iloc[0]
    assert hist["ce"].iloc[-1] < hist["ce"].iloc[0]
    _, none = train_generators(g, len(g), head, range(4), GeneratorConfig(epochs=4, sparsity=0.0), seed=0)
    _, strong = train_generators(g, len(g), head, range(4), GeneratorConfig(epochs=4, sparsity=20.0), seed=0)
    assert strong["active"].iloc[-1] < none["active"].iloc[-1] - 0.3


# --------------------------------------------------------------------------- global MC filters
def _hand_global():
    v = 0.7
    masks = np.array([[v, v, 0, 0],     # 0: class 0, qualifies
                      [v, 0, v, 0],     # 1: class 0, qualifies
                      [0, 0, 0, v],     # 2: class 0 predicted 1 (wrong), confident: excluded
                      [0, 0, 0, v],     # 3: class 0, correct but p = 0.89 < tau: excluded
                      [0, 0, 0, v],     # 4: class 0, correct, p = tau, masked model says 1: excluded
                      [0, v, v, v]])    # 5: class 1, correct, p = tau exactly, masked 1: qualifies
    g = np.array([[1.0, 2.0, 3.0, 4.0]] * 6) * np.arange(1, 7)[:, None]
    labels = np.array([0, 0, 0, 0, 0, 1])
    predictions = np.array([0, 0, 1, 0, 0, 1])
    confidence = np.array([0.95, 0.99, 0.99, 0.89, 0.9, 0.9])
    masked = np.array([0, 0, 1, 0, 1, 1])
    return masks, g, labels, predictions, confidence, masked


def test_accumulate_global_filters_counts_only_qualifying_images():
    """Only correct, p >= tau, still-c-under-the-mask images count, per class; magnitudes sum g * m."""
    masks, g, labels, predictions, confidence, masked = _hand_global()
    gf = accumulate_global_filters(masks, g, labels, predictions, confidence, masked, n_classes=3, tau=0.9)
    assert isinstance(gf, GlobalFilters)
    assert gf.counts.tolist() == [[2, 1, 1, 0], [0, 1, 1, 1], [0, 0, 0, 0]]
    assert gf.n_images.tolist() == [2, 1, 0]
    assert gf.contributed.tolist() == [True, True, False, False, False, True]
    # class 0: rows 0 ([1, 2, 3, 4] x [.7, .7, 0, 0]) and 1 ([2, 4, 6, 8] x [.7, 0, .7, 0]); class 1: row 5
    # ([6, 12, 18, 24] x [0, .7, .7, .7])
    np.testing.assert_allclose(gf.magnitudes, [[0.7 + 1.4, 1.4, 4.2, 0.0], [0.0, 8.4, 12.6, 16.8], [0.0] * 4])
    # a lower tau lets image 3 in
    gf2 = accumulate_global_filters(masks, g, labels, predictions, confidence, masked, n_classes=3, tau=0.85)
    assert gf2.counts[0].tolist() == [2, 1, 1, 1] and gf2.n_images.tolist() == [3, 1, 0]


def test_global_filters_strict_threshold_and_empty_class():
    """G_c = {k : count > f * max}: a count equal to f * max is out; an empty class has an empty row;
    f outside [0, 1] raises."""
    masks, g, labels, predictions, confidence, masked = _hand_global()
    gf = accumulate_global_filters(masks, g, labels, predictions, confidence, masked, n_classes=3, tau=0.9)
    half = gf.filters(0.5)
    assert half.dtype == bool and half.shape == (3, 4)
    assert half.tolist() == [[True, False, False, False],   # counts 1 == 0.5 * 2: excluded (strict)
                             [False, True, True, True],
                             [False, False, False, False]]
    assert gf.filters(0.49)[0].tolist() == [True, True, True, False]
    assert gf.filters(0.0).tolist() == [[True, True, True, False], [False, True, True, True], [False] * 4]
    assert not gf.filters(1.0).any()
    assert global_filters(np.array([[2, 1, 1, 0], [0, 1, 1, 1], [0, 0, 0, 0]]), 0.5).tolist() == [
        [True, False, False, False], [False, True, True, True], [False] * 4]
    assert np.array_equal(global_filters(np.array([[4, 1, 2, 3]]), 0.5), np.array([[True, False, False, True]]))
    for f in (-0.01, 1.01, float("nan")):
        with pytest.raises(ValueError, match="frequency"):
            global_filters(gf.counts, f)


# --------------------------------------------------------------------------- agreement
def test_agreement_by_hand_with_empty_sets():
    """recall = |MC & G| / |G|, precision = |MC & G| / |MC|, F1; an empty denominator gives 0, and F1 is 0
    (not NaN) where precision + recall = 0."""
    mc = np.array([[1, 1, 0, 0],
                   [1, 1, 1, 0],
                   [1, 0, 0, 0],    # empty G
                   [0, 0, 0, 0],    # empty MC
                   [1, 0, 0, 0],    # disjoint: precision + recall = 0
                   [0, 1, 1, 0],    # identical
                   [0, 0, 0, 0]], bool)  # both empty
    gc = np.array([[1, 0, 1, 0],
                   [1, 0, 0, 0],
                   [0, 0, 0, 0],
                   [1, 1, 0, 0],
                   [0, 1, 0, 0],
                   [0, 1, 1, 0],
                   [0, 0, 0, 0]], bool)
    with np.errstate(all="raise"):
        s = agreement(mc, gc)
    np.testing.assert_allclose(s["recall"], [0.5, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    np.testing.assert_allclose(s["precision"], [0.5, 1 / 3, 0.0, 0.0, 0.0, 1.0, 0.0])
    np.testing.assert_allclose(s["f1"], [0.5, 0.5, 0.0, 0.0, 0.0, 1.0, 0.0])
    assert not any(np.isnan(v).any() for v in s.values())


# --------------------------------------------------------------------------- Table 1
def test_flag_predictions_and_detection_counts():
    """skip > 0 skips predictions with p > skip (p == skip is kept), skip 0 skips none; the class-mean rule
    indexes the means by PREDICTED class; the fixed rule is score < threshold; exactly one rule."""
    score = np.array([0.1, 0.9, 0.2, 0.5, 0.05, 0.6, 0.0, 0.3])
    pred = np.array([0, 0, 1, 1, 2, 2, 0, 2])
    conf = np.array([0.95, 0.5, 0.5, 0.95, 0.3, 0.2, 0.9, 0.4])
    means = np.array([0.5, 0.3, 0.7])
    f = flag_predictions(score, pred, conf, skip=0.9, class_means=means)
    assert f.tolist() == [False, False, True, False, True, True, True, True]
    f0 = flag_predictions(score, pred, conf, skip=0.0, class_means=means)
    assert f0.tolist() == [True, False, True, False, True, True, True, True]
    ft = flag_predictions(score, pred, conf, skip=0.0, fixed_threshold=0.3)
    assert ft.tolist() == [True, False, True, False, True, False, True, False]  # 0.3 is not < 0.3
    ft9 = flag_predictions(score, pred, conf, skip=0.9, fixed_threshold=0.3)
    assert ft9.tolist() == [False, False, True, False, True, False, True, False]
    # a class with no training score (NaN mean) flags nothing
    fn = flag_predictions(score, pred, conf, skip=0.0, class_means=np.array([0.5, np.nan, 0.7]))
    assert fn.tolist() == [True, False, False, False, True, True, True, True]
    with pytest.raises(ValueError, match="exactly one"):
        flag_predictions(score, pred, conf, skip=0.9)
    with pytest.raises(ValueError, match="exactly one"):
        flag_predictions(score, pred, conf, skip=0.9, class_means=means, fixed_threshold=0.3)
    correct = np.array([True, True, False, True, False, True, False, True])
    d = detection_counts(f, correct)
    assert d == {"errors": 3, "errors_detected": 3, "errors_detected_fraction": 1.0, "new_errors": 2}
    d = detection_counts(ft9, correct)
    assert d["errors_detected"] == 3 and d["new_errors"] == 0
    d = detection_counts(np.zeros(3, bool), np.ones(3, bool))
    assert d["errors"] == 0 and d["errors_detected"] == 0 and np.isnan(d["errors_detected_fraction"])


def _errors_reference(s, correct, n):
    """Most errors a strict threshold t (score > t flagged) catches while flagging at most n correct."""
    best = 0
    for t in np.concatenate([[-np.inf], np.unique(s)]):
        if (s[correct] > t).sum() <= n:
            best = max(best, int((s[~correct] > t).sum()))
    return best


def test_errors_at_same_new_errors_by_hand_and_brute_force():
    """The threshold allows at most ``new_errors`` correct predictions above it (ties at it not flagged)."""
    s = np.array([0.9, 0.7, 0.7, 0.3, 0.1, 0.95, 0.8, 0.7, 0.5, 0.2])
    correct = np.array([True] * 5 + [False] * 5)
    got = [errors_at_same_new_errors(s, correct, n) for n in range(7)]
    assert got == [1, 2, 2, 4, 5, 5, 5]
    assert errors_at_same_new_errors(s, correct, -1) == 1
    assert errors_at_same_new_errors(s[:4], np.ones(4, bool), 0) == 0  # no error at all
    assert errors_at_same_new_errors(s[5:], np.zeros(5, bool), 0) == 5  # no correct prediction
    rng = np.random.default_rng(0)
    for _ in range(30):
        n = int(rng.integers(5, 25))
        sc = np.round(rng.random(n), 1)  # many ties
        cor = rng.random(n) < 0.6
        for k in range(0, n + 2):
            assert errors_at_same_new_errors(sc, cor, k) == _errors_reference(sc, cor, k)


def test_class_means_with_an_empty_class():
    """Mean score per class; a class with no sample is NaN."""
    m = class_means(np.array([0.2, 0.4, 1.0, 0.5]), np.array([0, 0, 2, 3]), 5)
    np.testing.assert_allclose(m[[0, 2, 3]], [0.3, 1.0, 0.5])
    assert np.isnan(m[1]) and np.isnan(m[4]) and m.shape == (5,)


# --------------------------------------------------------------------------- out-of-fold scores
def test_out_of_fold_agreement_excludes_own_mask():
    """Every row gets a fold in range(folds); an image that alone builds its class's filters scores recall 0
    out of fold (its class set is empty without it) but 1 in sample; the others are scored against the
    filters of the folds they are not in."""
    k, v = 6, 0.8
    n0 = 12
    masks = np.zeros((n0 + 3, k))
    masks[:n0, [0, 1]] = v                  # class 0: many qualifying images on filters {0, 1}
    masks[n0:, [3, 4]] = v                  # class 1: image n0 qualifies, n0+1 and n0+2 do not
    g = np.full((n0 + 3, k), 2.0)
    labels = np.array([0] * n0 + [1, 1, 0])
    predictions = np.array([0] * n0 + [1, 1, 1])
    confidence = np.array([0.99] * n0 + [0.99, 0.5, 0.99])
    masked = predictions.copy()
    lone, weak, wrong = n0, n0 + 1, n0 + 2
    out, fold = out_of_fold_agreement(masks, g, labels, predictions, confidence, masked, n_classes=2, tau=0.9,
                                      frequency=0.15, folds=5, seed=0)
    assert fold.shape == (n0 + 3,) and set(fold.tolist()) == set(range(5))
    assert set(out) == {"recall", "precision", "f1"}
    assert out["recall"][lone] == 0.0 and out["f1"][lone] == 0.0
    gf = accumulate_global_filters(masks, g, labels, predictions, confidence, masked, 2, 0.9)
    ins = agreement(mc_filters(masks, g), gf.filters(0.15)[predictions])
    assert ins["recall"][lone] == 1.0
    # images scored against class 1 (their prediction) see the lone image's filters only from another fold
    for i in (weak, wrong):
        assert out["recall"][i] == float(fold[i] != fold[lone])
    np.testing.assert_allclose(out["recall"][:n0], 1.0)
    _, fold2 = out_of_fold_agreement(masks, g, labels, predictions, confidence, masked, 2, 0.9, 0.15, 5, 0)
    assert np.array_equal(fold, fold2)
    _, fold3 = out_of_fold_agreement(masks, g, labels, predictions, confidence, masked, 2, 0.9, 0.15, 3, 1)
    assert set(fold3.tolist()) == {0, 1, 2}


# --------------------------------------------------------------------------- disabling check
def test_disable_filters_check_drops_own_recall():
    """Zeroing class 0's filters {0, 1} (the only ones its logit reads) sends its recall to 0 and leaves the
    other classes alone; zeroing 2 random filters hurts class 0 less."""
    g, y, head = _separable(n=120, c=3, per=2, seed=2)
    g0 = g.clone()
    filters = np.zeros((3, 6), bool)
    filters[0, [0, 1]] = True
    filters[1, [2, 3]] = True  # class 2: empty set, no row
    df = disable_filters_check(head, g, y.numpy(), filters, n_random=5, seed=0)
    assert torch.equal(g, g0)
    assert df["class"].tolist() == [0, 1]
    r = df.set_index("class").loc[0]
    assert r["n_filters"] == 2
    # zeroed, class 0's logit is 0 while the others read positive features: every class-0 image is lost;
    # the other classes' logits (>= 6) do not read filters 0, 1: they stay right
    assert (r["own_recall"], r["own_recall_disabled"], r["own_recall_drop"]) == (1.0, 0.0, 1.0)
    assert (r["other_accuracy"], r["other_accuracy_disabled"], r["other_accuracy_drop"]) == (1.0, 1.0, 0.0)
    # 2 random filters of 6 remove class 0's logit only when both are {0, 1}
    assert r["random_own_recall_drop"] < r["own_recall_drop"] - 0.5
