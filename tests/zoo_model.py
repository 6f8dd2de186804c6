"""A model of one's own, as a researcher would bring it: ``model: tests.zoo_model:build`` in a profile
(tests/test_model_zoo.py).  Small on purpose, with the module kinds the detectors must cope with: a
bias-free conv with BatchNorm and an in-place ReLU, a squeeze-excite gate, a depthwise conv with
GroupNorm, global average pooling and one linear layer; with ``aux=True`` its train-mode forward
returns ``(logits, auxiliary logits)``, as InceptionV3's does."""
from __future__ import annotations

import torch.nn as nn


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int = 4):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.fc2 = nn.Conv2d(reduced, channels, 1)
        self.act = nn.ReLU(inplace=True)
        self.gate = nn.Sigmoid()

    def forward(self, x):
        return x * self.gate(self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True)))))


class ZooNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 8, aux: bool = False):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True))
        self.se = SqueezeExcite(width)
        self.block = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, groups=width), nn.GroupNorm(2, width),
                                   nn.ReLU(inplace=True), nn.Conv2d(width, 2 * width, 1))
        self.fc = nn.Linear(2 * width, num_classes)
        self.aux = nn.Linear(width, num_classes) if aux else None

    def forward(self, x):
        x = self.se(self.stem(x))
        logits = self.fc(self.block(x).mean((2, 3)))
        if self.training and self.aux is not None:
            return logits, self.aux(x.mean((2, 3)))
        return logits


def build(num_classes: int, in_channels: int = 3, aux: bool = False) -> ZooNet:
    """The model of ``model: tests.zoo_model:build`` (``model_kwargs: {aux: true}`` for the tuple output)."""
    return ZooNet(num_classes, in_channels, aux=aux)


def build_fixed() -> ZooNet:
    """A callable that does not take ``num_classes``: ten outputs, whose head build_model resizes."""
    return ZooNet(10)


class MLPHeadNet(nn.Module):
    """Conv features, then a head that is an MLP over the flattened map (VGG's and AlexNet's kind): no pooled
    features ``g`` feed one linear layer, so paper 2 does not apply while paper 1 does."""

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 8, size: int = 4):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(size))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(width * size * size, 16), nn.ReLU(),
                                        nn.Linear(16, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


def build_mlp_head(num_classes: int, in_channels: int = 3) -> MLPHeadNet:
    """``model: tests.zoo_model:build_mlp_head``: a model without a pooled linear head."""
    return MLPHeadNet(num_classes, in_channels)
