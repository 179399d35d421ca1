"""Checkpoint selection by a held-out distance (``select_checks``): keep the best of a few states of the run.

Why: a gradient method's run ends wherever its step budget ends, and the bounded forget term and the retain
term pull against each other to the last step. On random forgetting of a memorising model the last state
both under-forgets and loses retain accuracy (Fashion-MNIST 10k: RA 98.2 vs the retrain's 99.9, UA 8.4 vs
11.1), so an earlier or later state may be closer to a retrained model. Which one can be told without the
retrained model, from what a retrained model looks like:

- forget samples behave like samples it never saw: D_f's accuracy is the held-out accuracy (the UA term of
  Avg Gap) and D_f's losses are distributed like held-out losses (what the membership attacks read: here a
  two-sample Kolmogorov-Smirnov statistic, scale-free and in [0, 1] like an accuracy);
- samples of a class with nothing left in D_r are misclassified (a retrained model never predicts it);
- retain samples still fit (RA ~100% on a memorising model), and held-out accuracy stays where it was
  (TA): the drops from the starting model count, rises do not.

The distance is the mean of those four terms (the four terms of Avg Gap, each measured on a seeded sample
of at most SELECT_SAMPLE rows). It is measured ``select_checks`` times, evenly spaced, the last step always
among them; the state with the smallest distance is kept (a CPU copy) and loaded at the end. Checks run in
eval mode under no_grad and draw nothing from the run's generator, so the run's trajectory is the same with
and without them: selection only chooses among its states.

``select_refresh`` also replaces the held-out bound's quantiles (``bounds.HeldoutBound``) with the held-out
losses of each check: the bound's targets were measured on the starting model, whose held-out losses move
as it unlearns.

The held-out data is the data the method already gets for the bound (the service passes its calibration
set, never its scoring set). Without held-out data ``select_checks`` is an error that says so, rather than
a silently different method.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models import batches as B
from models.batches import Loaded
from models.datasets import SampleDataset

SELECT_SAMPLE = 1024  # rows of D_f, D_r and held-out data scored at each check
_EVAL_BATCH = 256


@dataclass(frozen=True)
class Sample:
    """A seeded sample of a set, on the model's device."""

    x: Loaded
    y: torch.Tensor

    @classmethod
    def of(cls, data: SampleDataset, seed: int, device: torch.device, n: int = SELECT_SAMPLE) -> Sample:
        rows = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n].sort().values
        return cls(B.to(B.take(data.x, rows), device), data.y[rows].to(device))


@dataclass(frozen=True)
class Scores:
    loss: torch.Tensor  # (N,) cross-entropy per sample
    correct: torch.Tensor  # (N,) bool


@torch.no_grad()
def scores(model: nn.Module, sample: Sample) -> Scores:
    """Per-sample cross-entropy and correctness of ``model`` (eval mode, restored after)."""
    was_training = model.training
    model.eval()
    try:
        losses, correct = [], []
        for i in range(0, len(sample.y), _EVAL_BATCH):
            logits, y = model(B.window(sample.x, i, i + _EVAL_BATCH)), sample.y[i : i + _EVAL_BATCH]
            losses.append(F.cross_entropy(logits, y, reduction="none"))
            correct.append(logits.argmax(1) == y)
    finally:
        model.train(was_training)
    return Scores(torch.cat(losses).float(), torch.cat(correct))


def ks_statistic(a: torch.Tensor, b: torch.Tensor, b_weights: torch.Tensor | None = None) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs (0 = same).
    ``b_weights``: (len(b),) how much each of ``b``'s values counts in its CDF (None: equally)."""
    if len(a) == 0 or len(b) == 0:
        return 0.0
    w = torch.ones_like(b, dtype=torch.float) if b_weights is None else b_weights.float()
    if float(w.sum()) <= 0:
        return 0.0
    a, (b, order) = a.sort().values, b.sort()
    w = w[order].cumsum(0) / w.sum()
    at = torch.cat([a, b])
    cdf_a = torch.searchsorted(a, at, right=True).float() / len(a)
    below = torch.searchsorted(b, at, right=True)  # how many of b's values are <= each point
    cdf_b = torch.where(below > 0, w[(below - 1).clamp(min=0)], torch.zeros_like(w[:1]))
    return float((cdf_a - cdf_b).abs().max())


