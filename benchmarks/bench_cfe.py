"""Benchmark of the CFE generators (paper 2 sections 3 and 4.2; docs/methods.md section 6; helpers/paper2/cfe.py).

Training one CFE generator per class needs only the pooled features ``g`` of the frozen model, so
:func:`helpers.paper2.cfe.train_generators` takes them cached, with all C generators as one batched layer.
Two settings, each timed against the per-class way:

* ``cifar10``: K = 64 filters, C = 10 classes.  The pretrained CIFAR-10 ResNet20 (akamaster weights in
  ../shared/weights) on REAL CIFAR-10 training images: the profile ``cifar10-pretrained``'s training
  split through the project's loader (the JPEG ImageFolder copy; the lossless 2,000-image sample, or
  random tensors, when it cannot be loaded: ``data`` and ``n`` say which).
  (a) batched: ``g`` of every image computed once (timed apart: ``extract_s``), then
      ``train_generators(G, N, head, range(10), GeneratorConfig(), seed=0)``, the paper's config
      (batch 16, 10 epochs), all classes and epochs, measured in full;
  (b) naive: one class at a time, the frozen model's forward pass every batch of every epoch
      (``features=lambda idx: pooled_features(model, images[idx])[0]``).  Measured on a few classes
      x 1 epoch x the first batches of an epoch and scaled to C classes x 10 epochs x every batch
      (``naive_extrapolated_from`` says from what).  The same subset trained on the cache checks that
      the two ways give the same generators (``naive_vs_cached_max_weight_diff``).
* ``synthetic_k512``: K = 512, C = 100: synthetic non-negative ``g`` (|N(0, 1)|, like post-ReLU GAP
  features) for N = 2,700 images (about the training split of the 100-class CUB subset in
  ../shared/data/cub100) and a random ``nn.Linear(512, 100)`` head.  Batched: the full config when one
  epoch says it takes under ~2 minutes, else one epoch measured and x10 (``batched_extrapolated``);
  per class on the cache: a few classes x 1 epoch, scaled to 100 classes x 10 epochs.

Device: the frozen model's forward passes (the ``g`` extraction, the naive way's per-batch forwards) run
on :func:`benchmarks.common.bench_device` (the GPU when there is one; ``BENCH_DEVICE=cpu`` for the CPU),
model and images moved there first; the generators train there too (on the head's device).  Each setting records its
``devices`` (``cifar10_k64``: extract, naive_forward, generator_training; ``synthetic_k512``:
generator_training); the top-level ``device`` is where the generators trained (the comparison this
benchmark is about), ``forward_device`` where the frozen model ran.  The device is synchronised before every
clock read.

Threads: ``CFE_BENCH_THREADS`` (default 1: with more intra-op threads than free cores each tiny K = 64
step waits for a descheduled worker; docs/benchmarks.md); restored afterwards.  The 1-minute load average is recorded
around every timed part.  ``run(quick=True)``: a few hundred images, 1 epoch, a few seconds.
"""
from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
from dataclasses import asdict, replace

import numpy as np
import torch

from helpers.models import build_model, pooled_features, pooled_head
from helpers.paper2.cfe import GeneratorConfig, train_generators
from helpers.utils import seed_everything

from .bench_lcr import DATA, MEAN, STD, WEIGHTS
from .common import bench_device, clock, describe

PROFILE = "cifar10-pretrained"
K512, C512, N512 = 512, 100, 2700


CPU = torch.device("cpu")


def _load_time():
    return round(os.getloadavg()[0], 2)


def _timed(fn, device=CPU):
    load0 = _load_time()
    t = clock(device)
    r = fn()
    return clock(device) - t, r, [load0, _load_time()]


def _warm_up(device: torch.device, g: torch.Tensor, n: int, head: torch.nn.Linear, classes, cfg) -> torch.device:
    """Warm-up of the generator training on ``device``."""
    train_generators(g.to(device), n, copy.deepcopy(head).to(device), classes, cfg, seed=0)
    return device


def _lossless_train(n: int | None = None):
    d = np.load(DATA)
    x = torch.from_numpy(d["x_train"][:n]).permute(0, 3, 1, 2).float() / 255.0
    x = ((x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)).contiguous()
    return x, torch.from_numpy(d["y_train"][:n]).long()


def _images(quick: bool):
    """Normalised training images, labels, a description of the source, seconds to load."""
    t = time.perf_counter()
    if quick and DATA.is_file():
        x, y = _lossless_train(256)
        return x, y, "cifar10-lossless-sample.npz x_train (first 256, quick)", time.perf_counter() - t
    if not quick:
        try:
            from helpers.experiment import Experiment

            data = Experiment(PROFILE, progress=False).data
            x, y = data["train"].dataset.tensors()
            return (x.contiguous(), y.long(), f"profile {PROFILE!r}, train split ({data.source})",
                    time.perf_counter() - t)
        except Exception as exc:  # no CIFAR-10 copy: fall back to the lossless sample
            reason = f"{type(exc).__name__}: {exc}"[:200]
        if DATA.is_file():
            x, y = _lossless_train()
            return x, y, f"cifar10-lossless-sample.npz x_train (profile data failed: {reason})", time.perf_counter() - t
    g = torch.Generator().manual_seed(0)
    n = 256 if quick else 2000
    return (torch.randn(n, 3, 32, 32, generator=g), torch.zeros(n, dtype=torch.long),
            "random tensors (no CIFAR-10 data found)", time.perf_counter() - t)


