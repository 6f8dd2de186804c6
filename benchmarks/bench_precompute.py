"""``helpers.tools.precompute`` on 1 vs 2 processes (torch.distributed, gloo), on a real stage: the LCR label
matrix of the ``cifar10`` profile (the committed ResNet20 on the 50,000 + 5,000 train and test images of
the offline CIFAR-10 copy), sliced to ``N_MUTANTS`` mutants of its chosen setting (``filter_gf`` at 0.1 %, as the
committed run chose) on ``N_IMAGES`` images of each split: 2 chunks of 10 mutants x 2 image ranges of 1,000 per
split, 8 label-matrix parts that the 2 processes take from the queue.

One cache folder holds the upstream stages (data, predictions, the final screening), computed once
first; then the label-matrix chunks and parts are removed before each timed run, so every run computes
exactly the same units.  Timed: 1 process x 1 thread, 2 processes x 1 thread (torchrun), and 1 process x 2
threads (torch's default here).  Reported: the stage's seconds (rank 0's, from the precompute summary),
the speedup of 2 processes over 1 and the parallel efficiency (speedup / 2), and whether the three label
matrices are identical.  On a machine with N GPUs, N processes vs 1 is the same command with
``--nproc_per_node=N`` (not measured here: no GPU was lent).

CPU only, by nature: the gloo processes run with ``device=cpu`` (the profile's ``auto`` would take a GPU
when there is one), and the result says ``device: "cpu"``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
N_MUTANTS = 20
N_IMAGES = 2000
SETTING = ["checkpoint=checkpoints/cifar10-resnet20.pt",  # the committed model, on a slice of its data
           *(f"split.limit_{s}={N_IMAGES}" for s in ("train", "val", "test")),
           "lcr.operator=filter_gf", "lcr.rate=0.001", f"lcr.n_mutants={N_MUTANTS}", "lcr.compile=false",
           "device=cpu"]  # CPU processes (gloo), whatever the machine has


def _run(launcher: list[str], art: Path, threads: int) -> dict:
    env = {**os.environ, "COMPANION_ARTIFACTS": str(art), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": str(threads),
           "PYTHONHASHSEED": "0"}
    env.pop("COMPANION_OUTPUT_DIR", None)
    env["PYTHONWARNINGS"] = "ignore::UserWarning"  # the checkpoint's data-hash warning: a slice, on purpose
    t0 = time.perf_counter()
    proc = subprocess.run([*launcher, "-m", "helpers.tools.precompute", "--profile", "cifar10", "--only", "lcr",
                           "--set", *SETTING, f"threads={threads}"], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"stage_s": summary["stages"]["lcr"]["seconds"], "wall_s": round(wall, 1), "world": summary["world"]}


def _matrix(art: Path) -> np.ndarray:
    files = sorted((art / "cifar10").glob("lcr_preds-*.npz"))
    return np.concatenate([np.load(f)["preds"].ravel() for f in files])


def _clear_chunks(art: Path) -> None:
    for f in (art / "cifar10").glob("lcr_preds*"):  # the chunks and their parts
        f.unlink()


def run(quick: bool = False) -> dict:
    if quick or not any((ROOT.parent / "shared" / "data" / n).exists()
                        for n in ("cifar10-jpeg.tar.gz", "cifar10-jpeg")):
        return {}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    with tempfile.TemporaryDirectory(prefix="bench-precompute-") as tmp:
        art = Path(tmp)
        _run([sys.executable], art, 2)  # upstream once: data, predictions, final screening (and the chunks)
        runs, matrices = {}, {}
        for name, launcher, threads in (("1 process x 1 thread", [sys.executable], 1),
                                        ("2 processes x 1 thread", torchrun, 1),
                                        ("1 process x 2 threads", [sys.executable], 2)):
            _clear_chunks(art)
            runs[name] = _run(launcher, art, threads)
            matrices[name] = _matrix(art)
    one, two = runs["1 process x 1 thread"]["stage_s"], runs["2 processes x 1 thread"]["stage_s"]
    ref = matrices["1 process x 1 thread"]
    return {"precompute_lcr_matrix": {
        "device": "cpu",
        "what": f"cifar10 label matrix: {N_MUTANTS} filter_gf mutants x {N_IMAGES} train + {N_IMAGES} test images "
                f"({2 * ((N_MUTANTS + 9) // 10) * ((N_IMAGES + 999) // 1000)} parts: 10 mutants x 1,000 images)",
        "runs": runs, "speedup_2_processes": round(one / two, 2), "parallel_efficiency": round(one / two / 2, 2),
        "speedup_2_processes_vs_2_threads": round(runs["1 process x 2 threads"]["stage_s"] / two, 2),
        "identical_labels": all(np.array_equal(ref, m) for m in matrices.values())}}
