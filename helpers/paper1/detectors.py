"""The conductance error detector of paper 1, section 4.1.2 (docs/methods.md section 2).

Input: one conductance value per feature map of the last conv block (ResNet20: 64,
InceptionV3: 2048); label 1 = the CNN's prediction is wrong, 0 = correct.  Model:
Dense 200 ReLU, Dropout 0.5, Dense 200 ReLU, Dropout 0.5, Dense 1 sigmoid; Adam
1e-3, binary cross-entropy (``BCEWithLogitsLoss`` on the pre-sigmoid output: the
same loss, numerically stable), batch 50, no class weights.  Features are
standardised with TRAINING statistics (``sklearn.preprocessing.StandardScaler``).
The authors monitored validation AUROC to choose the number of epochs (CIFAR: 20);
here every epoch is scored on the validation split, training stops after
``patience`` epochs without improvement, and the best epoch's weights are kept.

Deterministic: weight init and dropout draw from torch's RNG seeded with ``seed``
inside ``torch.random.fork_rng`` (the caller's global RNG state is left untouched);
mini-batch shuffling uses its own ``torch.Generator``.  Same seed, same data =>
identical scores.
"""
from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
from sklearn.preprocessing import StandardScaler

from helpers.devices import get_device
from helpers.metrics import auroc

_SCORE_CHUNK = 65536


def build_detector_mlp(n_features: int, hidden: int = 200, dropout: float = 0.5) -> nn.Sequential:
    """Paper 1, 4.1.2: Dense(hidden) ReLU, Dropout, Dense(hidden) ReLU, Dropout, Dense 1 (logit)."""
    return nn.Sequential(
        nn.Linear(n_features, hidden),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, 1),
    )


@dataclass
class ConductanceDetector:
    """A trained conductance detector (paper 1, 4.1.2).

    ``model`` outputs a logit; :meth:`score` applies the training-set ``scaler`` and
    a sigmoid.  ``history``: one dict per epoch run, ``{"epoch", "train_loss",
    "val_auroc"}`` (epochs numbered from 1); ``best_epoch``: the epoch whose weights
    ``model`` holds (the first maximum of ``val_auroc``).
    """

    model: nn.Module
    scaler: StandardScaler
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    device: str = "cpu"

    @property
    def n_features(self) -> int:
        return int(self.scaler.n_features_in_)

    def score(self, X) -> np.ndarray:
        """Likelihood that each prediction is wrong, in [0, 1] (float64, shape (n,))."""
        X = _as_2d(X, "X")
        if X.shape[1] != self.n_features:
            raise ValueError(f"X: {X.shape[1]} features; the detector was trained on {self.n_features}")
        Xs = self.scaler.transform(X).astype(np.float32)
        return _predict_proba(self.model, Xs, torch.device(self.device))


