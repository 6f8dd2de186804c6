"""Device choice and data loading: what ``device: auto`` says when a GPU is present but
unusable, the profile's ``num_workers`` reaching every image-file loader, pinned memory only on CUDA,
and evaluation batches scaled on an accelerator."""
import numpy as np
import pytest
import torch

from helpers import devices
from helpers.experiment import Experiment

from .test_data_integrity import folder_profile, image_tree


def test_driver_older_than_the_cuda_build_is_named(monkeypatch):
    why = devices.cuda_unusable_reason(driver="535.104.05", cuda="13.0")
    assert "535.104.05" in why and "13.0" in why and ">= 580.65" in why
    assert "no usable GPU" in devices.cuda_unusable_reason(driver="590.10", cuda="13.0")
    monkeypatch.setattr(devices, "nvidia_driver_version", lambda: None)
    assert devices.cuda_unusable_reason(cuda="13.0") is None  # no NVIDIA driver: no GPU to speak of
    assert devices.cuda_unusable_reason(driver="590.10", cuda="") is None  # a CPU-only torch: nothing to say


def test_auto_says_why_it_falls_back_to_the_cpu(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "nvidia_driver_version", lambda: "470.57.02")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.delenv("COMPANION_SIMULATED_ACCELERATOR", raising=False)
    assert devices.get_device("auto").type == "cpu"
    assert "device: auto uses the CPU: the NVIDIA driver 470.57.02 is older" in capsys.readouterr().out
    with pytest.raises(ValueError, match="470.57.02 is older"):
        devices.get_device("cuda")


def test_simulated_device_needs_its_switch(monkeypatch):
    monkeypatch.delenv("COMPANION_SIMULATED_ACCELERATOR", raising=False)
    with pytest.raises(ValueError, match="COMPANION_SIMULATED_ACCELERATOR"):
        devices.get_device("sim:0")
    assert devices.get_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("name", ["sim:1", "simx"])
def test_the_simulated_accelerator_has_one_device(monkeypatch, name):
    """The simulated accelerator has only sim:0: a rank asking for sim:1 (or a name such as "simx") is refused,
    never silently given sim:0."""
    monkeypatch.setenv("COMPANION_SIMULATED_ACCELERATOR", "1")
    with pytest.raises(ValueError, match="one device"):
        devices.get_device(name)


def test_num_workers_reaches_every_image_loader(tmp_path, monkeypatch):
    """Training, prediction and pooled features build their DataLoaders with the profile's ``num_workers``,
    not 0 whatever the profile says."""
    monkeypatch.setenv("COMPANION_ARTIFACTS", str(tmp_path / "art"))
    seen = []
    real = torch.utils.data.DataLoader

    def spy(*a, **k):
        seen.append((k.get("num_workers", 0), k.get("pin_memory", False)))
        return real(*a, **{**k, "num_workers": 0})  # the spy records; the test itself stays in-process

    monkeypatch.setattr(torch.utils.data, "DataLoader", spy)
    exp = Experiment({**folder_profile(image_tree(tmp_path / "tree")), "num_workers": 3}, progress=False)
    assert exp.loader_options == {"num_workers": 3, "pin_memory": False}  # pinned memory: CUDA only
    exp.predictions  # trains (one epoch, with validation) and predicts every split
    assert len(seen) >= 5 and set(seen) == {(3, False)}, seen


def test_evaluation_batches_scale_on_an_accelerator(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPANION_ARTIFACTS", str(tmp_path / "art"))
    exp = Experiment("digits", progress=False)
    assert exp.device.type == "cpu" and exp.eval_batch_size == exp.cfg["training"]["eval_batch_size"]
    monkeypatch.setattr(exp, "device", torch.device("cuda"))
    assert exp.eval_batch_size == exp.cfg["training"]["eval_batch_size"] * exp.cfg["accelerator_batch_scale"]
    assert exp.loader_options["pin_memory"] is True


def test_digits_reference_profile_is_pinned_to_the_cpu():
    """``make test`` compares digits with a reference made on a CPU: on a GPU machine it must run there too."""
    from helpers.profiles import load_profile

    cfg = load_profile("digits")
    assert cfg["device"] == "cpu"
    assert Experiment("digits").device.type == "cpu"
    assert np.isfinite(cfg["training"]["eval_batch_size"])


def test_vmap_chunk_is_bounded_by_free_memory(monkeypatch):
    """LCR's vmapped mutants per forward: half the free device memory over one mutant's activations and
    patched weights, between 1 and 64 (before: 16 whatever the model and the device)."""
    from helpers.models import build_model
    from helpers.paper1.lcr import vmap_chunk_for
    from helpers.paper1.mutation import MutantSpec, make_patches

    model = build_model("resnet20", 10).eval()
    x = torch.randn(256, 3, 32, 32)
    patches = make_patches(model, [MutantSpec("gf", 0.01, 0)])
    dev = torch.device("cuda")
    chunks = []
    for free_gb in (0.05, 2, 16, 1000):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d=None, f=free_gb: (int(f * 2**30), 80 * 2**30))
        chunks.append(vmap_chunk_for(model, x, patches, dev))
    assert chunks[0] == 1 and chunks[-1] == 64 and chunks == sorted(chunks) and 1 < chunks[2] < 64, chunks
    assert vmap_chunk_for(model, x[:8], patches, dev) >= chunks[-2]  # smaller batches: more mutants at once


def test_the_process_group_follows_the_profiles_device_where_cuda_is_visible(monkeypatch):
    """On a GPU machine a CPU profile (digits: device cpu) still runs its torchrun ranks on gloo and the CPU."""
    import torch

    from helpers.tools.precompute import Group, profile_uses_cuda

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert profile_uses_cuda("digits") is False
    group = Group(cuda=profile_uses_cuda("digits"))
    assert group.backend == "gloo" and not group.cuda
    assert Group(cuda=True).backend == "nccl"
