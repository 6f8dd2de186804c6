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

The models of :data:`LAYERS` have them declared.  Any other classifier, ``torchvision.<builder>`` or a
callable of your own ``<module>:<callable>``, has them *found* (:func:`find_layers`): one forward pass of
a dummy batch at the profile's image size with forward hooks on every module, where

* the conductance layer is the last module, in the order modules return (so a container after its last
  child: ``layer4``, not ``layer4.1``), called once, whose output is a 4-D map larger than 1x1 that
  reaches the logits (autograd graph), returned before the classification head starts, and that is not
  a pooling module, a pass-through (dropout, identity, stochastic depth) nor a container whose output
  a pooling module produced (VGG's ``features`` ends with a max-pool: its last ReLU is the layer);
* the pooled head (paper 2's ``g`` and final linear layer) is that map's global average pool and the
  classification head, kept only when ``linear(mean over H, W of the map)`` reproduces the logits
  (relative 1e-4); otherwise the model has none and paper 2 refuses it (:func:`pooled_head`);
* the classification head is the last ``nn.Linear`` with one output per logit (else the last 1x1
  convolution with one output channel per logit, SqueezeNet's); it is replaced by a fresh one with
  one output per class of the data, as torchvision's fine-tuning recipes do.

A profile's ``layers:`` (``conductance``, ``pooled``, ``linear``: module names) replaces what is found
or declared, each key on its own; a declared pooled head must pass the same numerical check.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
import itertools
import math
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers.names import MODEL_FORMS, MODEL_NAMES, TORCHVISION_PREFIX, model_kind, torchvision_weights
from helpers.paths import REPO_ROOT
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
def _load_all_but_head(model: nn.Module, state: dict, path, name: str, needed: tuple[str, ...] = (),
                       head: tuple[str, ...] | None = None) -> None:
    """Load a state dict into a torchvision model whose classification head is then replaced: the head
    (and InceptionV3's auxiliary classifier) may differ or be absent, every other weight must be there
    (with ``needed``: every weight whose name starts so, the only part of the model that is used).
    ``head``: the prefixes of the head's keys (default: those of the models of :data:`LAYERS`)."""
    if head is None:
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


#: the image size of the dummy batch that finds a model's layers when none is given (torchvision's ImageNet size)
DEFAULT_IMAGE_SIZE = 224


def build_model(name: str, num_classes: int, in_channels: int = 3, weights: str | None = None,
                search_dirs=(), *, image_size: int | None = None, model_kwargs: dict | None = None,
                layers: dict | None = None) -> nn.Module:
    """Build a classifier by name and tag it with its conductance layers.

    ``name``: one of :data:`MODEL_NAMES` (layers declared in :data:`LAYERS`), ``torchvision.<builder>`` (any
    classifier of ``torchvision.models.list_models()``, built with ``torchvision.models.get_model``) or
    ``<importable.module>:<callable>`` (a callable of your own returning an ``nn.Module``, called with
    ``num_classes=`` and ``in_channels=`` where it takes them, and ``model_kwargs``); the layers of the last
    two are found (:func:`find_layers`) on a dummy batch of ``image_size`` (default 224) pixels.

    ``weights``: ``None`` / ``"none"`` (random init), ``"pretrained"`` (ResNet20:
    the akamaster checkpoint, found in ``search_dirs`` or downloaded; torchvision
    models: ImageNet weights through torchvision) or a path to a checkpoint.  For ``torchvision.<builder>``
    also a torchvision weights name (``DEFAULT``, ``IMAGENET1K_V1``, ...; offline: a notice and random
    init); for a model of your own a state-dict file.  ``model_kwargs``: keyword arguments of the builder
    or callable.  ``layers``: a profile's ``layers:`` mapping, module names that replace what is found
    or declared (``conductance``, ``pooled``, ``linear``).
    """
    kind = model_kind(name)
    if kind is None:
        raise ValueError(f"model: {name!r} is not a known model; valid: {', '.join(MODEL_NAMES)}, or "
                         f"{' or '.join(MODEL_FORMS)} (e.g. torchvision.resnet18, mypackage.models:build)")
    if model_kwargs and kind == "known":
        raise ValueError(f"model_kwargs: {model_kwargs!r} is not valid for model {name!r}; valid: null, or a "
                         f"mapping for a model named {' or '.join(MODEL_FORMS)}")
    if model_kwargs and "num_classes" in model_kwargs:
        raise ValueError(f"model_kwargs: num_classes = {model_kwargs['num_classes']!r} is not valid: the data "
                         "decides the number of classes (the classification head is resized to it); remove it")
    size = image_size or DEFAULT_IMAGE_SIZE
    if kind == "torchvision":
        return _torchvision_classifier(name[len(TORCHVISION_PREFIX):], num_classes, in_channels, weights,
                                       search_dirs, size, model_kwargs, layers)
    if kind == "callable":
        return _user_model(name, num_classes, in_channels, weights, search_dirs, size, model_kwargs, layers)
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
    if layers and any(v is not None for v in layers.values()):
        found = find_layers(model, size, in_channels, layers, name)
        if layers.get("conductance") is not None:
            model.last_conv_layer = found["conductance"]
        if layers.get("pooled") is not None or layers.get("linear") is not None:
            model.gap_linear_head = found["pooled"]
    return model


# ----------------------------------------------------------------------------- layers found, not declared
class LayerError(ValueError):
    """The layers a detector needs were not found in a model, or a profile's ``layers:`` names a wrong one."""


#: modules that pool (never the conductance layer, nor a container whose output one of them produced)
_POOLING = (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd,
            nn.modules.pooling._AdaptiveMaxPoolNd, nn.modules.pooling._LPPoolNd, nn.FractionalMaxPool2d,
            nn.FractionalMaxPool3d)
#: modules that pass their input on in eval mode (never the conductance layer)
_PASS_THROUGH = (nn.modules.dropout._DropoutNd, nn.Identity)
_PASS_THROUGH_NAMES = ("StochasticDepth", "DropPath")  # torchvision.ops / timm
#: relative tolerance of the pooled head's check (as helpers.paper2.stages.pooled_table checks it)
POOLED_RTOL = 1e-4


def _pass_through(m: nn.Module) -> bool:
    return isinstance(m, _PASS_THROUGH) or type(m).__name__ in _PASS_THROUGH_NAMES


def _main_output(module, args, out):
    """Forward hook on a model's root: the main logits where its forward returns a named tuple (InceptionV3's
    and GoogLeNet's auxiliary logits in train mode), a dict (``logits`` / ``out``) or a tuple (the first
    item); a tensor passes unchanged."""
    if isinstance(out, torch.Tensor):
        return None
    if isinstance(getattr(out, "logits", None), torch.Tensor):
        return out.logits
    if isinstance(out, dict):
        for key in ("logits", "out"):
            if isinstance(out.get(key), torch.Tensor):
                return out[key]
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return None


@dataclass(eq=False)
class _Call:
    """What one module did in the dummy forward pass."""

    name: str
    module: nn.Module
    start: int                   # when it was first called (a counter over pre- and post-hooks)
    end: int = -1                # when it last returned
    calls: int = 0
    shape: tuple | None = None   # its output's shape, when a tensor
    grad_fn: object = None       # its output's autograd node, when it returned
    gap: torch.Tensor | None = None  # a 4-D output's mean over H, W (float64), when it returned
    producer: str | None = None  # the leaf module that last wrote its output tensor, when it returned
    inp: torch.Tensor | None = None  # an nn.Linear's input (float64)
    val: torch.Tensor | None = None  # an nn.Linear's output (float64)

    def text(self) -> str:
        return f"{self.name} {tuple(self.shape) if self.shape is not None else '(no tensor)'}"


def _trace(model: nn.Module, image_size: int, in_channels: int):
    """One forward pass of a dummy batch (2 images of ``image_size``, a private seeded generator: the global
    RNG is not touched) in eval mode with hooks on every module; training flags restored.  Returns
    ``(logits, {name: _Call}, the autograd node of the input)``."""
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    x0 = torch.randn(2, in_channels, image_size, image_size, generator=torch.Generator().manual_seed(0))
    x0 = x0.to(device=device, dtype=dtype).requires_grad_(True)
    records: dict[str, _Call] = {}
    producer: dict[int, str] = {}
    keep: list = []  # outputs stay alive during the pass, so that their ids stay unique
    counter = itertools.count()

    def pre(name):
        def hook(m, args):
            rec = records.get(name)
            if rec is None:
                records[name] = rec = _Call(name, m, next(counter))
            else:
                next(counter)
            if isinstance(m, nn.Linear) and args and isinstance(args[0], torch.Tensor) and args[0].dim() == 2:
                rec.inp = args[0].detach().double()  # a head's input: (N, features)
        return hook

    def post(name, leaf):
        def hook(m, args, out):
            rec = records[name]
            rec.calls += 1
            rec.end = next(counter)
            if isinstance(out, torch.Tensor):
                keep.append(out)
                if leaf and not _pass_through(m):
                    producer[id(out)] = name
                rec.shape, rec.grad_fn, rec.producer = tuple(out.shape), out.grad_fn, producer.get(id(out))
                if out.dim() == 4 and out.is_floating_point():
                    rec.gap = out.detach().double().mean((2, 3))
                if isinstance(m, nn.Linear) and out.dim() == 2:
                    rec.val = out.detach().double()
        return hook

    handles = []
    modes = [(m, m.training) for m in model.modules()]
    try:
        for name, m in model.named_modules():
            if not name:
                continue
            leaf = next(m.children(), None) is None
            try:
                handles.append(m.register_forward_pre_hook(pre(name)))
                handles.append(m.register_forward_hook(post(name, leaf)))
            except RuntimeError:  # e.g. a scripted submodule: not traced
                continue
        model.eval()
        with torch.enable_grad():
            x = x0 * 1  # not the leaf itself: the model may change its input in place
            source = x.grad_fn
            out = model(x)
        logits = _main_output(model, (x,), out)
        logits = out if logits is None else logits
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes:
            m.training = mode
    return logits, records, source


def _reachable(fn) -> set:
    """The autograd nodes the logits depend on."""
    seen, stack = set(), [fn]
    while stack:
        f = stack.pop()
        if f is None or f in seen:
            continue
        seen.add(f)
        stack.extend(g for g, _ in f.next_functions)
    return seen


def _is_cut(logits_fn, node, source) -> bool:
    """Every path from the input to the logits passes through ``node`` (so conductance over that layer is
    complete: a branch inside a block is not a cut, the block's output is)."""
    seen, stack = {node}, [logits_fn]
    while stack:
        f = stack.pop()
        if f is None or f in seen:
            continue
        if f is source:
            return False
        seen.add(f)
        stack.extend(g for g, _ in f.next_functions)
    return True


def _close(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    """Equal shapes and values within :data:`POOLED_RTOL` of ``b``'s largest magnitude."""
    if a is None or b is None or a.shape != b.shape:
        return False
    return float((a - b).abs().max()) <= POOLED_RTOL * max(float(b.abs().max()), 1e-30)


def _pooled_check(rec: _Call | None, lin: _Call | None, logits: torch.Tensor) -> bool:
    """The linear layer of ``lin`` sees the global average pool of ``rec``'s output (mean over H, W) and
    gives the logits, both within relative :data:`POOLED_RTOL`; so ``linear(GAP(map))`` reproduces the
    logits whatever the layer's weights (a zero-initialised head would reproduce them from any input)."""
    return (rec is not None and lin is not None and rec.gap is not None
            and _close(lin.inp, rec.gap) and _close(lin.val, logits.detach().double()))


def find_layers(model: nn.Module, image_size: int = DEFAULT_IMAGE_SIZE, in_channels: int = 3,
                layers: dict | None = None, name: str | None = None) -> dict:
    """The layers both papers' detectors need, found from one forward pass of a dummy batch with forward
    hooks (hooks, not ``torch.fx``: they follow any Python control flow); the rules are in the module
    docstring.  ``layers``: a profile's ``layers:`` mapping (``conductance``, ``pooled``, ``linear``), whose
    names replace what is found, each checked.

    Returns ``{"conductance": name, "pooled": (layer, linear) or None, "head": the classification head's
    name or None, "num_outputs": logits per image}``.  A :class:`LayerError` names the model, what was found
    and the ``layers:`` key to set where no conductance layer is found (a vision transformer: no 4-D map)
    or a declaration is wrong; a model without a pooled head is no error (paper 2 refuses it later)."""
    label = name or getattr(model, "model_name", None) or type(model).__name__
    declared = {k: v for k, v in (layers or {}).items() if v is not None}
    modules = dict(model.named_modules())
    for key, mod in declared.items():
        if mod not in modules or not mod:
            shown = ", ".join(n for n in modules if n and n.count(".") <= 1)
            raise LayerError(f"layers.{key}: {mod!r} is not a module of {label!r}; valid: a module name such as "
                             f"{shown}")
    logits, records, source = _trace(model, image_size, in_channels)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise LayerError(f"model: {label!r} returns {type(logits).__name__} "
                         f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else ''} for a batch of images; "
                         "valid: a classifier returning logits of shape (N, classes)")
    n_out = logits.shape[1]
    reach = _reachable(logits.grad_fn) if logits.grad_fn is not None else None

    def reaches(rec: _Call) -> bool:
        return reach is None or (rec.grad_fn is not None and rec.grad_fn in reach)

    once = [r for r in records.values() if r.calls == 1 and r.shape is not None]
    head = None
    for kinds in ((nn.Linear,), (nn.modules.conv._ConvNd,)):
        cands = [r for r in once if isinstance(r.module, kinds) and reaches(r)
                 and not isinstance(r.module, nn.modules.conv._ConvTransposeNd)
                 and (r.module.out_features if isinstance(r.module, nn.Linear) else r.module.out_channels) == n_out
                 and (isinstance(r.module, nn.Linear) or all(k == 1 for k in r.module.kernel_size))]
        if cands:
            head = max(cands, key=lambda r: r.end)
            break

    def usable(r: _Call) -> bool:
        prod = records.get(r.producer) if r.producer else None
        return (len(r.shape) == 4 and r.shape[2] * r.shape[3] > 1 and r.gap is not None
                and not isinstance(r.module, _POOLING) and not _pass_through(r.module)
                and not (prod is not None and isinstance(prod.module, _POOLING))
                and (head is None or r.end < head.start) and reaches(r))

    found = next((r for r in sorted(once, key=lambda r: -r.end) if usable(r)
                  and (reach is None or _is_cut(logits.grad_fn, r.grad_fn, source))), None)
    hint = ("set `layers: {conductance: <module name>}` in the profile (and `layers.pooled` / `layers.linear` "
            "for paper 2's pooled features)")
    tokens = [r for r in once if found is not None and len(r.shape) == 3 and r.end > found.end
              and (head is None or r.end < head.start) and reaches(r)]
    if tokens and "conductance" not in declared:  # a vision transformer: its patch embedding is the last 4-D map
        raise LayerError(f"model: {label!r}: found no layer for conductance: the last 4-D feature map, "
                         f"{found.text()}, is turned into a token sequence ({tokens[-1].text()}) before the logits, "
                         f"so the model has no last conv block (a vision transformer?); {hint}")

    def declared_rec(key: str) -> _Call:
        rec = records.get(declared[key])
        if rec is None or rec.calls != 1 or rec.shape is None:
            what = ("never runs" if rec is None else f"runs {rec.calls} times" if rec.calls != 1
                    else "returns no tensor")
            raise LayerError(f"layers.{key}: {declared[key]!r} {what} in a forward pass of {label!r}; valid: a "
                             "module that runs once and returns a tensor")
        return rec

    if "conductance" in declared:
        cond = declared_rec("conductance")
        if len(cond.shape) < 2:
            raise LayerError(f"layers.conductance: {declared['conductance']!r} returns shape {cond.shape}; valid: "
                             "a module returning (N, channels, ...) feature maps")
    elif found is None:
        last = [r.text() for r in sorted(once, key=lambda r: r.end)[-4:]]
        maps = [r for r in once if len(r.shape) == 4 and reaches(r) and (head is None or r.end < head.start)]
        why = (f"its 4-D feature maps are at most 1x1 at image_size {image_size} (raise image_size)"
               if maps and all(r.shape[2] * r.shape[3] <= 1 for r in maps)
               else "no module returns a 4-D feature map (N, C, H, W) larger than 1x1 that every path to the "
                    "logits crosses")
        raise LayerError(f"model: {label!r}: found no layer for conductance: {why} (the last module outputs: "
                         f"{', '.join(last)}); {hint}")
    else:
        cond = found
    pooled = None
    if "pooled" in declared or "linear" in declared:
        linear_name = declared.get("linear") or (head.name if head is not None else None)
        if "linear" in declared:
            declared_rec("linear")
        if linear_name is None or not isinstance(modules[linear_name], nn.Linear):
            raise LayerError(f"layers.linear: {linear_name!r} of {label!r} is not an nn.Linear; valid: the final "
                             "nn.Linear layer, which maps the pooled features to the logits")
        prec = declared_rec("pooled") if "pooled" in declared else cond
        if not _pooled_check(prec, records.get(linear_name), logits):
            raise LayerError(f"layers: {label!r}: {linear_name!r} applied to the global average pool of "
                             f"{prec.name!r} (output {prec.shape}) does not reproduce the logits; valid: "
                             "`layers.pooled` a module whose 4-D output reaches the logits only through global "
                             "average pooling and `layers.linear` (null: none, paper 2 is then impossible)")
        pooled = (prec.name, linear_name)
    elif head is not None and isinstance(head.module, nn.Linear):
        for rec in dict.fromkeys((cond, found)):
            if rec is not None and _pooled_check(rec, head, logits):
                pooled = (rec.name, head.name)
                break
    return {"conductance": cond.name, "pooled": pooled, "head": head.name if head is not None else None,
            "num_outputs": n_out}


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


def _resize_head(model: nn.Module, head: str, num_classes: int) -> None:
    """Replace the classification head by a freshly initialised one with ``num_classes`` outputs (the same
    kind of layer, input and bias), as torchvision's fine-tuning recipes do."""
    old = model.get_submodule(head)
    if isinstance(old, nn.Linear):
        new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    else:
        new = type(old)(old.in_channels, num_classes, old.kernel_size, stride=old.stride, padding=old.padding,
                        dilation=old.dilation, bias=old.bias is not None)
    _set_module(model, head, new.to(device=old.weight.device, dtype=old.weight.dtype))


def _finish(model: nn.Module, name: str, num_classes: int, in_channels: int, image_size: int, layers,
            state_file: Path | None, aux: tuple[str, ...] = ()) -> nn.Module:
    """Find the layers of a built model, resize its head to ``num_classes``, load ``state_file`` (all but a
    resized head) and tag it."""
    model.register_forward_hook(_main_output)
    found = find_layers(model, image_size, in_channels, layers, name)
    resized = found["num_outputs"] != num_classes
    if resized:
        if found["head"] is None:
            raise LayerError(f"model: {name!r} returns {found['num_outputs']} logits, the data has {num_classes} "
                             "classes, and no classification head (a final nn.Linear, or 1x1 convolution, with "
                             "one output per logit) was found to resize; valid: a model with num_classes outputs "
                             "(a callable taking num_classes)")
        _resize_head(model, found["head"], num_classes)
    if state_file is not None:
        state = safe_torch_load(state_file, "weights")
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        state = {k.removeprefix("module."): v for k, v in state.items()}
        if resized or aux:
            heads = ((found["head"] + ".",) if resized else ()) + tuple(f"{a}." for a in aux)
            _load_all_but_head(model, state, state_file, name, head=heads)
        else:
            try:
                model.load_state_dict(state)
            except RuntimeError as e:
                raise ValueError(f"weights: {state_file} does not fit model {name!r}: "
                                 f"{str(e).splitlines()[1].strip()[:300]}") from None
    model.last_conv_layer, model.gap_linear_head = found["conductance"], found["pooled"]
    model.model_name = name
    return model


def _local_file(weights: str, search_dirs) -> Path | None:
    """A weights file: the path itself, relative to the repository, or its name in a search dir."""
    cand = Path(weights).expanduser()
    for p in (cand, REPO_ROOT / cand, *(Path(d) / cand.name for d in search_dirs)):
        if p.is_file():
            return p
    return None


#: torchvision builders with auxiliary classifiers (switched off: their train-mode forward returns a tuple)
_AUX = {"inception_v3": ("AuxLogits",), "googlenet": ("aux1", "aux2")}


def _torchvision_classifier(builder: str, num_classes: int, in_channels: int, weights, search_dirs,
                            image_size: int, model_kwargs, layers) -> nn.Module:
    import torchvision

    name = TORCHVISION_PREFIX + builder
    valid = torchvision.models.list_models(module=torchvision.models)
    if builder not in valid:
        close = difflib.get_close_matches(builder, valid, n=5) or valid[:8]
        raise ValueError(f"model: {name!r} is not a torchvision classifier; valid: torchvision.<builder> with a "
                         f"builder of torchvision.models.list_models(), e.g. "
                         f"{', '.join(TORCHVISION_PREFIX + b for b in close)}")
    if in_channels != 3:
        raise ValueError(f"model: {name!r} takes 3-channel (RGB) images, the data has {in_channels} channel(s); "
                         "valid: a dataset of colour images, or a model of your own (<module>:<callable>)")
    enum = torchvision.models.get_model_weights(builder)
    tv_weights, state_file = None, None
    if weights not in (None, "none"):
        short = str(weights).removeprefix(enum.__name__ + ".")
        tv_weights = torchvision_weights(enum, str(weights))
        if tv_weights is None:
            state_file = _local_file(str(weights), search_dirs)
            if state_file is None:
                what = ("not a weights name of" if re.fullmatch(r"[A-Z0-9_]+", short)
                        else "no file, nor a weights name of")
                raise FileNotFoundError(f"weights: {weights!r} is {what} {name}; valid: null, "
                                        f"{', '.join(enum.__members__)}, 'pretrained' (DEFAULT) or a state-dict file")
    kw = dict(model_kwargs or {})
    model = None
    if tv_weights is not None:
        try:
            model = torchvision.models.get_model(builder, weights=tv_weights, **kw)
        except Exception as exc:
            warnings.warn(
                f"weights={weights!r}: could not load {tv_weights} for {name} through torchvision "
                f"({type(exc).__name__}: {exc}); using random initialisation. Give a local path in "
                "`weights` to use a downloaded file.",
                stacklevel=3,
            )
    if model is None:
        if builder in _AUX:  # no auxiliary classifiers built, torchvision's initialisation without its notice
            kw.setdefault("aux_logits", False)
            kw.setdefault("init_weights", True)
        model = torchvision.models.get_model(builder, weights=None, **kw)
    aux = _AUX.get(builder, ())
    if getattr(model, "aux_logits", False):
        model.aux_logits = False
    for attr in aux:
        if getattr(model, attr, None) is not None:
            setattr(model, attr, None)
    return _finish(model, name, num_classes, in_channels, image_size, layers, state_file, aux)


def _import_callable(spec: str):
    module_name, _, attr = spec.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if str(REPO_ROOT) in sys.path or not e.name or not module_name.startswith(e.name):
            raise ValueError(f"model: {spec!r}: cannot import {module_name!r} ({e}); valid: "
                             "<importable.module>:<callable>, the module on the Python path") from None
        sys.path.append(str(REPO_ROOT))  # a module of the repository, from a notebook run in notebooks/
        return _import_callable(spec)
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"model: {spec!r}: {module_name!r} has no {attr!r}; valid: <importable.module>:<callable>")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"model: {spec!r} is a {type(obj).__name__}, not a callable returning an nn.Module")
    return obj


def _user_model(spec: str, num_classes: int, in_channels: int, weights, search_dirs, image_size: int,
                model_kwargs, layers) -> nn.Module:
    """A model of your own: ``<module>:<callable>`` called with ``num_classes`` / ``in_channels`` where its
    signature names them (``num_classes`` also through ``**kwargs``) and ``model_kwargs``; ``weights`` a
    state-dict file (plain, or ``{"state_dict": ...}``) or null."""
    fn = _import_callable(spec)
    kw = dict(model_kwargs or {})
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    if "num_classes" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        kw["num_classes"] = num_classes
    if "in_channels" in params:
        kw.setdefault("in_channels", in_channels)
    model = fn(**kw)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: {spec!r} returned a {type(model).__name__}; valid: a callable returning an "
                         "nn.Module")
    state_file = None
    if weights not in (None, "none"):
        state_file = _local_file(str(weights), search_dirs)
        if state_file is None:
            raise FileNotFoundError(f"weights: no file at {weights!r}; valid for a model of your own: null or a "
                                    "state-dict file")
    return _finish(model, spec, num_classes, in_channels, image_size, layers, state_file)