def _as_2d(X, name: str) -> np.ndarray:
    if hasattr(X, "detach"):
        X = X.detach().cpu().numpy()
    a = np.asarray(X, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (n_samples, n_features), got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: contains non-finite values (nan/inf); all must be finite")
    return a


def _as_labels(y, name: str, n: int) -> np.ndarray:
    if hasattr(y, "detach"):
        y = y.detach().cpu().numpy()
    a = np.asarray(y).reshape(-1)
    if a.shape[0] != n:
        raise ValueError(f"{name}: length {a.shape[0]} differs from the {n} rows of the features; they must be equal")
    bad = np.setdiff1d(np.unique(a), [0, 1])
    if bad.size:
        raise ValueError(f"{name}: values {bad[:5].tolist()} are not valid; valid values are 0 (correct) and 1 (wrong)")
    return a.astype(np.float32)


@torch.no_grad()
def _predict_proba(model: nn.Module, Xs: np.ndarray, device: torch.device) -> np.ndarray:
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, Xs.shape[0], _SCORE_CHUNK):
        xb = torch.from_numpy(Xs[i : i + _SCORE_CHUNK]).to(device)
        out.append(torch.sigmoid(model(xb)[:, 0]).double().cpu().numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros(0)


def train_conductance_detector(
    X_train,
    y_train,
    X_val,
    y_val,
    *,
    epochs: int = 20,
    batch_size: int = 50,
    lr: float = 1e-3,
    hidden: int = 200,
    dropout: float = 0.5,
    patience: int = 5,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
) -> ConductanceDetector:
    """Train the paper's conductance detector; choose the epoch by validation AUROC (paper 1, 4.1.2).

    ``X_*``: (n, n_feature_maps) conductance features; ``y_*``: 1 = wrong prediction.
    ``X_val``/``y_val`` (the real validation split, never a held-out training fold)
    are used only to pick the epoch.  Stops after ``patience`` epochs without a
    validation-AUROC improvement (``patience >= epochs`` disables early stopping)
    and returns the best epoch's weights.
    """
    X_train = _as_2d(X_train, "X_train")
    X_val = _as_2d(X_val, "X_val")
    y_tr = _as_labels(y_train, "y_train", X_train.shape[0])
    y_va = _as_labels(y_val, "y_val", X_val.shape[0])
    if X_val.shape[1] != X_train.shape[1]:
        raise ValueError(f"X_val: {X_val.shape[1]} features; X_train has {X_train.shape[1]}; they must match")
    if np.unique(y_va).size < 2:
        raise ValueError("y_val: contains a single class; epoch selection by validation AUROC needs both 0 and 1")
    for name, v, ok in (
        ("epochs", epochs, int(epochs) >= 1),
        ("batch_size", batch_size, int(batch_size) >= 1),
        ("hidden", hidden, int(hidden) >= 1),
        ("patience", patience, int(patience) >= 1),
        ("lr", lr, float(lr) > 0),
        ("dropout", dropout, 0.0 <= float(dropout) < 1.0),
    ):
        if not ok:
            raise ValueError(f"{name}: {v!r} is not valid; "
                             + ("it must lie in [0, 1)" if name == "dropout" else "it must be positive"))
    dev = get_device(device)

    scaler = StandardScaler().fit(X_train)
    Xt = torch.from_numpy(scaler.transform(X_train).astype(np.float32)).to(dev)
    yt = torch.from_numpy(y_tr).to(dev)
    Xv = scaler.transform(X_val).astype(np.float32)
    n = Xt.shape[0]
    bs = int(batch_size)

    keep = 1.0 - float(dropout)
    n_threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        model = build_detector_mlp(X_train.shape[1], int(hidden), float(dropout)).to(dev)
        lin1, lin2, lin3 = model[0], model[3], model[6]
        opt = torch.optim.Adam(model.parameters(), lr=float(lr), **_adam_kwargs(dev))
        loss_fn = nn.BCEWithLogitsLoss()
        gen = torch.Generator()  # mini-batch order
        gen.manual_seed(seed)
        # dropout masks: drawn on the CPU and moved, so every device gets the same masks (and a device
        # without generators of its own, such as the simulated accelerator, works too)
        gen_drop = torch.Generator()
        gen_drop.manual_seed(seed + 1)

        def forward_train(xb: torch.Tensor) -> torch.Tensor:
            # Same computation as model.train()(xb) (inverted dropout, p = dropout), but
            # with masks from torch.rand: nn.Dropout's bernoulli_ is far slower on CPU.
            h = torch.relu(lin1(xb))
            if keep < 1.0:
                h = h * (torch.rand(h.shape, generator=gen_drop) < keep).to(dev, non_blocking=True) / keep
            h = torch.relu(lin2(h))
            if keep < 1.0:
                h = h * (torch.rand(h.shape, generator=gen_drop) < keep).to(dev, non_blocking=True) / keep
            return lin3(h)[:, 0]

        history: list[dict] = []
        best_auc, best_epoch, best_state, since_best = -np.inf, 0, None, 0
        if dev.type == "cpu":
            torch.set_num_threads(1)  # tiny matmuls: threads only add overhead and contention
        try:
            for epoch in range(1, int(epochs) + 1):
                model.train()
                perm = torch.randperm(n, generator=gen).to(dev)
                Xp, yp = Xt[perm], yt[perm]  # one gather per epoch; batches are then views
                total = torch.zeros((), device=dev)
                for i in range(0, n, bs):
                    xb, yb = Xp[i : i + bs], yp[i : i + bs]
                    opt.zero_grad(set_to_none=True)
                    loss = loss_fn(forward_train(xb), yb)
                    loss.backward()
                    opt.step()
                    total += loss.detach() * xb.shape[0]
                train_loss = float(total) / n
                val_auc = auroc(y_va, _predict_proba(model, Xv, dev))
                history.append({"epoch": epoch, "train_loss": train_loss, "val_auroc": val_auc})
                if progress:
                    print(f"[detector] epoch {epoch:3d}  train_loss {train_loss:.4f}  val_auroc {val_auc:.4f}",
                          file=sys.stderr, flush=True)
                if val_auc > best_auc:
                    best_auc, best_epoch, since_best = val_auc, epoch, 0
                    best_state = copy.deepcopy(model.state_dict())
                else:
                    since_best += 1
                    if since_best >= int(patience):
                        break
        finally:
            torch.set_num_threads(n_threads)
        model.load_state_dict(best_state)
        model.eval()
    return ConductanceDetector(model=model, scaler=scaler, history=history, best_epoch=best_epoch,
                               device=str(dev))


def _adam_kwargs(dev: torch.device) -> dict:
    """Fused Adam (one kernel for all parameters) where this torch supports it on ``dev``."""
    try:
        p = torch.zeros(1, device=dev, requires_grad=True)
        torch.optim.Adam([p], fused=True)
        return {"fused": True}
    except (RuntimeError, TypeError, ValueError):
        return {}
