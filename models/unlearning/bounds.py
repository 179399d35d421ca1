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

Ranks within a batch of B never aim above the held-out quantile 1 - 1/(2B): the tail that a very accurate
retrained model misclassifies (its hardest ~2% of D_f) is never aimed at. ``ranks="forget"`` ranks each
sample among D_f's latest losses instead (each row's loss when the run last read it, starting from a pass
over D_f before the first step), so the targets of the whole forget set follow the held-out distribution,
its tail included, one sample per quantile: a 1-D monotone transport of D_f's losses onto held-out ones;
``ranks="both"`` aims at the larger of the two targets. Both lost on most tuning models (docs/methods.md,
stop 40), so batch ranks stay the default. Where a rank aims within its bin is ``by``: the midpoint by
default, or ``jitter``, a place drawn once per forget row (stop 50: level with midpoints everywhere).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models import batches as B
from models.datasets import SampleDataset
from models.layout import cpu_batch
from models.metrics import per_sample_loss
from models.unlearning.engine import matched_rows

HELDOUT_SAMPLE = 2048  # quantiles of at most this many held-out losses: enough for ranks of a batch


@dataclass
class HeldoutBound:
    quantiles: torch.Tensor  # (m,) sorted held-out cross-entropies, on the model's device
    retained: torch.Tensor  # (K,) bool: the class still has retain samples
    # rank r of a batch of B reads: "midpoint" the quantile (r + 0.5) / B; "ends" the quantile r / (B - 1)
    # (the batch's extremes aim at the held-out minimum and maximum); "mean" the mean held-out loss between
    # the quantiles r / B and (r + 1) / B, so a batch's targets average to the held-out mean (exactly where
    # B divides the number of held-out losses), the heavy tail included; "jitter" the quantile (r + u_i) / B,
    # u_i drawn once per row of the set the run trains on (``jitter``), so D_f's targets cover each bin
    by: str = "midpoint"  # one of params.BOUND_TARGETS
    ranks: str = "batch"  # params.BOUND_RANKS: within the batch, among all of D_f, or the larger target
    latest: torch.Tensor | None = None  # (n_f,) ranks="forget": each forget row's loss when last read
    # (K,) the share of each class's held-out rows the model gets wrong (loss above ln 2); 0 for a class with
    # none: how much of a deletion drawn from the class a retrain would be expected to forget
    class_error: torch.Tensor | None = None
    # (m',) the held-out rows of classes that stay, as the model before the run predicted them (its own
    # prior): their labels and whether it got them right, what a retrain's accuracy on D_f is read from
    heldout_y: torch.Tensor | None = None
    heldout_correct: torch.Tensor | None = None
    # the same rows read as a model trained on D_r would read them (Bayes' rule under label shift, as
    # ``prior="retained"``): how often a retrain gets D_f's classes right where D_f leans on a class
    heldout_expected: torch.Tensor | None = None
    offsets: torch.Tensor | None = None  # (n_f,) by="jitter": each forget row's place u_i in its rank's bin
    # ranks="train": each forget ID's quantile among D_r's losses before the run (``rank_in_retain``), and
    # the targets they read, in the order of the set the run trains on (``fix``)
    in_retain_rank: dict[str, float] = field(default_factory=dict)
    fixed: torch.Tensor | None = None
    rank_skew: float | None = None  # ``loss_rank_skew`` of D_f against D_r, where ranks were placed so
    # how the table was read where it was reshaped (``heldout_bound``'s prior and match, after ``when``, and
    # D_f's ``class_skew``), for the run's record; empty for the model's own held-out losses
    read: dict[str, Any] = field(default_factory=dict)

    def jitter(self, n_forget: int, seed: int) -> None:
        """Draw each forget row's offset within its rank's bin (``by="jitter"``), from the run's seed."""
        gen = torch.Generator().manual_seed(seed + 4)  # its own stream: + 1 to + 3 are taken
        self.offsets = torch.rand(n_forget, generator=gen).to(self.quantiles.device)

    def rank_in_retain(
        self, model: nn.Module, forget: SampleDataset, retain: SampleDataset, seed: int
    ) -> None:
        """``ranks="train"``: place each forget row's loss among D_r's (at most HELDOUT_SAMPLE rows of it,
        seeded) under ``model`` as it is before the run. A retrain scores a row the way unseen rows of its
        kind score: one the model finds as easy as its easiest training rows is a typical row, which a
        retrain gets right too. Batch ranks aim every batch at the whole held-out distribution, so a
        deletion of such rows had a fifth of them pushed to misclassification (a probe: test accuracy -9
        points, its retrains none)."""
        gen = torch.Generator().manual_seed(seed + 5)  # its own stream: + 1 to + 4 are taken
        rows = torch.randperm(len(retain), generator=gen)[:HELDOUT_SAMPLE].sort().values
        losses = torch.as_tensor(per_sample_loss(model, retain.subset(rows))).double()
        ranked = losses.sort().values
        own = torch.as_tensor(per_sample_loss(model, forget)).double()
        below = torch.searchsorted(ranked, own, right=False) + torch.searchsorted(ranked, own, right=True)
        quantile = (below.double() / (2 * max(len(ranked), 1))).clamp(0, 1)  # mid-rank: ties share a place
        self.in_retain_rank = dict(zip(forget.ids, quantile.tolist(), strict=True))
        self.rank_skew = loss_rank_skew(own, forget.y.cpu(), losses, retain.y[rows].cpu(), seed)

    def fix(self, ids: list[str]) -> torch.Tensor:
        """(n,) the targets of the rows ``ids`` (their order is the run's): the held-out loss at each row's
        quantile among D_r's; kept for ``targets``."""
        # a row the first run left out (already where a retrain has it) and a later one reads: the middle
        q = torch.tensor([self.in_retain_rank.get(i, 0.5) for i in ids], dtype=torch.float64)
        m = len(self.quantiles)
        self.fixed = self.quantiles[(q * m).long().clamp(max=m - 1).to(self.quantiles.device)]
        return self.fixed

    def refresh(self, heldout_losses: torch.Tensor) -> None:
        """New targets from held-out losses measured on the current model (``select_refresh``). A table
        read under D_r's prior or D_f's class mix (``read``) is kept: those losses are the model's own, on
        the held-out set's mix, which is what the reshaping replaced."""
        if not self.read:
            self.quantiles = heldout_losses.detach().sort().values.to(self.quantiles.device)

    def track(self, losses: torch.Tensor) -> None:
        """Rank forget samples among all of D_f from here on, starting from D_f's (n_f,) losses."""
        self.latest = losses.detach().float().to(self.quantiles.device).clone()

    def observe(self, rows: torch.Tensor | None, loss: torch.Tensor) -> None:
        """Record a forget batch's (B,) losses under its rows of D_f (ranks across batches only)."""
        if self.latest is not None and rows is not None:
            self.latest[rows.to(self.latest.device)] = loss.detach().float()

    def targets(self, loss: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) the held-out loss that each forget sample's rank aims at (``by``): its rank within the
        batch, or, given the batch's ``rows`` of D_f while tracking (``track``), among D_f's latest losses."""
        if self.fixed is not None and rows is not None:
            return self.fixed[rows.to(self.fixed.device)]
        u = self._offsets(rows)
        if self.latest is None or rows is None:
            return self._in_batch(loss, u)
        ranked = self.latest.sort().values  # (n_f,)
        rank = torch.searchsorted(ranked, loss.detach().float()).clamp(max=len(ranked) - 1).float()
        in_forget = self._aim(rank, len(ranked), u)
        return torch.maximum(self._in_batch(loss, u), in_forget) if self.ranks == "both" else in_forget

    def _offsets(self, rows: torch.Tensor | None) -> torch.Tensor | float:
        """(B,) the batch's rows' places within their bins (``jitter``), else the midpoint 0.5."""
        if self.by != "jitter" or self.offsets is None or rows is None:
            return 0.5
        return self.offsets[rows.to(self.offsets.device)]

    def _in_batch(self, loss: torch.Tensor, u: torch.Tensor | float = 0.5) -> torch.Tensor:
        return self._aim(loss.argsort().argsort().float(), len(loss), u)  # rank 0: the most confident

    def _aim(self, rank: torch.Tensor, b: int, u: torch.Tensor | float = 0.5) -> torch.Tensor:
        """(B,) the held-out loss that rank r of ``b`` ranked losses reads under ``by`` (``u``: the place
        within the rank's bin, ``jitter``'s per-row offsets or the midpoint)."""
        m = len(self.quantiles)
        if self.by == "ends":
            return self.quantiles[(rank * (m - 1) / max(b - 1, 1)).round().long().clamp(max=m - 1)]  # (B,)
        if self.by == "mean":
            sums = torch.cat([self.quantiles.new_zeros(1), self.quantiles.cumsum(0)])  # (m + 1,)
            lo = (rank * m / b).long().clamp(max=m - 1)  # (B,) each rank's bin of held-out losses
            hi = torch.maximum(((rank + 1) * m / b).long(), lo + 1)  # (B,) at least one loss per bin
            return (sums[hi] - sums[lo]) / (hi - lo).float()  # (B,)
        return self.quantiles[((rank + u) * m / b).long().clamp(max=m - 1)]  # (B,)

    def live(
        self, loss: torch.Tensor, y: torch.Tensor, correct: torch.Tensor, rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B,) bool from a forget batch's (B,) cross-entropies, labels, correctness flags and rows of D_f."""
        return torch.where(self.in_retain(y), loss < self.targets(loss, rows), correct)

    def in_retain(self, y: torch.Tensor) -> torch.Tensor:
        """(B,) bool: the label's class still has retain samples."""
        return self.retained[y.clamp(max=len(self.retained) - 1)] & (y < len(self.retained))


