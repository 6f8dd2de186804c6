"""The tiny pipeline on a real CUDA GPU, compared with the CPU.  Marked ``gpu`` and
skipped without CUDA: on a CPU machine these never run (the simulated accelerator of
``test_simulated_accelerator.py`` proves device placement there); ``make gpu-check`` runs them.

Tolerances (stated in advance, not fitted to a GPU's output).  With
``deterministic: true`` (no TF32, deterministic cuDNN / cuBLAS) a GPU float32 forward differs from
the CPU's in the rounding of its sums: logits within 1e-3, conductance within 1e-3 of its scale, at
least 98 % of mutant labels and 99 % of predicted labels the same.  One training epoch amplifies that
too much to compare weights: its predictions must agree on 95 % of images.
"""
import os

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU (the gpu tests need one)")]


@pytest.fixture
def pair(tmp_path, monkeypatch):
    """The digits experiment on the CPU and on CUDA (deterministic kernels), each with its own cache."""
    from helpers.experiment import Experiment

    def make(device, **over):
        monkeypatch.setenv("COMPANION_ARTIFACTS", str(tmp_path / device))
        return Experiment("digits", overrides={"device": device, "deterministic": True, **over})

    return make


def test_cuda_is_chosen_and_deterministic_settings_apply(pair):
    exp = pair("cuda")
    assert exp.device.type == "cuda" and next(exp.model.parameters()).is_cuda
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") == ":4096:8"
    assert exp.eval_batch_size == exp.cfg["training"]["eval_batch_size"] * exp.cfg["accelerator_batch_scale"]


def test_predictions_conductance_lcr_on_cuda_match_cpu(pair):
    from helpers import evaluation
    from helpers.paper1 import stages as paper1
    from helpers.paper1.conductance import conductance_dataset
    from helpers.paper1.lcr import mutant_predictions
    from helpers.paper1.mutation import MutantSpec

    cpu, gpu = pair("cpu"), pair("cuda")
    a, b = cpu.predictions.filter(like="logit_").to_numpy(), gpu.predictions.filter(like="logit_").to_numpy()
    assert np.abs(a - b).max() < 1e-3
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.99
    x = evaluation.split_inputs(cpu, "test")[:128]
    layer = paper1.conductance_layer(cpu)
    c0 = conductance_dataset(cpu.model, layer, [(x, None)], device="cpu", progress=False)["conductance"]
    c1 = conductance_dataset(gpu.model, layer, [(x, None)], device=gpu.device, progress=False)["conductance"]
    assert np.abs(c0 - c1).max() <= 1e-3 * max(1.0, np.abs(c0).max())
    specs = [MutantSpec("gf", 0.05, s) for s in range(4)]
    p0 = mutant_predictions(cpu.model, specs, x, progress=False)
    for mode in ("loop", "vmap"):
        assert (mutant_predictions(gpu.model, specs, x, progress=False, mode=mode) == p0).mean() >= 0.98, mode


def test_training_and_fine_tune_on_cuda(pair):
    from helpers import evaluation
    from helpers.paper2.debugging import DebugConfig, fine_tune

    over = {"checkpoint": None, "training.epochs": 1}
    cpu, gpu = pair("cpu", **over), pair("cuda", **over)
    agree = (cpu.predictions.prediction.to_numpy() == gpu.predictions.prediction.to_numpy()).mean()
    assert agree >= 0.95, agree
    x = evaluation.split_inputs(cpu, "test")[:128]
    y = torch.as_tensor(cpu.data["test"].labels[:128])
    masks = (torch.arange(32)[None] % 10 == torch.arange(10)[:, None]).float()
    for cfg in (DebugConfig(epochs=1, batch_size=16), DebugConfig(epochs=1, batch_size=16, augmentation="crop")):
        r = fine_tune(gpu.model, x, y, x, y, masks, cfg, 1e-3, 2e-5, 0, device=gpu.device)
        assert all(v.device.type == "cpu" for v in r.state_dict.values())
        assert 0.0 <= r.history.val_acc.iloc[-1] <= 1.0


def test_amp_training_on_cuda_runs(pair):
    """Mixed precision (the CIFAR-10 profiles' default on CUDA): one epoch trains without NaNs."""
    exp = pair("cuda", **{"checkpoint": None, "training.epochs": 1, "training.amp": True})
    assert exp.model_params["amp"] is True
    assert np.isfinite(exp.predictions.filter(like="logit_").to_numpy()).all()