def _mean(t: torch.Tensor, weights: torch.Tensor | None = None) -> float:
    if len(t) == 0:
        return 0.0
    if weights is None:
        return float(t.float().mean())
    total = float(weights.sum())
    return float((t.float() * weights).sum()) / total if total > 0 else 0.0


def class_matched(forget_y: torch.Tensor, heldout_y: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """(N_h,) weights that give the held-out rows D_f's class mix over the classes that stay (``kept``:
    (K,) bool): f_c / h_c, D_f's share of class c over the held-out rows' share. Why: held-out data
    stands for what a retrain makes of D_f, and a deletion drawn from a few classes is measured against
    those classes' unseen rows: half of one class of an MLP over overlapping classes (unseen rows of
    every class 15-25% wrong) was otherwise aimed at the whole test set's accuracy and its losses, and a
    state that had forgotten the class, not only its deleted half, could look closest. A random
    deletion's mix is the held-out data's: its weights are all about 1. A class of D_f with no held-out
    row has nothing to stand for it, and its rows are left to the rest."""
    k = len(kept)
    f = torch.bincount(forget_y[kept[forget_y]], minlength=k).float()
    h = torch.bincount(heldout_y[kept[heldout_y]], minlength=k).float()
    if float(f.sum()) == 0 or float(h.sum()) == 0:
        return torch.ones_like(heldout_y, dtype=torch.float)
    share = torch.where(h > 0, (f / f.sum()) / (h / h.sum()).clamp(min=1e-12), torch.zeros_like(h))
    if float((share * h).sum()) == 0:
        return torch.ones_like(heldout_y, dtype=torch.float)
    return share[heldout_y]


@dataclass(frozen=True)
class Distance:
    """The terms of the distance to a retrained-looking model (each in [0, 1]) and their mean."""

    accuracy: float  # |acc(D_f) - acc(held-out)| on retained classes; acc(D_f) on forgotten classes
    losses: float  # KS(losses of D_f, held-out losses) on retained classes
    retain_drop: float  # retain accuracy lost since the start
    heldout_drop: float  # held-out accuracy lost since the start

    @property
    def total(self) -> float:
        return (self.accuracy + self.losses + self.retain_drop + self.heldout_drop) / 4


def distance(
    forget: Scores,
    forget_retained: torch.Tensor,
    heldout: Scores,
    heldout_retained: torch.Tensor,
    retain: Scores,
    start: tuple[float, float],
    heldout_weights: torch.Tensor | None = None,
) -> Distance:
    """``*_retained``: (N,) bool, the sample's class still has retain samples. ``start``: (retain accuracy,
    held-out accuracy on retained classes) of the starting model, the latter under ``heldout_weights``
    ((N_h,), how much each held-out row counts, ``class_matched``; None: equally), as every held-out term."""
    share = _mean(forget_retained)  # fraction of D_f whose class stays
    f_in, h_in = forget_retained, heldout_retained
    w = None if heldout_weights is None else heldout_weights[h_in]
    heldout_accuracy = _mean(heldout.correct[h_in], w)
    accuracy = share * abs(_mean(forget.correct[f_in]) - heldout_accuracy)
    accuracy += (1 - share) * _mean(forget.correct[~f_in])
    losses = share * ks_statistic(forget.loss[f_in], heldout.loss[h_in], w)
    retain_drop = max(0.0, start[0] - _mean(retain.correct))
    heldout_drop = max(0.0, start[1] - heldout_accuracy)
    return Distance(accuracy, losses, retain_drop, heldout_drop)


def check_steps(checks: int, total: int) -> set[int]:
    """``checks`` steps evenly spaced over 1..total, the last one included (fewer when total < checks)."""
    if checks <= 0 or total <= 0:
        return set()
    return {math.ceil(k * total / checks) for k in range(1, checks + 1)}


class Selector:
    """Scores the model at the check steps, keeps the closest state, loads it at ``finish``. ``history``:
    (step, Distance) of every check, for the caller and the tests."""

    def __init__(
        self,
        forget: SampleDataset,
        retain: SampleDataset,
        heldout: SampleDataset,
        checks: int,
        seed: int,
        device: torch.device,
        refresh: Callable[[torch.Tensor], None] | None = None,
        matched: bool = True,
    ) -> None:
        self.checks, self.refresh = checks, refresh
        self.forget = Sample.of(forget, seed + 1, device)
        self.retain = Sample.of(retain, seed + 2, device)
        self.heldout = Sample.of(heldout, seed + 3, device)
        k = 1 + max(int(d.y.max()) for d in (forget, retain, heldout) if len(d))
        kept = torch.zeros(k, dtype=torch.bool, device=device)
        kept[retain.y.unique().to(device)] = True
        self.forget_retained, self.heldout_retained = kept[self.forget.y], kept[self.heldout.y]
        self.heldout_weights = class_matched(self.forget.y, self.heldout.y, kept) if matched else None
        self.history: list[tuple[int, Distance]] = []
        self.best: tuple[float, dict[str, torch.Tensor]] | None = None
        self.start_accuracy = (0.0, 0.0)
        self.steps: set[int] = set()

    def start(self, model: nn.Module, total: int) -> None:
        self.steps = check_steps(self.checks, total)
        retain, heldout = scores(model, self.retain), scores(model, self.heldout)
        w = None if self.heldout_weights is None else self.heldout_weights[self.heldout_retained]
        self.start_accuracy = (_mean(retain.correct), _mean(heldout.correct[self.heldout_retained], w))

    def after_step(self, model: nn.Module, step: int) -> None:
        if step in self.steps:
            self._check(model, step)

    def finish(self, model: nn.Module, last_step: int) -> None:
        """Check the last state if the run stopped between checks, then load the best state."""
        if last_step > 0 and (not self.history or self.history[-1][0] != last_step):
            self._check(model, last_step)
        if self.best is not None:
            model.load_state_dict(self.best[1])

    def _check(self, model: nn.Module, step: int) -> None:
        heldout = scores(model, self.heldout)
        d = distance(
            scores(model, self.forget),
            self.forget_retained,
            heldout,
            self.heldout_retained,
            scores(model, self.retain),
            self.start_accuracy,
            self.heldout_weights,
        )
        self.history.append((step, d))
        if self.best is None or d.total < self.best[0]:
            state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            self.best = (d.total, state)
        if self.refresh is not None:  # as heldout_bound: a class with no retain row is no forget row's target
            self.refresh(heldout.loss[self.heldout_retained])


def selector(
    model: nn.Module,
    forget: SampleDataset,
    retain: SampleDataset,
    heldout: SampleDataset | None,
    checks: int,
    seed: int,
    refresh: Callable[[torch.Tensor], None] | None = None,
    matched: bool = True,
) -> Selector | None:
    """The run's Selector, or None when ``checks`` is 0 (off). No held-out data is an error."""
    if checks <= 0 or len(forget) == 0:
        return None
    if heldout is None or len(heldout) == 0:
        raise ValueError(
            "select_checks needs held-out data the model never trained on (run_method(..., heldout=...)) "
            "to tell which state of the run looks retrained; pass select_checks=0 without it"
        )
    device = next(model.parameters()).device
    return Selector(forget, retain, heldout, checks, seed, device, refresh, matched)
