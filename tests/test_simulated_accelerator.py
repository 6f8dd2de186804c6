"""The GPU code path on a simulated accelerator: :mod:`helpers.simdevice` registers a
PrivateUse1 device whose tensors hold CPU data and check every op as CUDA does (mixed devices
raise, ``.numpy()`` of a device tensor raises).  ``device: auto`` picks it when
``COMPANION_SIMULATED_ACCELERATOR=1``.  Each run is a subprocess: the device is registered once per
process and never in the process that runs the rest of the suite."""
import json
import os
import subprocess
import sys

import pytest

from helpers.paths import REPO_ROOT

pytestmark = pytest.mark.slow  # every test here starts processes

#: the six notebooks on digits at tiny settings (the committed model; a few mutants, epochs, seeds)
TINY_DIGITS = {"device": "auto", "conductance.detector.epochs": 3, "joint.folds": 2, "lcr.grid_operators": ["gf"],
               "lcr.grid_rates": [0.05], "lcr.grid_mutants": 2, "lcr.n_mutants": 4, "metrics.n_bootstrap": 50,
               "cfe.epochs": 2, "cfe.folds": 2, "debugging.epochs": 1, "debugging.seeds": 2,
               "debugging.grid": [[0, 0], [1e-3, 2e-5]], "debugging.n_bootstrap": 50}


def _run_simulated(code: str, tmp_path, timeout: int = 900) -> dict:
    report = tmp_path / "sim-report.json"
    env = {**os.environ, "COMPANION_SIMULATED_ACCELERATOR": "1", "COMPANION_SIMULATED_REPORT": str(report),
           "COMPANION_ARTIFACTS": str(tmp_path / "artifacts"), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                         timeout=timeout)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return {"stdout": res.stdout, **json.loads(report.read_text())}


def test_simulated_device_checks_like_cuda(tmp_path):
    """The simulation itself: mixed devices and .numpy() of a device tensor raise, as on CUDA; CPU
    scalars and CPU indices are allowed; syncs are counted by source line."""
    code = """
import torch
from helpers import simdevice
dev = simdevice.register()
x = torch.randn(4, 3).to(dev)
m = torch.nn.Linear(3, 2).to(dev)
m(x).sum().backward()
assert m.weight.grad.device == dev
for bad in (lambda: m(torch.randn(4, 3)), lambda: x.numpy(), lambda: x + torch.ones(4, 3)):
    try:
        bad()
    except (RuntimeError, TypeError):
        pass
    else:
        raise SystemExit("no error")
y = x * torch.tensor(2.0) + x[torch.tensor([0, 2])].sum()   # a 0-dim CPU tensor, CPU indices: allowed
assert y.device == dev and y.cpu().shape == (4, 3)
float(y.sum())
print("ok")
"""
    out = _run_simulated(code, tmp_path)
    assert "ok" in out["stdout"]
    assert out["mismatches"] == 3  # the three refused ops above, counted
    assert sum(out["syncs"].values()) >= 2  # y.cpu() and float(): host-device syncs


