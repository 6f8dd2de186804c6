"""``make gpu-check``: the first measurements on a machine with a CUDA GPU, planned to fit one 8-minute window.

    python -m helpers.tools.gpu_check                  # the plan below; results in gpu-check/
    python -m helpers.tools.gpu_check --plan           # print the plan and its budgets, run nothing
    python -m helpers.tools.gpu_check --steps environment gpu_tests
    python -m helpers.tools.gpu_check --simulate       # the plan on the simulated accelerator (no GPU needed)

The plan: four steps, each a subprocess with its own time budget (its timeout); the budgets add up to
:data:`WINDOW_S` (480 s, one H100 / H200 window from a warm venv; docs/gpu.md gives each step's estimate and
what it rests on):

1. ``environment`` (30 s): torch, its CUDA and cuDNN builds, the NVIDIA driver, each GPU (name, memory,
   compute capability, free memory), bf16 and TF32 support, and why ``device: auto`` would use the CPU;
2. ``gpu_tests`` (90 s): ``pytest -m gpu tests/test_gpu.py`` (the tiny pipeline on CUDA against the CPU,
   deterministic settings, AMP training), its outcome read from a JUnit XML report, test by test;
3. ``profile`` (240 s): ``digits`` end to end on the GPU (``device=cuda deterministic=true``: no TF32, the
   kernels the CPU comparison needs) from an empty cache, into ``<out>/figures/digits/``: every stage's and
   notebook's time, and every headline number's move against the committed CPU reference
   (``tests/reference/digits``) with its tolerance (:func:`helpers.tools.regression.moves`);
4. ``bench`` (120 s): the benchmarks' device variants at smoke size (``benchmarks.run_all --quick --only
   conductance lcr cfe debugging`` with ``BENCH_DEVICE=cuda``) into ``<out>/bench-results.json``.

Each step ends with one status, written to ``<out>/<step>.json`` the moment it ends (and into
``<out>/results.json`` beside the plan), so a window cut short keeps every number measured so far:

- ``passed``;
- ``failed``, with the reason: a non-zero exit, a failing or erroring test, a headline number out of
  tolerance, a headline missing from the run;
- ``skipped``, with the reason: no usable GPU (the step would measure the CPU), or every test skipped;
- ``timed_out``: its budget ran out; its process tree is stopped and what it had written is kept (the stages
  and notebooks that finished, the benchmarks that finished).

Without a usable GPU the environment step still runs and records why; the other steps are recorded as
skipped with that reason, and the command exits 0.  With a GPU it exits 1 when a step failed or timed out.
``--simulate`` runs the profile and bench steps on the simulated accelerator of :mod:`helpers.simdevice`
(``COMPANION_SIMULATED_ACCELERATOR=1``, ``device=auto``): it checks the plan's commands and their placement
on a machine without a GPU; its times are the CPU's, not a GPU's.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from helpers.paths import REPO_ROOT
from helpers.utils import atomic_write_json, cli_main

#: the device window the plan is sized for: its budgets add up to at most this many seconds
WINDOW_S = 480
STATUSES = ("passed", "failed", "skipped", "timed_out")
#: the benchmarks with a device variant (lcr_matrix and precompute are CPU-only and measure nothing at --quick)
BENCHMARKS = ("conductance", "lcr", "cfe", "debugging")
DEFAULT_PROFILE = "digits"


# --------------------------------------------------------------------------- the environment
def environment() -> dict:
    """What the machine offers a GPU run: torch and its CUDA / cuDNN builds, the NVIDIA driver (the kernel
    module's, and ``nvidia-smi``'s view when it is installed), each visible GPU, and ``why_not``: why
    ``device: auto`` would use the CPU (None when CUDA is usable)."""
    import platform

    import torch

    from helpers.devices import cuda_unusable_reason, nvidia_driver_version

    ok = torch.cuda.is_available()
    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda_build": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           "driver": nvidia_driver_version(), "cpu_count": os.cpu_count(), "cuda_available": ok,
           "gpus": [], "nvidia_smi": None,
           "why_not": None if ok else (cuda_unusable_reason() or "no NVIDIA driver / GPU found")}
    if shutil.which("nvidia-smi"):
        try:
            env["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,memory.used,utilization.gpu,"
                 "temperature.gpu,power.limit,clocks.max.sm,mig.mode.current", "--format=csv"],
                capture_output=True, text=True, timeout=15).stdout.strip().splitlines()
        except (OSError, subprocess.SubprocessError) as e:
            env["nvidia_smi"] = f"failed: {e}"
    if ok:
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            free, total = torch.cuda.mem_get_info(i)
            env["gpus"].append({"index": i, "name": p.name, "memory_gb": round(total / 2**30, 1),
                                "free_gb": round(free / 2**30, 1), "compute_capability": f"{p.major}.{p.minor}",
                                "multiprocessors": p.multi_processor_count})
        env["bf16_supported"] = torch.cuda.is_bf16_supported()
        env["tf32_capable"] = torch.cuda.get_device_capability(0)[0] >= 8
        t0 = time.perf_counter()
        torch.ones(1, device="cuda").sum().item()
        env["first_kernel_s"] = round(time.perf_counter() - t0, 3)  # the CUDA context's start-up, roughly
    return env


# --------------------------------------------------------------------------- running one command
def _started(pid: int) -> str | None:
    """A process's start time (``/proc/<pid>/stat``), which tells it from a later process given the same id."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _descendants(pid: int) -> list[tuple[int, str]]:
    """The processes below ``pid`` (Linux ``/proc``), each with its start time: a papermill kernel starts in a
    session of its own, so killing the step's process group alone could leave it running on the GPU."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append((c, _started(c)))
            todo.append(c)
    return out


def _stop(proc: subprocess.Popen) -> None:
    """Stop a step's process and every process it started: SIGTERM, then SIGKILL to those still there after
    5 s.  Only the processes found below it are signalled, each checked by its start time first."""
    tree = [(proc.pid, _started(proc.pid)), *_descendants(proc.pid)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid, started in tree:
            if started is not None and _started(pid) == started:
                try:
                    os.kill(pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            continue
        time.sleep(0.5)  # the step's own process is gone: give the rest of its tree the same moment


def run_command(cmd: list[str], log: Path, budget_s: float, env: dict | None = None) -> dict:
    """Run ``cmd`` from the repository root with its output in ``log``, for at most ``budget_s`` seconds.
    Returns ``returncode`` (None when it timed out), ``timed_out``, ``seconds`` and the log's last lines."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "TQDM_DISABLE": "1", **(env or {})})
        try:
            rc, timed_out = proc.wait(timeout=budget_s), False
        except subprocess.TimeoutExpired:
            _stop(proc)
            rc, timed_out = None, True
    tail = log.read_text(errors="replace").splitlines()[-15:]
    return {"command": " ".join(cmd), "returncode": rc, "timed_out": timed_out,
            "seconds": round(time.perf_counter() - t0, 1), "log": _shown(log), "log_tail": tail}


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path)


