"""Your own model: any torchvision classifier by name (``model: torchvision.<builder>``) or a callable of your own
(``model: <module>:<callable>``), whose layers both papers' detectors find (helpers.models.find_layers): the
conductance layer, the pooled head where there is one, the classification head resized to the data's classes.
On each the methods work: conductance is complete on the found layer (exact where the head is GAP + linear,
stepped and equal to Captum's otherwise), mutants of every module kind change predictions and are undone
bitwise, the pooled head reproduces the logits.

Random weights (weights=None), 64x64 inputs, 3 classes.  A randomly initialised network's signal can vanish
(EfficientNet's features are ~1e-14 at init) or give one class to every input, so each model's BatchNorm
statistics and its head's bias are first set from one random batch (:func:`_calibrate`)."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from helpers.models import LayerError, build_model, find_layers, pooled_features, pooled_head
from helpers.paper1.conductance import conductance_dataset, exact_applicable, layer_conductance
from helpers.paper1.mutation import OPERATORS, MutantSpec, mutated, unit_count

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 64
#: builder -> (conductance layer, pooled head (layer, linear) or None, classification head).  The rule
#: (helpers.models module docstring): the last module to return a 4-D map larger than 1x1 that every path to the
#: logits crosses, before the head, not a pooling module nor a container whose output a pooling module made.
ZOO = {
    "resnet18": ("layer4", ("layer4", "fc"), "fc"),
    "efficientnet_b0": ("features", ("features", "classifier.1"), "classifier.1"),
    # 576 maps -> GAP -> linear 1024 -> hardswish -> linear: no pooled head
    "mobilenet_v3_small": ("features", None, "classifier.3"),
    # features ends with BatchNorm; a functional ReLU sits before the pool: no pooled head
    "densenet121": ("features", None, "classifier"),
    # features ends with the 5th max-pool: the layer is the ReLU before it (as LAYERS declares for vgg16)
    "vgg11_bn": ("features.27", None, "classifier.6"),
    # GAP -> LayerNorm2d -> flatten -> linear: no pooled head
    "convnext_tiny": ("features", None, "classifier.2"),
    "regnet_y_400mf": ("trunk_output", ("trunk_output", "fc"), "fc"),
    # the head is a 1x1 conv before ReLU and the pool: the layer is the last fire module's container
    "squeezenet1_1": ("features", None, "classifier.1"),
    "shufflenet_v2_x0_5": ("conv5", ("conv5", "fc"), "fc"),
    # auxiliary classifiers off: the train-mode forward returns the logits alone
    "googlenet": ("inception5b", ("inception5b", "fc"), "fc"),
}
#: models whose every mutation operator is exercised: depthwise convs, squeeze-excite, in-place hardswish /
#: ReLU, BatchNorm (MobileNetV3); LayerNorm, depthwise 7x7 convs, linear layers inside the blocks (ConvNeXt)
ALL_OPERATORS = ("mobilenet_v3_small", "convnext_tiny")


def _x(n: int, seed: int, size: int = SIZE) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _calibrate(model: nn.Module, head: str) -> nn.Module:
    """BatchNorm running statistics from one random batch (momentum 1, in train mode, without gradients), then
    the head's bias shifted so that each class's mean logit over that batch is 0."""
    x = _x(8, 2)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.momentum = 1.0
    model.train()
    with torch.no_grad():
        model(x)
    for bn in bns:
        bn.momentum = 0.1
    model.eval()
    lin = model.get_submodule(head)
    with torch.no_grad():
        z = model(x).mean(0)
        lin.bias -= z.view(-1, *([1] * (lin.bias.dim() - 1)))
    return model


@pytest.fixture(scope="module", params=list(ZOO))
def zoo(request):
    """(builder, the model in eval mode, what find_layers returns); each model built once for its tests."""
    torch.manual_seed(0)
    model = build_model(f"torchvision.{request.param}", 3, image_size=SIZE)
    found = find_layers(model, SIZE)
    return request.param, _calibrate(model, found["head"]), found


def test_layers_found(zoo):
    name, model, found = zoo
    layer, pooled, head = ZOO[name]
    assert (model.last_conv_layer, model.gap_linear_head, found["head"]) == (layer, pooled, head)
    assert found == {"conductance": layer, "pooled": pooled, "head": head, "num_outputs": 3}
    assert model.model_name == f"torchvision.{name}"
    with torch.no_grad():
        assert model(_x(2, 0)).shape == (2, 3)
    lin = model.get_submodule(head)
    assert (lin.out_features if isinstance(lin, nn.Linear) else lin.out_channels) == 3  # resized to the data


def test_pooled_head_reproduces_the_logits(zoo):
    name, model, _ = zoo
    layer = model.last_conv_layer
    if ZOO[name][1] is None:
        assert not exact_applicable(model, layer)
        with pytest.raises(ValueError, match="no global-average-pool"):
            pooled_head(model)
        return
    assert exact_applicable(model, layer)
    g, logits = pooled_features(model, _x(2, 0))
    assert g.shape[1] == pooled_head(model)[1].in_features
    with torch.no_grad():
        torch.testing.assert_close(pooled_head(model)[1](g), logits, rtol=1e-4, atol=1e-5 * float(logits.abs().max()))


def test_conductance_is_complete_on_the_found_layer(zoo):
    """Sum over the layer of conductance == F(x) - F(baseline) (paper 1, eq. 3).  Exact heads: every method, the
    zero baseline, to float32 rounding.  Other heads: the stepped sum equals Captum's, and it is complete only in
    the limit of many steps; checked on a short path (baseline x + 0.01 d), where F is nearly linear, to 5 %
    of the largest difference (ConvNeXt's LayerNorm head is scale invariant: from the zero image, with its zero
    biases at init, F jumps at the baseline)."""
    name, model, _ = zoo
    layer = model.last_conv_layer
    x = _x(2, 1)
    exact = exact_applicable(model, layer)
    base = torch.zeros_like(x[:1]) if exact else x + 0.01 * _x(2, 3)
    with torch.no_grad():
        lg, lg0 = model(x), model(base)
    t = lg.argmax(1)
    expected = lg.gather(1, t[:, None])[:, 0] - lg0.expand_as(lg).gather(1, t[:, None])[:, 0]
    if exact:
        for method in ("auto", "riemann"):
            c = layer_conductance(model, layer, x, method=method)
            torch.testing.assert_close(c.sum(1), expected, rtol=1e-4, atol=1e-5 * float(c.abs().sum(1).max()))
        out = conductance_dataset(model, layer, [(x, None)], progress=False)
        assert out["method"] == "exact"
    else:
        c = layer_conductance(model, layer, x, baseline=base, n_steps=20)
        assert float((c.sum(1) - expected).abs().max()) <= 0.05 * float(expected.abs().max())
        ref = layer_conductance(model, layer, x, method="captum")
        got = layer_conductance(model, layer, x, method="auto")
        assert float((got - ref).norm() / ref.norm()) < 1e-4


def _allowed(op: str):
    """The module kinds whose parameters an operator may change."""
    if op == "bn_nai":
        return (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
    if op.startswith("filter_"):
        return (nn.modules.conv._ConvNd,)
    return (nn.modules.conv._ConvNd, nn.Linear)


def test_mutants_change_predictions_and_are_undone_bitwise(zoo):
    name, model, _ = zoo
    x = _x(8, 4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        logits = model(x)
    owner = {f"{n}.{p}": m for n, m in model.named_modules() for p, _ in m.named_parameters(recurse=False)}
    ops = OPERATORS if name in ALL_OPERATORS else ("nai", "filter_nai", "bn_nai")
    flips = {}
    for op in ops:
        if op == "bn_nai" and name == "squeezenet1_1":  # the one model without normalisation layers
            assert unit_count(model, op) == 0
            continue
        assert unit_count(model, op) > 0, op
        with torch.no_grad(), mutated(model, MutantSpec(op, 0.1, 0)) as patch:
            mutant = model(x)
        assert set(patch.param_names) and all(isinstance(owner[n], _allowed(op)) for n in patch.param_names), op
        flips[op] = int((mutant.argmax(1) != logits.argmax(1)).sum())
        assert float((mutant - logits).abs().max()) > 1e-3 * float(logits.abs().max()), op
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), op
        with torch.no_grad():
            assert torch.equal(model(x), logits), op
    assert sum(flips.values()) > 0, flips  # at rate 0.1 every operator changes the logits, some a prediction


def test_bn_nai_inverts_layernorm_and_groupnorm_channels():
    """LayerNorm and GroupNorm count for ``bn_nai`` as BatchNorm does: negating a channel's gamma and beta
    negates the channel's output exactly (each element of normalized_shape a channel; no bias: gamma only)."""
    g = torch.Generator().manual_seed(0)
    cases = [(nn.LayerNorm(6), torch.randn(2, 5, 6, generator=g), -1),
             (nn.LayerNorm(6, bias=False), torch.randn(2, 5, 6, generator=g), -1),
             (nn.GroupNorm(2, 4), torch.randn(2, 4, 3, 3, generator=g), 1)]
    for norm, x, dim in cases:
        with torch.no_grad():
            norm.weight.uniform_(0.5, 1.5, generator=g)
            if norm.bias is not None:
                norm.bias.normal_(generator=g)
        net = nn.Sequential(norm).eval()
        assert unit_count(net, "bn_nai") == norm.weight.numel()
        y0 = net(x)
        with mutated(net, MutantSpec("bn_nai", 0.1, 0)):  # one channel
            y1 = net(x)
        ch = (y0 != y1).movedim(dim, 0).flatten(1).any(1)
        assert int(ch.sum()) == 1
        torch.testing.assert_close(y1.movedim(dim, 0)[ch], -y0.movedim(dim, 0)[ch])


