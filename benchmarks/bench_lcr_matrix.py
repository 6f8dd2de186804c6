"""The label-matrix settings of the CIFAR-10 runs: eager vs ``torch.compile`` (``lcr.compile``)
and batch 125 (``paper1.LCR_BATCH``) vs 1,000, at 1 and 2 threads, on real CIFAR-10 images.

Same model, images and mutants for every cell (the pretrained ResNet20, 1,000 lossless
CIFAR-10 test images, 4 ``bn_nai`` mutants at 1 %); compilation is done before timing and
reported apart; labels are compared with eager mode.

CPU only, by nature (``device: "cpu"`` in the result, whatever ``BENCH_DEVICE`` says): it measures the
CPU loop's settings, thread counts and the inductor's CPU code; the accelerator's evaluator is timed in
``bench_lcr`` (loop and vmap).
"""
from __future__ import annotations

import time

import torch

from helpers.paper1.lcr import mutant_predictions
from helpers.paper1.mutation import MutantSpec

from .bench_lcr import load_cifar_sample


def run(quick: bool = False) -> dict:
    if quick:  # compilation alone takes about 30 s: nothing to smoke-test here
        return {}
    model, x, _, weights, source = load_cifar_sample()  # on the CPU
    x = x[:1000]
    specs = [MutantSpec("bn_nai", 0.01, s) for s in range(4)]
    threads0 = torch.get_num_threads()
    cells, agree = {}, 1.0
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for bs in (125, 1000):
            t = time.perf_counter()
            mutant_predictions(model, specs[:1], x[:bs], batch_size=bs, progress=False, compile=True)
            compile_s = time.perf_counter() - t
            t = time.perf_counter()
            e = mutant_predictions(model, specs, x, batch_size=bs, progress=False)
            te = time.perf_counter() - t
            t = time.perf_counter()
            c = mutant_predictions(model, specs, x, batch_size=bs, progress=False, compile=True)
            tc = time.perf_counter() - t
            agree = min(agree, float((e == c).mean()))
            n = len(specs) * len(x)
            cells[f"threads{threads}_batch{bs}"] = {"eager_pred_s": n / te, "compiled_pred_s": n / tc,
                                                    "compiled_over_eager": te / tc, "warmup_s": compile_s}
    torch.set_num_threads(threads0)
    for threads in (1, 2):
        old, new = cells[f"threads{threads}_batch1000"], cells[f"threads{threads}_batch125"]
        cells[f"threads{threads}_compiled_b125_over_eager_b1000"] = new["compiled_pred_s"] / old["eager_pred_s"]
    return {"lcr_matrix": {"device": "cpu", "model": f"resnet20 ({weights})", "data": source, "n_images": len(x),
                           "n_mutants": len(specs), "label_agreement_compiled_vs_eager": agree, **cells}}