def outcome(r: dict, what: str) -> dict:
    """A step's status from its command's result (:func:`run_command` with the step's ``budget_s``):
    ``timed_out``, ``failed`` (a non-zero exit, named with the log) or ``passed``; a step refines it afterwards
    (a failing test, a number out of tolerance)."""
    if r["timed_out"]:
        return {**r, "status": "timed_out", "reason": f"{what} did not finish within its {r['budget_s']} s budget"}
    if r["returncode"] != 0:
        return {**r, "status": "failed", "reason": f"{what} exited with {r['returncode']} (log: {r['log']})"}
    return {**r, "status": "passed"}


# --------------------------------------------------------------------------- the steps
@dataclass
class Context:
    """What the steps share: the output folder, the environment step's findings, the options."""

    out: Path
    profile: str = DEFAULT_PROFILE
    only: list[str] | None = None
    simulate: bool = False
    gpu_tests: tuple[str, ...] = ("tests/test_gpu.py",)
    env: dict = field(default_factory=dict)

    @property
    def device_env(self) -> dict:
        """Environment variables of the device steps: the simulated accelerator with ``--simulate``."""
        return {"COMPANION_SIMULATED_ACCELERATOR": "1"} if self.simulate else {}


@dataclass(frozen=True)
class Step:
    name: str
    budget_s: int
    what: str
    needs_gpu: bool
    run: Callable[[Context, int], dict]


def environment_step(ctx: Context, budget: int) -> dict:
    """:func:`environment` in a subprocess (a hung CUDA start-up cannot stall the plan)."""
    path = ctx.out / "environment.facts.json"
    code = ("import json, sys; from helpers.tools.gpu_check import environment; "
            "open(sys.argv[1], 'w').write(json.dumps(environment(), indent=1))")
    r = outcome({**run_command([sys.executable, "-c", code, str(path)], ctx.out / "environment.log", budget),
                 "budget_s": budget}, "the environment probe")
    if path.is_file():
        ctx.env.update(json.loads(path.read_text()))
        r["facts"] = dict(ctx.env)
    elif r["status"] == "passed":
        r.update(status="failed", reason="the environment probe wrote no facts")
    return r