def test_a_vision_transformer_is_refused_naming_layers():
    kw = {"image_size": 32, "model_kwargs": {"image_size": 32}}
    with pytest.raises(LayerError, match=r"'torchvision.vit_b_16'.*conv_proj.*token.*layers: \{conductance: "):
        build_model("torchvision.vit_b_16", 3, **kw)
    vit = build_model("torchvision.vit_b_16", 3, layers={"conductance": "conv_proj"}, **kw)
    assert vit.last_conv_layer == "conv_proj" and vit.gap_linear_head is None  # paper 1 only


def test_declared_layers_replace_what_is_found():
    model = build_model("torchvision.resnet18", 3, image_size=SIZE, layers={"conductance": "layer3"})
    assert model.last_conv_layer == "layer3" and model.gap_linear_head == ("layer4", "fc")
    model = build_model("torchvision.resnet18", 3, image_size=SIZE, layers={"pooled": "layer4", "linear": "fc"})
    assert model.gap_linear_head == ("layer4", "fc")
    for layers, message in (({"pooled": "layer3"}, r"'fc' applied to the global average pool of 'layer3'"),
                            ({"conductance": "layer9"}, r"layers.conductance: 'layer9' is not a module"),
                            ({"conductance": "layer1.0.relu"}, r"'layer1.0.relu' runs 2 times"),
                            ({"linear": "layer4"}, r"layers.linear: 'layer4' .* is not an nn.Linear")):
        with pytest.raises(LayerError, match=message):
            build_model("torchvision.resnet18", 3, image_size=SIZE, layers=layers)
    # a model of LAYERS keeps its declarations where the profile names nothing else
    r20 = build_model("resnet20", 10, image_size=SIZE, layers={"conductance": "layer3.1"})
    assert r20.last_conv_layer == "layer3.1" and r20.gap_linear_head == ("layer3.2", "linear")


