"""`make bench`: run every benchmark in one process, print JSON, write benchmarks/results.json.

    python -m benchmarks.run_all            # full (a few minutes on 2 CPU cores)
    python -m benchmarks.run_all --quick    # smoke-sized
    python -m benchmarks.run_all --only cfe debugging   # some benchmarks; the others' results are kept

Each benchmark's result is written as soon as it is done, so a failure later loses nothing.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from helpers.utils import atomic_write_json

from . import bench_cfe, bench_conductance, bench_debugging, bench_lcr, bench_lcr_matrix, bench_precompute

RESULTS = Path(__file__).resolve().parent / "results.json"
MODULES = {"conductance": bench_conductance, "lcr": bench_lcr, "lcr_matrix": bench_lcr_matrix, "cfe": bench_cfe,
           "debugging": bench_debugging, "precompute": bench_precompute}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--only", nargs="*", choices=sorted(MODULES), help="run these benchmarks, keep the rest")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    kept = json.loads(Path(a.out).read_text()) if a.only and Path(a.out).is_file() else {}
    results = {**kept, "machine": {"cpu_count": torch.get_num_threads(), "device": "cuda" if torch.cuda.is_available() else "cpu",
                           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                           "torch": torch.__version__, "python": platform.python_version(), "quick": a.quick}}
    if a.only:
        results["machine"]["only"] = a.only
    for name, mod in MODULES.items():
        if a.only and name not in a.only:
            continue
        results.update(mod.run(quick=a.quick))
        results["machine"]["total_s"] = round(time.perf_counter() - t0, 1)
        atomic_write_json(a.out, results)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
