"""Switch off the output unit of a class no training row of which is left, so the model never predicts it.

Ours, not the papers'. A retrain never predicts a class it never saw. An unlearned model can predict it
again: after a job took a class whole and was published, a later job's ascent on other rows raises other
classes' logits, the gone class's among them (a client saw 1 of 6 test rows of a class deleted in an
earlier job predicted as it again). So the head's row for such a class is zeroed and its bias set to
``SILENT``: the class's logit is ``SILENT`` on every input, the softmax gives it no mass and argmax never
picks it, as after a retrain.

It keeps a promise the method already kept once; it is not a way to forget. The service switches off
only classes an earlier job took whole (``workers/runner.py``): a class this job takes is the method's to
forget, and the gates judge what the method did. Switched off at once, a run that moved no weight would
look like a class forgotten, and what the features still hold of the class would go unmeasured.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from models import batches as B
from models.datasets import SampleDataset

SILENT = -1e4  # far below any logit a trained head gives, and representable in fp16 and bf16
PROBE_ROWS = 64  # rows the switched-off head is checked on, drawn across the set
AT_MOST = 1e-6  # the largest softmax share a switched-off class may keep on a probe row


@torch.no_grad()
def silence_classes(model: nn.Module, classes: Iterable[int], probe: SampleDataset) -> list[int]:
    """Switch off ``classes`` in ``model``'s output layer, in place; the classes switched off: all of
    them, or none where no layer was found that does it (then the model is left as it was).

    The output layer is looked for in the model's classifier (``classifier``, or an adapter's
    ``classifier_name``), or where it names none, in all of it: the last layer there with one bias and
    one weight row per logit (a linear layer, or the affine part of a LayerNorm or BatchNorm over the
    logits, which a client's head had after its linear layer) whose surgery, on ``PROBE_ROWS`` rows of
    ``probe`` (data the model may read: the retained set), leaves each switched-off class at most
    ``AT_MOST`` of the softmax, its logit at ``SILENT`` / 2 or below, and every other logit as it was. A
    layer that is not the last step, or one the forward pass never reaches, fails the check and is
    restored."""
    gone = sorted({int(c) for c in classes})
    if not gone or not len(probe):
        return []
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(0)
    x = B.to(B.take(probe.x, torch.randperm(len(probe), generator=gen)[:PROBE_ROWS]), device)
    was_training = model.training
    model.eval()
    try:
        before = model(x).float()  # type: ignore[no-untyped-call]
        k = before.shape[1]
        if max(gone) >= k:
            return []
        others = torch.ones(k, dtype=torch.bool, device=before.device)
        others[gone] = False
        found = [p for m in _head(model).modules() if (p := _per_logit(m, k)) is not None]
        for weight, bias in reversed(found):
            kept = weight[gone].clone(), bias[gone].clone()
            weight[gone] = 0.0
            bias[gone] = SILENT
            after = model(x).float()  # type: ignore[no-untyped-call]
            share = torch.softmax(after, dim=1)[:, gone]
            moved = bool((after[:, gone] <= SILENT / 2).all())  # this layer's edit reached the logits
            if (
                moved
                and bool((share <= AT_MOST).all())
                and torch.allclose(after[:, others], before[:, others])
            ):
                return gone
            weight[gone], bias[gone] = kept
        return []
    finally:
        model.train(was_training)


def _per_logit(module: nn.Module, k: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The module's own ``weight`` and ``bias`` where both have one row or entry per logit, else None."""
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    if not isinstance(weight, torch.Tensor) or not isinstance(bias, torch.Tensor):
        return None
    return (weight, bias) if bias.shape == (k,) and weight.dim() >= 1 and weight.shape[0] == k else None


def _head(model: nn.Module) -> nn.Module:
    """The module the model's ``head`` applies (models/architectures.py ``Classifier.classifier``, or an
    adapter's ``classifier_name``); the whole model where it names none (a plugin's own head)."""
    name = getattr(model, "classifier_name", None)
    wrapped = getattr(model, "wrapped", None)
    if isinstance(name, str) and isinstance(wrapped, nn.Module):
        return wrapped.get_submodule(name)
    head = getattr(model, "classifier", None)
    return head if isinstance(head, nn.Module) else model
