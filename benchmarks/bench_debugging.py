"""Model debugging (paper 2, sec. 4.3): one fine-tuning epoch with the frozen prefix computed once
(only the last conv layer and the head run) against the full forward pass every step.

Same model (the pretrained CIFAR-10 ResNet20, ``layer3.2`` + ``linear`` trainable), the same real
CIFAR-10 images (the lossless sample), the same seed and the paper's settings (batch 16, SGD 1e-4,
the authors' l1 / l2, augmentation off); the two runs' weights are compared after the epoch.

Device: on an accelerator (:func:`benchmarks.common.bench_device`; ``BENCH_DEVICE=cpu`` for the CPU)
the pair of epochs runs there (``fine_tune(device=...)``, the prefix computed there, the images on the
host and each batch moved as in the pipeline), in the cell ``accelerator``; the device is synchronised
before every clock read.  The ``threads_<n>`` cells (1 thread; 1 and 2 in the full run) are the CPU's
thread scaling, CPU-only by nature: on the CPU whatever the device.  Every cell says its ``device``.
"""
from __future__ import annotations

import copy

import torch

from helpers.paper2.debugging import DebugConfig, Forward, fine_tune

from .bench_lcr import load_cifar_sample
from .common import bench_device, clock, describe


def _pair(model, data, masks, cfg, device: torch.device) -> dict:
    """One epoch with the cached prefix and one with the full forward, on ``device``."""
    x_tr, y_tr, x_va, y_va = data
    model = copy.deepcopy(model).to(device)
    for cache in (False, True):  # warm-up: oneDNN / cuDNN pick their kernels for each new shape on first use
        fine_tune(model, x_tr[:32], y_tr[:32], x_va[:32], y_va[:32], masks, cfg, 1e-3, 2e-5, cache_prefix=cache,
                  threads=None, device=device)
    t = clock(device)
    fwd = Forward(model)
    prefix = (fwd.prefix(x_tr), fwd.prefix(x_va))
    prefix_s = clock(device) - t
    t = clock(device)
    cached = fine_tune(model, x_tr, y_tr, x_va, y_va, masks, cfg, 1e-3, 2e-5, seed=0, cache_prefix=True,
                       prefix_inputs=prefix, threads=None, device=device)
    cached_s = clock(device) - t
    t = clock(device)
    full = fine_tune(model, x_tr, y_tr, x_va, y_va, masks, cfg, 1e-3, 2e-5, seed=0, cache_prefix=False, threads=None,
                     device=device)
    full_s = clock(device) - t
    diff = max((cached.state_dict[key].float() - full.state_dict[key].float()).abs().max().item()
               for key in full.state_dict)
    return {"device": describe(device),
            "epoch_cached_s": round(cached_s, 3), "epoch_full_forward_s": round(full_s, 3),
            "prefix_once_s": round(prefix_s, 3), "speedup": round(full_s / cached_s, 2),
            "speedup_20_epochs_with_prefix": round(20 * full_s / (20 * cached_s + prefix_s), 2),
            "max_weight_diff": diff}


def run(quick: bool = False) -> dict:
    dev = bench_device()
    model, x, y, weights, source = load_cifar_sample()
    n = 200 if quick else 800   # of the 1,000 sample images; the last 200 validate
    data = (x[:n], y[:n], x[n:n + 200], y[n:n + 200])
    k = model.linear.in_features
    masks = (torch.rand(10, k, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    cfg = DebugConfig(epochs=1, batch_size=16, augmentation="none")
    out = {"device": describe(dev), "images": n, "weights": weights, "source": source, "batch_size": 16,
           "trainable": ["layer3.2", "linear"]}
    if dev.type != "cpu":
        out["accelerator"] = _pair(model, data, masks, cfg, dev)
    cpu_threads = (1,) if quick else (1, 2)
    threads0 = torch.get_num_threads()
    try:
        for threads in cpu_threads:
            torch.set_num_threads(threads)
            out[f"threads_{threads}"] = _pair(model, data, masks, cfg, torch.device("cpu"))
    finally:
        torch.set_num_threads(threads0)
    out["note"] = ("epoch time includes the per-epoch validation pass; the prefix is computed once per profile "
                   "and shared by every run of the grid and the seeds; with augmentation on, the full forward "
                   "is needed every step")
    return {"debugging": out}
