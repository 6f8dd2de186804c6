"""Benchmark of the Label Change Rate machinery (paper 1 section 4.2; Wang et al. ICSE 2019).

One run, one model (the pretrained CIFAR-10 ResNet20 from ../shared/weights when
present, else a random init), one mutant operator (``bn_nai`` at rate 0.01), the
lossless CIFAR-10 test images of ../shared/data (random tensors when absent):

* throughput, in (sample x mutant) predictions per second, of
  (a) :func:`helpers.paper1.lcr.mutant_predictions` (in-place patches, data read once),
  (b) a naive evaluator (``copy.deepcopy`` the model per mutant, mutate, loop over
      the data), (c) plain inference of the original model (samples / second: the
      limit).  Interleaved repetitions, best time of each;
* screening cost per accepted mutant with and without early abort;
* SPRT vs fixed-N LCR: 100 mutants screened on the first 300 images (validation),
  label matrix on the next 400 (test): forward reduction and AUROC difference, in the
  mutants' seed order and averaged over random orders, next to fixed-N LCR at the
  SPRT's mean budget.  (The SPRT defaults were tuned on these same 1000 images.)

Device: everything measured here runs on :func:`benchmarks.common.bench_device` (the GPU when there is
one, ``BENCH_DEVICE=cpu`` for the CPU): model and images are moved there first, and the device is
synchronised before every clock read; ``device`` in the result says where it ran.  On an accelerator
the vmapped evaluator (``mode="vmap"``, what ``mode="auto"`` picks there) is timed as well.

``run(quick=True)`` shrinks everything for a smoke test.  ``LCR_BENCH_THREADS=n`` sets
torch's intra-op threads (1 is faster when other jobs share a machine with few cores).
"""
from __future__ import annotations

import copy
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from helpers.models import build_model
from helpers.paper1.lcr import (
    SPRT_INDIFFERENCE,
    SPRT_THRESHOLD,
    label_change_rate,
    lcr_summary,
    mutant_predictions,
    predict,
    screen_mutants,
    sprt_detect,
    sprt_score,
)
from helpers.paper1.mutation import MutantSpec, make_patch
from helpers.utils import seed_everything

from .common import bench_device, clock, describe

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SHARED_DIR", ROOT.parent / "shared"))
WEIGHTS = SHARED / "weights" / "resnet20-12fca82f.th"
DATA = SHARED / "data" / "cifar10-lossless-sample.npz"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

OPERATOR, RATE = "bn_nai", 0.01


CPU = torch.device("cpu")


def load_cifar_sample():
    model = build_model("resnet20", 10, weights=str(WEIGHTS) if WEIGHTS.is_file() else None).eval()
    if DATA.is_file():
        d = np.load(DATA)
        x = torch.from_numpy(d["x_test"]).permute(0, 3, 1, 2).float() / 255.0
        x = ((x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)).contiguous()
        y = torch.from_numpy(d["y_test"]).long()
        source = "cifar10-lossless-sample.npz"
    else:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1000, 3, 32, 32, generator=g)
        y = torch.as_tensor(predict(model, x)).long()
        source = "random tensors (labels = original predictions)"
    return model, x, y, ("pretrained" if WEIGHTS.is_file() else "random init"), source


def _naive(model, specs, x, batch_size):
    """Reference evaluator: a deep copy of the model per mutant, mutated, then the data loop (on the
    model's and the data's device; the labels come back to the host once, at the end)."""
    out = []
    for spec in specs:
        m = copy.deepcopy(model)
        make_patch(m, spec).apply(m)
        m.eval()
        with torch.inference_mode():
            out.append(torch.cat([m(x[s:s + batch_size]).argmax(1) for s in range(0, len(x), batch_size)]))
    return torch.stack(out).cpu().numpy()


def _timed(fn, device=CPU):
    t = clock(device)
    r = fn()
    return clock(device) - t, r


def _same_labels(a: np.ndarray, b: np.ndarray, device: torch.device, what: str) -> float:
    """Fraction of equal labels; on the CPU they must all be equal (same kernels, same shapes).  On an
    accelerator two evaluators may pick different kernels, so a near-tie may flip: 99 % at least."""
    agree = float((a == b).mean())
    if device.type == "cpu":
        assert np.array_equal(a, b), f"{what} predictions differ"
    else:
        assert agree >= 0.99, f"{what} predictions differ on {1 - agree:.2%} of the labels"
    return agree