def test_tuple_outputs_give_the_main_logits():
    """GoogLeNet's auxiliary classifiers are off; a model of one's own that returns (logits, aux) in train mode
    gives its logits (a forward hook on the root), so training and the detectors see one tensor."""
    net = build_model("torchvision.googlenet", 3, image_size=SIZE)
    assert net.aux1 is None and net.aux2 is None and not net.aux_logits
    own = build_model("tests.zoo_model:build", 3, image_size=16, model_kwargs={"aux": True})
    x = _x(2, 0, 16)
    raw = type(own).forward(own.train(), x)
    assert isinstance(raw, tuple) and len(raw) == 2
    out = own(x)
    assert isinstance(out, torch.Tensor) and torch.equal(out, raw[0])
    net.train()
    assert isinstance(net(_x(2, 0)), torch.Tensor)


def test_a_model_of_your_own(tmp_path):
    torch.manual_seed(0)
    own = build_model("tests.zoo_model:build", 3, image_size=16)
    assert (own.last_conv_layer, own.gap_linear_head, own.fc.out_features) == ("block", ("block", "fc"), 3)
    assert build_model("tests.zoo_model:build", 3, in_channels=1, image_size=16).stem[0].in_channels == 1
    fixed = build_model("tests.zoo_model:build_fixed", 3, image_size=16)  # no num_classes: its head is resized
    assert fixed.fc.out_features == 3 and fixed.gap_linear_head == ("block", "fc")
    path = tmp_path / "mine.pt"
    torch.save(own.state_dict(), path)
    again = build_model("tests.zoo_model:build", 3, weights=str(path), image_size=16)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in own.state_dict().items())
    for spec, message in (("tests.zoo_model:nothing", "has no 'nothing'"),
                          ("no_such_package_xyz.models:build", "cannot import"),
                          ("builtins:dict", "returned a dict")):
        with pytest.raises(ValueError, match=message):
            build_model(spec, 3, image_size=16)
    with pytest.raises(FileNotFoundError, match="weights: no file"):
        build_model("tests.zoo_model:build", 3, weights=str(tmp_path / "none.pt"), image_size=16)


