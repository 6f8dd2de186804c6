"""Speed and memory of the conductance methods (paper 1, section 3, eq. 5).

One run, same images and model for every method: ResNet20 (pretrained from
../shared/weights when present, else random init: speed does not depend on it),
CIFAR-shaped random images normalised with the CIFAR-10 statistics, batch 128,
n_steps = 10, internal_batch_size = 512 for riemann and captum alike.

Targets (stated, not asserted; see the report of a run):
  * exact   >= 20x captum and within 10% of plain inference (one forward pass);
  * riemann >= 1.5x captum.

Device: the throughput parts run on :func:`benchmarks.common.bench_device` (the GPU when there is one;
``BENCH_DEVICE=cpu`` for the CPU), model and images moved there first, and the device is synchronised
before every clock read; ``setup.device`` says where they ran.  The memory part measures the resident set
size of CPU processes: it runs on the CPU (``riemann_peak_mem.device``).

Timing: warm-up once, then repeats interleaved across the methods (so that load
from other processes on a shared machine hits all of them alike), best repeat
kept, ``time.perf_counter``; torch's default thread count.  Best of 3 for the
slow methods (riemann, captum); best of 10 for the two one-forward ones (exact,
plain inference), whose short rounds are otherwise dominated by noise on a
shared machine.

Memory: growth of the resident set size (sampled every 2 ms by a thread) over its
value at the start, while streaming N and then 4N images through
:func:`helpers.paper1.conductance.conductance_dataset` (riemann), each in a fresh
process with glibc told to hand freed blocks back at once (so RSS follows live
memory); the images are generated on the fly from their index so the dataset
itself takes no memory.  Flat = the same peak for N and 4N.
"""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from helpers.models import build_model
from helpers.paper1.conductance import conductance_dataset, layer_conductance

from .common import bench_device, clock, describe

WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights" / "resnet20-12fca82f.th"
REPEATS, REPEATS_FAST = 3, 10
CIFAR_MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
CIFAR_STD = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)


CPU = torch.device("cpu")


def _images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 32, 32, generator=g)
    return (x - CIFAR_MEAN) / CIFAR_STD


