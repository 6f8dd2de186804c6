"""The GPU code path on a simulated accelerator: :mod:`helpers.simdevice` registers a
PrivateUse1 device whose tensors hold CPU data and check every op as CUDA does (mixed devices
raise, ``.numpy()`` of a device tensor raises).  ``device: auto`` picks it when
``COMPANION_SIMULATED_ACCELERATOR=1``.  Each run is a subprocess: the device is registered once per
process and never in the process that runs the rest of the suite."""
import collections
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


#: the functions whose body runs once per training or fine-tuning step ("file function", as the report names them)
STEP_FUNCTIONS = {"helpers/training.py train_model", "helpers/paper2/debugging.py _fine_tune",
                  "helpers/paper2/debugging.py debugging_loss", "helpers/paper2/debugging.py full",
                  "helpers/paper2/debugging.py suffix", "helpers/models.py forward",
                  "helpers/models.py pooled_forward"}


def per_step_syncs(syncs: dict, limit: int = 8) -> dict:
    """The lines of :data:`STEP_FUNCTIONS` that synchronised with the host more than ``limit`` times: none when
    the running sums are read once per epoch.  The runs below have 1 or 2 epochs per call and at least 15
    steps per epoch, so a sync written in a step's code (charged to its own line: helpers.simdevice) counts
    at least 15 at that line and a once-per-epoch read at most 2 per call."""
    def where(key):  # "file:line function" -> "file function"
        path_line, _, function = key.rpartition(" ")
        return f"{path_line.rpartition(':')[0]} {function}"

    return {k: v for k, v in syncs.items() if where(k) in STEP_FUNCTIONS and v > limit}


def _run_simulated(code: str, tmp_path, timeout: int = 900) -> dict:
    """Run ``code`` in a process with the simulated accelerator; returns its stdout, every process's report
    (``reports``) and, summed over them, ``mismatches`` and ``syncs``."""
    reports = tmp_path / "sim-reports"
    env = {**os.environ, "COMPANION_SIMULATED_ACCELERATOR": "1", "COMPANION_SIMULATED_REPORT": str(reports),
           "COMPANION_ARTIFACTS": str(tmp_path / "artifacts"), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("COMPANION_NOTEBOOK", None)
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                         timeout=timeout)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    found = [json.loads(p.read_text()) for p in sorted(reports.glob("*.json"))]
    assert found, f"no simulator report in {reports}"
    syncs = collections.Counter()
    for r in found:
        syncs.update(r["syncs"])
    return {"stdout": res.stdout, "reports": found, "mismatches": sum(r["mismatches"] for r in found),
            "syncs": dict(syncs)}


def _phases(stdout: str) -> dict:
    """The ``PHASES {json}`` line a test's code prints: the syncs of each phase it ran."""
    line = next(x for x in stdout.splitlines() if x.startswith("PHASES "))
    return json.loads(line[len("PHASES "):])


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
    assert len(out["reports"]) == 1 and out["reports"][0]["notebook"] is None
    assert out["mismatches"] == 3  # the three refused ops above, counted
    # y.cpu() and float(): host-device syncs, each charged to its own line of the script (lines 17 and 18)
    assert out["syncs"] == {"<string>:17 <module>": 1, "<string>:18 <module>": 1}, out["syncs"]


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
    # once per epoch, at lines of train_model and _fine_tune
    assert per_step_syncs(out["syncs"]) == {}, out["syncs"]
    assert any(k.endswith(" train_model") for k in out["syncs"]), out["syncs"]
    assert any(k.endswith(" _fine_tune") for k in out["syncs"]), out["syncs"]


#: in a test's process: digits data and a fresh small CNN (no training), ``plant`` to write a sync into a loop
SETUP = """
import inspect, json, torch
from helpers import evaluation, simdevice, training
from helpers.experiment import Experiment
from helpers.paper2 import debugging
torch.set_num_threads(1)
exp = Experiment("digits", overrides={"checkpoint": None, "device": "auto"})
dev = exp.device
assert dev.type == "sim", dev
tcfg = {**exp.cfg["training"], "epochs": 1}
bundle = exp.data.model_bundle()
x = evaluation.split_inputs(exp, "test")[:64]
y = torch.as_tensor(exp.data["test"].labels[:64])
masks = (torch.arange(32)[None] % 10 == torch.arange(10)[:, None]).float()

def syncs_of(run):
    simdevice.stats["syncs"].clear()
    run()
    return dict(simdevice.stats["syncs"])

def plant(module, function, anchor):
    # `loss.item()` after the line `anchor` of `function`'s per-batch loop, compiled under the module's own file
    # name and line numbers: a probe written into the source.  Returns the planted line's number.
    lines, first = inspect.getsourcelines(getattr(module, function))
    i = next(j for j, line in enumerate(lines) if line.strip() == anchor)
    lines.insert(i + 1, lines[i][:len(lines[i]) - len(lines[i].lstrip())] + "loss.item()\\n")
    exec(compile("\\n" * (first - 1) + "".join(lines), module.__file__, "exec"), module.__dict__)
    return first + i + 1
"""