SKEW_ALPHA = 1e-3  # a deletion's class mix that a random draw of its size gives this rarely is "skewed"


def loss_rank_skew(
    forget_losses: torch.Tensor, forget_y: torch.Tensor, retain_losses: torch.Tensor, retain_y: torch.Tensor,
    seed: int = 0,
) -> float:  # fmt: skip
    """The chance that a random draw of |D_f| training rows, class by class, has losses as far from D_r's
    as D_f's: near 0 for a deletion of the rows the model finds easiest or hardest, uniform on [0, 1] for
    one drawn at random, whatever its class mix (a class's rows are placed among D_r's rows of the class,
    so a deletion of most of one class is not told apart by its class alone). Each forget row's place is
    its loss's rank, ties broken at random (seeded), so under a random draw the places are uniform; then
    Kolmogorov-Smirnov (asymptotic) on the sample size the places carry: a few reference rows of a class
    place its many forget rows together."""
    n = len(forget_losses)
    if n == 0:
        return 1.0
    gen = torch.Generator().manual_seed(seed + 6)
    places = torch.empty(n, dtype=torch.float64)
    spread = 1.0 / n  # 1 / the effective sample size: D_f's draw, and each class's reference rows
    for c in forget_y.unique().tolist():
        mine = forget_y == c
        theirs = retain_y == c
        if not int(theirs.sum()):  # no reference row of the class (it leaves, or the sample missed it)
            places[mine] = float("nan")
            continue
        ranked = retain_losses[theirs].double().sort().values
        own = forget_losses[mine].double()
        lo = torch.searchsorted(ranked, own, right=False).double()
        hi = torch.searchsorted(ranked, own, right=True).double()
        u = torch.rand(len(own), generator=gen, dtype=torch.float64)
        places[mine] = (lo + u * (hi - lo + 1)) / (len(ranked) + 1)
        spread += (len(own) / n) ** 2 / len(ranked)
    places = places[~places.isnan()]
    n = len(places)
    if n == 0:
        return 1.0
    spread += 1.0 / n - 1.0 / len(forget_losses)  # the rows tested
    q = places.sort().values
    i = torch.arange(1, n + 1, dtype=torch.float64)
    d = float(torch.maximum(i / n - q, q - (i - 1) / n).max())
    ne = 1.0 / spread  # as two-sample KS reads n_f·n_r / (n_f + n_r), class by class
    lam = (math.sqrt(ne) + 0.12 + 0.11 / math.sqrt(ne)) * d
    if lam < 0.3:
        return 1.0  # the series below converges slowly there; the chance is above 0.99
    p = 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))
    return min(max(p, 0.0), 1.0)


