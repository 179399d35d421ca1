"""Where an architecture comes from, read from its name, and the exact size of the built-in ones.

This module must not import torch, even indirectly: the API checks a registration with it in a process that
never loads torch (like ``models.unlearning.params``). Everything that needs torch (building, the meta-device
size check, the features/head adapter) lives in ``models.architectures`` and ``models.adapters``.

An ``architecture`` is one of:

- a built-in name (``mlp``, ``small_cnn``, ``resnet18_cifar``);
- ``torchvision:<builder>``: any classification builder of ``torchvision.models``, built with
  ``weights=None``;
- ``timm:<name>``: ``timm.create_model(name, pretrained=False, ...)``;
- ``plugin:<name>``: a factory the operator installed as an entry point in the group
  ``unlearn.architectures`` (``name -> callable(num_classes=..., **kwargs) -> nn.Module``);
- ``hf:<task>``: a Hugging Face ``transformers`` model built from the config in ``arch_kwargs.config``
  (``hf:sequence-classification`` -> ``AutoModelForSequenceClassification.from_config``), see
  ``models.hf``. ``check_hf_config`` checks that config here, without torch or transformers.

Code never comes from an upload: only from torchvision, timm, transformers, or packages the operator
installed.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

ENTRY_POINT_GROUP = "unlearn.architectures"
BUILTINS = ("mlp", "small_cnn", "resnet18_cifar")
EXTERNAL = ("torchvision", "timm", "plugin", "hf")
HF_TASKS = ("sequence-classification",)
# Config keys that would run code from the hub, quantize (other libraries, other weights) or fetch
# attention kernels: a config here only describes a model transformers itself ships.
HF_REFUSED_KEYS = ("auto_map", "quantization_config", "custom_pipelines")
HF_ATTENTION = ("eager", "sdpa")
_MODEL_TYPE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")

# kwargs that would fetch or read weights instead of building a fresh module: weights arrive only as the
# uploaded checkpoint, and nothing is downloaded at run time.
WEIGHT_KWARGS = frozenset(
    {
        "weights",
        "weights_backbone",
        "pretrained",
        "pretrained_cfg",
        "pretrained_cfg_overlay",
        "pretrained_strict",
        "checkpoint_path",
        "cache_dir",
    }
)

# A builder or entry-point name: a Python identifier with dots allowed for timm's tags (`resnet50.a1_in1k`).
# No `:` or `/`, so a name can never become `hf-hub:...` or a path that timm would fetch or read.
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)?$")


@dataclass(frozen=True)
class Source:
    kind: str  # "builtin", "torchvision", "timm" or "plugin"
    target: str  # the built-in name, builder, timm model or entry-point name

    @property
    def external(self) -> bool:
        return self.kind != "builtin"


def parse(architecture: str) -> Source:
    """`mlp` -> builtin; `torchvision:resnet18` -> torchvision. ValueError naming what is wrong."""
    if ":" not in architecture:
        if architecture not in BUILTINS:
            raise ValueError(
                f"unknown architecture {architecture!r}: a built-in ({', '.join(BUILTINS)}) or "
                f"{', '.join(f'{k}:<name>' for k in EXTERNAL)}"
            )
        return Source("builtin", architecture)
    kind, _, target = architecture.partition(":")
    if kind not in EXTERNAL:
        raise ValueError(
            f"unknown architecture source {kind!r} in {architecture!r}; known: {', '.join(EXTERNAL)}"
        )
    if kind == "hf":
        if target not in HF_TASKS:
            raise ValueError(f"{architecture!r}: unknown hf task {target!r}; known: {', '.join(HF_TASKS)}")
        return Source(kind, target)
    if not _NAME.match(target):
        raise ValueError(f"{architecture!r}: {target!r} is not a {kind} model name")
    return Source(kind, target)


def check_kwargs(kwargs: dict[str, Any], num_classes: int) -> None:
    """Refuse kwargs that ask for downloaded or file weights, and an arch_kwargs num_classes other than the
    spec's (the builder gets the spec's)."""
    if kwargs.get("num_classes", num_classes) != num_classes:
        raise ValueError(
            f"arch_kwargs.num_classes {kwargs['num_classes']!r} differs from num_classes {num_classes}"
        )
    bad = sorted(WEIGHT_KWARGS & set(kwargs))
    if bad:
        raise ValueError(
            f"arch_kwargs {bad} would load pretrained weights; weights come only from the uploaded checkpoint"
        )


def check_hf_kwargs(kwargs: dict[str, Any], num_classes: int) -> None:
    """``hf:<task>``'s arch_kwargs: ``config`` (a transformers config.json as an object) and nothing else
    besides num_classes. ValueError naming the problem."""
    unknown = sorted(set(kwargs) - {"config", "num_classes"})
    if unknown:
        raise ValueError(f"an hf: architecture takes arch_kwargs.config only, not {unknown}")
    if "config" not in kwargs:
        raise ValueError(
            "an hf: architecture needs its config.json: as arch_kwargs.config, or as the `config` file of "
            "the registration"
        )
    check_hf_config(kwargs["config"], num_classes)


def check_hf_config(config: Any, num_classes: int) -> None:
    """A transformers config (a ``config.json`` object) the service builds: a ``model_type``, no key that
    fetches code, kernels or other weights, labels agreeing with num_classes. ValueError otherwise."""
    if not isinstance(config, dict):
        raise ValueError(f"arch_kwargs.config must be an object (a config.json), got {type(config).__name__}")
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not _MODEL_TYPE.match(model_type):
        raise ValueError(
            f"config.model_type must name a transformers model type (e.g. 'bert'), got {model_type!r}"
        )
    refused = sorted(k for k in HF_REFUSED_KEYS if config.get(k) is not None)
    if refused:
        raise ValueError(
            f"config {refused} would load code, weights or kernels from elsewhere; a model is built from "
            "its config alone, with transformers' own code"
        )
    for key in ("attn_implementation", "_attn_implementation", "experts_implementation"):
        value = config.get(key)
        if value is not None and value not in HF_ATTENTION:
            raise ValueError(f"config.{key} must be one of {list(HF_ATTENTION)} (or left out), got {value!r}")
    labels = config.get("id2label")
    if labels is not None and not isinstance(labels, dict):
        raise ValueError(f"config.id2label must be an object of class index -> name, got {labels!r:.100}")
    if labels and len(labels) != num_classes:
        raise ValueError(f"config.id2label has {len(labels)} labels but num_classes is {num_classes}")
    # transformers reads every key as int(key) when it builds the config: a worker would fail on it later
    indices = sorted(str(k) for k in labels or {})
    if indices and indices != sorted(str(i) for i in range(num_classes)):
        raise ValueError(
            f"config.id2label's keys must be the class indices 0..{num_classes - 1}, got {indices[:10]}"
        )
    declared = config.get("num_labels")
    if declared is not None and declared != num_classes:
        raise ValueError(f"config.num_labels {declared!r} differs from num_classes {num_classes}")


def plugin_names() -> list[str]:
    """Entry points installed in the group (read from package metadata: no plugin code is imported)."""
    from importlib.metadata import entry_points

    return sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def positive(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


# ---------------------------------------------------------------- built-in sizes, without building
# Each mirrors its factory's signature in models.architectures (an unknown kwarg is a TypeError here too);
# tests/models/test_ml_architectures.py checks every formula against the built module's parameter count.


def _mlp(in_features: int = 64, num_classes: int = 10, hidden: Sequence[int] = (256,)) -> int:
    if isinstance(hidden, str | bytes) or not isinstance(hidden, Sequence):
        raise ValueError(f"hidden must be a list of positive integers, got {hidden!r}")
    widths = [positive("in_features", in_features), *(positive("hidden", h) for h in hidden)]
    widths.append(positive("num_classes", num_classes))
    return sum(a * b + b for a, b in zip(widths, widths[1:], strict=False))


def _small_cnn(in_channels: int = 1, image_size: int = 8, num_classes: int = 10) -> int:
    c, s, k = (
        positive("in_channels", in_channels),
        positive("image_size", image_size),
        positive("num_classes", num_classes),
    )
    if s % 4:
        raise ValueError(f"image_size must be divisible by 4 (e.g. 8 or 28), got {s}")
    return (c * 32 * 9 + 32) + (32 * 64 * 9 + 64) + (64 * (s // 4) ** 2 * 128 + 128) + (128 * k + k)


def _resnet18_cifar(num_classes: int = 10, in_channels: int = 3) -> int:
    c, k = positive("in_channels", in_channels), positive("num_classes", num_classes)
    total = c * 64 * 9 + 2 * 64  # stem conv (no bias) and its BatchNorm
    c_in = 64
    for c_out, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
        for cin, s in ((c_in, stride), (c_out, 1)):
            total += cin * c_out * 9 + 2 * c_out + c_out * c_out * 9 + 2 * c_out
            if s != 1 or cin != c_out:
                total += cin * c_out + 2 * c_out  # 1x1 shortcut and its BatchNorm
        c_in = c_out
    return total + 512 * k + k


_BUILTIN_SIZES: dict[str, Callable[..., int]] = {
    "mlp": _mlp,
    "small_cnn": _small_cnn,
    "resnet18_cifar": _resnet18_cifar,
}


def builtin_parameter_count(name: str, **kwargs: Any) -> int:
    """The exact number of parameters ``build_model(name, **kwargs)`` would allocate, computed without
    torch. TypeError for a kwarg the built-in does not take (naming those it takes), ValueError for a bad
    value."""
    size = _BUILTIN_SIZES[name]
    takes = list(inspect.signature(size).parameters)
    if unknown := [k for k in kwargs if k not in takes]:
        raise TypeError(f"{name} takes no {', '.join(map(repr, unknown))} (it takes {', '.join(takes)})")
    return size(**kwargs)