def test_torchvision_weights_names_and_files(tmp_path):
    torch.manual_seed(0)
    a = build_model("torchvision.resnet18", 3, image_size=32)
    torch.save({"state_dict": a.state_dict()}, tmp_path / "a.pt")
    b = build_model("torchvision.resnet18", 3, weights=str(tmp_path / "a.pt"), image_size=32)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    # an ImageNet-shaped file (1000 outputs): every weight but the replaced head is loaded
    c = build_model("torchvision.resnet18", 1000, image_size=32)
    torch.save(c.state_dict(), tmp_path / "c.pt")
    d = build_model("torchvision.resnet18", 3, weights=str(tmp_path / "c.pt"), image_size=32)
    assert torch.equal(d.layer4[1].conv2.weight, c.layer4[1].conv2.weight) and d.fc.out_features == 3
    broken = {k: v for k, v in c.state_dict().items() if not k.startswith("layer4.1.")}
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match=r"does not match torchvision.resnet18 \(missing \['layer4.1"):
        build_model("torchvision.resnet18", 3, weights=str(tmp_path / "broken.pt"), image_size=32)
    with pytest.raises(FileNotFoundError, match=r"'IMAGENET1K_V9' is not a weights name of torchvision.resnet18; "
                                                r"valid: null, IMAGENET1K_V1, DEFAULT"):
        build_model("torchvision.resnet18", 3, weights="IMAGENET1K_V9", image_size=32)
    with pytest.raises(ValueError, match=r"'torchvision.resnet19' is not a torchvision classifier.*resnet18"):
        build_model("torchvision.resnet19", 3)
    with pytest.raises(ValueError, match="3-channel"):
        build_model("torchvision.resnet18", 3, in_channels=1)
    with pytest.raises(ValueError, match="model_kwargs"):
        build_model("torchvision.resnet18", 3, model_kwargs={"num_classes": 3})