def junit_outcome(xml_path: Path) -> dict:
    """Per test of a JUnit XML report (pytest ``--junitxml``): passed, failed, error or skipped (with the skip
    reason); and the counts."""
    tests = []
    for case in ET.parse(xml_path).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        kids = {c.tag: c for c in case}
        if "failure" in kids or "error" in kids:
            tag = "failure" if "failure" in kids else "error"
            tests.append({"test": name, "outcome": "failed" if tag == "failure" else "error",
                          "message": (kids[tag].get("message") or "")[:500]})
        elif "skipped" in kids:
            tests.append({"test": name, "outcome": "skipped", "message": (kids["skipped"].get("message") or "")[:500]})
        else:
            tests.append({"test": name, "outcome": "passed", "seconds": float(case.get("time") or 0)})
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "error", "skipped")}
    return {"counts": counts, "tests": tests}


def gpu_tests_step(ctx: Context, budget: int) -> dict:
    """``pytest -m gpu`` on :attr:`Context.gpu_tests`; the status from the JUnit report: ``failed`` when any
    test failed or erred (or none was collected), ``skipped`` (with pytest's reasons) when every test skipped,
    else ``passed``."""
    xml = ctx.out / "gpu_tests.xml"
    xml.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", *ctx.gpu_tests, "-p", "no:cacheprovider",
           "-p", "no:nbval", f"--junitxml={xml}"]  # (nbval: 2 s of imports the gpu tests do not need)
    r = outcome({**run_command(cmd, ctx.out / "gpu_tests.log", budget), "budget_s": budget}, "pytest -m gpu")
    if not xml.is_file():
        if r["status"] == "passed":
            r.update(status="failed", reason="pytest wrote no JUnit report")
        return r
    r.update(junit_outcome(xml))
    c = r["counts"]
    if r["status"] == "timed_out":
        return r
    if c["failed"] or c["error"]:
        r.update(status="failed", reason=f"{c['failed']} failed, {c['error']} errors, {c['passed']} passed, "
                                         f"{c['skipped']} skipped")
    elif not any(c.values()):
        r.update(status="failed", reason=f"no gpu test was collected (pytest exit {r['returncode']})")
    elif not c["passed"]:
        reasons = sorted({t["message"] for t in r["tests"]})
        r.update(status="skipped", reason=f"all {c['skipped']} tests skipped: {'; '.join(reasons)}")
    elif r["returncode"] != 0:
        r.update(status="failed", reason=f"pytest exited with {r['returncode']} although no test failed")
    else:
        r.update(status="passed", reason=None)
    return r


def against_reference(reference: dict, actual: dict, all_notebooks: bool = True) -> dict:
    """Every headline number of ``actual`` against the committed ``reference``
    (:func:`helpers.tools.regression.moves`): ``compared`` (how many both have), ``out_of_tolerance`` (their
    rows), ``missing_in_run`` (numbers of the reference the run did not write: a failure after all notebooks;
    after some, ``--only``, they are listed under ``not_run`` instead, since a notebook adds to sections
    that others write too) and ``not_in_reference`` (new numbers, not compared)."""
    from helpers.tools.regression import moves

    rows = moves(reference, actual)
    both = [r for r in rows if r["reference"] is not None and r["actual"] is not None]
    ref_only = [r["key"] for r in rows if r["actual"] is None and r["reference"] is not None]
    return {"compared": len(both), "out_of_tolerance": [r for r in both if not r["ok"]],
            "missing_in_run": ref_only if all_notebooks else [], "not_run": [] if all_notebooks else ref_only,
            "not_in_reference": [r["key"] for r in rows if r["reference"] is None and r["actual"] is not None]}


def _stage_times(stages: dict) -> dict:
    """Seconds per stage kind (summed over its cache entries) and per notebook, from a ``stages.json``."""
    per_kind: dict[str, dict] = {}
    for rec in stages.get("stages", {}).values():
        k = per_kind.setdefault(rec.get("stage", "?"), {"n": 0, "seconds": 0.0, "device": rec.get("device")})
        k["n"] += 1
        k["seconds"] = round(k["seconds"] + float(rec.get("seconds") or 0), 2)
    return {"per_stage": dict(sorted(per_kind.items(), key=lambda kv: -kv[1]["seconds"])),
            "notebooks": stages.get("notebooks", {})}


