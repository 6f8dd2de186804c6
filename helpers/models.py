"""Classifiers used by the papers, and the one place that names each model's layers.

Paper 1 (arXiv 1910.00387) uses a CIFAR-10 ResNet20 trained from scratch and an
ImageNet-pretrained InceptionV3; paper 2 uses VGG16.  The embedded ``digits``
profile uses :class:`SmallCNN`, built so that its last conv block reaches the
logits only through global average pooling and one linear layer, like ResNet20.

Every model built by :func:`build_model` carries two attributes that later stages
read instead of hard-coding layer names:

``model.last_conv_layer``
    dotted module name of the last conv block (the layer conductance and the CFE
    filters use; docs/methods.md section 1).
``model.gap_linear_head``
    ``(layer_name, linear_name)`` when the output of ``layer_name`` reaches the
    logits only through global average pooling followed by the linear layer
    ``linear_name`` (the condition for exact one-pass conductance), else ``None``.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers.names import MODEL_NAMES
from helpers.utils import safe_torch_load

#: Public address of the pretrained CIFAR-10 ResNet20 (akamaster/pytorch_resnet_cifar10, BSD-2).
RESNET20_URL = (
    "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/"
    "pretrained_models/resnet20-12fca82f.th"
)


# ----------------------------------------------------------------------------- small CNN
class SmallCNN(nn.Module):
    """A small conv net for 8x8 digits: two conv blocks, GAP, linear.

    Deliberately small (about 6k parameters) so that it makes enough mistakes on
    the digits test split for the error detectors to have something to detect.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.block = nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
        )
        self.linear = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = self.block(self.features(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.linear(x)


# ----------------------------------------------------------------------------- ResNet20
class LambdaLayer(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class BasicBlock(nn.Module):
    """He et al. (2016) CIFAR BasicBlock with the parameter-free "option A" shortcut."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            pad = planes // 4
            self.shortcut = LambdaLayer(
                lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad), "constant", 0.0)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """CIFAR ResNet20 (3 stages x 3 BasicBlocks, 16/32/64 channels, 0.27M parameters).

    Module names follow akamaster/pytorch_resnet_cifar10 so that its pretrained
    checkpoint loads as is.  The last residual block (``layer3.2``, 64x8x8 on
    CIFAR) is the layer of paper 1, section 4.1.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, 1)
        self.layer2 = self._stage(16, 32, 2)
        self.layer3 = self._stage(32, 64, 2)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.kaiming_normal_(m.weight)

    @staticmethod
    def _stage(in_planes, planes, stride, blocks=3):
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


# ----------------------------------------------------------------------------- ResNet20 as paper 1 trained it
def _keras_he_normal_(w: torch.Tensor) -> None:
    """Keras' ``he_normal``: a normal of std sqrt(2 / fan_in) truncated at two standard deviations (its std
    corrected for the truncation, as Keras does)."""
    fan_in = w[0].numel()
    std = math.sqrt(2.0 / fan_in) / 0.87962566103423978
    nn.init.trunc_normal_(w, std=std, a=-2 * std, b=2 * std)


class KerasBlock(nn.Module):
    """A ResNet v1 residual block as Keras' example ``cifar10_resnet.py`` builds it (paper 1's authors' model):
    conv-BN-ReLU-conv-BN, plus the shortcut, then ReLU.  Convolutions carry a bias (Keras' default); where
    the block downsamples, the shortcut is a strided 1x1 convolution without BN ("option B")."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1)
        self.bn1 = _keras_bn(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1)
        self.bn2 = _keras_bn(planes)
        self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride) if stride != 1 or in_planes != planes else None

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))


def _keras_bn(c: int) -> nn.BatchNorm2d:
    """Keras' BatchNormalization defaults: moving averages with momentum 0.99 (torch's 0.01), epsilon 1e-3."""
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


class ResNet20Keras(nn.Module):
    """ResNet20 v1 (depth 6n + 2, n = 3) as paper 1's authors built it: Keras' example ``cifar10_resnet.py``.

    Its differences from :class:`ResNet20` (the akamaster model): 1x1-convolution shortcuts where the block
    downsamples (not zero padding), a bias on every convolution, Keras' BatchNorm defaults and ``he_normal``
    initialisation (truncated normal), a zero-initialised bias of the final linear layer.  The module names
    follow :class:`ResNet20`, so the last residual block (``layer3.2``, 64x8x8) is again paper 1's layer."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1)
        self.bn1 = _keras_bn(16)
        self.layer1 = nn.Sequential(*[KerasBlock(16, 16, 1) for _ in range(3)])
        self.layer2 = nn.Sequential(KerasBlock(16, 32, 2), KerasBlock(32, 32), KerasBlock(32, 32))
        self.layer3 = nn.Sequential(KerasBlock(32, 64, 2), KerasBlock(64, 64), KerasBlock(64, 64))
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                _keras_he_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def load_resnet20_checkpoint(model: ResNet20, path: str | Path) -> ResNet20:
    """Load an akamaster-format checkpoint ({'state_dict': {'module.*': ...}}) or a plain state dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights: no file at {path}")
    obj = safe_torch_load(path, "weights")
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    state = {k.removeprefix("module."): v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(
            f"weights: {path} does not match ResNet20 (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    return model


def _resolve_resnet20_weights(weights: str, search_dirs) -> Path:
    """Find the pretrained ResNet20 file: a path, a file in a search dir, or the public address."""
    cand = Path(weights).expanduser()
    tried = [str(cand)]
    if cand.is_file():
        return cand
    for d in search_dirs:
        for p in (Path(d) / cand.name, Path(d) / "resnet20-12fca82f.th"):
            tried.append(str(p))
            if p.is_file():
                return p
    if weights == "pretrained":
        try:
            hub_dir = Path(torch.hub.get_dir()) / "checkpoints"
            dst = hub_dir / "resnet20-12fca82f.th"
            if not dst.is_file():
                torch.hub.download_url_to_file(RESNET20_URL, str(dst), progress=False)
            return dst
        except Exception as exc:  # offline
            tried.append(f"{RESNET20_URL} ({type(exc).__name__})")
    raise FileNotFoundError(
        "weights: could not find the pretrained ResNet20; looked at:\n  "
        + "\n  ".join(tried)
        + "\nGive a path to resnet20-12fca82f.th (docs/data-and-weights.md says where it comes from) or go online."
    )


# ----------------------------------------------------------------------------- torchvision
def _load_all_but_head(model: nn.Module, state: dict, path, name: str, needed: tuple[str, ...] = ()) -> None:
    """Load a state dict into a torchvision model whose classification head is then replaced: the head
    (and InceptionV3's auxiliary classifier) may differ or be absent, every other weight must be there
    (with ``needed``: every weight whose name starts so, the only part of the model that is used)."""
    head = ("fc.", "AuxLogits.") if name == "inception_v3" else (f"classifier.{len(model.classifier) - 1}.",)
    own = model.state_dict()
    state = {k: v for k, v in state.items() if not (k.startswith(head) and k in own and own[k].shape != v.shape)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(head) and not k.endswith("num_batches_tracked")
               and (not needed or k.startswith(needed))]
    unexpected = [k for k in unexpected if not k.startswith(head)]
    if missing or unexpected:
        raise ValueError(f"weights: {path} does not match {name} (missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}); only the classification head ({', '.join(head)}) may differ")


def _torchvision_model(name: str, num_classes: int, weights: str | None, needed: tuple[str, ...] = ()):
    import torchvision

    ctor = {"inception_v3": torchvision.models.inception_v3, "vgg16": torchvision.models.vgg16}[name]
    tv_weights = {"inception_v3": "Inception_V3_Weights", "vgg16": "VGG16_Weights"}[name]
    model = None
    if weights in ("imagenet", "pretrained"):
        try:
            w = getattr(torchvision.models, tv_weights).IMAGENET1K_V1
            model = ctor(weights=w) if name != "inception_v3" else ctor(weights=w, aux_logits=True)
        except Exception as exc:
            warnings.warn(
                f"weights={weights!r}: could not load ImageNet weights for {name} through torchvision "
                f"({type(exc).__name__}: {exc}); using random initialisation. Give a local path in "
                "`weights` to use a downloaded file.",
                stacklevel=2,
            )
    if model is None:
        kw = {"init_weights": True}
        if name == "inception_v3":
            kw["aux_logits"] = False
        model = ctor(weights=None, **kw)
        if weights not in (None, "none", "imagenet", "pretrained"):
            state = safe_torch_load(weights, "weights")
            _load_all_but_head(model, state.get("state_dict", state), weights, name, needed)
    if name == "inception_v3":
        model.aux_logits = False
        model.AuxLogits = None
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    else:
        model.classifier[-1] = nn.Linear(model.classifier[-1].in_features, num_classes)
    return model


class VGG16GAP(nn.Module):
    """Paper 2's VGG16 (docs/methods.md section 6; the authors' Keras model): ``vgg16.features`` (13 conv
    layers, ending with the 5th max-pool: 512x7x7 at 224x224) -> global average pool -> dropout 0.5
    -> one linear layer.  torchvision's MLP head is not used, so ``g`` (the pooled vector) and the
    CFE head of paper 2 exist, and conductance of ``features.30`` is exact."""

    def __init__(self, num_classes: int, weights: str | None = None):
        super().__init__()
        self.features = _torchvision_model("vgg16", num_classes, weights, needed=("features.",)).features
        self.dropout = nn.Dropout(0.5)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x):
        return self.linear(self.dropout(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)))


# ----------------------------------------------------------------------------- SqueezeNet 1.1
class SqueezeNetGAP(nn.Module):
    """torchvision's SqueezeNet 1.1 features with paper 2's head shape: global average pooling of the
    last fire module (``features.12``, 512 filters, 13x13 at 224x224) and one linear layer, so exact
    conductance and the CFE head both apply (torchvision's own head is a 1x1 conv before the pool)."""

    def __init__(self, num_classes: int):
        super().__init__()
        import torchvision

        self.features = torchvision.models.squeezenet1_1(weights=None).features
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x):
        return self.linear(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


def _load_squeezenet_features(model: SqueezeNetGAP, weights: str, search_dirs) -> None:
    """``pretrained``: torchvision's ImageNet weights (torchvision's normalisation) when online; a
    path (or ``squeezenet1_1-imagenet-caffe.pth`` in a search dir): a state dict of the features
    (``features.*`` keys; the shared file expects Caffe normalisation, see its README)."""
    if weights == "pretrained":
        try:
            import torchvision

            tv = torchvision.models.squeezenet1_1(weights=torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1)
            model.features.load_state_dict(tv.features.state_dict())
            return
        except Exception as exc:  # offline: look for the local file below
            reason = f"{type(exc).__name__}: {exc}"
        cands = [Path(d) / "squeezenet1_1-imagenet-caffe.pth" for d in search_dirs]
    else:
        reason = None
        cands = [Path(weights).expanduser()] + [Path(d) / Path(weights).name for d in search_dirs]
    path = next((c for c in cands if c.is_file()), None)
    if path is None:
        raise FileNotFoundError(
            "weights: could not find SqueezeNet 1.1 features; looked at:\n  " + "\n  ".join(map(str, cands))
            + (f"\n(torchvision download failed: {reason})" if reason else "")
            + "\nGive a path such as ../shared/weights/squeezenet1_1-imagenet-caffe.pth (Caffe normalisation; "
              "docs/data-and-weights.md says which public file it comes from) or go online for `pretrained`.")
    state = safe_torch_load(path, "weights")
    state = state.get("state_dict", state)
    feats = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    if not feats:
        raise ValueError(f"weights: {path} has no 'features.*' keys; it is not a SqueezeNet 1.1 state dict")
    model.features.load_state_dict(feats)
    if weights == "pretrained":
        warnings.warn(f"weights='pretrained': torchvision is offline, using {path}, which expects Caffe "
                      "normalisation (mean [0.485, 0.458, 0.408], std [1/255] * 3), not torchvision's",
                      stacklevel=3)


# ----------------------------------------------------------------------------- registry
#: name -> (last conv layer, gap+linear head or None).  The one place layer names live.
LAYERS = {
    "small_cnn": ("block", ("block", "linear")),
    "resnet20": ("layer3.2", ("layer3.2", "linear")),
    "resnet20_keras": ("layer3.2", ("layer3.2", "linear")),
    # torchvision InceptionV3: Mixed_7c -> avgpool -> dropout (identity in eval) -> fc
    "inception_v3": ("Mixed_7c", ("Mixed_7c", "fc")),
    # VGG16: the last conv block (conv5_3 + ReLU) is followed by max-pool and a 3-layer MLP
    "vgg16": ("features.29", None),
    # paper 2's VGG16: features (conv5_3 + ReLU + the 5th max-pool, 512x7x7) -> GAP -> dropout -> linear
    "vgg16_gap": ("features.30", ("features.30", "linear")),
    # SqueezeNet 1.1: the last fire module (fire9, 512 filters) -> global average pool -> linear
    "squeezenet1_1": ("features.12", ("features.12", "linear")),
}


def build_model(name: str, num_classes: int, in_channels: int = 3, weights: str | None = None,
                search_dirs=()) -> nn.Module:
    """Build a classifier by name and tag it with its conductance layers.

    ``weights``: ``None`` / ``"none"`` (random init), ``"pretrained"`` (ResNet20:
    the akamaster checkpoint, found in ``search_dirs`` or downloaded; torchvision
    models: ImageNet weights through torchvision) or a path to a checkpoint.
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"model: {name!r} is not a known model; valid: {', '.join(MODEL_NAMES)}")
    if name == "small_cnn":
        model = SmallCNN(num_classes, in_channels)
    elif name == "resnet20_keras":
        model = ResNet20Keras(num_classes, in_channels)
    elif name == "resnet20":
        model = ResNet20(num_classes, in_channels)
        if weights not in (None, "none"):
            load_resnet20_checkpoint(model, _resolve_resnet20_weights(weights, search_dirs))
    elif name == "squeezenet1_1":
        model = SqueezeNetGAP(num_classes)
        if weights not in (None, "none"):
            _load_squeezenet_features(model, weights, search_dirs)
    elif name == "vgg16_gap":
        model = VGG16GAP(num_classes, weights)
    else:
        model = _torchvision_model(name, num_classes, weights)
    model.last_conv_layer, model.gap_linear_head = LAYERS[name]
    model.model_name = name
    return model


def last_conv_layer(model: nn.Module) -> nn.Module:
    """The module named by ``model.last_conv_layer``."""
    return model.get_submodule(model.last_conv_layer)


def pooled_head(model: nn.Module) -> tuple[str, nn.Linear]:
    """Paper 2's pooled features ``g`` and final linear layer (docs/methods.md section 6): the name of the
    module whose output, globally average-pooled, is ``g``, and the linear layer that maps ``g`` to
    the logits.  Read from the model's declaration in :data:`LAYERS` (``gap_linear_head``)."""
    head = getattr(model, "gap_linear_head", None)
    if head is None:
        raise ValueError(f"model: {getattr(model, 'model_name', type(model).__name__)!r} has no global-average-"
                         "pool + linear head, so it has no pooled features g for the CFE filters (paper 2); "
                         f"models with one: {', '.join(n for n, (_, h) in LAYERS.items() if h)}")
    layer, linear = head
    lin = model.get_submodule(linear)
    if not isinstance(lin, nn.Linear):
        raise ValueError(f"model: {linear!r} is a {type(lin).__name__}, not the final nn.Linear")
    return layer, lin


def layer_output(model: nn.Module, layer: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, output of the module named layer)`` of one forward pass (a forward hook)."""
    seen = {}
    hook = model.get_submodule(layer).register_forward_hook(lambda m, i, o: seen.__setitem__("a", o))
    try:
        logits = model(x)
    finally:
        hook.remove()
    return logits, seen["a"]


def pooled_forward(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, g)`` of a batch, differentiable: ``g`` = the global average pool of the pooled
    layer's output (the vector the head's linear layer sees; dropout is the identity in eval mode)."""
    logits, a = layer_output(model, pooled_head(model)[0], x)
    return logits, a.mean((2, 3))


@torch.no_grad()
def pooled_features(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(g, logits)`` of a batch, without gradients, as float32 (paper 2's cached features)."""
    logits, g = pooled_forward(model, x)
    return g.float(), logits.float()
