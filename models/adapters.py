"""The service's contract on any classifier: ``features(x) -> (B, D)``, ``head(f) -> (B, K)``, and
``forward(x) == head(features(x))`` from ONE forward pass (UGradSL+'s adaptive smoothing needs the features
of the very pass that produced the logits).

A module whose class defines ``features`` and ``head`` as methods (a ``models.architectures.Classifier``,
or a plugin written for the service) is used as it is; ``check_contract`` then verifies that its forward is
``head . features``. Any other module whose logits come out of a final ``nn.Linear`` -- torchvision's
``fc``, ``classifier[-1]``, ``heads.head``...; timm's ``get_classifier()`` -- is wrapped in
``LinearHeadAdapter``:

- ``features(x)`` runs the module's own forward and stops it at the classifier: a forward pre-hook takes
  the classifier's input and ends the pass, so nothing after it runs and nothing runs twice;
- ``head(f)`` is the classifier;
- the wrapper shares the module's parameters, buffers and children rather than holding the module as a
  child, so its ``state_dict`` keys are exactly the module's: a checkpoint of the plain
  ``torchvision.models.resnet18(num_classes=10)`` loads strictly, and a published checkpoint loads back
  into the plain builder.

The classifier must be the last step of the forward pass (true of torchvision's and timm's classification
models); ``check_contract`` refuses a module where it is not, and one whose classifier's input is not
``(B, D)``.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from models import batches as B
from models.batches import Loaded


def defines_contract(module: nn.Module) -> bool:
    """The module's class implements ``features`` and ``head`` as methods. (torchvision's VGG or Swin
    have *submodules* named ``features`` and ``head``: those are not the contract.)"""
    return all(inspect.isfunction(getattr(type(module), name, None)) for name in ("features", "head"))


def find_classifier(module: nn.Module) -> str:
    """The dotted name of the final classifier ``nn.Linear``: timm's ``get_classifier()`` when the module
    has one, else the last ``nn.Linear`` registered (torchvision registers its head last)."""
    get = getattr(module, "get_classifier", None)
    if callable(get):
        target = get()
        name = next((n for n, m in module.named_modules() if m is target), None)
        if isinstance(target, nn.Linear) and name:
            return name
        raise ValueError(
            f"{type(module).__name__}.get_classifier() is {type(target).__name__}, not one nn.Linear "
            "(e.g. a distilled model's two heads); its features and head cannot be separated"
        )
    linears = [n for n, m in module.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(
            f"{type(module).__name__} has no nn.Linear classifier (e.g. a convolutional head), so its "
            "features and head cannot be separated; a plugin can implement features() and head() itself"
        )
    return linears[-1]


class NotAdaptable(ValueError):
    """The module's classifier is not a last step on (B, D) features: no features/head contract."""


class _Reached(Exception):
    """Ends a forward pass at the classifier, carrying the classifier's input."""

    def __init__(self, features: torch.Tensor) -> None:
        super().__init__()
        self.features = features