@torch.inference_mode()
def _extract(model, x, batch_size=500):
    gs, preds = [], []
    for s in range(0, len(x), batch_size):
        g, logits = pooled_features(model, x[s:s + batch_size])
        gs.append(g)
        preds.append(logits.argmax(1))
    return torch.cat(gs).contiguous(), torch.cat(preds)


def _last(history) -> dict:
    row = history.iloc[-1]
    return {"epoch": int(row["epoch"]), "active_filters": round(float(row["active"]), 2),
            "hits": round(float(row["hits"]), 4), "ce": round(float(row["ce"]), 4)}


def _bench_cifar10(quick: bool, dev: torch.device) -> dict:
    cfg = GeneratorConfig(epochs=1) if quick else GeneratorConfig()
    classes = list(range(10))
    model = build_model("resnet20", 10, 3, weights=str(WEIGHTS) if WEIGHTS.is_file() else None).eval().to(dev)
    _, head = pooled_head(model)
    x, y, source, load_s = _images(quick)
    x = x.to(dev)  # the labels y stay on the host
    n, bs = len(x), cfg.batch_size
    n_batches = math.ceil(n / bs)

    # ------------------------------------------------------------------ (a) batched, on cached g
    extract_s, (G, pred), extract_load = _timed(lambda: _extract(model, x), dev)
    train_dev = _warm_up(dev, G[:2 * bs], 2 * bs, head, classes, replace(cfg, epochs=1))
    G = G.to(train_dev)
    head_t = head if train_dev == dev else copy.deepcopy(head).to(train_dev)
    batched_s, (_, hist), batched_load = _timed(lambda: train_generators(G, n, head_t, classes, cfg, seed=0),
                                                train_dev)

    # ------------------------------------------------------------------ (b) naive: per class, full forward
    naive_classes = [0] if quick else [0, 1, 2]
    sub_batches = min(3 if quick else 50, n_batches)
    n_sub = sub_batches * bs
    one_epoch = replace(cfg, epochs=1)
    xs = x[:n_sub]

    def naive_features(idx):  # the frozen model's forward on its device; g to where the generators train
        return pooled_features(model, xs[idx])[0].to(train_dev)

    naive_times, naive_loads, diffs = [], [], []
    pooled_features(model, xs[:bs])  # warm-up
    for c in naive_classes:
        dt, (gen_naive, _), ld = _timed(lambda c=c: train_generators(naive_features, n_sub, head_t, [c], one_epoch,
                                                                 seed=0), dev)
        naive_times.append(dt)
        naive_loads.append(ld)
        gen_cached, _ = train_generators(G[:n_sub], n_sub, head_t, [c], one_epoch, seed=0)
        diffs.append(float((gen_naive.weight - gen_cached.weight).abs().max().detach()))
    per_batch = float(np.mean(naive_times)) / sub_batches
    naive_s = per_batch * len(classes) * cfg.epochs * n_batches

    return {
        "devices": {"extract": describe(dev), "naive_forward": describe(dev),
                    "generator_training": describe(train_dev)},
        "model": f"resnet20 ({'pretrained ' + WEIGHTS.name if WEIGHTS.is_file() else 'random init'})",
        "data": source, "n": n, "k": G.shape[1], "c": len(classes),
        "model_accuracy_on_these_images": round(float((pred.cpu() == y).float().mean()), 4),
        "config": asdict(cfg), "batches_per_epoch": n_batches, "steps": n_batches * cfg.epochs,
        "load_images_s": round(load_s, 2),
        "extract_s": round(extract_s, 2), "extract_load": extract_load,
        "batched_s": round(batched_s, 2), "batched_ms_per_step": round(1e3 * batched_s / (n_batches * cfg.epochs), 3),
        "batched_load": batched_load, "batched_final_epoch": _last(hist),
        "naive_s": round(naive_s, 1), "naive_extrapolated": True,
        "naive_extrapolated_from": (f"{len(naive_classes)} classes {naive_classes} x 1 epoch x {sub_batches} batches "
                                    f"of {bs} (mean {1e3 * per_batch:.1f} ms per class-batch), scaled x "
                                    f"{len(classes)} classes x {cfg.epochs} epochs x {n_batches} batches"),
        "naive_measured_s": [round(t, 2) for t in naive_times], "naive_load": naive_loads,
        "naive_ms_per_class_batch": round(1e3 * per_batch, 2),
        "naive_vs_cached_max_weight_diff": max(diffs),
        "ratio": round(naive_s / batched_s, 1),
        "ratio_including_extract": round(naive_s / (batched_s + extract_s), 1),
        "targets": {"batched_under_60s": batched_s < 60.0, "ratio_at_least_50": naive_s / batched_s >= 50.0},
    }


