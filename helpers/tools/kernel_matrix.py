"""The kernel matrix: a profile from an empty cache under every instruction set the CPU offers and 1
and 2 threads, each run compared with the committed reference (``make kernel-matrix``; not part of
``make test``).

    python -m helpers.tools.kernel_matrix                       # digits, every ISA x {1, 2} threads
    python -m helpers.tools.kernel_matrix --isa AVX2 --threads 1 --jobs 1

Each setting runs ``python -m helpers.tools.run_notebooks`` in a fresh process with
``ONEDNN_MAX_CPU_ISA`` / ``MKL_ENABLE_INSTRUCTIONS`` set (oneDNN's convolutions and MKL's BLAS then
use only that instruction set), with its own empty artifacts folder and output folder (the committed
figures, notebooks and reference are never touched).  It prints, per headline number, the largest
move over the settings beside its tolerance (:mod:`helpers.tools.regression`), as a Markdown table and
JSON, and writes both to ``--out`` (default ``kernel-matrix/<profile>/``; git-ignored).  The exit
status is 1 when a number moved by more than its tolerance.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from helpers.paths import REPO_ROOT
from helpers.profiles import DEFAULT_PROFILE
from helpers.tools import regression
from helpers.utils import cli_main

#: instruction set -> (cpuinfo flag that must be present, ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS)
ISAS = {"SSE4_2": ("sse4_2", "SSE41", "SSE4_2"),
        "AVX2": ("avx2", "AVX2", "AVX2"),
        "AVX512": ("avx512f", "AVX512_CORE", "AVX512")}


def cpu_flags() -> set[str]:
    return set((regression.cpuinfo("flags") or "").split())


def available_isas() -> list[str]:
    flags = cpu_flags()
    return [isa for isa, (flag, _, _) in ISAS.items() if flag in flags] or ["default"]


def run_setting(profile: str, isa: str, threads: int, work: Path) -> dict:
    """One cold run of the profile under one kernel setting; returns its metrics and wall time."""
    tag = f"{isa}-t{threads}"
    env = {**os.environ, "COMPANION_ARTIFACTS": str(work / tag / "artifacts"), "TQDM_DISABLE": "1",
           "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env.pop("COMPANION_OUTPUT_DIR", None)
    if isa in ISAS:
        _, onednn, mkl = ISAS[isa]
        env.update(ONEDNN_MAX_CPU_ISA=onednn, MKL_ENABLE_INSTRUCTIONS=mkl)
    out = work / tag / "figures"
    cmd = [sys.executable, "-m", "helpers.tools.run_notebooks", "--profile", profile, "--output-dir", str(out),
           "--set", f"threads={threads}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    seconds = round(time.perf_counter() - t0, 1)
    if proc.returncode != 0:
        return {"setting": tag, "seconds": seconds, "error": proc.stderr[-3000:] + proc.stdout[-2000:]}
    return {"setting": tag, "seconds": seconds, "metrics": json.loads((out / "metrics.json").read_text())}


def summarize(reference: dict, runs: list[dict]) -> list[dict]:
    """Per headline number: its tolerance and the largest move over the runs (and which setting)."""
    table: dict[str, dict] = {}
    for run in runs:
        if "metrics" not in run:
            continue
        for row in regression.moves(reference, run["metrics"]):
            t = table.setdefault(row["key"], {"key": row["key"], "reference": row["reference"],
                                              "tolerance": row["tolerance"], "basis": row["basis"],
                                              "largest_move": 0.0, "at": None, "ok": True})
            if row["move"] is None:
                t.update(largest_move=None, at=run["setting"], ok=False if row["tolerance"] is not None else t["ok"])
            elif t["largest_move"] is not None and row["move"] > t["largest_move"]:
                t.update(largest_move=row["move"], at=run["setting"])
            t["ok"] = t["ok"] and row["ok"]
    return list(table.values())


def markdown(rows: list[dict], runs: list[dict], cpu: str) -> str:
    lines = [f"CPU: {cpu}; settings: " + ", ".join(f"{r['setting']} ({r['seconds']:.0f} s"
                                                   + (", FAILED" if "error" in r else "") + ")" for r in runs), "",
             "| headline number | reference | largest move | at | tolerance | basis | ok |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        move = "missing" if r["largest_move"] is None else f"{r['largest_move']:.4f}"
        tol = "not compared" if r["tolerance"] is None else f"{r['tolerance']:.4f}"
        ref = "" if r["reference"] is None else f"{r['reference']:.4f}"
        lines.append(f"| {r['key']} | {ref} | {move} | {r['at'] or ''} | {tol} | {r['basis']} | "
                     f"{'yes' if r['ok'] else '**no**'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=DEFAULT_PROFILE)
    ap.add_argument("--isa", nargs="*", help=f"instruction sets to run (default: those the CPU has of {list(ISAS)})")
    ap.add_argument("--threads", nargs="*", type=int, default=[1, 2])
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                    help="settings run at once (a 2-thread setting counts as 2)")
    ap.add_argument("--out", default=None, help="where the table goes (default kernel-matrix/<profile>/)")
    a = ap.parse_args(argv)
    reference = regression.reference_metrics(a.profile)
    if reference is None:
        raise SystemExit(f"--profile: no committed reference for {a.profile!r} in {regression.REFERENCE_DIR}")
    isas = a.isa or available_isas()
    bad = [i for i in isas if i not in ISAS and i != "default"]
    if bad:
        raise SystemExit(f"--isa: {bad} unknown; valid: {list(ISAS)}")
    settings = [(isa, t) for isa in isas for t in a.threads]
    out = Path(a.out or REPO_ROOT / "kernel-matrix" / a.profile)
    with tempfile.TemporaryDirectory(prefix="kernel-matrix-") as tmp:
        # one-thread settings two at a time on two cores, a two-thread setting alone
        ones = [s for s in settings if s[1] == 1]
        rest = [s for s in settings if s[1] != 1]
        runs = []
        with ThreadPoolExecutor(max_workers=max(1, a.jobs)) as pool:
            runs += list(pool.map(lambda s: run_setting(a.profile, s[0], s[1], Path(tmp)), ones))
        for s in rest:
            runs.append(run_setting(a.profile, s[0], s[1], Path(tmp)))
        for r in runs:
            print(f"{r['setting']}: {r['seconds']} s" + (f" FAILED\n{r['error']}" if "error" in r else ""), flush=True)
    rows = summarize(reference, runs)
    text = markdown(rows, runs, regression.cpu_name())
    out.mkdir(parents=True, exist_ok=True)
    (out / "kernel_matrix.md").write_text(text + "\n")
    (out / "kernel_matrix.json").write_text(json.dumps(
        {"cpu": regression.cpu_name(), "flags": sorted(f for f in cpu_flags() if f.startswith(("sse4", "avx"))),
         "runs": [{k: v for k, v in r.items() if k != "metrics"} for r in runs], "rows": rows}, indent=1))
    print(text)
    return 0 if all(r["ok"] for r in rows) and all("error" not in r for r in runs) else 1


if __name__ == "__main__":
    sys.exit(cli_main(main))