class _GeneratedImages(torch.utils.data.Dataset):
    """Image i is drawn from a generator seeded with i: no storage, stable order."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(10_000 + i)
        x = (torch.rand(1, 3, 32, 32, generator=g) - CIFAR_MEAN) / CIFAR_STD
        return x[0], 0


def _model():
    weights = str(WEIGHTS) if WEIGHTS.is_file() else None
    return build_model("resnet20", 10, weights=weights).eval(), weights is not None


def _timed(fns: dict, n_images: int, repeats: dict | int = 3, device=CPU) -> dict:
    """images/s per function: warm-up once, interleaved rounds, best round kept.

    ``repeats``: rounds per function (an int for all, or a dict name -> rounds).  ``device``: where the
    functions run (synchronised before each clock read).
    """
    reps = repeats if isinstance(repeats, dict) else {k: repeats for k in fns}
    for f in fns.values():
        f(warmup=True)
    best = {k: float("inf") for k in fns}
    for i in range(max(reps.values())):
        for k, f in fns.items():
            if i >= reps[k]:
                continue
            t0 = clock(device)
            f()
            best[k] = min(best[k], clock(device) - t0)
    return {k: n_images / v for k, v in best.items()}


def _loop(fn, batches):
    def run(warmup=False):
        for b in [batches[0][:16]] if warmup else batches:
            fn(b)
    return run


class _PeakRSS:
    def __init__(self, interval=0.002):
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.peak = 0

    def __enter__(self):
        self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._watch, daemon=True)
        self._t.start()
        return self

    def _watch(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def _mem_probe(n: int, batch: int, layer: str, n_steps: int, ibs: int) -> dict:
    """In this process: stream n generated images through conductance_dataset (riemann)."""
    model, _ = _model()
    loader = torch.utils.data.DataLoader(_GeneratedImages(n), batch_size=batch, shuffle=False)
    gc.collect()
    with _PeakRSS() as p:
        start = p.peak
        out = conductance_dataset(model, layer, loader, method="riemann", n_steps=n_steps,
                                  internal_batch_size=ibs, progress=False)
    assert out["conductance"].shape[0] == n
    return {"rss_start_mb": start / 2**20, "peak_growth_mb": (p.peak - start) / 2**20}


def _mem_child(n: int, batch: int, layer: str, n_steps: int, ibs: int) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_conductance", "--mem", str(n), str(batch), layer,
           str(n_steps), str(ibs)]
    # glibc: return freed blocks >= 128 KiB to the OS at once, so that RSS follows the
    # live memory instead of what the allocator keeps around (otherwise the sampled
    # peak depends on fragmentation, not on the method).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
    res = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env,
                         cwd=Path(__file__).resolve().parents[1])
    return json.loads(res.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> dict:
    torch.manual_seed(0)
    n = 128 if quick else 256          # images for the exact-applicable layer
    n_nl = 64 if quick else 128        # images for the nonlinear head (slower methods)
    batch, n_steps, ibs = 128, 10, 512
    dev = bench_device()
    model, pretrained = _model()
    model.to(dev)
    x = _images(n).to(dev)
    batches = list(x.split(batch))
    layer = model.last_conv_layer       # layer3.2: GAP + linear head, exact applies

    def cond(method, lyr):
        return lambda b: layer_conductance(model, lyr, b, n_steps=n_steps, method=method,
                                           internal_batch_size=ibs)

    def infer(b):
        with torch.no_grad():
            model(b)

    r = _timed({
        "exact": _loop(cond("exact", layer), batches),
        "riemann": _loop(cond("riemann", layer), batches),
        "captum": _loop(cond("captum", layer), batches),
        "inference": _loop(infer, batches),
    }, n, repeats={"exact": REPEATS_FAST, "riemann": REPEATS, "captum": REPEATS,
                   "inference": REPEATS_FAST}, device=dev)
    resnet = {
        "layer": layer,
        "n_images": n,
        "exact_img_s": r["exact"],
        "riemann_img_s": r["riemann"],
        "captum_img_s": r["captum"],
        "inference_img_s": r["inference"],
        "exact_over_captum": r["exact"] / r["captum"],          # target >= 20
        "riemann_over_captum": r["riemann"] / r["captum"],      # target >= 1.5
        "exact_over_inference": r["exact"] / r["inference"],    # target >= 0.9
    }

    # A layer where exact does not apply: layer3.1 reaches the logits through the
    # last residual block (convs, ReLUs) before GAP + linear.
    nl_layer = "layer3.1"
    nl_batches = list(x[:n_nl].split(batch))
    r2 = _timed({
        "riemann": _loop(cond("riemann", nl_layer), nl_batches),
        "captum": _loop(cond("captum", nl_layer), nl_batches),
    }, sum(len(b) for b in nl_batches), repeats=REPEATS, device=dev)
    nonlinear = {
        "layer": f"resnet20 {nl_layer}",
        "n_images": sum(len(b) for b in nl_batches),
        "riemann_img_s": r2["riemann"],
        "captum_img_s": r2["captum"],
        "riemann_over_captum": r2["riemann"] / r2["captum"],    # target >= 1.5
    }

    # Peak memory of riemann streaming N and 4N images (must not grow with N), each
    # in a fresh process so that memory kept by the allocator from the runs above
    # does not hide anything.
    n_mem, mem_batch = (32, 32) if quick else (64, 32)
    runs = {k: _mem_child(k, mem_batch, nl_layer, n_steps, ibs) for k in (n_mem, 4 * n_mem)}
    mem = {
        "layer": f"resnet20 {nl_layer}",
        "method": "riemann (conductance_dataset, fresh process per size)",
        "device": "cpu",  # the resident set size of a CPU process
        "batch_size": mem_batch,
        "internal_batch_size": ibs,
        **{f"peak_rss_growth_mb_{k}_images": v["peak_growth_mb"] for k, v in runs.items()},
        **{f"rss_start_mb_{k}_images": v["rss_start_mb"] for k, v in runs.items()},
    }
    return {"conductance": {
        "device": describe(dev),
        "resnet20": resnet,
        "nonlinear_head": nonlinear,
        "riemann_peak_mem": mem,
        "setup": {"n_steps": n_steps, "batch_size": batch, "internal_batch_size": ibs,
                  "pretrained_weights": pretrained, "torch_threads": torch.get_num_threads(),
                  "repeats": {"riemann_captum": REPEATS, "exact_inference": REPEATS_FAST},
                  "device": describe(dev), "quick": quick},
    }}


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--mem":
        n_, b_, layer_, steps_, ibs_ = sys.argv[2:7]
        print(json.dumps(_mem_probe(int(n_), int(b_), layer_, int(steps_), int(ibs_))))
    else:
        print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