def load_state(model: nn.Module, state: dict) -> None:
    """``model.load_state_dict(state)`` (strict) with the module versions of ``model`` itself where ``state``
    carries none: a state dict kept as a plain dict (a cached stage, a checkpoint) loses them, and some
    modules (torchvision's MNASNet) refuse a state without its version."""
    if getattr(state, "_metadata", None) is None:
        from collections import OrderedDict

        versioned = OrderedDict(state)
        versioned._metadata = getattr(model.state_dict(), "_metadata", None)
        state = versioned
    model.load_state_dict(state)


def last_conv_layer(model: nn.Module) -> nn.Module:
    """The module named by ``model.last_conv_layer``."""
    return model.get_submodule(model.last_conv_layer)


def pooled_head_missing(model: nn.Module) -> str | None:
    """Why paper 2 cannot run on ``model`` (it has no global-average-pool + linear head, see
    :func:`pooled_head`), or None when it can."""
    try:
        pooled_head(model)
    except ValueError as e:
        return str(e)
    return None


def pooled_head(model: nn.Module) -> tuple[str, nn.Linear]:
    """Paper 2's pooled features ``g`` and final linear layer (docs/methods.md section 6): the name of the
    module whose output, globally average-pooled, is ``g``, and the linear layer that maps ``g`` to
    the logits.  Read from ``model.gap_linear_head``: declared in :data:`LAYERS`, or found and checked
    by :func:`find_layers`."""
    head = getattr(model, "gap_linear_head", None)
    if head is None:
        raise ValueError(f"model: {getattr(model, 'model_name', type(model).__name__)!r} has no global-average-"
                         "pool + linear head, so it has no pooled features g for the CFE filters (paper 2); "
                         f"models with one: {', '.join(n for n, (_, h) in LAYERS.items() if h)}, most "
                         "torchvision.<builder> (e.g. torchvision.resnet18), or name yours in the profile's "
                         "`layers: {pooled: <module>, linear: <module>}` (checked: linear(GAP) must give the logits)")
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