def test_profiles_name_any_model_and_its_layers():
    from helpers.profiles import ProfileError, load_profile

    cfg = load_profile("digits", {"checkpoint": None, "model": "torchvision.convnext_tiny",
                                  "model_kwargs": {"stochastic_depth_prob": 0.0}, "layers.conductance": "features"})
    assert cfg["model_kwargs"] == {"stochastic_depth_prob": 0.0} and cfg["layers"] == {"conductance": "features"}
    plain = load_profile("digits")
    assert "layers" not in plain and "model_kwargs" not in plain  # cache keys of the others unchanged
    own = load_profile("digits", {"checkpoint": None, "model": "tests.zoo_model:build"})
    assert own["model"] == "tests.zoo_model:build"
    for ov, message in (({"model": "torchvision"}, r"valid: small_cnn, .*torchvision.<builder> or <module>:<callable>"),
                        ({"model_kwargs": {"width": 4}}, r"'model_kwargs' = .* is not valid for model 'small_cnn'"),
                        ({"model": "torchvision.resnet18", "model_kwargs": {"num_classes": 2}}, "never num_classes"),
                        ({"layers.pool": "x"}, r"unknown key 'layers.pool'")):
        with pytest.raises(ProfileError, match=message):
            load_profile("digits", {"checkpoint": None, **ov})


def _tree(root):
    from .conftest import write_images

    for split, n in (("train", 4), ("test", 2)):
        for ci, c in enumerate(("a", "b")):
            write_images(root / split / c, n, size=(10, 10), seed=ci + 10 * len(split))
    return root


def test_experiments_build_check_and_train_them(tmp_path, monkeypatch):
    """A profile of one's own: a ViT is refused when the experiment starts (before any stage); a model of one's
    own that returns a tuple in train mode trains, predicts and gives conductance on its found layer."""
    from helpers.experiment import Experiment
    from helpers.paper1.stages import conductance_layer
    from helpers.profiles import ProfileError

    monkeypatch.setenv("COMPANION_ARTIFACTS", str(tmp_path / "art"))
    vit = {"name": "tiny-vit", "dataset": "imagefolder", "data_dir": str(_tree(tmp_path / "tree")),
           "model": "torchvision.vit_b_16", "model_kwargs": {"image_size": 32}, "image_size": 32,
           "normalize": {"mean": [0.5] * 3, "std": [0.5] * 3}, "seed": 0, "device": "cpu",
           "split": {"val_fraction": 0.25}, "conductance": {"classes": [0, 1]},
           "training": {"epochs": 1, "batch_size": 4, "optimizer": "adam", "lr": 0.01}}
    with pytest.raises(ProfileError, match=r"layers: \{conductance: <module name>\}"):
        Experiment(vit, progress=False)
    assert not list((tmp_path / "art").glob("*/model-*"))
    exp = Experiment("digits", {"checkpoint": None, "model": "tests.zoo_model:build", "model_kwargs": {"aux": True},
                                "training.epochs": 1, "split.limit_train": 100}, progress=False)
    assert exp.model_params["model_kwargs"] == {"aux": True}
    assert exp.model.last_conv_layer == "block" and conductance_layer(exp) == "block"
    assert exp.model.stem[0].in_channels == 1 and len(exp.predictions) > 0
    x = torch.stack([exp.data["test"].dataset[i][0] for i in range(4)])
    c = layer_conductance(copy.deepcopy(exp.model), "block", x)
    assert c.shape == (4, 16)


def test_a_state_kept_as_a_plain_dict_loads_into_a_versioned_torchvision_model():
    """MNASNet refuses a state dict without its module version; states cached or checkpointed as plain
    dicts carry none, so helpers.models.load_state supplies the model's own."""
    from helpers.models import build_model, load_state

    model = build_model("torchvision.mnasnet0_5", 3, 3, None, image_size=64)
    plain = {k: v.clone() for k, v in model.state_dict().items()}
    fresh = build_model("torchvision.mnasnet0_5", 3, 3, None, image_size=64)
    load_state(fresh, plain)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
