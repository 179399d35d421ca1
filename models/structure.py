"""A model's structure as a key: what its forward computes apart from the values of its weights.

Why: a job touches several models of one structure (the version it starts from, the copy it trains, the
result it scores), and some facts about a model cost a trace or a forward pass to find yet depend only on
its structure: where its last layers start (``models.unlearning.last_layers``), how large its activations
are per row (``models.layout.cpu_batch``). Keyed by ``structure``, each is found once per process.

The key is the recipe that built the model (``build_model``'s name and kwargs, which it keeps on the
module) with what can change after building: each submodule's class and mode (a trace keeps
``training``-dependent branches), and each parameter's and buffer's name, shape, dtype and whether it is
trained (a frozen layer moves the cut). Attributes a forward may read are not enumerated: two modules
that agree on their plain attributes can still differ in a function or a config object they hold, and the
name and kwargs of the recipe are what fixes all of them. A model built otherwise has no key, and those
facts are found for it each time.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TypeVar

from torch import nn

K = TypeVar("K")
V = TypeVar("V")


def structure(model: nn.Module) -> str | None:
    """The key of ``model``'s structure (see the module's docstring), or None where no recipe built it. A
    part of a model (a split's front or last layers) carries its own, derived from the model's when it
    was cut (``structure_key``)."""
    part = getattr(model, "structure_key", None)
    if isinstance(part, str):
        return part
    name, kwargs = getattr(model, "architecture", None), getattr(model, "architecture_kwargs", None)
    if not isinstance(name, str) or not isinstance(kwargs, dict):
        return None
    try:
        recipe = json.dumps([name, kwargs], sort_keys=True)
    except (TypeError, ValueError):  # a kwarg that is not plain data: no key rather than a wrong one
        return None
    modes = [(n, type(m).__module__, type(m).__qualname__, m.training) for n, m in model.named_modules()]
    tensors = [(n, tuple(p.shape), str(p.dtype), p.requires_grad) for n, p in model.named_parameters()]
    buffers = [(n, tuple(b.shape), str(b.dtype)) for n, b in model.named_buffers()]
    return repr((recipe, modes, tensors, buffers))


def remember(kept: dict[K, V], key: K | None, find: Callable[[], V], limit: int) -> V:
    """``kept[key]``, found once (``find``); the oldest entry goes when ``kept`` holds ``limit``, so a
    process serving many architectures stays small. A None key (no structure) is found each time."""
    if key is None:
        return find()
    if key not in kept:
        if len(kept) >= limit:
            kept.pop(next(iter(kept)))
        kept[key] = find()
    return kept[key]
