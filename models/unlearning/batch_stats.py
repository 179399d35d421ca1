"""BatchNorm at its running statistics during an unlearning run (``batch_stats="frozen"``; ours).

Why: in train mode a BatchNorm layer normalises each batch by that batch's own mean and variance, so a
step computes a different function from the one a version is scored as (eval mode: the running
statistics). The held-out bound (``models.unlearning.bounds``) compares a forget sample's loss from the
step's own forward pass with held-out losses measured in eval mode. On a ResNet-18 (generated shapes,
test accuracy 98%) a forget batch of 32 in train mode had 1.5% of its samples above ln 2 and its 99th
percentile at 1.12, against 0.5% and 0.37 in eval mode, which is where the held-out set's eval-mode tail
(1.6%, 1.47) is: the bound saw the tail as already forgotten and stopped pushing it, and the run
under-forgot (UA 0.3% against a retrain's 2%). Frozen, every step computes what is scored, the
statistics the model was trained to are left as they are (a forget batch no longer moves them), and
B_r and B_f go through the network as one batch (``methods._joint_forward``): one pass, not two.

The layers' weights and biases still train. Models without BatchNorm run the same either way.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

_FROZEN: weakref.WeakSet[nn.Module] = weakref.WeakSet()  # layers held at their running statistics now


def _at_running_stats(module: nn.Module, _args: Any) -> None:
    module.training = False  # this forward normalises by the running statistics, and leaves them alone


@contextmanager
def frozen_batch_stats(model: nn.Module, frozen: bool = True) -> Iterator[None]:
    """While open (and ``frozen``), every BatchNorm layer of ``model`` runs as in eval mode whatever
    ``model.train()`` sets: a forward pre-hook, so a scoring in between (``model.eval()`` then
    ``model.train()``) cannot undo it. On exit the layers follow the model's mode again."""
    layers = [m for m in model.modules() if isinstance(m, _BatchNorm)] if frozen else []
    handles = [m.register_forward_pre_hook(_at_running_stats) for m in layers]
    _FROZEN.update(layers)
    try:
        yield
    finally:
        for m, h in zip(layers, handles, strict=True):
            h.remove()
            _FROZEN.discard(m)
            m.train(model.training)


def uses_batch_stats(model: nn.Module) -> bool:
    """Whether a forward pass in train mode normalises by the batch's statistics somewhere in ``model``
    (a BatchNorm layer not frozen): then B_r and B_f must go through it apart."""
    return any(isinstance(m, _BatchNorm) and m not in _FROZEN for m in model.modules())
