"""A module's structure as a key: what its forward computes apart from the values of its weights.

Why: a job touches several models of one structure (the version it starts from, the copy it trains, the
result it scores), and some facts about a model cost a trace or a forward pass to find yet depend only on
its structure: where its last layers start (``models.unlearning.last_layers``), how large its activations
are per row (``models.layout.cpu_batch``). Keyed by ``structure``, each is found once per process.
"""

from __future__ import annotations

from torch import fx, nn

_PLAIN = (bool, int, float, str, tuple, type(None))


def structure(module: nn.Module) -> str:
    """Each submodule's name, class and plain attributes (sizes, flags, ``training``; a traced module's
    code), and each parameter's and buffer's name, shape, dtype and whether it is trained. Two modules
    that agree on these run the same computation on different values."""
    parts = [
        (name, type(m).__module__, type(m).__qualname__,
         sorted((k, v) for k, v in vars(m).items() if not k.startswith("_") and isinstance(v, _PLAIN)),
         m.code if isinstance(m, fx.GraphModule) else None)
        for name, m in module.named_modules()
    ]  # fmt: skip
    tensors = [(n, tuple(p.shape), p.dtype, p.requires_grad) for n, p in module.named_parameters()]
    buffers = [(n, tuple(b.shape), b.dtype) for n, b in module.named_buffers()]
    return repr((parts, tensors, buffers))
