"""Which forget samples the bounded UGradSL forget term still pushes ("live" samples).

Our own addition (docs/methods.md, "Measured pitfalls"), not in the paper. Ascent on a sample the model has
already forgotten only damages the model, so the forget term is applied to live samples only:

- ``correct``: live while the model still classifies the sample correctly. Right for class-wise forgetting
  (a retrained model never predicts a class it never saw), but for random forgetting it aims past the
  retrained model, which still classifies ~90% of D_f correctly, like unseen data.
- ``heldout``: live while the sample's loss is below the loss that a held-out sample of the same rank has.
  A retrained model's forget losses are distributed like its losses on unseen data, so the forget term
  pushes D_f's loss distribution up to the held-out one and stops there, instead of stopping wherever the
  step budget runs out. Ranks are taken within each forget batch against quantiles of held-out losses
  measured once, before the run, on the model being unlearned (one 1-D summary: no gradient ever flows
  from held-out data). A sample whose class has no retain samples left follows ``correct``.
- ``heldout_class``: as ``heldout``, but each forget sample is ranked among the batch's samples of its own
  class against that class's held-out losses (a class with fewer than MIN_CLASS_HELDOUT held-out samples
  uses all of them): classes differ in how hard unseen samples are, and a retrained model's forget losses
  follow their class's unseen losses, not the pooled ones.

Past the target, a sample is left alone by default; ``overshoot_pull`` > 0 turns the push into a pull, so
the bound is held from both sides (a sample whose loss went above its target gets descent, weighted by
``overshoot_pull``). Classes absent from D_r are never pulled back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models import batches as B
from models.datasets import SampleDataset

HELDOUT_SAMPLE = 2048  # quantiles of at most this many held-out losses: enough for ranks of a batch
MIN_CLASS_HELDOUT = 16  # fewer held-out samples of a class than this: its forget samples use all of them


@dataclass
class HeldoutBound:
    quantiles: torch.Tensor  # (m,) sorted held-out cross-entropies, on the model's device
    retained: torch.Tensor  # (K,) bool: the class still has retain samples
    labels: torch.Tensor | None = None  # (m,) labels in the order of ``quantiles``: per-class targets

    def refresh(self, heldout_losses: torch.Tensor, heldout_labels: torch.Tensor) -> None:
        """New targets from held-out losses measured on the current model (``select_refresh``)."""
        order = heldout_losses.detach().argsort()
        self.quantiles = heldout_losses.detach()[order].to(self.quantiles.device)
        if self.labels is not None:
            self.labels = heldout_labels[order].to(self.quantiles.device)

    def targets(self, loss: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(B,) the held-out loss of each forget sample's rank (within the batch, or within its class)."""
        if self.labels is None:
            return _at_rank(loss, self.quantiles)
        target = torch.empty_like(loss)
        for c in y.unique():
            of_c = y == c
            q = self.quantiles[self.labels == c]
            target[of_c] = _at_rank(loss[of_c], q if len(q) >= MIN_CLASS_HELDOUT else self.quantiles)
        return target

    def weights(
        self, loss: torch.Tensor, y: torch.Tensor, correct: torch.Tensor, pull: float = 0.0
    ) -> torch.Tensor:
        """(B,) forget-term weights from a forget batch's (B,) cross-entropies, labels and correctness: 1 =
        push (live), 0 = leave, -pull = pull back (loss above target, class still in D_r)."""
        in_retain = self.retained[y.clamp(max=len(self.retained) - 1)] & (y < len(self.retained))
        below = loss < self.targets(loss, y)
        kept = torch.where(below, 1.0, -pull)
        return torch.where(in_retain, kept, correct.float())

    def live(self, loss: torch.Tensor, y: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
        """(B,) bool: the samples the forget term still pushes."""
        return self.weights(loss, y, correct) > 0


def _at_rank(loss: torch.Tensor, quantiles: torch.Tensor) -> torch.Tensor:
    """The quantile matching each loss's rank among ``loss`` (0 = the most confident sample)."""
    b, m = len(loss), len(quantiles)
    rank = loss.argsort().argsort()  # (B,)
    return quantiles[((rank.float() + 0.5) * m / b).long().clamp(max=m - 1)]


@torch.no_grad()
def heldout_bound(
    model: nn.Module, heldout: SampleDataset, retain: SampleDataset, seed: int = 0, by_class: bool = False
) -> HeldoutBound | None:
    """The held-out loss quantiles of ``model`` (a seeded sample of at most HELDOUT_SAMPLE rows), with
    their labels when ``by_class``, and the classes left in ``retain``; None without held-out data (the
    caller falls back to ``correct``)."""
    if len(heldout) == 0:
        return None
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randperm(len(heldout), generator=gen)[:HELDOUT_SAMPLE]
    was_training = model.training
    model.eval()
    try:
        losses = [
            F.cross_entropy(
                model(B.to(B.take(heldout.x, i), device)), heldout.y[i].to(device), reduction="none"
            )
            for i in rows.split(256)  # type: ignore[no-untyped-call]
        ]
    finally:
        model.train(was_training)
    k = max(int(retain.y.max()) + 1 if len(retain) else 0, int(heldout.y.max()) + 1)
    retained = torch.zeros(k, dtype=torch.bool, device=device)
    retained[retain.y.unique().to(device)] = True
    loss = torch.cat(losses)
    order = loss.argsort()
    labels = heldout.y[rows].to(device)[order] if by_class else None
    return HeldoutBound(loss[order], retained, labels)