def class_skew(kept_y: torch.Tensor, forget_y: torch.Tensor) -> float:
    """The chance that a random draw of |D_f| training rows has a class mix as far from the training set's
    as D_f's (Pearson's chi-square, df = classes - 1): near 0 for a deletion drawn from a few classes, and
    uniform on [0, 1] for a random one. ``kept_y``: D_r's labels."""
    if len(forget_y) == 0:
        return 1.0
    k = int(max(int(kept_y.max()) if len(kept_y) else 0, int(forget_y.max()))) + 1
    drawn = torch.bincount(forget_y.cpu(), minlength=k).double()  # (K,)
    trained = torch.bincount(kept_y.cpu(), minlength=k).double() + drawn  # (K,) rows of D_r + D_f
    expected = len(forget_y) * trained / trained.sum()
    present = expected > 0
    df = int(present.sum()) - 1
    if df < 1:
        return 1.0
    chi2 = ((drawn - expected)[present] ** 2 / expected[present]).sum()
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), chi2 / 2))


@torch.no_grad()
def heldout_bound(
    model: nn.Module,
    heldout: SampleDataset,
    retain: SampleDataset,
    seed: int = 0,
    forget_y: torch.Tensor | None = None,
    prior: str = "trained",
    prior_power: float = 1.0,
    match: float = 0.0,
    when: str = "always",
    match_rows: int = 0,
    match_stayed: bool = False,
) -> HeldoutBound | None:
    """The held-out loss quantiles of ``model`` (a seeded sample of at most HELDOUT_SAMPLE rows) and the
    classes left in ``retain``; None without held-out data (the caller falls back to ``correct``).

    ``prior="retained"`` (with ``forget_y``, D_f's labels) reads each held-out row as a model trained on D_r
    would, by Bayes' rule under label shift: the logits gain log(n_r(c) / (n_r(c) + n_f(c))), the share of the
    class's training rows that stay, and a class with none left takes no probability. Under either prior, the
    held-out rows of a class with no retain row leave the table: no forget row aims at them (a forget row of
    such a class follows ``correct``), and after an earlier job took the class whole (``silence``) their
    losses are in the thousands. A random deletion takes the same share of every class, which moves no
    softmax; 90% of one class makes a retrain ten times less ready to predict it, which the model as trained
    does not show. ``match`` s > 0 draws the table towards D_f's class mix as the retain reads are
    (``engine.matched_rows``): class c's held-out rows stand (1 - s) + s·f_c/h_c times as often.
    ``match_rows`` n0 > 0 shrinks s by how many held-out rows stand for D_f's classes, n = Σ f_c·n_c, to s·n /
    (n + n0): a class's table of 18 rows (digits) puts one misclassified sample at its top 5%. ``class_error``
    is read from the same (shifted) losses, for ``retain_match_power`` > 0: a class a retrain would often get
    wrong is held less by ``retain_match``. ``when="skewed"`` does either only where D_f's class mix is one a
    random draw gives with chance below SKEW_ALPHA (``class_skew``): a random deletion's class shares differ
    from the held-out set's by chance, and reweighting a few held-out rows per class by that chance made
    digits' random deletions forget worse (docs/methods.md, stop 52)."""
    if len(heldout) == 0:
        return None
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randperm(len(heldout), generator=gen)[:HELDOUT_SAMPLE]
    was_training = model.training
    model.eval()
    try:
        size = cpu_batch(model, heldout.x, 256)
        logits = torch.cat(
            [model(B.to(B.take(heldout.x, i), device)) for i in rows.split(size)]  # type: ignore[no-untyped-call]
        )  # (m, K) in the order of ``rows``
    finally:
        model.train(was_training)
    labels = heldout.y[rows].to(device)
    logits = logits.float()  # under bf16 autocast: the shift and the losses in fp32
    correct = logits.argmax(1) == labels  # (m,) under the model's own prior
    expected = correct if forget_y is None else _shifted(logits, retain.y, forget_y).argmax(1) == labels
    k = max(int(retain.y.max()) + 1 if len(retain) else 0, int(heldout.y.max()) + 1, logits.shape[1])
    kept = torch.bincount(retain.y.cpu(), minlength=k).double()  # (K,) training rows per class in D_r
    retained = (kept > 0).to(device)
    skew = class_skew(retain.y, forget_y) if forget_y is not None else 1.0
    if forget_y is None or (when == "skewed" and skew >= SKEW_ALPHA):
        prior, match = "trained", 0.0
    if forget_y is not None and prior == "retained":
        logits = _shifted(logits, retain.y, forget_y, prior_power)
    stays = retained[labels]  # a class with no retain row left (taken whole now or by an earlier job)
    logits, labels = logits[stays], labels[stays]  # is no forget row's target: its held-out rows leave
    found = F.cross_entropy(logits, labels, reduction="none")  # (m,)
    rows_of = torch.bincount(labels, minlength=k).double()  # (K,)
    wrong = torch.bincount(labels, weights=(found > math.log(2)).double(), minlength=k)  # (K,)
    if match > 0 and forget_y is not None and len(found):
        # where most of D_f's classes leave, a retrain's losses on them move far from the other classes',
        # and the shrink towards those is worth less: (2·stayed)², 1 from half a class up (``match_stayed``)
        n0 = match_rows * (min(1.0, 2 * _stayed_share(retain.y, forget_y)) ** 2 if match_stayed else 1.0)
        match *= _shrink(labels, forget_y, k, n0)
        standing = matched_rows(labels.cpu(), forget_y.cpu(), match)
        if standing is not None:
            found = found[standing.to(device)]
    if len(found) == 0:
        return None
    bound = HeldoutBound(
        found.sort().values,
        retained,
        class_error=wrong / rows_of.clamp(min=1),
        heldout_y=labels.cpu(),
        heldout_correct=correct[stays].cpu(),
        heldout_expected=expected[stays].cpu(),
    )
    if prior != "trained" or match > 0:
        bound.read = {"prior": prior, "match": match, "class_skew": skew}
    return bound


