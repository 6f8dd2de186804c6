import numpy as np
import pytest
import torch

from helpers.models import LAYERS, MODEL_NAMES, build_model, last_conv_layer

from .conftest import SHARED_DATA, SHARED_WEIGHTS


@pytest.mark.parametrize("name,shape", [("small_cnn", (2, 1, 8, 8)), ("resnet20", (2, 3, 32, 32))])
def test_small_models_forward_and_layer_names(name, shape):
    m = build_model(name, 7, in_channels=shape[1]).eval()
    assert m(torch.randn(shape)).shape == (2, 7)
    assert last_conv_layer(m) is m.get_submodule(LAYERS[name][0])
    assert m.gap_linear_head[0] == m.last_conv_layer


def test_resnet20_has_027m_parameters():
    m = build_model("resnet20", 10)
    assert 0.26e6 < sum(p.numel() for p in m.parameters()) < 0.28e6


def test_unknown_model_is_named():
    with pytest.raises(ValueError, match=r"model: 'alexnet' is not a known model; valid: " + ", ".join(MODEL_NAMES)):
        build_model("alexnet", 10)


def test_missing_weights_lists_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"weights: could not find"):
        build_model("resnet20", 10, weights=str(tmp_path / "nope.th"))


@pytest.mark.skipif(not (SHARED_WEIGHTS / "resnet20-12fca82f.th").is_file()
                    or not (SHARED_DATA / "cifar10-lossless-sample.npz").is_file(), reason="../shared absent")
def test_pretrained_resnet20_scores_90_percent_on_lossless_sample():
    m = build_model("resnet20", 10, weights=str(SHARED_WEIGHTS / "resnet20-12fca82f.th")).eval()
    d = np.load(SHARED_DATA / "cifar10-lossless-sample.npz")
    x = torch.tensor(d["x_test"]).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        pred = m((x - mean) / std).argmax(1).numpy()
    assert (pred == d["y_test"]).mean() >= 0.90


def test_torchvision_models_heads_layers_and_offline_notice():
    import warnings

    from helpers.paper1.conductance import layer_conductance

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vgg = build_model("vgg16", 5, weights="imagenet")  # online: ImageNet weights; offline: notice + random init
    notices = [w for w in caught if "could not load ImageNet weights" in str(w.message)]
    for w in notices:
        assert "weights='imagenet'" in str(w.message) and "random initialisation" in str(w.message)
    assert vgg.classifier[-1].out_features == 5 and vgg.gap_linear_head is None
    assert isinstance(last_conv_layer(vgg), torch.nn.ReLU)  # conv5_3 + ReLU, before the last max-pool
    torch.manual_seed(0)
    inc = build_model("inception_v3", 7).eval()
    assert inc.fc.out_features == 7 and inc.last_conv_layer == "Mixed_7c"
    x = torch.randn(1, 3, 75, 75)
    exact = layer_conductance(inc, "Mixed_7c", x, method="exact")
    stepped = layer_conductance(inc, "Mixed_7c", x, method="riemann")
    # random-init InceptionV3 gives conductances near 1e6: compare relative to the largest (float32)
    assert (exact - stepped).abs().max() <= 1e-5 * exact.abs().max()


def test_squeezenet_gap_head_and_layers():
    """SqueezeNet 1.1 with paper 2's head: GAP of fire9 (512 filters) + linear, declared in LAYERS."""
    from helpers.models import build_model, pooled_features, pooled_head

    model = build_model("squeezenet1_1", 5).eval()
    assert model.last_conv_layer == "features.12" and model.gap_linear_head == ("features.12", "linear")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    g, logits = pooled_features(model, x)
    assert g.shape == (2, 512) and logits.shape == (2, 5)
    torch.testing.assert_close(pooled_head(model)[1](g), logits, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not (SHARED_WEIGHTS / "squeezenet1_1-imagenet-caffe.pth").is_file(),
                    reason="../shared/weights absent")
def test_squeezenet_loads_the_shared_features(tmp_path):
    """The shared Caffe-converted features load into every fire module; a wrong path names itself."""
    from helpers.models import build_model

    path = SHARED_WEIGHTS / "squeezenet1_1-imagenet-caffe.pth"
    model = build_model("squeezenet1_1", 3, weights=str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for k, v in state.items():
        torch.testing.assert_close(model.get_parameter(k), v)
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        build_model("squeezenet1_1", 3, weights=str(tmp_path / "nowhere.pth"))