def profile_step(ctx: Context, budget: int) -> dict:
    """The profile end to end on the device from an empty cache, its stage timings and its moves against the
    committed reference (``failed`` when a number is out of tolerance or missing from a section the run wrote)."""
    import re

    from helpers.tools.regression import reference_metrics

    figs, cache = ctx.out / "figures" / Path(ctx.profile).stem, ctx.out / "artifacts"
    shutil.rmtree(cache, ignore_errors=True)  # from an empty cache: every stage computed on this device
    shutil.rmtree(figs, ignore_errors=True)
    device = "auto" if ctx.simulate else "cuda"
    cmd = [sys.executable, "-m", "helpers.tools.run_notebooks", "--profile", ctx.profile, "--set",
           f"device={device}", "deterministic=true", "--output-dir", str(figs)]
    if ctx.only:
        cmd += ["--only", *ctx.only]
    r = outcome({**run_command(cmd, ctx.out / "profile.log", budget,
                               env={"COMPANION_ARTIFACTS": str(cache), **ctx.device_env}), "budget_s": budget},
                f"the {ctx.profile} notebooks")
    r["profile"] = ctx.profile
    log = (ctx.out / "profile.log").read_text(errors="replace")
    finished = re.findall(r"\] (\S+\.ipynb) (?:done in|stepped aside after) ([0-9.]+) s", log)
    r["notebooks_done"] = {nb: float(sec) for nb, sec in finished}  # from the log: kept when the budget ran out
    if (figs / "stages.json").is_file():
        r.update(_stage_times(json.loads((figs / "stages.json").read_text())))
    metrics = figs / "metrics.json"
    ref = reference_metrics(Path(ctx.profile).stem)
    if not metrics.is_file() or ref is None:
        r["against_cpu_reference"] = None if ref is not None else f"no committed reference for {ctx.profile}"
        return r
    cmp = against_reference(ref, json.loads(metrics.read_text()), all_notebooks=not ctx.only)
    r["against_cpu_reference"] = cmp
    if r["status"] == "passed" and (cmp["out_of_tolerance"] or cmp["missing_in_run"]):
        bad = [row["key"] for row in cmp["out_of_tolerance"]] + cmp["missing_in_run"]
        r.update(status="failed", reason=f"{len(cmp['out_of_tolerance'])} of {cmp['compared']} headline numbers "
                                         f"beyond their tolerance, {len(cmp['missing_in_run'])} missing: "
                                         + ", ".join(bad[:10]))
    return r


def bench_step(ctx: Context, budget: int) -> dict:
    """The benchmarks' device variants at smoke size; what finished is kept (``run_all`` writes its file after
    each benchmark)."""
    out = ctx.out / "bench-results.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "benchmarks.run_all", "--quick", "--only", *BENCHMARKS, "--out", str(out)]
    env = {"BENCH_DEVICE": "auto" if ctx.simulate else "cuda", **ctx.device_env}
    r = outcome({**run_command(cmd, ctx.out / "bench.log", budget, env=env), "budget_s": budget}, "the benchmarks")
    if out.is_file():
        res = json.loads(out.read_text())
        machine = res.get("machine", {})
        r.update(results=_shown(out), devices=machine.get("devices"), total_s=machine.get("total_s"),
                 finished=[k for k in res if k != "machine"])
    elif r["status"] == "passed":
        r.update(status="failed", reason="benchmarks.run_all wrote no results")
    return r


def default_plan(profile: str = DEFAULT_PROFILE) -> list[Step]:
    """The four steps of ``make gpu-check`` and their budgets (seconds; the sum is at most :data:`WINDOW_S`,
    for ``digits``: another profile needs ``--budget profile=...`` and a longer window)."""
    return [
        Step("environment", 30, "torch, CUDA / cuDNN builds, driver, GPUs, why auto would use the CPU", False,
             environment_step),
        Step("gpu_tests", 90, "pytest -m gpu tests/test_gpu.py: the tiny pipeline on CUDA against the CPU", True,
             gpu_tests_step),
        Step("profile", 240, f"{profile} end to end on the GPU (deterministic) from an empty cache: stage times, "
             f"moves against tests/reference/{Path(profile).stem}", True, profile_step),
        Step("bench", 120, f"benchmarks.run_all --quick --only {' '.join(BENCHMARKS)} on the GPU", True, bench_step),
    ]


# --------------------------------------------------------------------------- the plan
def format_plan(plan: list[Step], window: int = WINDOW_S) -> str:
    lines = [f"[gpu-check] plan: {len(plan)} steps, {sum(s.budget_s for s in plan)} s of budget in a "
             f"{window} s window"]
    lines += [f"[gpu-check]   {i}. {s.name:<12} {s.budget_s:>4} s  {s.what}" for i, s in enumerate(plan, 1)]
    return "\n".join(lines)


