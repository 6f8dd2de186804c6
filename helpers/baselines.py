"""One-forward-pass error-detection baselines a reviewer expects (docs/methods.md section 5).

Not in paper 1; they put its conductance detector (section 4.1.2) in context.  Every
score is a likelihood of being WRONG (higher = more likely wrong), computed from the
classifier's logits in float64 with a stable log-softmax:

``msp``          1 - max_c softmax(z / T)_c                 (Hendrycks & Gimpel 2017)
``entropy``      -sum_c p_c log p_c,  p = softmax(z / T)
``energy``       -T logsumexp(z / T)   (Liu et al. 2020: free energy E(x); the
                 in-distribution score there is -E = T logsumexp, so the wrong-
                 likelihood score is E itself)
``max_logit``    -max_c z_c            (Hendrycks et al. 2022)
``doctor_alpha`` 1 - sum_c p_c^2       (DOCTOR, Granese et al. 2021, "D_alpha")

``temperature`` T scales the logits before the softmax (msp, entropy, energy,
doctor_alpha); ``max_logit`` ignores it.  T = 1 is the plain softmax.
"""
from __future__ import annotations

import numpy as np

BASELINES = ("msp", "entropy", "energy", "max_logit", "doctor_alpha")


def _logits_array(logits) -> np.ndarray:
    if hasattr(logits, "detach"):  # torch.Tensor
        logits = logits.detach().cpu().double().numpy()
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"logits: expected a 2-D array (n_samples, n_classes), got shape {z.shape}")
    if z.shape[1] < 2:
        raise ValueError(f"logits: {z.shape[1]} class column(s); at least 2 are needed")
    if not np.isfinite(z).all():
        raise ValueError("logits: contains non-finite values (nan/inf); all must be finite")
    return z


def _logsumexp(a: np.ndarray) -> np.ndarray:
    m = a.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(a - m).sum(axis=1, keepdims=True)))[:, 0]


def baseline_scores(logits, temperature: float = 1.0) -> dict[str, np.ndarray]:
    """All baseline wrong-likelihood scores from one matrix of logits (docs/methods.md section 5).

    ``logits``: (n, C) NumPy array or torch tensor (pre-softmax outputs).
    Returns ``{name: (n,) float64 array}`` for every name in :data:`BASELINES`.
    """
    z = _logits_array(logits)
    T = float(temperature)
    if not (np.isfinite(T) and T > 0):
        raise ValueError(f"temperature: {temperature!r} is not valid; it must be a finite number > 0")
    zt = z / T
    lse = _logsumexp(zt)
    log_p = zt - lse[:, None]  # stable log-softmax
    p = np.exp(log_p)
    return {
        "msp": 1.0 - p.max(axis=1),
        "entropy": -(p * log_p).sum(axis=1),
        "energy": -T * lse,
        "max_logit": -z.max(axis=1),
        "doctor_alpha": 1.0 - (p * p).sum(axis=1),
    }
