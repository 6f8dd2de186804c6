"""Tests of helpers.paper1.detectors (paper 1, 4.1.2; docs/methods.md section 2)."""
import numpy as np
import pytest
import torch

from helpers.metrics import auroc
from helpers.paper1.detectors import ConductanceDetector, train_conductance_detector


def _toy(n, seed, d=8):
    """Separable toy problem: wrong predictions (1) are shifted along features 0 and 1; large, unequal scales."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.25).astype(int)
    X = rng.normal(size=(n, d)) * np.linspace(1, 50, d) + 100.0
    X[:, 0] += 5.0 * y
    X[:, 1] += 100.0 * y
    return X, y


@pytest.fixture(scope="module")
def data():
    Xt, yt = _toy(1000, 0)
    Xv, yv = _toy(400, 1)
    return Xt, yt, Xv, yv


def test_learns_and_history(data):
    Xt, yt, Xv, yv = data
    det = train_conductance_detector(Xt, yt, Xv, yv, epochs=6, patience=3, seed=0)
    assert isinstance(det, ConductanceDetector)
    s = det.score(Xv)
    assert s.shape == (len(yv),) and s.min() >= 0 and s.max() <= 1
    assert auroc(yv, s) > 0.95
    assert [h["epoch"] for h in det.history] == list(range(1, len(det.history) + 1))
    assert set(det.history[0]) == {"epoch", "train_loss", "val_auroc"}
    aucs = [h["val_auroc"] for h in det.history]
    assert det.best_epoch == det.history[int(np.argmax(aucs))]["epoch"]
    # the kept weights are the best epoch's: re-scoring the validation split reproduces its AUROC
    assert auroc(yv, s) == pytest.approx(max(aucs), abs=1e-9)
    # standardisation uses the TRAINING statistics
    assert np.allclose(det.scaler.mean_, Xt.mean(axis=0))
    assert np.allclose(det.scaler.scale_, Xt.std(axis=0))
    assert not np.allclose(det.scaler.mean_, Xv.mean(axis=0))


def test_deterministic_under_seed(data):
    Xt, yt, Xv, yv = data
    state = torch.get_rng_state()
    a = train_conductance_detector(Xt, yt, Xv, yv, epochs=2, seed=7)
    assert torch.equal(state, torch.get_rng_state())  # the caller's RNG is untouched
    torch.manual_seed(123)  # global state must not matter
    b = train_conductance_detector(Xt, yt, Xv, yv, epochs=2, seed=7)
    c = train_conductance_detector(Xt, yt, Xv, yv, epochs=2, seed=8)
    assert np.array_equal(a.score(Xv), b.score(Xv))
    assert a.history == b.history
    assert not np.array_equal(a.score(Xv), c.score(Xv))


def test_early_stopping_patience():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(300, 4)), rng.integers(0, 2, 300)  # pure noise: no lasting improvement
    Xv, yv = rng.normal(size=(200, 4)), rng.integers(0, 2, 200)
    det = train_conductance_detector(X, y, Xv, yv, epochs=40, patience=2, seed=0)
    assert len(det.history) <= 40
    assert len(det.history) - det.best_epoch <= 2
    if len(det.history) < 40:
        assert len(det.history) - det.best_epoch == 2


def test_bad_input(data):
    Xt, yt, Xv, yv = data
    with pytest.raises(ValueError, match="y_train"):
        train_conductance_detector(Xt, yt[:-1], Xv, yv, epochs=1)
    with pytest.raises(ValueError, match="y_val"):
        train_conductance_detector(Xt, yt, Xv, np.zeros(len(yv)), epochs=1)
    with pytest.raises(ValueError, match="X_val"):
        train_conductance_detector(Xt, yt, Xv[:, :3], yv, epochs=1)
    with pytest.raises(ValueError, match="epochs"):
        train_conductance_detector(Xt, yt, Xv, yv, epochs=0)
    det = train_conductance_detector(Xt, yt, Xv, yv, epochs=1)
    with pytest.raises(ValueError, match="X"):
        det.score(Xv[:, :3])
