"""`make bench` measures on the device when there is one and records only what ran there.

``python -m benchmarks.run_all --quick`` on the simulated accelerator (helpers/simdevice.py: tensors that
raise like CUDA tensors on mixed devices and on ``.numpy()``), in a subprocess: the device-capable parts
record ``sim``, the CPU-only parts ``cpu``.  And with ``BENCH_DEVICE=cpu`` nothing claims an accelerator,
even with one present.

Left out of the runs: ``conductance`` (slow on its own at one thread, on the CPU as on ``sim``:
Captum's stepped attribution; its device path is :func:`helpers.paper1.conductance.layer_conductance`, covered
by tests/test_simulated_accelerator.py).  ``lcr_matrix`` and ``precompute`` measure nothing with
``--quick`` (CPU-only, and recorded as not run); they are in the sim run for that.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

from helpers.paths import REPO_ROOT

SIM_ONLY = ["lcr", "cfe", "debugging", "lcr_matrix", "precompute"]
CPU_ONLY = ["cfe", "debugging"]


def _run_all(tmp_path, only, **env) -> dict:
    out = tmp_path / "results.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "LCR_BENCH_THREADS": "1",
           "COMPANION_ARTIFACTS": str(tmp_path / "artifacts"), **env}  # a None value: unset
    res = subprocess.run([sys.executable, "-m", "benchmarks.run_all", "--quick", "--only", *only, "--out", str(out)],
                         cwd=REPO_ROOT, env={k: v for k, v in env.items() if v is not None}, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return json.loads(out.read_text())


def _device_records(obj, path=""):
    """Every ("a.b.device", value) in a result: the keys "device" / "forward_device" and the "devices" maps."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            p = f"{path}.{k}" if path else k
            if k in ("device", "forward_device") and isinstance(v, str):
                yield p, v
            elif k == "devices" and isinstance(v, dict):
                yield from ((f"{p}.{kk}", vv) for kk, vv in v.items())
            else:
                yield from _device_records(v, p)


def test_bench_device_choice(monkeypatch):
    """BENCH_DEVICE: cpu is the CPU, an unknown value is an error; describe() says "cpu" for the CPU."""
    from benchmarks.common import bench_device, describe, sync

    monkeypatch.setenv("BENCH_DEVICE", "cpu")
    assert bench_device() == torch.device("cpu")
    assert describe(bench_device()) == "cpu"
    sync(torch.device("cpu"))
    monkeypatch.setenv("BENCH_DEVICE", "tpu")
    with pytest.raises(ValueError, match="BENCH_DEVICE"):
        bench_device()


@pytest.mark.slow
def test_benchmarks_run_on_the_simulated_accelerator(tmp_path):
    r = _run_all(tmp_path, SIM_ONLY, COMPANION_SIMULATED_ACCELERATOR="1", BENCH_DEVICE=None)
    m = r["machine"]
    assert m["accelerator"].startswith("sim:0"), m
    assert sorted(m["not_run"]) == ["lcr_matrix", "precompute"], m  # nothing to measure with --quick
    assert m["devices"]["lcr"].startswith("sim:0") and m["devices"]["debugging"].startswith("sim:0"), m
    # device-capable parts ran on the device
    assert r["lcr"]["device"].startswith("sim:0")
    assert r["lcr"]["evaluator_vmap_pred_s"] > 0  # the accelerator's evaluator (mode="auto" there)
    assert r["debugging"]["accelerator"]["device"].startswith("sim:0")
    assert r["cfe"]["forward_device"].startswith("sim:0")
    for part in ("extract", "naive_forward"):
        assert r["cfe"]["cifar10_k64"]["devices"][part].startswith("sim:0")
    # CPU-only parts: the CPU's thread scaling
    assert r["debugging"]["threads_1"]["device"] == "cpu"
    # the CFE generators train on the device
    for setting in ("cifar10_k64", "synthetic_k512"):
        assert r["cfe"][setting]["devices"]["generator_training"].startswith("sim:0"), r["cfe"][setting]
    assert m["devices"]["cfe"] == r["cfe"]["cifar10_k64"]["devices"]["generator_training"]
    records = dict(_device_records({k: v for k, v in r.items() if k != "machine"}))
    assert all(v == "cpu" or v.startswith("sim:0") for v in records.values()), records
    assert not any("cuda" in v for v in records.values()), records


@pytest.mark.slow
def test_benchmarks_on_the_cpu_claim_no_accelerator(tmp_path):
    """BENCH_DEVICE=cpu with an accelerator present (the simulated one): everything says "cpu"."""
    r = _run_all(tmp_path, CPU_ONLY, COMPANION_SIMULATED_ACCELERATOR="1", BENCH_DEVICE="cpu")
    m = r["machine"]
    assert m["accelerator"] is None, m
    assert set(m["devices"].values()) == {"cpu"}, m
    records = dict(_device_records(r))
    assert records and set(records.values()) == {"cpu"}, records
    assert "accelerator" not in r["debugging"]
