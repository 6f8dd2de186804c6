"""Training that survives a stop (resumed bit for bit on one machine), and the pieces of paper 1's training
recipe (docs/methods.md section 2; Keras' example cifar10_resnet.py): the shift-and-flip augmentation, the
L2 penalty on convolution kernels, the per-pixel mean, and the Keras ResNet20 v1."""
import json

import pytest
import torch
import torch.nn.functional as F

from helpers.experiment import Experiment
from helpers.models import ResNet20Keras, build_model
from helpers.profiles import ProfileError, load_profile
from helpers.training import param_groups, shift_flip, train_model
from helpers.utils import seed_everything

pytestmark = pytest.mark.usefixtures("one_thread")


class Stop(Exception):
    pass


def stop_after_one(done):
    """An ``on_epoch_end`` that stops training after its first epoch, as a killed run would."""
    if done == 1:
        raise Stop


RECIPES = {
    "adam_l2_shift": {"optimizer": "adam", "lr": 1e-3, "kernel_l2": 1e-4, "augmentation": "shift_flip",
                      "schedule": "none", "weight_decay": 0.0},
    "sgd_onecycle_crop": {"optimizer": "sgd", "lr": 0.05, "schedule": "onecycle", "augmentation": "crop_flip"},
}


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_a_run_stopped_and_resumed_ends_as_one_run_straight_through(tmp_path, monkeypatch, recipe):
    monkeypatch.setenv("COMPANION_ARTIFACTS", str(tmp_path / "art"))
    exp = Experiment("digits", {"checkpoint": None}, output_dir=tmp_path / "out", progress=False)
    tcfg = {**exp.cfg["training"], **RECIPES[recipe], "epochs": 3}
    data = exp.data.model_bundle()

    def fresh():
        seed_everything(exp.seed)
        return exp.build_model(weights=None)

    straight = fresh()
    h_straight = train_model(straight, data, tcfg, exp.seed, exp.device, progress=False)

    state = tmp_path / "state.pt"

    with pytest.raises(Stop):
        train_model(fresh(), data, tcfg, exp.seed, exp.device, progress=False, state_path=state,
                    on_epoch_end=stop_after_one)
    assert torch.load(state, weights_only=True)["epoch"] == 1
    resumed = fresh()  # a new process would build the model anew: the state file restores everything
    h_resumed = train_model(resumed, data, tcfg, exp.seed, exp.device, progress=False, state_path=state)
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    drop = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]
    assert drop(h_resumed) == drop(h_straight) and len(h_resumed) == 3


def test_the_model_stage_resumes_from_its_training_state_and_then_removes_it(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPANION_ARTIFACTS", str(tmp_path / "art"))
    over = {"checkpoint": None, "training.epochs": 2}
    exp = Experiment("digits", over, output_dir=tmp_path / "out", progress=False)
    path = exp.train_state_path
    assert path.name.startswith("model-") and path.name.endswith(".train.pt")
    import helpers.experiment as experiment

    real = experiment.train_model

    def stopped(*a, **k):
        return real(*a, **k, on_epoch_end=stop_after_one)

    monkeypatch.setattr(experiment, "train_model", stopped)
    with pytest.raises(Stop):
        _ = exp.model
    assert path.is_file() and not exp.cache.path("model", exp.model_params, experiment.TENSORS).is_file()
    monkeypatch.setattr(experiment, "train_model", real)
    again = Experiment("digits", over, output_dir=tmp_path / "out", progress=False)
    assert len(again.history) == 2 and not path.is_file()  # finished from epoch 2; the state is gone


def test_shift_flip_moves_by_at_most_a_tenth_and_fills_with_the_edge():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 32, 32)
    same = shift_flip(x, torch.Generator().manual_seed(1), shift=0.0)
    for a, b in zip(x, same):  # no shift: the image or its mirror, pixel for pixel
        assert torch.allclose(a, b, atol=1e-6) or torch.allclose(a.flip(-1), b, atol=1e-6)
    y = shift_flip(x, gen)
    assert y.shape == x.shape and y.min() >= x.min() - 1e-6 and y.max() <= x.max() + 1e-6  # bilinear, edge fill
    ramp = torch.arange(32.0).expand(1, 1, 32, 32).repeat(200, 1, 1, 1)  # column index as the value
    moved = shift_flip(ramp, gen)[:, 0, 16, 16]
    centre = (moved - 15.5).abs()  # the centre pixel: 15 or 16 unmoved (a flip mirrors the ramp around 15.5)
    assert centre.max() <= 0.1 * 32 + 0.5 + 1e-4 and centre.max() > 2.0  # up to 3.2 pixels, and it does move


