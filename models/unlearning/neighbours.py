"""What the rest of the data says a forget sample is: the majority label of its nearest retained rows.

Ours, not the paper's (``neighbour_labels``; docs/methods.md, stop 48). The held-out bound aims each forget
sample at the loss an unseen sample of its rank has, which is where a retrain leaves a sample that looks
like the rest of its class. A retrain treats a sample whose label the rest of the data contradicts (a
mislabeled or poisoned row, an outlier drawn into another class) differently: it predicts the class of
the sample's neighbours, nearly always, and the held-out losses, read on correctly labelled data, never
aim that far. Neighbours in the penultimate features of the model being unlearned tell these samples
apart: on digits with one training label in ten replaced, 97% of the replaced rows had a majority of their
15 nearest retained rows in another class, against 10% of a random deletion (about the share of it that
was mislabeled too).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models import batches as B
from models.datasets import SampleDataset
from models.layout import cpu_batch
from models.loading import in_order

BLOCK = 512  # forget rows compared with the pool at a time: a (BLOCK, pool) similarity matrix
# neighbours that vote on a row flagged as mislabeled when the params leave ``neighbour_labels`` at 0: the k
# of stop 48's measurements (bench/results/tune_stop48_neighbours.md), where 15 kept a tiny class's rows
FLAGGED_NEIGHBOURS = 15


@torch.no_grad()
def neighbour_labels(net: nn.Module, forget: SampleDataset, pool: SampleDataset, k: int) -> torch.Tensor:
    """(n_f,) the label most frequent among each forget row's ``k`` nearest pool rows (cosine similarity
    of ``net.features``) for the pool's count of it, on the net's device."""
    f, r = _features(net, forget), _features(net, pool)  # (n_f, D), (n_r, D), normalised
    y = pool.y.to(r.device)
    k = min(k, len(pool))
    num_classes = int(max(int(y.max()), int(forget.y.max()))) + 1
    # votes per row of the class in the pool: a class that the deletion left with few rows (90% of it
    # deleted) is still the neighbours' class where those few rows are among them
    rows = torch.bincount(y, minlength=num_classes).float().clamp(min=1)  # (K,)
    out = []
    for block in f.split(BLOCK):
        nearest = (block @ r.T).topk(k, dim=1).indices  # (b, k)
        votes = F.one_hot(y[nearest], num_classes).sum(1).float()  # (b, K)
        out.append((votes / rows).argmax(1))  # (b,) ties: the lowest label
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=r.device)


def _features(net: nn.Module, data: SampleDataset) -> torch.Tensor:
    """(N, D) the net's penultimate features of ``data``, L2-normalised, in eval mode."""
    device = next(net.parameters()).device
    was = net.training
    net.eval()
    try:
        size = cpu_batch(net, data.x, 256)
        parts = [net.features(B.to(xb, device)) for xb in in_order(data.x, size)]  # type: ignore[operator]
    finally:
        net.train(was)
    return F.normalize(torch.cat(parts).flatten(1).float(), dim=1)