def run_plan(plan: list[Step], ctx: Context, window: int = WINDOW_S) -> dict:
    """Run the steps in order, each within its budget, writing ``<out>/<step>.json`` and ``<out>/results.json``
    as each ends.  A step that needs a GPU is skipped, with the environment's reason, when there is none
    (unless simulating).  Returns the results."""
    ctx.out.mkdir(parents=True, exist_ok=True)
    print(format_plan(plan, window), flush=True)
    results = {"plan": [{"step": s.name, "budget_s": s.budget_s, "what": s.what, "needs_gpu": s.needs_gpu}
                        for s in plan],
               "window_s": window, "budget_total_s": sum(s.budget_s for s in plan), "simulated": ctx.simulate,
               "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "steps": {}}
    if results["budget_total_s"] > window:
        print(f"[gpu-check] warning: the budgets add up to {results['budget_total_s']} s, more than the "
              f"{window} s window", flush=True)
    t0 = time.perf_counter()
    for step in plan:
        print(f"[gpu-check] {step.name} (budget {step.budget_s} s) ...", flush=True)
        gpu = ctx.simulate or ctx.env.get("cuda_available")
        if step.needs_gpu and not gpu:
            why = ctx.env.get("why_not") or "the environment step did not run or did not finish"
            r = {"status": "skipped", "reason": f"no usable GPU ({why}): this step would measure the CPU",
                 "budget_s": step.budget_s, "seconds": 0.0}
        else:
            try:
                r = step.run(ctx, step.budget_s)
            except Exception as e:  # a step's own bug: named, and the plan goes on
                r = {"status": "failed", "reason": f"{type(e).__name__}: {e}", "budget_s": step.budget_s}
        if step.needs_gpu and ctx.simulate and r.get("status") != "skipped":
            r["simulated"] = True
        results["steps"][step.name] = r
        results["elapsed_s"] = round(time.perf_counter() - t0, 1)
        atomic_write_json(ctx.out / f"{step.name}.json", r)
        atomic_write_json(ctx.out / "results.json", results)
        why = f": {r['reason']}" if r.get("reason") else ""
        print(f"[gpu-check] {step.name}: {r['status']} in {r.get('seconds', 0)} s{why}", flush=True)
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    atomic_write_json(ctx.out / "results.json", results)
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO_ROOT / "gpu-check"))
    ap.add_argument("--profile", default=DEFAULT_PROFILE,
                    help="the profile of the profile step (default digits: the one that fits the window)")
    ap.add_argument("--only", nargs="+", help="notebook prefixes of the profile step, e.g. 00 01 02 03 04")
    ap.add_argument("--steps", nargs="*", default=None, help="run these steps of the plan (default: all)")
    ap.add_argument("--budget", nargs="*", default=[], metavar="STEP=SECONDS",
                    help="another budget for a step (e.g. profile=1800 for a larger profile)")
    ap.add_argument("--plan", action="store_true", help="print the plan and run nothing")
    ap.add_argument("--simulate", action="store_true",
                    help="run the device steps on the simulated accelerator (helpers.simdevice)")
    a = ap.parse_args(argv)
    plan = default_plan(a.profile)
    names = [s.name for s in plan]
    budgets = {}
    for item in a.budget:
        k, _, v = item.partition("=")
        if k not in names or not v.isdigit():
            ap.error(f"--budget {item!r}: expected STEP=SECONDS with STEP one of {', '.join(names)}")
        budgets[k] = int(v)
    if a.steps is not None and (bad := [s for s in a.steps if s not in names]):
        ap.error(f"--steps {bad}: not steps of the plan ({', '.join(names)})")
    plan = [Step(s.name, budgets.get(s.name, s.budget_s), s.what, s.needs_gpu, s.run) for s in plan
            if a.steps is None or s.name in a.steps or s.name == "environment"]  # the others need its findings
    if a.plan:
        print(format_plan(plan))
        return 0
    ctx = Context(Path(a.out).resolve(), profile=a.profile, only=a.only, simulate=a.simulate)
    results = run_plan(plan, ctx)
    bad = [n for n, r in results["steps"].items() if r["status"] in ("failed", "timed_out")]
    print(f"[gpu-check] results in {ctx.out / 'results.json'}"
          + (f"; failed or timed out: {', '.join(bad)}" if bad else ""), flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(cli_main(main))