def run(quick: bool = False) -> dict:
    seed_everything(0)
    if os.environ.get("LCR_BENCH_THREADS"):  # e.g. 1 on a shared, oversubscribed machine
        torch.set_num_threads(int(os.environ["LCR_BENCH_THREADS"]))
    t_start = time.perf_counter()
    dev = bench_device()
    model, x, y, weights, source = load_cifar_sample()
    model.to(dev)
    x = x.to(dev)  # the labels y stay on the host: they are only compared with host predictions
    state = {k: v.clone() for k, v in model.state_dict().items()}
    bs = 250

    # ------------------------------------------------------------------ throughput
    n_tp = 200 if quick else 300
    reps = 1 if quick else 3
    xt = x[:n_tp]
    specs = [MutantSpec(OPERATOR, RATE, s) for s in range(8)]
    predict(model, xt[:bs], batch_size=bs)  # warm-up
    on_accel = dev.type != "cpu"
    t_inf, t_eval, t_naive, t_vmap = [], [], [], []
    for _ in range(reps):  # interleaved so that load changes hit all three alike
        # the same number of forwards as the evaluator: len(specs) passes of the original model
        dt, _ = _timed(lambda: [predict(model, xt, batch_size=bs) for _ in specs], dev)
        t_inf.append(dt / len(specs))
        dt, ev = _timed(lambda: mutant_predictions(model, specs, xt, batch_size=bs, progress=False, mode="loop"), dev)
        t_eval.append(dt)
        dt, nv = _timed(lambda: _naive(model, specs, xt, bs), dev)
        t_naive.append(dt)
        if on_accel:  # what mode="auto" runs on an accelerator: all mutants of a batch in one vmapped forward
            dt, vv = _timed(lambda: mutant_predictions(model, specs, xt, batch_size=bs, progress=False,
                                                       mode="vmap"), dev)
            t_vmap.append(dt)
    naive_agreement = _same_labels(ev, nv, dev, "evaluator and naive")
    vmap_agreement = _same_labels(ev, vv, dev, "loop and vmap evaluator") if on_accel else None
    compiled = compile_s = agreement = None
    if not quick:  # torch.compile'd evaluator (lcr.compile): the one-off compilation is timed apart
        compile_s, _ = _timed(lambda: mutant_predictions(model, specs[:1], xt, batch_size=bs, progress=False,
                                                         compile=True, mode="loop"), dev)
        t_comp = []
        for _ in range(reps):
            dt, cv = _timed(lambda: mutant_predictions(model, specs, xt, batch_size=bs, progress=False,
                                                       compile=True, mode="loop"), dev)
            t_comp.append(dt)
        compiled, agreement = n_tp * len(specs) / min(t_comp), float((cv == ev).mean())
    inference = n_tp / min(t_inf)
    evaluator = n_tp * len(specs) / min(t_eval)
    naive = n_tp * len(specs) / min(t_naive)
    vmapped = n_tp * len(specs) / min(t_vmap) if t_vmap else None

    # ------------------------------------------------------------------ screening + SPRT
    n_val, n_test, n_mut = (100, 100, 20) if quick else (300, 400, 100)
    xv, yv = x[:n_val], y[:n_val]
    xs, ys = x[n_val:n_val + n_test], y[n_val:n_val + n_test]
    scr = screen_mutants(model, xv, yv, OPERATOR, RATE, n_mut, batch_size=50, seed=0, progress=not quick)
    dt_pred, (P, o) = _timed(lambda: mutant_predictions(model, scr.accepted, xs, batch_size=bs,
                                                        progress=not quick, with_original=True), dev)
    wrong = o != ys.numpy()
    lcr = label_change_rate(P, o)
    decision, n_used = sprt_detect(P, o)
    score = sprt_score(P, o)
    has_both = 0 < wrong.sum() < len(wrong)
    auroc_fixed = float(roc_auc_score(wrong, lcr)) if has_both else float("nan")
    auroc_sprt = float(roc_auc_score(wrong, score)) if has_both else float("nan")
    fixed_forwards = P.shape[0] * P.shape[1]
    # context: fixed-N LCR with the SPRT's mean budget, and the SPRT over random mutant orders
    n_eq = int(np.clip(round(float(n_used.mean())), 1, P.shape[0]))
    auroc_eq = float(roc_auc_score(wrong, label_change_rate(P[:n_eq], o))) if has_both else float("nan")
    rng = np.random.default_rng(0)
    red_o, dl_o = [], []
    for _ in range(20):
        Q = P[rng.permutation(P.shape[0])]
        _, nu = sprt_detect(Q, o)
        red_o.append(fixed_forwards / int(nu.sum()))
        if has_both:
            dl_o.append(auroc_fixed - float(roc_auc_score(wrong, sprt_score(Q, o))))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items()), "model changed"

    without = scr.samples_evaluated_without_abort
    screening = {
        "operator": OPERATOR, "rate": RATE, "n_val": scr.n_val, "n_accepted": len(scr.accepted),
        "tried": scr.tried, "rejected": scr.rejected, "original_val_accuracy": scr.original_accuracy,
        "mean_accepted_val_accuracy": float(np.mean(scr.accuracies)),
        "seconds": scr.seconds,
        "seconds_per_accepted": scr.seconds_per_accepted,
        "forwards_per_accepted": scr.forwards_per_accepted,
        "forwards_per_accepted_without_abort": scr.forwards_per_accepted_without_abort,
        # time scales with forwards: estimate of the same screening without early abort
        "seconds_per_accepted_without_abort_est": scr.seconds_per_accepted * without / max(1, scr.samples_evaluated),
        "early_abort_forward_saving": 1.0 - scr.samples_evaluated / max(1, without),
    }
    return {"lcr": {
        "device": describe(dev),
        "model": f"resnet20 ({weights})", "data": source, "torch_threads": torch.get_num_threads(),
        "operator": OPERATOR, "rate": RATE, "batch_size": bs,
        "throughput_samples": n_tp, "throughput_mutants": len(specs), "repetitions": reps,
        "evaluator_pred_s": evaluator,
        "naive_pred_s": naive,
        "inference_pred_s": inference,
        "evaluator_over_inference": evaluator / inference,
        "evaluator_over_naive": evaluator / naive,
        "evaluator_naive_label_agreement": naive_agreement,
        "evaluator_vmap_pred_s": vmapped,  # accelerator only (mode="auto" there)
        "evaluator_vmap_over_naive": vmapped / naive if vmapped else None,
        "evaluator_vmap_label_agreement_with_loop": vmap_agreement,
        "compiled_pred_s": compiled,
        "compiled_over_inference": compiled / inference if compiled else None,
        "compiled_over_naive": compiled / naive if compiled else None,
        "compile_seconds": compile_s,
        "compiled_label_agreement_with_eager": agreement,
        "sprt_forward_reduction": fixed_forwards / int(n_used.sum()),
        "sprt_auroc_delta": auroc_fixed - auroc_sprt,
        "sprt": {
            "n_mutants": P.shape[0], "n_test": P.shape[1], "n_wrong": int(wrong.sum()),
            "threshold": SPRT_THRESHOLD, "indifference": SPRT_INDIFFERENCE, "alpha": 0.05, "beta": 0.05,
            "auroc_fixed": auroc_fixed, "auroc_sprt_score": auroc_sprt,
            "mean_mutants_used": float(n_used.mean()),
            "fixed_n_equal_budget": n_eq,
            "auroc_delta_fixed_n_equal_budget": auroc_fixed - auroc_eq,
            "random_orders": 20,
            "forward_reduction_mean_over_orders": float(np.mean(red_o)),
            "auroc_delta_mean_over_orders": float(np.mean(dl_o)) if dl_o else float("nan"),
            "auroc_delta_max_over_orders": float(np.max(dl_o)) if dl_o else float("nan"),
            "decided_wrong": int((decision == 1).sum()), "decided_correct": int((decision == 0).sum()),
            "undecided": int((decision == -1).sum()),
            "sprt_decision_recall_wrong": float((decision[wrong] == 1).mean()) if wrong.any() else float("nan"),
            "sprt_decision_false_alarm": float((decision[~wrong] == 1).mean()) if (~wrong).any() else float("nan"),
            "label_matrix_seconds": dt_pred,
            **{k: v for k, v in lcr_summary(lcr, wrong).items()},
        },
        "screening": screening,
        "total_seconds": time.perf_counter() - t_start,
    }}


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv[1:]), indent=2))
