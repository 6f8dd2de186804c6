"""``make gpu-check``: the checks for a machine with a GPU, as one command.

    python -m helpers.tools.gpu_check                       # everything, results in gpu-check/
    python -m helpers.tools.gpu_check --steps gpu_tests bench --profile cifar10-pretrained

Steps, each a subprocess whose log and outcome are written as soon as it ends, so a failure later
loses nothing (``gpu-check/results.json``, one ``<step>.log`` per step):

1. ``environment``: the GPU, the NVIDIA driver, torch and its CUDA build, and why ``device: auto``
   would fall back to the CPU if it does (a driver older than the build needs);
2. ``gpu_tests``: ``pytest -m gpu`` (``tests/test_gpu.py``: the tiny pipeline on CUDA against the CPU);
3. ``profile``: a profile (default ``cifar10``) end to end on the GPU, from an empty cache, into
   ``gpu-check/figures/<profile>/``; its stage timings (``stages.json``) and every headline number's
   move against the committed CPU reference, with its tolerance (``helpers.tools.regression``);
4. ``bench``: ``benchmarks.run_all`` on the GPU, into ``gpu-check/bench.json``.

What a GPU run shows, and how ``gpu-check/`` is committed from it: docs/gpu.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from helpers.paths import REPO_ROOT
from helpers.utils import atomic_write_json, cli_main

STEPS = ("environment", "gpu_tests", "profile", "bench")


def environment() -> dict:
    import torch

    from helpers.devices import cuda_unusable_reason, nvidia_driver_version

    ok = torch.cuda.is_available()
    return {"torch": torch.__version__, "cuda_build": torch.version.cuda, "driver": nvidia_driver_version(),
            "cuda_available": ok, "gpu": torch.cuda.get_device_name(0) if ok else None,
            "gpu_memory_gb": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if ok else None,
            "why_not": None if ok else (cuda_unusable_reason() or "no NVIDIA driver / GPU found")}


def _run(cmd: list[str], log: Path, env: dict | None = None, timeout: float | None = None) -> dict:
    t0 = time.perf_counter()
    with open(log, "w") as f:
        try:
            rc = subprocess.run(cmd, cwd=REPO_ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=timeout,
                                env={**os.environ, "TQDM_DISABLE": "1", **(env or {})}).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    return {"command": " ".join(cmd), "returncode": rc, "seconds": round(time.perf_counter() - t0, 1),
            "log": str(log.relative_to(REPO_ROOT) if log.is_relative_to(REPO_ROOT) else log)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO_ROOT / "gpu-check"))
    ap.add_argument("--profile", default="cifar10")
    ap.add_argument("--steps", nargs="*", choices=STEPS, default=list(STEPS))
    ap.add_argument("--timeout", type=float, default=None, help="seconds per step (default: none)")
    a = ap.parse_args(argv)
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    res_path = out / "results.json"
    results = json.loads(res_path.read_text()) if res_path.is_file() else {}
    py = sys.executable
    env = environment()
    for step in a.steps:
        print(f"[gpu-check] {step} ...", flush=True)
        if step == "environment":
            r = env
        elif step in ("profile", "bench") and not env["cuda_available"]:
            r = {"skipped": f"no usable GPU ({env['why_not']}): these would measure the CPU"}
        elif step == "gpu_tests":
            r = _run([py, "-m", "pytest", "-q", "-m", "gpu", "tests/test_gpu.py", "-p", "no:cacheprovider"],
                     out / "gpu_tests.log", timeout=a.timeout)
            if " passed" not in (out / "gpu_tests.log").read_text():
                r["skipped"] = "no test ran (no CUDA GPU)"
        elif step == "profile":
            figs = out / "figures" / a.profile
            r = _run([py, "-m", "helpers.tools.run_notebooks", "--profile", a.profile, "--output-dir", str(figs)],
                     out / "profile.log", env={"COMPANION_ARTIFACTS": str(out / "artifacts")}, timeout=a.timeout)
            r["profile"] = a.profile
            if (figs / "stages.json").is_file():
                r["stages"] = json.loads((figs / "stages.json").read_text())
            if (figs / "metrics.json").is_file():
                from helpers.tools.regression import moves, reference_metrics

                ref = reference_metrics(a.profile)
                if ref is not None:
                    rows = moves(ref, json.loads((figs / "metrics.json").read_text()))
                    r["against_cpu_reference"] = {"compared": len(rows), "out_of_tolerance": [x for x in rows
                                                                                          if not x["ok"]]}
        else:
            r = _run([py, "-m", "benchmarks.run_all", "--out", str(out / "bench.json")], out / "bench.log",
                     timeout=a.timeout)
        results[step] = r
        atomic_write_json(res_path, results)
        print(f"[gpu-check] {step}: {json.dumps(r)[:300]}", flush=True)
    failed = [s for s in a.steps if isinstance(results[s], dict) and results[s].get("returncode") not in (None, 0)]
    print(f"[gpu-check] results in {res_path}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(cli_main(main))
