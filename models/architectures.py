"""Architectures: built-ins in a registry (name -> factory), as timm registers models, and the external
sources of ``models.sources`` (``torchvision:<builder>``, ``timm:<name>``, ``plugin:<name>``,
``hf:<task>``).

Every model exposes ``features(x) -> (B, D)`` (penultimate features) and ``head(f) -> (B, K)`` (logits) with
``forward(x) == head(features(x))``: the adaptive smoothing rate of UGradSL+ needs the features of the very
forward pass that produced the logits, so no method ever runs a second pass to get them. Built-ins implement
this themselves (``Classifier``); external modules get it from ``models.adapters`` without a second pass and
without renaming a single ``state_dict`` key.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._device import _device_constructors

from models import sources
from models.adapters import adapt
from models.sources import positive as _positive

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
        raise UnknownArchitecture(
            f"unknown architecture {name!r}; known: {', '.join(list_models())}"
        ) from None


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a fresh, randomly initialised model: a registered name, or ``torchvision:<builder>``,
    ``timm:<name>``, ``plugin:<name>`` (never with downloaded weights). The name and kwargs are kept on the
    module (``architecture``, ``architecture_kwargs``) so exact retraining can rebuild the same
    architecture."""
    model = _build(name, kwargs)
    model.architecture = name  # type: ignore[assignment]
    model.architecture_kwargs = dict(kwargs)  # type: ignore[assignment]
    return model


def _build(name: str, kwargs: dict[str, Any]) -> nn.Module:
    if ":" not in name:
        return _entry(name).factory(**kwargs)
    source = sources.parse(name)
    bad = sorted(sources.WEIGHT_KWARGS & set(kwargs))
    if bad:
        raise ValueError(
            f"{bad} would load pretrained weights; weights come only from the uploaded checkpoint"
        )
    if source.kind == "hf":  # transformers' modules take keyword inputs: adapted by models.hf itself
        from models import hf

        return hf.build(source.target, kwargs)
    return adapt(_external(source, kwargs))


def _external(source: sources.Source, kwargs: dict[str, Any]) -> nn.Module:
    if source.kind == "torchvision":
        import torchvision.models as tvm

        if source.target not in tvm.list_models(module=tvm):
            raise UnknownArchitecture(f"torchvision has no classification model builder {source.target!r}")
        return tvm.get_model_builder(source.target)(weights=None, **kwargs)
    if source.kind == "timm":
        import timm

        if not timm.is_model(source.target):
            raise UnknownArchitecture(f"timm has no model {source.target!r}")
        return timm.create_model(source.target, pretrained=False, **kwargs)
    found = entry_points(group=sources.ENTRY_POINT_GROUP, name=source.target)
    if not found:
        installed = ", ".join(sources.plugin_names()) or "none"
        raise UnknownArchitecture(
            f"no plugin {source.target!r} in the entry-point group {sources.ENTRY_POINT_GROUP!r} "
            f"(installed: {installed})"
        )
    factory = next(iter(found)).load()
    module = factory(**kwargs)
    if not isinstance(module, nn.Module):
        raise TypeError(f"plugin {source.target!r} returned {type(module).__name__}, not a torch nn.Module")
    return module


def model_input_shape(name: str, **kwargs: Any) -> tuple[int, ...]:
    """Shape of ONE input sample (no batch dimension) for ``build_model(name, **kwargs)``. Registered
    names only: an external architecture takes the shape of its registered dataset's samples."""
    if ":" in name:
        raise ValueError(f"{name!r} has no declared input shape: it takes its training set's sample shape")
    return _entry(name).input_shape(**kwargs)


# ---------------------------------------------------------------- size before allocation


class UnknownArchitecture(KeyError):
    """A name no builder answers to. A KeyError (a lookup that failed) whose text is its message:
    a KeyError's own str() is the repr of its argument, and a model's ``status_detail`` read
    'KeyError: "torchvision has no classification model builder 'nope'"' (a probe)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ModelTooLarge(ValueError):
    """The architecture has more parameters than the service admits."""


class _WeightsOnMeta(TorchFunctionMode):
    """Tensor factories go to the meta device (shape, no memory), except small helper tensors that a builder
        reads back (torchvision's RegNet widths, Swin's position index: ``arange(...).tolist()``): at most
        ``_SMALL`` elements each and ``_SMALL_TOTAL`` in all, never an uninitialised ``empty`` (where layers
        allocate their weights), whatever device the builder names. A builder that needs more real memory than
    that is refused."""

    _SMALL = 1 << 16
    _SMALL_TOTAL = 1 << 24  # elements, ~64 MiB in fp32
    _ALWAYS_META = (torch.empty, torch.empty_strided, torch.empty_like)

    def __init__(self) -> None:
        super().__init__()
        self.real = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = dict(kwargs or {})
        if func not in _device_constructors():
            return func(*args, **kwargs)
        out = func(*args, **{**kwargs, "device": "meta"})  # whatever device was asked for
        n = out.numel() if isinstance(out, torch.Tensor) else 0
        if func in self._ALWAYS_META or n > self._SMALL:
            return out
        self.real += n
        if self.real > self._SMALL_TOTAL:
            raise ModelTooLarge(
                "its builder allocates too much memory outside its weights to be sized safely"
            )
        return func(*args, **kwargs)


def layer_normed(model: nn.Module) -> bool:
    """Whether the network normalises with LayerNorm (transformers, ConvNeXt): families trained and
    fine-tuned with Adam, which unlearning follows where the recipe says so
    (``models.unlearning.params.with_recipe``)."""
    return any(isinstance(m, nn.LayerNorm) for m in model.modules())


def parameter_count(name: str, **kwargs: Any) -> int:
    """Parameters of ``build_model(name, **kwargs)``, counted on a copy built on the meta device: no weight
    is allocated, however large the model. Raises what the builder raises for bad kwargs."""
    with _WeightsOnMeta():
        model = _build(name, kwargs)
    return sum(p.numel() for p in model.parameters())


def check_size(name: str, kwargs: dict[str, Any], max_params: int) -> int:
    """The parameter count, or ModelTooLarge (with the count and the limit) above ``max_params``."""
    count = parameter_count(name, **kwargs)
    if count > max_params:
        raise ModelTooLarge(
            f"{name} has {count:,} parameters; this service admits at most {max_params:,} "
            "(UNLEARN_MAX_PARAMS)"
        )
    return count


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