def test_device_unit_paths_on_simulated_accelerator(tmp_path):
    """Training, prediction, conductance, LCR (loop and vmap), the debugging fine-tune and Grad-CAM,
    each on the simulated device (its own cache, so nothing is read from the CPU run) and equal to
    the CPU result within float tolerance."""
    code = """
import os, numpy as np, torch
from helpers import simdevice
from helpers.experiment import Experiment
from helpers.paper1.conductance import conductance_dataset
from helpers.paper1.lcr import mutant_predictions
from helpers.paper1.mutation import MutantSpec
from helpers.paper2.debugging import DebugConfig, fine_tune
from helpers import evaluation
from helpers.paper1 import stages as paper1
torch.set_num_threads(1)
root = os.environ["COMPANION_ARTIFACTS"]
tiny = {"checkpoint": None, "training.epochs": 1}
os.environ["COMPANION_ARTIFACTS"] = root + "/cpu"
cpu = Experiment("digits", overrides={**tiny, "device": "cpu"})
os.environ["COMPANION_ARTIFACTS"] = root + "/sim"
sim = Experiment("digits", overrides={**tiny, "device": "auto"})
assert sim.device.type == "sim", sim.device
# training (one epoch) and the prediction table, computed on each device
assert next(sim.model.parameters()).device.type == "sim"
for (k, a), b in zip(cpu.model.state_dict().items(), sim.model.state_dict().values()):
    assert torch.allclose(a, b.cpu(), atol=1e-5), k
a, b = cpu.predictions, sim.predictions
assert np.abs(a.filter(like="logit_").to_numpy() - b.filter(like="logit_").to_numpy()).max() < 1e-4
# conductance on the device
x = evaluation.split_inputs(cpu, "test")[:64]
layer = paper1.conductance_layer(cpu)
c0 = conductance_dataset(cpu.model, layer, [(x, None)], device="cpu", progress=False)["conductance"]
c1 = conductance_dataset(sim.model, layer, [(x, None)], device=sim.device, progress=False)["conductance"]
assert np.allclose(c0, c1, atol=1e-4), abs(c0 - c1).max()
# LCR: loop and vmap on the device give the CPU's labels
specs = [MutantSpec("gf", 0.05, s) for s in range(3)]
p0 = mutant_predictions(cpu.model, specs, x, progress=False)
for mode in ("loop", "vmap"):
    p1 = mutant_predictions(sim.model, specs, x, progress=False, mode=mode)
    assert (p0 == p1).mean() > 0.98, mode
# the debugging fine-tune, both paths (cached prefix, and full forwards with augmentation)
y = torch.as_tensor(cpu.data["test"].labels[:64])
masks = (torch.arange(32)[None] % 10 == torch.arange(10)[:, None]).float()  # 10 classes x 32 filters
for cfg in (DebugConfig(epochs=1, batch_size=4), DebugConfig(epochs=1, batch_size=4, augmentation="crop")):
    r0 = fine_tune(cpu.model, x, y, x, y, masks, cfg, 1e-3, 2e-5, 0)
    r1 = fine_tune(sim.model, x, y, x, y, masks, cfg, 1e-3, 2e-5, 0, device=sim.device)
    assert r1.cached_prefix == (cfg.augmentation == "none")
    assert all(v.device.type == "cpu" for v in r1.state_dict.values())
    assert all(torch.allclose(r0.state_dict[k], r1.state_dict[k], atol=1e-5) for k in r0.state_dict)
print("ok")
"""
    out = _run_simulated(code, tmp_path)
    assert "ok" in out["stdout"] and out["mismatches"] == 0, out
    # no host sync per training or fine-tuning step (15 and 2 x 16 steps here): the running sums are read
    # once per epoch
    steps = {k: v for k, v in out["syncs"].items() if k.endswith((" train_model", " _fine_tune", " debugging_loss"))}
    assert steps and max(steps.values()) <= 8, out["syncs"]


def test_six_notebooks_on_simulated_accelerator(tmp_path):
    """All six notebooks, digits at tiny settings, on the simulated device: no op mixes devices."""
    code = f"""
from helpers.tools.run_notebooks import run
run("digits", {TINY_DIGITS!r}, output_dir={str(tmp_path / 'figs')!r})
"""
    out = _run_simulated(code, tmp_path, timeout=1500)
    assert out["mismatches"] == 0, out
    m = json.loads((tmp_path / "figs" / "metrics.json").read_text())
    assert m["profile"] == "digits"
    assert m["debugging"]["debugged"]["n_seeds"] == 2
    # notebook 05's fine-tunes ran on the device (before: on a CPU copy of the model, one thread)
    import torch

    runs = sorted((tmp_path / "artifacts").rglob("debug_run*.pt"))
    assert len(runs) >= 3 and {torch.load(p, weights_only=False)["device"] for p in runs} == {"sim:0"}