#: in the same process: AMP training (fused, then unfused optimizer), then the planted syncs
STEPS = SETUP + """
import math
dtypes = set()
def amp_run():
    model = exp.build_model()
    hooks = [m.register_forward_hook(lambda m, i, o: dtypes.add(str(o.dtype)) if m.training else None)
             for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    hist = training.train_model(model, bundle, tcfg, 0, dev, progress=False, amp=True)
    for h in hooks:
        h.remove()
    assert math.isfinite(hist[-1]["loss"]) and hist[-1]["val_acc"] > 0.2, hist
    assert next(model.parameters()).dtype == torch.float32
phases = {"amp_fused": syncs_of(amp_run)}
phases["amp_dtypes"] = sorted(dtypes)
with torch.autocast(dev.type, dtype=torch.float16):  # the loss of train_model's step, under autocast
    logits = torch.nn.Linear(3, 10).to(dev)(torch.randn(4, 3).to(dev))
    phases["amp_loss_dtypes"] = [str(logits.dtype), str(torch.nn.functional.cross_entropy(logits, y[:4].to(dev)).dtype)]
fused_optimizer = training._optimizer
training._optimizer = lambda model, tcfg, lr=None, fused=False: fused_optimizer(model, tcfg, lr, fused=False)
phases["amp_unfused"] = syncs_of(amp_run)
training._optimizer = fused_optimizer

train_line = plant(training, "train_model", "scaler.scale(loss).backward()")
tune_line = plant(debugging, "_fine_tune", "loss.backward()")
cfg = debugging.DebugConfig(epochs=1, batch_size=4)
phases["planted_lines"] = [train_line, tune_line]
phases["planted_train"] = syncs_of(lambda: training.train_model(exp.build_model(), bundle, tcfg, 0, dev,
                                                                progress=False))
phases["planted_tune"] = syncs_of(lambda: [debugging.fine_tune(exp.build_model().to(dev), x, y, x, y, masks, cfg,
                                                               1e-3, 2e-5, s, device=dev) for s in (0, 1)])
print("PHASES " + json.dumps(phases))
"""


@pytest.fixture(scope="module")
def step_runs(tmp_path_factory):
    """One process (its start-up is most of the cost) for the two tests below: :data:`STEPS`."""
    out = _run_simulated(STEPS, tmp_path_factory.mktemp("steps"))
    return {**_phases(out["stdout"]), "mismatches": out["mismatches"]}


def test_a_sync_planted_in_a_step_is_caught(step_runs):
    """The per-step check above fails on a sync written in a loop body: ``loss.item()`` planted in the
    per-batch loop of ``train_model`` and of ``_fine_tune`` is charged to the planted line itself, which the
    check then reports with one sync per step (15 training steps; 2 fine-tunes x 16 steps)."""
    train_line, tune_line = step_runs["planted_lines"]
    assert per_step_syncs(step_runs["planted_train"]) == {f"helpers/training.py:{train_line} train_model": 15}, \
        step_runs["planted_train"]
    assert per_step_syncs(step_runs["planted_tune"]) == {
        f"helpers/paper2/debugging.py:{tune_line} _fine_tune": 32}, step_runs["planted_tune"]


def test_amp_training_on_simulated_accelerator(step_runs):
    """``training.amp`` on the simulated device (``train_model(..., amp=True)``): the forward runs in float16
    under autocast (its conv and linear outputs), the loss in float32, and the loss scaler's step takes no host
    sync per step (a fused optimizer; 1 epoch, 15 steps).  With the unfused optimizer torch's
    ``GradScaler.step`` reads ``found_inf`` on the host every step: the check sees those 15 syncs at the
    ``scaler.step`` line of ``train_model``, so it would catch the fused optimizer being dropped."""
    assert step_runs["mismatches"] == 0
    assert step_runs["amp_dtypes"] == ["torch.float16"], step_runs["amp_dtypes"]
    assert step_runs["amp_loss_dtypes"] == ["torch.float16", "torch.float32"]
    assert per_step_syncs(step_runs["amp_fused"]) == {}, step_runs["amp_fused"]
    caught = per_step_syncs(step_runs["amp_unfused"])
    assert list(caught.values()) == [15], step_runs["amp_unfused"]
    line = int(next(iter(caught)).split(":")[1].split()[0])
    assert "scaler.step(opt)" in (REPO_ROOT / "helpers" / "training.py").read_text().splitlines()[line - 1]


def test_six_notebooks_on_simulated_accelerator(tmp_path):
    """All six notebooks, digits at tiny settings, on the simulated device: no op mixes devices."""
    code = f"""
from helpers.tools.run_notebooks import run
run("digits", {TINY_DIGITS!r}, output_dir={str(tmp_path / 'figs')!r})
"""
    out = _run_simulated(code, tmp_path, timeout=1500)
    # one report per process: the runner (when it touched the device) and each notebook's kernel, every one
    # with no device mismatch
    by_notebook = {r["notebook"]: r for r in out["reports"] if r["notebook"]}
    notebooks = sorted(p.name for p in (REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert sorted(by_notebook) == notebooks and len(notebooks) == 6, [r["notebook"] for r in out["reports"]]
    assert len({r["pid"] for r in by_notebook.values()}) == 6  # one kernel process each
    assert {n: r["mismatches"] for n, r in by_notebook.items()} == dict.fromkeys(notebooks, 0), out["reports"]
    assert out["mismatches"] == 0, out
    m = json.loads((tmp_path / "figs" / "metrics.json").read_text())
    assert m["profile"] == "digits"
    assert m["debugging"]["debugged"]["n_seeds"] == 2
    # notebook 05's fine-tunes ran on the device (before: on a CPU copy of the model, one thread)
    import torch

    runs = sorted((tmp_path / "artifacts").rglob("debug_run*.pt"))
    assert len(runs) >= 3 and {torch.load(p, weights_only=False)["device"] for p in runs} == {"sim:0"}
