"""``make gpu-check``'s planner (helpers/tools/gpu_check.py), run on a machine without a GPU: the plan and its
budgets are printed and fit the 480 s window, every step writes its result file as it ends, and each status
says what happened: a step that fails is ``failed``, one that runs out of budget ``timed_out`` (its process
tree stopped), one that cannot run ``skipped`` with the reason."""
import copy
import json
import re
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers.tools import gpu_check
from helpers.tools.gpu_check import Context, Step
from helpers.tools.regression import moves, reference_metrics


def test_the_plan_fits_the_window_and_is_printed(capsys):
    plan = gpu_check.default_plan()
    assert [s.name for s in plan] == ["environment", "gpu_tests", "profile", "bench"]
    assert all(s.budget_s > 0 for s in plan)
    assert sum(s.budget_s for s in plan) <= gpu_check.WINDOW_S == 480
    assert gpu_check.main(["--plan"]) == 0
    out = capsys.readouterr().out
    for s in plan:
        assert re.search(rf"\d\. {s.name}\s+{s.budget_s} s ", out), out
    assert f"{sum(s.budget_s for s in plan)} s of budget in a 480 s window" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU this would run the real plan (make gpu-check)")
def test_without_a_gpu_the_plan_records_why_and_exits_cleanly(tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "plan: 4 steps" in out and "bench" in out
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["budget_total_s"] <= 480 and set(results["steps"]) == {"environment", "gpu_tests", "profile",
                                                                         "bench"}
    env = json.loads((tmp_path / "environment.json").read_text())
    assert env["status"] == "passed" and env["facts"]["cuda_available"] is False
    why = env["facts"]["why_not"]
    assert why and env["facts"]["torch"] == torch.__version__
    for name in ("gpu_tests", "profile", "bench"):
        r = json.loads((tmp_path / f"{name}.json").read_text())
        assert r["status"] == "skipped" and why in r["reason"] and "no usable GPU" in r["reason"], r
        assert results["steps"][name] == r


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie has exited, whoever reaps it


def test_statuses_name_what_happened(tmp_path):
    """A command that exits non-zero is ``failed`` (with its exit status), one past its budget ``timed_out``
    with the process it started in a session of its own stopped too (as a papermill kernel), a step that needs
    a GPU without one ``skipped`` with the reason, a step that raises ``failed`` naming the error; each result
    file is written."""
    pidfile = tmp_path / "grandchild.pid"

    def command_step(name, code, budget=30, needs_gpu=False):
        def run(ctx, b):
            r = gpu_check.run_command([sys.executable, "-c", code], ctx.out / f"{name}.log", b)
            return gpu_check.outcome({**r, "budget_s": b}, name)
        return Step(name, budget, name, needs_gpu, run)

    def broken(ctx, budget):
        raise RuntimeError("the step's own bug")

    hang = (f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; "
            f"time.sleep(120)'], start_new_session=True); open({str(pidfile)!r}, 'w').write(str(p.pid)); "
            "print('started', flush=True); time.sleep(120)")
    plan = [command_step("ok", "print('fine')"), command_step("fails", "raise SystemExit(3)"),
            command_step("hangs", hang, budget=4), command_step("needs_gpu", "print('never')", needs_gpu=True),
            Step("broken", 10, "raises", False, broken)]
    ctx = Context(tmp_path / "out", env={"cuda_available": False, "why_not": "no NVIDIA driver / GPU found"})
    t0 = time.perf_counter()
    res = gpu_check.run_plan(plan, ctx)["steps"]
    assert time.perf_counter() - t0 < 30
    assert {k: v["status"] for k, v in res.items()} == {"ok": "passed", "fails": "failed", "hangs": "timed_out",
                                                         "needs_gpu": "skipped", "broken": "failed"}
    assert "exited with 3" in res["fails"]["reason"] and res["fails"]["returncode"] == 3
    assert res["hangs"]["returncode"] is None and "4 s budget" in res["hangs"]["reason"]
    assert res["hangs"]["log_tail"] == ["started"]  # what it wrote before the budget ran out is kept
    assert not _alive(int(pidfile.read_text()))
    assert "no NVIDIA driver" in res["needs_gpu"]["reason"]
    assert "RuntimeError: the step's own bug" in res["broken"]["reason"]
    for name in res:
        assert json.loads((ctx.out / f"{name}.json").read_text())["status"] == res[name]["status"]


@pytest.mark.parametrize("tests, status, reason", [
    ("@pytest.mark.gpu\ndef test_a():\n    assert False\n\n@pytest.mark.gpu\ndef test_b():\n"
     "    raise RuntimeError('x')\n", "failed", "2 failed, 0 errors, 0 passed, 0 skipped"),
    ("@pytest.mark.gpu\ndef test_a():\n    pytest.skip('no CUDA GPU here')\n\n@pytest.mark.gpu\ndef test_b():\n"
     "    pytest.skip('no CUDA GPU here')\n", "skipped", "all 2 tests skipped: no CUDA GPU here"),
    ("@pytest.mark.gpu\ndef test_a():\n    pass\n\n@pytest.mark.gpu\ndef test_b():\n    pytest.skip('later')\n",
     "passed", None),
])
def test_gpu_tests_step_reads_each_outcome(tmp_path, tests, status, reason):
    """The gpu tests' status comes from pytest's report, test by test: tests that all fail are ``failed``
    (not "skipped"), tests that all skip are ``skipped`` with pytest's reason."""
    path = tmp_path / "test_fake_gpu.py"
    path.write_text("import pytest\n\n" + tests)
    ctx = Context(tmp_path / "out", gpu_tests=(str(path),))
    ctx.out.mkdir()
    r = gpu_check.gpu_tests_step(ctx, 60)
    assert r["status"] == status and r.get("reason") == reason, r
    assert len(r["tests"]) == 2


def test_moves_against_the_reference():
    """The profile step's comparison: the reference against itself passes; a number moved past its tolerance
    is named; numbers the run did not write are missing after all notebooks, and listed apart (not run)
    after some."""
    ref = reference_metrics("digits")
    same = gpu_check.against_reference(ref, ref)
    assert same["compared"] > 100 and same["out_of_tolerance"] == same["missing_in_run"] == same["not_run"] == []
    row = next(r for r in moves(ref, ref) if r["tolerance"] and r["key"].startswith("detectors."))
    moved = copy.deepcopy(ref)
    *path, last = row["key"].split(".")
    node = moved
    for p in path:
        node = node[p]
    node[last] += 3 * row["tolerance"]
    assert [r["key"] for r in gpu_check.against_reference(ref, moved)["out_of_tolerance"]] == [row["key"]]
    partial = {k: v for k, v in ref.items() if k != "debugging"}
    debugging = [r["key"] for r in moves(ref, ref) if r["key"].startswith("debugging.")]
    cmp = gpu_check.against_reference(ref, partial, all_notebooks=False)
    assert debugging and cmp["not_run"] == debugging and cmp["missing_in_run"] == [] and not cmp["out_of_tolerance"]
    assert gpu_check.against_reference(ref, partial)["missing_in_run"] == debugging
    del node[last]
    assert gpu_check.against_reference(ref, moved)["missing_in_run"] == [row["key"]]
