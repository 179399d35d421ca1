"""Architectures in a registry (name -> factory), as timm registers models.

Every model exposes ``features(x) -> (B, D)`` (penultimate features) and ``head(f) -> (B, K)`` (logits) with
``forward(x) == head(features(x))``: the adaptive smoothing rate of UGradSL+ needs the features of the very
forward pass that produced the logits, so no method ever runs a second pass to get them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

ModelFactory = Callable[..., nn.Module]
ShapeFn = Callable[..., tuple[int, ...]]


@dataclass(frozen=True)
class _Entry:
    factory: ModelFactory
    input_shape: ShapeFn


_REGISTRY: dict[str, _Entry] = {}


def register_model(name: str, *, input_shape: ShapeFn) -> Callable[[ModelFactory], ModelFactory]:
    """Register ``factory`` under ``name``; ``input_shape(**kwargs)`` gives the shape of one sample."""

    def deco(factory: ModelFactory) -> ModelFactory:
        if name in _REGISTRY:
            raise ValueError(f"architecture {name!r} is already registered")
        _REGISTRY[name] = _Entry(factory, input_shape)
        return factory

    return deco


def _entry(name: str) -> _Entry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown architecture {name!r}; known: {', '.join(list_models())}") from None


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a fresh, randomly initialised model. The name and kwargs are kept on the module
    (``architecture``, ``architecture_kwargs``) so exact retraining can rebuild the same architecture."""
    model = _entry(name).factory(**kwargs)
    model.architecture = name  # type: ignore[assignment]
    model.architecture_kwargs = dict(kwargs)  # type: ignore[assignment]
    return model


def model_input_shape(name: str, **kwargs: Any) -> tuple[int, ...]:
    """Shape of ONE input sample (no batch dimension) for ``build_model(name, **kwargs)``."""
    return _entry(name).input_shape(**kwargs)


class Classifier(nn.Module):
    """Base class: ``forward(x) = head(features(x))``."""

    classifier: nn.Module
    body: nn.Module

    def features(self, x: torch.Tensor) -> torch.Tensor:  # (B, ...) -> (B, D)
        raise NotImplementedError

    def head(self, f: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B, K)
        out: torch.Tensor = self.classifier(f)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _positive(name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


# ---------------------------------------------------------------- mlp


class MLP(Classifier):
    def __init__(self, in_features: int, num_classes: int, hidden: Sequence[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.body = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(x)  # (B, hidden[-1])
        return out


@register_model("mlp", input_shape=lambda in_features=64, **_: (in_features,))
def mlp(in_features: int = 64, num_classes: int = 10, hidden: Sequence[int] = (256,)) -> nn.Module:
    """Multi-layer perceptron; flattens its input, so any shape with ``in_features`` elements works."""
    hidden = tuple(_positive("hidden", h) for h in hidden)
    return MLP(_positive("in_features", in_features), _positive("num_classes", num_classes), hidden)


# ---------------------------------------------------------------- small_cnn


class SmallCNN(Classifier):
    """Two conv+pool blocks and a 128-unit hidden layer: memorises digits in seconds on a CPU."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 32, S/2, S/2)
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 64, S/4, S/4)
            nn.Flatten(),
            nn.Linear(64 * (image_size // 4) ** 2, 128), nn.ReLU(),  # (B, 128)
        )  # fmt: skip
        self.classifier = nn.Linear(128, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(x)  # (B, 128)
        return out


@register_model(
    "small_cnn",
    input_shape=lambda in_channels=1, image_size=8, **_: (in_channels, image_size, image_size),
)
def small_cnn(in_channels: int = 1, image_size: int = 8, num_classes: int = 10) -> nn.Module:
    """Small CNN for grey 8x8 (digits) or 28x28 (Fashion-MNIST) images; any size divisible by 4 works."""
    if _positive("image_size", image_size) % 4:
        raise ValueError(f"image_size must be divisible by 4 (e.g. 8 or 28), got {image_size}")
    return SmallCNN(_positive("in_channels", in_channels), image_size, _positive("num_classes", num_classes))


# ---------------------------------------------------------------- resnet18_cifar


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        res: torch.Tensor = torch.relu(out + self.shortcut(x))
        return res


class ResNet18Cifar(Classifier):
    """ResNet-18 for 32x32 inputs: 3x3 stem with stride 1 and no max-pool (the CIFAR variant)."""

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()
        )
        blocks: list[nn.Module] = []
        c_in = 64
        for c_out, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            blocks += [BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)]
            c_in = c_out
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(512, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(self.stem(x))  # (B, 512, 4, 4) for 32x32 inputs
        pooled: torch.Tensor = self.pool(out)
        return pooled.flatten(1)  # (B, 512)


@register_model("resnet18_cifar", input_shape=lambda in_channels=3, **_: (in_channels, 32, 32))
def resnet18_cifar(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return ResNet18Cifar(_positive("num_classes", num_classes), _positive("in_channels", in_channels))
