"""`make bench`: run every benchmark in one process, print JSON, write benchmarks/results.json.

    python -m benchmarks.run_all            # full
    python -m benchmarks.run_all --quick    # smoke-sized
    python -m benchmarks.run_all --only cfe debugging   # some benchmarks; the others' results are kept

Each benchmark's result is written as soon as it is done, so a failure later loses nothing.

Device: the benchmarks measure on the GPU when there is one (``BENCH_DEVICE=cpu`` for the CPU; see
benchmarks/common.py); each records the device every part ran on.  The ``machine`` block names the CPU,
the accelerator the benchmarks used (``accelerator``: None when they ran on the CPU) and, per benchmark,
the device its main measurement ran on (``devices``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from helpers.tools.regression import cpu_name
from helpers.utils import atomic_write_json

from . import (
    bench_cfe,
    bench_conductance,
    bench_debugging,
    bench_lcr,
    bench_lcr_matrix,
    bench_precompute,
    bench_stage_costs,
)
from .common import accelerator_name, bench_device

RESULTS = Path(__file__).resolve().parent / "results.json"
MODULES = {"conductance": bench_conductance, "lcr": bench_lcr, "lcr_matrix": bench_lcr_matrix, "cfe": bench_cfe,
           "debugging": bench_debugging, "precompute": bench_precompute, "stage_costs": bench_stage_costs}
#: the result key of each benchmark
KEYS = {"conductance": "conductance", "lcr": "lcr", "lcr_matrix": "lcr_matrix", "cfe": "cfe",
        "debugging": "debugging", "precompute": "precompute_lcr_matrix", "stage_costs": "stage_costs"}


def _devices(results: dict) -> dict:
    """Per benchmark present in ``results``: the device its main measurement ran on (its own record)."""
    return {name: results[key].get("device", "not recorded") for name, key in KEYS.items()
            if isinstance(results.get(key), dict)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--only", nargs="*", choices=sorted(MODULES), help="run these benchmarks, keep the rest")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    kept = json.loads(Path(a.out).read_text()) if a.only and Path(a.out).is_file() else {}
    dev = bench_device()
    machine = {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
               "accelerator": accelerator_name(dev),
               "torch": torch.__version__, "python": platform.python_version(), "quick": a.quick}
    if dev.type == "cpu" and torch.cuda.is_available():
        machine["accelerator_not_used"] = torch.cuda.get_device_name(0)  # BENCH_DEVICE=cpu
    if a.only:
        machine["only"] = a.only
    results = {**kept, "machine": machine}
    for name, mod in MODULES.items():
        if a.only and name not in a.only:
            continue
        out = mod.run(quick=a.quick)
        results.update(out)
        if not out:
            machine.setdefault("not_run", []).append(name)  # nothing to measure in this setting (e.g. --quick)
        machine["devices"] = _devices(results)
        machine["total_s"] = round(time.perf_counter() - t0, 1)
        atomic_write_json(a.out, results)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