class LinearHeadAdapter(nn.Module):
    """``features``/``head`` for a module whose last step is the ``nn.Linear`` named ``classifier``;
    same parameters, buffers, module names and ``state_dict`` keys as the module."""

    def __init__(self, net: nn.Module, classifier: str) -> None:
        super().__init__()
        if not isinstance(net.get_submodule(classifier), nn.Linear):
            raise ValueError(f"{classifier!r} is not an nn.Linear")
        # Share, do not own: the same dicts, so names, state_dict, .to(), .parameters() are the module's,
        # and the module's own forward (which reads its attributes) sees every change made through us.
        for slot in ("_parameters", "_buffers", "_non_persistent_buffers_set", "_modules"):
            object.__setattr__(self, slot, getattr(net, slot))
        object.__setattr__(self, "wrapped", net)  # not registered as a child: no "net." prefix on keys
        self.classifier_name = classifier

    wrapped: nn.Module

    def train(self, mode: bool = True) -> LinearHeadAdapter:
        super().train(mode)
        self.wrapped.training = mode  # the module's own forward may read it (e.g. auxiliary heads)
        return self

    def run_wrapped(self, x: Loaded) -> object:
        """The wrapped module's own forward on ``x`` (subclasses: how the module takes its inputs)."""
        return self.wrapped(x)

    def own(self, x: Loaded) -> object:
        """The wrapped module's own logits, for ``check_contract`` (subclasses: out of its output)."""
        return self.run_wrapped(x)

    def features(self, x: Loaded) -> torch.Tensor:
        def reached(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            raise _Reached(args[0])

        handle = self.wrapped.get_submodule(self.classifier_name).register_forward_pre_hook(reached)
        try:
            self.run_wrapped(x)
        except _Reached as stop:
            return stop.features
        finally:
            handle.remove()
        raise RuntimeError(
            f"the forward pass of {type(self.wrapped).__name__} never reached its classifier "
            f"{self.classifier_name!r}"
        )

    def head(self, f: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.wrapped.get_submodule(self.classifier_name)(f)
        return out

    def forward(self, x: Loaded) -> torch.Tensor:
        return self.head(self.features(x))


def adapt(module: nn.Module, classifier: str | None = None) -> nn.Module:
    """The module itself if it implements the contract, else the module behind a ``LinearHeadAdapter`` on
    ``classifier`` (the name of its output ``nn.Linear``; found by ``find_classifier`` when not given,
    which a module registering an unused Linear after its real one cannot rely on)."""
    if defines_contract(module):
        return module
    return LinearHeadAdapter(module, classifier or find_classifier(module))


def check_contract(model: nn.Module, x: Loaded, num_classes: int) -> None:
    """On a batch ``x``, in eval mode: ``features(x)`` is ``(B, D)``, ``head`` gives ``(B, num_classes)``,
    and ``head(features(x))`` equals the model's own output (for an adapted module, its unwrapped
    forward). ValueError saying which part does not hold."""
    n = B.rows(x)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            f = model.features(x)  # type: ignore[operator]
            if not isinstance(f, torch.Tensor) or f.ndim != 2 or f.shape[0] != n:
                shape = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
                raise ValueError(f"features(x) must be (batch, D) for a batch of {n}; got {shape}")
            logits = model.head(f)  # type: ignore[operator]
            if tuple(logits.shape) != (n, num_classes):
                picked = getattr(model, "classifier_name", None)
                why = (  # a plugin that registered its head before another Linear was told only the shapes
                    f": the classifier was taken to be `{picked}` (timm's get_classifier(), else the last "
                    "nn.Linear registered); register the classifier last, or give the module features() "
                    "and head()"
                    if picked is not None
                    else ""
                )
                raise ValueError(
                    f"head(features(x)) has shape {tuple(logits.shape)}, not ({n}, {num_classes}){why}"
                )
            own = model.own(x) if isinstance(model, LinearHeadAdapter) else model(x)
            if not isinstance(own, torch.Tensor) or own.shape != logits.shape:
                raise ValueError(
                    f"the model's forward returns {type(own).__name__}, not ({n}, {num_classes}) logits"
                )
            # NaN or +inf: else the comparison below blames the architecture (-inf may mask a class)
            if bool(torch.isnan(own).any() | torch.isposinf(own).any()):
                raise ValueError(
                    "the model's outputs on the samples checked are NaN or infinite: "
                    "its weights hold NaN or infinite values, or overflow; upload weights from before "
                    "training diverged"
                )
            if not torch.allclose(own, logits, rtol=1e-4, atol=1e-5):
                raise ValueError(
                    "the model's forward differs from head(features(x)): its classifier is not the last step "
                    f"of the forward pass (max difference {(own - logits).abs().max().item():.3g})"
                )
    finally:
        model.train(was_training)