def test_kernel_l2_is_the_keras_penalty_on_convolution_kernels():
    torch.manual_seed(0)
    model = build_model("resnet20_keras", 10)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    c = 1e-4
    groups = param_groups(model, {"kernel_l2": c, "weight_decay": 0.0})
    kernels = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Conv2d)}
    assert {id(p) for p in groups[0]["params"]} == kernels and groups[0]["weight_decay"] == 2 * c
    model.eval()
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss + c * sum((p ** 2).sum() for p in groups[0]["params"]), groups[0]["params"])
    plain = torch.autograd.grad(F.cross_entropy(model(x), y), groups[0]["params"])
    for p, g, g0 in zip(groups[0]["params"], grads, plain):  # what the decay term adds is the penalty's gradient
        assert torch.allclose(g0 + groups[0]["weight_decay"] * p, g, atol=1e-7)


def test_keras_resnet20_v1_has_the_authors_shape():
    m = ResNet20Keras(10)
    assert sum(p.numel() for p in m.parameters()) + sum(b.numel() for n, b in m.named_buffers()
                                                         if "running" in n) == 274_442  # Keras' model.summary()
    shortcuts = [n for n, mod in m.named_modules() if n.endswith("shortcut") and mod is not None]
    assert shortcuts == ["layer2.0.shortcut", "layer3.0.shortcut"]  # 1x1 convolutions where the block downsamples
    assert m.layer2[0].shortcut.kernel_size == (1, 1) and m.bn1.eps == 1e-3 and m.bn1.momentum == 0.01
    built = build_model("resnet20_keras", 10)
    assert built.last_conv_layer == "layer3.2" and built(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_pixel_mean_needs_cifar10_and_zero_mean():
    with pytest.raises(ProfileError, match="pixel_mean"):
        load_profile("digits", {"normalize": {"mean": [0.5], "std": [0.5], "pixel_mean": True}})
    cfg = load_profile("cifar10", {"normalize": {"mean": [0, 0, 0], "std": [1, 1, 1], "pixel_mean": True},
                                   "checkpoint": None})
    assert cfg["normalize"]["pixel_mean"] is True


def test_an_unfinished_run_is_exported_and_finished_elsewhere(tmp_path, monkeypatch):
    """--export-train-state on one machine, --resume-from on another (another cache folder here)."""
    import helpers.experiment as experiment

    over = {"checkpoint": None, "training.epochs": 2}
    monkeypatch.setenv("COMPANION_ARTIFACTS", str(tmp_path / "first"))
    real = experiment.train_model
    monkeypatch.setattr(experiment, "train_model", lambda *a, **k: real(*a, **k, on_epoch_end=stop_after_one))
    first = Experiment("digits", over, output_dir=tmp_path / "o1", progress=False)
    with pytest.raises(Stop):
        _ = first.model
    exported = experiment.export_train_state(first, tmp_path / "handover" / "state.pt")
    monkeypatch.setattr(experiment, "train_model", real)
    monkeypatch.setenv("COMPANION_ARTIFACTS", str(tmp_path / "second"))
    second = Experiment("digits", over, output_dir=tmp_path / "o2", progress=False)
    experiment.resume_from(second, exported)
    assert second.train_state_path.is_file() and len(second.history) == 2
    record = json.loads(exported.with_suffix(".json").read_text())
    assert record["epochs_done"] == 1 and second.history.iloc[0].to_dict() == record["history"][0]  # resumed
    other = Experiment("digits", {**over, "training.lr": 0.5}, output_dir=tmp_path / "o3", progress=False)
    with pytest.raises(ValueError, match="is the training state of model"):
        experiment.resume_from(other, exported)  # another model's state is refused
