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
PROBE_ROWS = 64  # rows the switched-off head is checked on
AT_MOST = 1e-6  # the largest softmax share a switched-off class may keep on a probe row


@torch.no_grad()
def silence_classes(model: nn.Module, classes: Iterable[int], probe: SampleDataset) -> list[int]:
    """Switch off ``classes`` in ``model``'s output layer, in place; the classes switched off: all of
    them, or none where no layer was found that does it (then the model is left as it was).

    The output layer is found by trial, not by name: the last ``nn.Linear`` with a bias and one output
    per logit whose surgery leaves each class at most ``AT_MOST`` of the softmax on ``probe``'s first
    rows (data the model may read: the retained set). A head with anything after its last linear layer
    that undoes the surgery fails the check and is restored."""
    gone = sorted({int(c) for c in classes})
    if not gone or not len(probe):
        return []
    device = next(model.parameters()).device
    x = B.to(B.take(probe.x, torch.arange(min(PROBE_ROWS, len(probe)))), device)
    was_training = model.training
    model.eval()
    try:
        k = model(x).shape[1]  # type: ignore[no-untyped-call]
        if max(gone) >= k:
            return []
        layers = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == k]
        for layer in reversed(layers):
            if layer.bias is None:
                continue
            kept = layer.weight[gone].clone(), layer.bias[gone].clone()
            layer.weight[gone] = 0.0
            layer.bias[gone] = SILENT
            share = torch.softmax(model(x).float(), dim=1)[:, gone]  # type: ignore[no-untyped-call]
            if bool((share <= AT_MOST).all()):
                return gone
            layer.weight[gone], layer.bias[gone] = kept
        return []
    finally:
        model.train(was_training)
