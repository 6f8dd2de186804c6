"""Label Change Rate (paper 1 section 4.2): screening, evaluator, LCR, SPRT."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader, TensorDataset

from helpers.models import SmallCNN
from helpers.paper1.lcr import (
    ScreenExhausted,
    ScreenResult,
    assemble_screen,
    candidate_seeds,
    choose_setting,
    label_change_rate,
    lcr_auroc_by_n_mutants,
    lcr_summary,
    mutant_predictions,
    predict,
    prepare_screening,
    screen_candidates,
    screen_decided,
    screen_mutants,
    sprt_detect,
    sprt_score,
)
from helpers.paper1.mutation import MutantSpec, Patch, make_patch, mutated

OP, RATE = "filter_nai", 0.05


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = SmallCNN(10, 1).eval()
    x = torch.randn(256, 1, 8, 8)
    y = torch.as_tensor(predict(model, x)).long()
    y[:20] = (y[:20] + 1) % 10  # original validation accuracy 236/256
    return model, x, y


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_state(model, state):
    return all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def _val_acc(model, spec, x, y):
    with mutated(model, spec):
        return float((predict(model, x) == y.numpy()).mean())


def test_screen_filters_on_validation_accuracy(setup):
    model, x, y = setup
    state = _state(model)
    model.train()  # the training flag must come back too
    res = screen_mutants(model, x, y, OP, RATE, 8, batch_size=32, progress=False)
    assert model.training
    model.eval()
    assert _same_state(model, state)
    assert isinstance(res, ScreenResult) and len(res.accepted) == 8 == len(res.accuracies)
    orig = float((predict(model, x) == y.numpy()).mean())
    assert res.original_accuracy == pytest.approx(orig)
    assert res.rejected > 0 and res.tried == 8 + res.rejected
    seeds = candidate_seeds(0, res.tried)
    assert [s.seed for s in res.accepted] == [s for s in seeds if s in {a.seed for a in res.accepted}]
    for s in seeds:  # every decision agrees with a direct validation evaluation
        spec = MutantSpec(OP, RATE, s)
        acc = _val_acc(model, spec, x, y)
        assert (spec in res.accepted) == (acc >= 0.9 * orig - 1e-12)
    for spec, acc, preds in zip(res.accepted, res.accuracies, res.predictions):
        assert acc == pytest.approx(_val_acc(model, spec, x, y))
        with mutated(model, spec):
            assert np.array_equal(preds, predict(model, x))
    assert np.array_equal(res.original_predictions, predict(model, x))
    assert _same_state(model, state)


def test_early_abort_same_decisions_fewer_samples(setup):
    model, x, y = setup
    full = screen_mutants(model, x, y, OP, RATE, 8, batch_size=32, progress=False, early_abort=False)
    fast = screen_mutants(model, x, y, OP, RATE, 8, batch_size=32, progress=False)
    assert fast.accepted == full.accepted and fast.accuracies == full.accuracies
    assert fast.tried == full.tried and fast.rejected == full.rejected
    assert full.samples_evaluated == full.samples_evaluated_without_abort == full.tried * 256
    assert fast.samples_evaluated_without_abort == full.samples_evaluated_without_abort
    assert fast.samples_evaluated < full.samples_evaluated
    given = screen_mutants(model, x, y, OP, RATE, 8, batch_size=32, progress=False, order="given")
    assert given.accepted == fast.accepted and given.accuracies == fast.accuracies
    assert np.array_equal(given.predictions, fast.predictions)
    assert given.samples_evaluated < full.samples_evaluated


def _same_screen(a: ScreenResult, b: ScreenResult) -> None:
    for k in ("accepted", "accuracies", "tried", "rejected", "original_accuracy", "samples_evaluated",
              "samples_evaluated_without_abort", "n_val", "threshold", "original_forwards"):
        assert getattr(a, k) == getattr(b, k), k
    assert a.predictions.dtype == b.predictions.dtype and np.array_equal(a.predictions, b.predictions)
    assert np.array_equal(a.original_predictions, b.original_predictions)


@pytest.mark.parametrize("block", [3, 5])
def test_screening_in_blocks_assembles_to_the_serial_screening(setup, block):
    """Blocks of the candidate stream, screened in any order (as ranks of helpers.tools.precompute do, one
    of them reusing a prepared screening), join into exactly what one serial screening returns: seeds,
    accuracies, tries, forwards counted with early abort, predictions; and the same exhaustion error."""
    model, x, y = setup
    serial = screen_mutants(model, x, y, OP, RATE, 8, batch_size=32, progress=False)
    prepared = prepare_screening(model, x, y, batch_size=32)
    starts = list(range(0, serial.tried + 2 * block, block))
    blocks = {s: screen_candidates(model, x, y, OP, RATE, candidate_seeds(0, s + block)[s:], batch_size=32,
                                   progress=False, screening=prepared if s % 2 else None) for s in starts[::-1]}
    ordered = [blocks[s] for s in starts]
    assert not screen_decided(ordered[:1], 8, 160) and screen_decided(ordered, 8, 160)
    _same_screen(assemble_screen(ordered, OP, RATE, 8, max_tries=160), serial)
    with pytest.raises(ValueError, match="decide neither"):
        assemble_screen(ordered[:1], OP, RATE, 8, max_tries=160)
    with pytest.raises(ValueError, match="not the stream's first"):
        assemble_screen(ordered[1:], OP, RATE, 8, max_tries=160)
    # a budget the stream cannot meet: the serial run's own error, word for word
    with pytest.raises(ScreenExhausted) as serial_error:
        screen_mutants(model, x, y, OP, RATE, 8, max_tries=9, batch_size=32, progress=False)
    with pytest.raises(ScreenExhausted) as joined_error:
        assemble_screen(ordered, OP, RATE, 8, max_tries=9)
    assert str(joined_error.value) == str(serial_error.value)


def test_screen_with_dataloader_matches_tensor(setup):
    model, x, y = setup
    a = screen_mutants(model, x, y, OP, RATE, 3, batch_size=64, progress=False)
    b = screen_mutants(model, DataLoader(TensorDataset(x, y), batch_size=64), None, OP, RATE, 3, progress=False)
    assert a.accepted == b.accepted and a.accuracies == b.accuracies


def test_max_tries_exhaustion_raises(setup):
    model, x, y = setup
    with pytest.raises(RuntimeError,
                       match=r"'gf' at rate 1.0: only 0 of 3 mutants accepted after 4 tries.*Lower the rate"):
        screen_mutants(model, x, y, "gf", 1.0, 3, threshold=1.0, max_tries=4, progress=False)
    with pytest.raises(ValueError, match="operator"):
        screen_mutants(model, x, y, "nope", 0.1, 3, progress=False)
    with pytest.raises(ValueError, match="rate"):
        screen_mutants(model, x, y, "gf", 0.0, 3, progress=False)


def test_mutant_predictions_loop_vmap_and_loader(setup):
    model, x, _ = setup
    state = _state(model)
    specs = [MutantSpec(op, 0.1, s) for op in ("gf", "nai", "filter_nai", "bn_nai", "ns", "ws") for s in (1, 2)]
    loop = mutant_predictions(model, specs, x, batch_size=100, mode="loop", progress=False)
    assert loop.shape == (len(specs), 256) and loop.dtype == np.int16
    assert _same_state(model, state)
    for j, spec in enumerate(specs):
        with mutated(model, spec):
            assert np.array_equal(loop[j], predict(model, x))
    # vmap over stacked parameters: identical labels (float64 to rule out summation-order ties)
    m64 = SmallCNN(10, 1).double().eval()
    m64.load_state_dict(model.state_dict())
    x64 = x.double()
    a = mutant_predictions(m64, specs, x64, batch_size=100, mode="loop", progress=False)
    b = mutant_predictions(m64, specs, x64, batch_size=100, mode="vmap", vmap_chunk=5, progress=False)
    assert np.array_equal(a, b)
    c, orig = mutant_predictions(model, [make_patch(model, s) for s in specs],
                                 DataLoader(TensorDataset(x, x[:, 0, 0, 0]), batch_size=64),
                                 progress=False, with_original=True)
    assert np.array_equal(c, loop) and np.array_equal(orig, predict(model, x))
    assert _same_state(model, state)


@pytest.mark.slow
def test_compiled_mutants_match_eager(setup):
    """torch.compile keeps parameters as graph inputs: every in-place patch must reach the
    compiled graph (a stale graph would give the original model's labels for every mutant)."""
    model, x, y = setup
    state = _state(model)
    specs = [MutantSpec(op, 0.1, s) for op in ("gf", "filter_nai", "bn_nai") for s in (1, 2)]
    eager = mutant_predictions(model, specs, x, batch_size=128, progress=False)
    fast, orig = mutant_predictions(model, specs, x, batch_size=128, progress=False, compile=True,
                                    with_original=True)
    assert np.array_equal(orig, predict(model, x))
    assert (fast != orig[None]).any(axis=1).all()  # every mutant changes some label
    assert (fast == eager).mean() >= 0.99  # equal up to float-rounding ties
    a = screen_mutants(model, x, y, OP, RATE, 3, batch_size=128, progress=False)
    b = screen_mutants(model, x, y, OP, RATE, 3, batch_size=128, progress=False, compile=True)
    assert a.accepted == b.accepted and a.tried == b.tried
    assert _same_state(model, state)


def test_lcr_zero_for_identical_mutants_and_against_original_not_label(setup):
    model, x, y = setup
    name, p = next(iter(model.named_parameters()))
    idx = torch.arange(0, p.numel(), 3)
    identical = Patch(None, ((name, idx, p.detach().reshape(-1)[idx].clone()),))
    preds, orig = mutant_predictions(model, [identical, identical], x, progress=False, with_original=True)
    assert np.all(label_change_rate(preds, orig) == 0)
    assert (orig != y.numpy()).sum() == 20  # the labels differ, the LCR does not see them
    mp = np.array([[0, 1, 2, 3], [0, 1, 2, 0], [5, 1, 2, 0]])
    original = np.array([0, 1, 2, 3])
    labels = np.array([9, 9, 9, 9])
    assert np.allclose(label_change_rate(mp, original), [1 / 3, 0, 0, 2 / 3])
    assert np.allclose(label_change_rate(mp, labels), 1)  # what it would be against the labels
    with pytest.raises(ValueError):
        label_change_rate(mp, original[:3])


def test_lcr_auroc_by_n_mutants_and_summary():
    rng = np.random.default_rng(0)
    orig = rng.integers(0, 10, 300)
    wrong = rng.random(300) < 0.2
    p = np.where(wrong, 0.5, 0.1)
    change = rng.random((20, 300)) < p
    preds = np.where(change, (orig + 1) % 10, orig)
    got = lcr_auroc_by_n_mutants(preds, orig, wrong, [1, 5, 20])
    for n, a in zip([1, 5, 20], got):
        assert a == pytest.approx(roc_auc_score(wrong, change[:n].mean(0)))
    assert got[2] > got[0]
    s = lcr_summary(label_change_rate(preds, orig), wrong)
    assert s["lcr_wrong_mean"] > s["lcr_correct_mean"]


def test_choose_setting():
    table = [
        {"operator": "nai", "rate": 0.001, "lcr_correct_mean": 0.05, "lcr_wrong_mean": 0.30,
         "lcr_correct_std": 0.10, "lcr_wrong_std": 0.20},
        {"operator": "nai", "rate": 0.002, "lcr_correct_mean": 0.07, "lcr_wrong_mean": 0.42,
         "lcr_correct_std": 0.14, "lcr_wrong_std": 0.23},
        {"operator": "gf", "rate": 0.002, "lcr_correct_mean": 0.02, "lcr_wrong_mean": 0.40,
         "lcr_correct_std": 0.20, "lcr_wrong_std": 0.25},
    ]
    assert choose_setting(table)["rate"] == 0.002 and choose_setting(table)["operator"] == "nai"  # paper's gap
    assert choose_setting(table, criterion="mean")["operator"] == "gf"
    means = [{k: v for k, v in r.items() if "std" not in k} for r in table]
    assert choose_setting(means)["operator"] == "gf"


def _sprt_reference(changes, thr, delta, alpha, beta, cap):
    p0, p1 = thr - delta, thr + delta
    up, lo = math.log((1 - beta) / alpha), math.log(beta / (1 - alpha))
    z = 0
    for n in range(1, cap + 1):
        z += int(changes[n - 1])
        llr = z * math.log(p1 / p0) + (n - z) * math.log((1 - p1) / (1 - p0))
        if llr >= up:
            return 1, n
        if llr <= lo:
            return 0, n
    return -1, cap


def test_sprt_clear_cases_and_cap():
    orig = np.zeros(3, dtype=np.int64)
    same = np.zeros((100, 3), dtype=np.int64)
    d, n = sprt_detect(same, orig, threshold=0.1, indifference=0.05)
    expected = math.ceil(math.log(0.05 / 0.95) / math.log(0.85 / 0.95))
    assert np.all(d == 0) and np.all(n == expected) and expected < 30
    d, n = sprt_detect(np.ones((100, 3), dtype=np.int64), orig, threshold=0.1, indifference=0.05)
    assert np.all(d == 1) and np.all(n <= 3)
    # label-change probability right at the threshold: no decision within the cap
    changes = np.zeros((100, 1), dtype=bool)
    changes[::10] = True
    d, n = sprt_detect(changes.astype(int), np.zeros(1, int), threshold=0.1, indifference=0.05, max_mutants=40)
    assert d[0] == -1 and n[0] == 40
    score = sprt_score(changes.astype(int), np.zeros(1, int), threshold=0.1, indifference=0.05, max_mutants=40)
    assert score[0] == pytest.approx(label_change_rate(changes[:40].astype(int), np.zeros(1, int))[0])
    with pytest.raises(ValueError, match="max_mutants"):
        sprt_detect(same, orig, max_mutants=101)
    with pytest.raises(ValueError, match="threshold"):
        sprt_detect(same, orig, threshold=0.05, indifference=0.05)


def test_sprt_matches_per_sample_reference():
    rng = np.random.default_rng(1)
    p = rng.choice([0.0, 0.05, 0.1, 0.2, 0.6], 400)
    changes = rng.random((60, 400)) < p
    orig = rng.integers(0, 10, 400)
    preds = np.where(changes, (orig + 3) % 10, orig)
    for thr, delta, cap in ((0.1, 0.05, None), (0.2, 0.1, 30)):
        d, n = sprt_detect(preds, orig, threshold=thr, indifference=delta, max_mutants=cap)
        s = sprt_score(preds, orig, threshold=thr, indifference=delta, max_mutants=cap)
        for i in range(400):
            rd, rn = _sprt_reference(changes[:, i], thr, delta, 0.05, 0.05, cap or 60)
            assert (d[i], n[i]) == (rd, rn)
            assert s[i] == pytest.approx(changes[:rn, i].mean())


def test_the_same_gpu_named_two_ways_is_the_same_device(monkeypatch):
    """torch.device("cuda") != torch.device("cuda", 0), yet both name the current GPU: the model must not
    be deep-copied for every screening and label-matrix call (nor its compiled copy kept alive)."""
    import torch

    from helpers.paper1 import lcr

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert torch.device("cuda") != torch.device("cuda", 0)
    assert lcr.canonical_device("cuda") == lcr.canonical_device(torch.device("cuda", 0))
    assert lcr.canonical_device("cuda:1") != lcr.canonical_device("cuda")
    assert lcr.canonical_device("cpu") == torch.device("cpu")
    model = torch.nn.Linear(2, 2)
    assert lcr._resolve(model, "cpu")[0] is model  # the same device: the model itself, no copy