def _shifted(
    logits: torch.Tensor, retain_y: torch.Tensor, forget_y: torch.Tensor, power: float = 1.0
) -> torch.Tensor:
    """``logits`` as a model trained on D_r would have them: each class's logit gains log(n_r(c) / (n_r(c)
    + n_f(c))), the share of its training rows that stay; a class never trained on keeps its logit."""
    k = max(logits.shape[1], *(int(y.max()) + 1 for y in (retain_y, forget_y) if len(y)))
    kept = torch.bincount(retain_y.cpu(), minlength=k).double()
    trained = kept + torch.bincount(forget_y.cpu(), minlength=k).double()
    stayed = torch.where(trained > 0, kept / trained.clamp(min=1), torch.ones_like(kept))
    # Bayes' rule, and beyond it where less than half of a class stays: log(s) + (power - 1)·log(min(1, 2s))
    # (a class with none left stays at -inf: 0·-inf would make every logit NaN)
    shift = stayed.log()
    if power != 1.0:
        shift = torch.where(stayed > 0, shift + (power - 1) * (2 * stayed).clamp(max=1).log(), shift)
    shift = shift[: logits.shape[1]]
    return logits + shift.to(device=logits.device, dtype=logits.dtype)


def _stayed_share(retain_y: torch.Tensor, forget_y: torch.Tensor) -> float:
    """The share of the training rows of D_f's classes that stay, weighted by D_f's mix over the classes
    that keep rows (a class taken whole leaves the table): 1/2 for half a class, 1/10 for 90% of one."""
    k = max(int(retain_y.max()) + 1 if len(retain_y) else 0, int(forget_y.max()) + 1 if len(forget_y) else 0)
    kept = torch.bincount(retain_y.cpu(), minlength=k).double()
    drawn = torch.bincount(forget_y.cpu(), minlength=k).double() * (kept > 0)
    stayed = kept / (kept + drawn).clamp(min=1)
    return float((drawn / drawn.sum().clamp(min=1) * stayed).sum()) if drawn.sum() > 0 else 1.0


def _shrink(labels: torch.Tensor, forget_y: torch.Tensor, k: int, match_rows: float) -> float:
    """n / (n + ``match_rows``), n the held-out rows of D_f's classes weighted by D_f's mix over the
    classes the table holds (as ``matched_rows`` spreads it); 1 when ``match_rows`` is 0."""
    if match_rows <= 0:
        return 1.0
    table = torch.bincount(labels.cpu(), minlength=k).double()  # (K,) held-out rows per class
    drawn = torch.bincount(forget_y.cpu(), minlength=k).double()[:k] * (table > 0)  # (K,)
    n = float((drawn / drawn.sum().clamp(min=1) * table).sum())
    return n / (n + match_rows)