def _bench_k512(quick: bool, dev: torch.device) -> dict:
    n = 32 if quick else N512
    cfg = GeneratorConfig(epochs=1) if quick else GeneratorConfig()
    g = torch.randn(n, K512, generator=torch.Generator().manual_seed(0)).abs()
    torch.manual_seed(0)
    head = torch.nn.Linear(K512, C512)
    classes = list(range(C512))
    n_batches = math.ceil(n / cfg.batch_size)
    one_epoch = replace(cfg, epochs=1)

    # ------------------------------------------------------------------ batched: all 100 generators at once
    dev = _warm_up(dev, g[:cfg.batch_size], cfg.batch_size, head, classes[:2], one_epoch)
    g, head = g.to(dev), head.to(dev)
    probe_s, (_, hist), probe_load = _timed(lambda: train_generators(g, n, head, classes, one_epoch, seed=0), dev)
    if cfg.epochs == 1:
        batched_s, extrapolated, how, batched_load = probe_s, False, "measured (1 epoch: the quick config)", probe_load
    elif probe_s * cfg.epochs <= 120.0:
        batched_s, (_, hist), batched_load = _timed(lambda: train_generators(g, n, head, classes, cfg, seed=0), dev)
        extrapolated, how = False, f"measured ({cfg.epochs} epochs)"
    else:
        batched_s, extrapolated, batched_load = probe_s * cfg.epochs, True, probe_load
        how = f"1 epoch of {cfg.epochs} measured ({probe_s:.1f} s, {n_batches} batches), x{cfg.epochs}"

    # ------------------------------------------------------------------ per class on the cached g
    seq_classes = [0] if quick else [0, 1, 2]
    seq_times, seq_loads = [], []
    for c in seq_classes:
        dt, _, ld = _timed(lambda c=c: train_generators(g, n, head, [c], one_epoch, seed=0), dev)
        seq_times.append(dt)
        seq_loads.append(ld)
    per_class_epoch = float(np.mean(seq_times))
    seq_s = per_class_epoch * C512 * cfg.epochs
    return {
        "devices": {"generator_training": describe(dev)},
        "data": "synthetic |N(0,1)| g (non-negative, like post-ReLU GAP features), random nn.Linear(512, 100) head",
        "n": n, "k": K512, "c": C512, "config": asdict(cfg), "batches_per_epoch": n_batches,
        "batched_s": round(batched_s, 1), "batched_extrapolated": extrapolated, "batched_how": how,
        "batched_ms_per_step": round(1e3 * probe_s / n_batches, 1), "batched_load": batched_load,
        "batched_epoch1": _last(hist) if not extrapolated else {**_last(hist), "note": "the 1-epoch probe"},
        "sequential_s": round(seq_s, 1), "sequential_extrapolated": True,
        "sequential_extrapolated_from": (f"{len(seq_classes)} classes x 1 epoch on cached g (mean "
                                         f"{per_class_epoch:.2f} s), scaled x {C512} classes x {cfg.epochs} epochs"),
        "sequential_measured_s": [round(t, 2) for t in seq_times], "sequential_load": seq_loads,
        "sequential_ms_per_step": round(1e3 * per_class_epoch / n_batches, 2),
        "ratio": round(seq_s / batched_s, 2),
    }


def run(quick: bool = False) -> dict:
    seed_everything(0)
    threads_before = torch.get_num_threads()
    threads = int(os.environ.get("CFE_BENCH_THREADS", "1"))
    torch.set_num_threads(threads)
    t_start = time.perf_counter()
    load_start = [round(v, 2) for v in os.getloadavg()]
    dev = bench_device()
    try:
        cifar = _bench_cifar10(quick, dev)
        k512 = _bench_k512(quick, dev)
    finally:
        torch.set_num_threads(threads_before)
    return {"cfe": {
        "device": cifar["devices"]["generator_training"],  # where the measured comparison ran
        "forward_device": describe(dev),  # the frozen model's forward passes
        "threads": threads, "threads_env": "CFE_BENCH_THREADS", "cpu_count": os.cpu_count(), "quick": quick,
        "loadavg_at_start": load_start, "loadavg_at_end": [round(v, 2) for v in os.getloadavg()],
        "load_note": "loads are the 1-minute load average before/after each timed part; >2 on this 2-core "
                     "machine means other jobs shared the cores",
        "cifar10_k64": cifar,
        "synthetic_k512": k512,
        "total_seconds": round(time.perf_counter() - t_start, 1),
    }}


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv[1:]), indent=2))
