"""The shared step loop of every first-order unlearning method.

A method supplies an *objective* that, for one step's batches, returns the utility loss L_C (cross-entropy
on B_r) and the unlearning loss L_U (its forget term, to be minimised), and constant weights; the update
direction is ``w_C·∇L_C + w_U·∇L_U``. Keeping the two terms apart is what lets any mask (AND, PROB, focus,
SalUn) compose with any method.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from models import batches as B
from models.batches import Inputs, Loaded
from models.datasets import SampleDataset
from models.hooks import Hooks
from models.loading import read_ahead
from models.streamed import LazyRows
from models.training import StepClip, lr_factor, lr_scheduler
from models.unlearning import masks as M
from models.unlearning.batch_stats import frozen_batch_stats
from models.unlearning.feature_cache import KeptRows
from models.unlearning.params import GradientParams
from models.unlearning.selection import Selector


@dataclass
class Batch:
    xr: Loaded  # (B_r, ...) retain inputs (a tensor or a dict of tensors: models.batches)
    yr: torch.Tensor  # (B_r,)
    xf: Loaded  # (B_f, ...) forget inputs; B_f = B_r unless D_f is small or forget_batch_ratio < 1
    yf: torch.Tensor  # (B_f,) true labels
    tf: torch.Tensor  # (B_f,) forget targets of the method (random wrong labels for random_label; else yf)
    forget_norm: float = 0.0  # divisor of a summed forget term (see forget_norm()); 0 = max(|B_f|, |B_r|)
    joint: Loaded | None = None  # (B_r + B_f, ...) B_r's rows then B_f's, where the loop read them as one
    rf: torch.Tensor | None = None  # (B_f,) the forget rows' indices in D_f (ranks across batches read them)

    def forget_divisor(self) -> float:
        return self.forget_norm or float(max(len(self.yf), len(self.yr), 1))

    def both(self) -> Loaded:
        """B_r's rows then B_f's as one batch: the one the loop read them into, else a copy."""
        return self.joint if self.joint is not None else B.cat([self.xr, self.xf])


@dataclass
class Terms:
    retain: torch.Tensor | None  # L_C, scalar
    forget: torch.Tensor | None  # L_U, scalar
    forget_correct: torch.Tensor | None = None  # (B,) bool: forget samples still classified correctly


Objective = Callable[[nn.Module, Batch], Terms]


@dataclass(frozen=True)
class Plan:
    """How a method iterates: which set defines an epoch, and the weights of the two terms."""

    lead: str  # "retain" | "forget": an epoch is one pass over this set; the other is cycled alongside
    w_retain: float
    w_forget: float


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


class CyclingSampler:
    """Indices of a set of size n, reshuffled each time it is used up; ``take(k)`` may wrap around (and,
    when k > n, repeat samples) so that the partner batch always has exactly the lead batch's size."""

    def __init__(self, n: int, gen: torch.Generator) -> None:
        self.n, self.gen = n, gen
        self.queue = torch.empty(0, dtype=torch.long)

    def take(self, k: int) -> torch.Tensor:
        while len(self.queue) < k:
            self.queue = torch.cat([self.queue, torch.randperm(self.n, generator=self.gen)])
        out, self.queue = self.queue[:k], self.queue[k:]
        return out


def lead_batches(n: int, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless stream of epochs over n samples, shuffled per epoch, in batches (the last one may be short)."""
    while True:
        yield from torch.randperm(n, generator=gen).split(batch_size)  # type: ignore[no-untyped-call]


def count_steps(plan: Plan, params: GradientParams, n_forget: int, n_retain: int) -> int:
    """Total steps: ``epochs`` passes over the lead set (fractions rounded, at least one step).

    When D_r leads and D_f needs more of its (smaller) batches than D_r has, a pass is that many steps
    instead, so every forget sample is pushed in every epoch: a deletion larger than what remains (half
    of it, with the default half-size forget batches) was otherwise pushed only in part, and a request
    for 1,432 of the digits model's 1,437 samples published a version that still classified 99.5% of
    them correctly."""
    n = n_forget if plan.lead == "forget" else n_retain
    if n == 0 or params.epochs <= 0:
        return 0
    per_epoch = math.ceil(n / params.batch_size)
    if plan.lead == "retain" and plan.w_forget > 0 and n_forget:
        b_f = partner_size(plan, min(params.batch_size, n_retain), n_forget, params.forget_batch_ratio)
        per_epoch = max(per_epoch, math.ceil(n_forget / b_f))
    return max(1, round(params.epochs * per_epoch))


def pool_size(n_retain: int, n_forget: int, budget: float) -> int:
    """Rows of ``retain_pool``: all of D_r when ``budget`` is 0, else min(|D_r|, ceil(budget·|D_f|)). The
    product is rounded first: a budget of rows / |D_f| (a sized run's) gives back those rows, not one more
    (29 / 7 · 7 is 29.000000000000004)."""
    return n_retain if budget <= 0 else min(n_retain, math.ceil(round(budget * n_forget, 6)))


def retain_pool(retain: SampleDataset, n_forget: int, budget: float, seed: int) -> SampleDataset:
    """The retain samples a run may use: all of ``retain`` when ``budget`` is 0, else a seeded sample of
    min(|D_r|, ceil(budget·n_forget)) rows, stratified by class.

    Why: a method whose epoch is a pass over D_r (UGradSL+, fine-tuning) costs in proportion to the
    dataset, not the deletion; on a 60k model a 100-sample deletion still touched all 54k+ retain samples.
    Drawing the pool up front (``subset``: a view for rows on disk, nothing read) keeps the step loop
    unchanged. Each class gets its share of D_r (largest remainders), and at least one row while the pool
    has room for one per class, so the retain term still covers every class that remains. The held-out
    bound is computed on the whole D_r (``methods._bound``): which classes remain does not depend on the
    pool. Rows are returned in dataset order; the generator is the run's seed + 2 (+ 1 is
    ``random_wrong_labels``'), its own stream apart from the batch order's."""
    n = len(retain)
    m = pool_size(n, n_forget, budget)
    if m >= n:
        return retain
    classes, counts = retain.y.unique(return_counts=True)  # sorted labels, (K,) sizes
    share = counts.double() * m / n  # (K,) exact quotas, summing to m
    take = share.floor().long()
    order = (share - take).argsort(descending=True, stable=True)
    take[order[: m - int(take.sum())]] += 1  # largest remainders: now sums to m, each <= its class size
    if m >= len(classes):
        for c in torch.nonzero(take == 0).flatten().tolist():  # a rare class: one row, from the largest
            take[int(take.argmax())] -= 1
            take[c] = 1
    gen = torch.Generator().manual_seed(seed + 2)
    rows = [
        torch.nonzero(retain.y == label).flatten()[torch.randperm(int(size), generator=gen)[: int(k)]]
        for label, size, k in zip(classes.tolist(), counts.tolist(), take.tolist(), strict=True)
    ]
    return retain.subset(torch.cat(rows).sort().values)


MAX_STAND = 256  # a class's rows stand at most this many times (a share near 1 divides by almost 0)


def matched_rows(
    retain_y: torch.Tensor, forget_y: torch.Tensor, share: float, scale: torch.Tensor | None = None
) -> torch.Tensor | None:
    """(V,) rows of the retain pool in which each row of a class stands round(w_c / min w) times, w_c =
    (1 - s) + s·g_c·f_c / r_c, with s = ``share``, f_c and r_c the class's shares of D_f and of the pool,
    and g_c = ``scale``[c] (``scale`` (K,): 1 where None); None where every row stands once (a random
    deletion, ``share`` 0, or no class of D_f left in the pool).

    Why: the retain term keeps what the forget term must not take. A random deletion is spread over the
    classes as D_r is, and each retain batch holds each class in that measure. A deletion drawn from one
    class that stays (half of digits' class 0) is pushed all in one direction: with momentum the pushes
    of its first steps carry on after the held-out bound had stopped them, and the class's retained rows
    (a twentieth of each batch) did not hold the class. It then forgot past a retrain (UA 5.6% against
    0%, the attack 15-21% against 2%: further from the retrain than the untouched model). Read several
    times as often, the class's retained rows held it (docs/methods.md, stop 47). Where unseen samples of
    the class are often misclassified, a retrain forgets part of such a deletion, and holding the class
    holds D_f back: the caller scales the share down there (``retain_match_power``)."""
    if share <= 0 or len(retain_y) == 0 or len(forget_y) == 0:
        return None
    k = int(max(int(retain_y.max()), int(forget_y.max()))) + 1
    pool = torch.bincount(retain_y, minlength=k).double()  # (K,) rows per class in the pool
    staying = forget_y[pool[forget_y] > 0]  # D_f's labels whose class is still in the pool
    if len(staying) == 0:
        return None
    f = torch.bincount(staying, minlength=k).double() / len(staying)  # (K,) D_f's mix
    g = torch.ones(k, dtype=torch.float64)  # (K,) how much of its share each class of D_f takes
    if scale is not None:
        g[: min(k, len(scale))] = scale[:k].double().cpu()
    w = (1 - share) + share * g * f / (pool / len(retain_y)).clamp(min=1e-12)  # (K,) per class
    standing = (pool > 0) & (w > 0)  # at share 1 a class D_f does not hold is not read at all
    if not bool(standing.any()):
        return None
    times = torch.zeros(k, dtype=torch.long)  # (K,) how often a row of the class stands
    times[standing] = (w[standing] / w[standing].min()).round().clamp(max=MAX_STAND).long()
    if bool((times[pool > 0] == 1).all()):
        return None
    rows = torch.arange(len(retain_y))
    return rows.repeat_interleave(times[retain_y])


def run_steps(
    model: nn.Module,
    forget: SampleDataset,
    retain: SampleDataset,
    params: GradientParams,
    hooks: Hooks,
    objective: Objective,
    plan: Plan,
    *,
    forget_targets: torch.Tensor | None = None,
    static_mask: list[torch.Tensor] | None = None,
    selector: Selector | None = None,
    about: dict[str, Any] | None = None,
    class_error: torch.Tensor | None = None,
    retain_rows: int | None = None,
) -> nn.Module:
    """Run the method's steps in place on ``model`` (on its device) and return it. ``selector``: score the
    model at a few steps and end on the best-scored state (``models.unlearning.selection``). ``about``:
    what the method decided before the run, reported with the run's own plan (``Hooks.plan``).
    ``retain_rows``: the size of the D_r that ``retain`` was drawn from, when a caller drew its pool
    (default: ``retain`` is all of D_r)."""
    needs_retain = plan.w_retain > 0 or params.mask in ("and", "prob", "focus")
    if len(forget) == 0:  # nothing to forget: the model is already the answer
        hooks.plan({**(about or {}), "steps": 0})
        hooks.start()
        hooks.finish()
        return model
    if needs_retain and len(retain) == 0:
        raise ValueError("this method needs a non-empty retain set")
    n_retain = len(retain) if retain_rows is None else retain_rows
    retain = retain_pool(retain, len(forget), params.retain_budget, params.seed)
    device = model_device(model)
    xf, yf = B.to(forget.x, device), forget.y.to(device)  # moved once (rows on disk: read per batch)
    tf = yf if forget_targets is None else forget_targets.to(device)
    xr, yr = (B.to(retain.x, device), retain.y.to(device)) if len(retain) else (xf, yf[:0])
    gen = torch.Generator().manual_seed(params.seed)
    total = count_steps(plan, params, len(forget), len(retain))
    scale = None
    if class_error is not None and params.retain_match_power > 0:
        scale = (1 - class_error) ** params.retain_match_power
    matched = matched_rows(retain.y, forget.y, params.retain_match, scale) if len(retain) else None
    n_reads = len(matched) if matched is not None else len(retain)  # retain rows as the stream reads them
    lead_n, partner_n = (len(forget), n_reads) if plan.lead == "forget" else (n_reads, len(forget))

    def indices() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(forget rows, retain rows) of every step, drawn from the seeded generator."""
        lead = lead_batches(lead_n, params.batch_size, gen)
        partner = CyclingSampler(max(partner_n, 1), gen)
        for _ in range(total):
            i_lead = next(lead)
            k = partner_size(plan, len(i_lead), partner_n, params.forget_batch_ratio)
            i_part = partner.take(k) if partner_n else i_lead[:0]
            i_f, i_r = (i_lead, i_part) if plan.lead == "forget" else (i_part, i_lead)
            yield i_f, (matched[i_r] if matched is not None else i_r)

    opt = optimizer(list(model.parameters()), params)
    sched = lr_scheduler(opt, params.schedule, total)
    held = params.anchor * _unread(plan, len(retain), n_retain)
    lr_total = params.lr * sum(lr_factor(params.schedule, total, s) for s in range(total))
    anchor = Anchor(model, held, lr_total)
    stopper = _ForgetAccuracyStop(params.stop_at_forget_accuracy, len(forget))
    clip = StepClip(params.grad_clip, params.clip_to_first)
    model.train()
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    hooks.plan({**(about or {}), "steps": total, "epochs": params.epochs, "forget_rows": len(forget),
                "retain_rows": len(retain), "trained_weights": trained,
                "clip_to_first": params.clip_to_first, **_matched_about(retain.y, matched),
                **({"anchor": round(held, 6)} if held > 0 else {})})  # fmt: skip
    hooks.start()
    step = 0
    if selector is not None:
        selector.start(model, total)
    with frozen_batch_stats(model, params.batch_stats == "frozen"):
        for step, ((i_f, i_r), (xf_b, xr_b, joint)) in enumerate(read_pairs(xf, xr, indices()), start=1):
            i_f, i_r = i_f.to(device), i_r.to(device)
            norm = forget_norm(len(i_f), len(i_r), len(forget))
            batch = Batch(xr_b, yr[i_r], xf_b, yf[i_f], tf[i_f], norm, joint, i_f)
            weights = annealed(plan, step, total, params.forget_anneal)
            correct = _step(model, opt, batch, params, objective, weights, static_mask, clip)
            anchor.pull(opt.param_groups[0]["lr"])
            sched.step()
            stopper.add(correct)
            hooks.step(step, total)
            if selector is not None:
                selector.after_step(model, step)
            if stopper.should_stop(step, hooks.check_every):
                break
    if selector is not None:
        selector.finish(model, step)
    hooks.finish()
    return model


def _unread(plan: Plan, pool: int, n_retain: int) -> float:
    """The share of D_r a run leaves unread: all of it without a retain term (gradient ascent), else what
    its pool leaves out."""
    if plan.w_retain <= 0 or n_retain == 0:
        return 1.0
    return 1.0 - pool / n_retain


class Anchor:
    """Pulls the trained weights back towards where the run started after each step (L2-SP's penalty,
    decoupled as AdamW decouples its decay), by 1 - exp(-strength·lr / lr_total) of their distance: each
    step's share of the run's summed lr, so a whole run takes back ``strength`` e-folds of a distance that
    stood still (leaves e^-strength of it) whatever the run's length and lr, and no step undoes itself
    entirely. A pull per step of lr·strength held the 60k Fashion-MNIST model's 350-step class-wise runs
    back from forgetting their class (UA 99.3%) while the 10k model's 50-step 1% runs gained: it added up
    over the steps. BatchNorm's running statistics are not pulled (UGradSL+ leaves them frozen).

    Why: the retain term holds only the rows the run reads, so where the retain pool leaves most of D_r
    unread (a small deletion), what the forget pushes move that no forget row needed goes unrepaired and
    D_r's accuracy falls. ``run_steps`` scales ``params.anchor`` by the share of D_r the pool leaves out:
    a run that reads all of D_r is not held. A coordinate that no step has moved has no distance, so it
    stays where it is, masked or not."""

    def __init__(self, model: nn.Module, strength: float, lr_total: float) -> None:
        self.strength, self.lr_total = strength, lr_total
        on = strength > 0 and lr_total > 0
        self.ps = [p for p in model.parameters() if p.requires_grad] if on else []
        self.start = [p.detach().clone() for p in self.ps]

    @torch.no_grad()
    def pull(self, lr: float) -> None:
        """After a step taken at ``lr``."""
        if not self.ps:
            return
        weight = -math.expm1(-self.strength * lr / self.lr_total)  # the run's pulls: exactly e^-strength
        for p, s in zip(self.ps, self.start, strict=True):
            p.lerp_(s, weight)


def _matched_about(retain_y: torch.Tensor, matched: torch.Tensor | None) -> dict[str, Any]:
    """For the run's plan: how many times a pass reads each row of the classes read more than once."""
    if matched is None:
        return {}
    reads = torch.bincount(matched, minlength=len(retain_y))  # (n,) times each pool row stands
    classes = retain_y[reads > 1].unique().tolist()
    return {"retain_read_times": {str(c): int(reads[retain_y == c].max()) for c in classes}}  # JSON keys


def optimizer(ps: Sequence[torch.Tensor], params: GradientParams) -> torch.optim.Optimizer:
    """The run's optimiser: ``sgd`` below, or Adam (fused where SGD would be) when ``params.optimizer`` is
    "adam" (AdamW for "adamw"): a model trained with Adam sits where SGD steps of a size that suits a CNN
    throw it off (``models/unlearning/params.py``, ``optimizer``)."""
    if params.optimizer in ("adam", "adamw"):
        fused = _fusable(ps)
        adam = torch.optim.AdamW if params.optimizer == "adamw" else torch.optim.Adam
        return adam(list(ps), lr=params.lr, weight_decay=params.weight_decay, fused=True if fused else None)
    return sgd(ps, params.lr, params.momentum, params.weight_decay)


def _fusable(ps: Sequence[torch.Tensor]) -> bool:
    return bool(ps) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in ps)


def sgd(params: Sequence[torch.Tensor], lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """SGD with PyTorch's fused kernel where every trained tensor allows it (floating point, on a CPU or a
    GPU). Why: a step of the last layers is short, and the per-tensor update reads and writes each weight
    four times; on the 60k model's last layers (0.4M weights) it was 0.4 s of a 3.4 s run, the fused one
    half that. Its results agree with the per-tensor update to float32 rounding (7e-8 after 200 steps), not
    bit for bit."""
    fused = _fusable(params)
    return torch.optim.SGD(
        list(params), lr=lr, momentum=momentum, weight_decay=weight_decay, fused=True if fused else None
    )


def read_pairs(
    xf: Inputs, xr: Inputs, plan: Iterator[tuple[torch.Tensor, torch.Tensor]]
) -> Iterator[tuple[tuple[torch.Tensor, torch.Tensor], tuple[Loaded, Loaded, Loaded | None]]]:
    """Per step of ``plan`` (forget rows, retain rows): the step and its (B_f, B_r, joint) inputs.

    Why a joint batch: a method that runs B_r and B_f through the network as one batch
    (``methods._joint_forward``) otherwise copies both into a new tensor after reading them, every step.
    Where both sets are plain tensors in memory of one layout, or views of a front's kept rows
    (``feature_cache.KeptRows``), their rows are read straight into the two halves of one tensor, and B_r
    and B_f are views of it; elsewhere (rows on disk, dicts, channels-last images) ``joint`` is None."""
    if _kept(xf, xr):  # rows kept in a front's chunks: read straight into the two halves
        assert isinstance(xf, LazyRows) and isinstance(xr, LazyRows)
        sf, sr = cast(KeptRows, xf.source), cast(KeptRows, xr.source)
        for i_f, i_r in plan:
            n = len(i_r)
            joint = sr.empty(n + len(i_f))
            sr.read_into(xr.source_rows(i_r), joint[:n])
            sf.read_into(xf.source_rows(i_f), joint[n:])
            yield (i_f, i_r), (joint[n:], joint[:n], joint)
        return
    if not _joinable(xf, xr):
        for (i_f, i_r), (xf_b, xr_b) in read_ahead([xf, xr], plan):
            yield (i_f, i_r), (xf_b, xr_b, None)
        return
    assert isinstance(xf, torch.Tensor) and isinstance(xr, torch.Tensor)
    for i_f, i_r in plan:
        n = len(i_r)
        joint = xr.new_empty((n + len(i_f), *xr.shape[1:]))
        torch.index_select(xr, 0, i_r.to(xr.device), out=joint[:n])
        torch.index_select(xf, 0, i_f.to(xf.device), out=joint[n:])
        yield (i_f, i_r), (joint[n:], joint[:n], joint)


def _kept(xf: Inputs, xr: Inputs) -> bool:
    """Both sets are views of a front's kept rows (``feature_cache.KeptRows``), of one dtype and shape."""
    if not (isinstance(xf, LazyRows) and isinstance(xr, LazyRows)):
        return False
    if not (isinstance(xf.source, KeptRows) and isinstance(xr.source, KeptRows)):
        return False
    a, b = xf.source.empty(0), xr.source.empty(0)
    return xf.device == xr.device == a.device and (a.dtype, a.shape) == (b.dtype, b.shape)


def _joinable(xf: Inputs, xr: Inputs) -> bool:
    return (
        isinstance(xf, torch.Tensor)
        and isinstance(xr, torch.Tensor)
        and (xf.dtype, xf.device, xf.shape[1:]) == (xr.dtype, xr.device, xr.shape[1:])
        and xf.is_contiguous()
        and xr.is_contiguous()
    )


def annealed(plan: Plan, step: int, total: int, fraction: float) -> Plan:
    """The plan at ``step`` of ``total``: the forget weight held until the last ``fraction`` of the run,
    then falling linearly to zero at the last step (the run ends as plain descent on D_r). A method with
    no retain term (gradient ascent) has nothing to end on, and is not annealed."""
    start = total * (1.0 - fraction)
    if fraction <= 0 or step <= start or plan.w_retain <= 0:
        return plan
    left = (total - step) / max(total - start, 1e-12)
    return dataclasses.replace(plan, w_forget=plan.w_forget * max(left, 0.0))


def partner_size(plan: Plan, lead_size: int, partner_n: int, ratio: float = 1.0) -> int:
    """Equal batch sizes, except that a forget set smaller than a retain batch is not repeated within one
    (UGradSL+ on a 10-sample deletion): objectives divide the forget sum by the retain batch's size, so a
    forget sample's weight per step is 1/B whatever |D_f| is. Repeating it B/|D_f| times would push a small
    deletion that much harder; on the digits model that cost 2-6 points of test accuracy for 3-30 samples.
    ``ratio`` (``forget_batch_ratio``, lead = retain only) shrinks the forget batch to that fraction of the
    retain batch: a step then costs about (1 + ratio)·B_r samples instead of 2·B_r (``forget_norm`` keeps
    the push per pass the same)."""
    if plan.lead == "retain":
        return min(lead_size, partner_n, max(1, round(ratio * lead_size)))
    return lead_size


def forget_norm(n_f_batch: int, n_r_batch: int, n_forget: int) -> float:
    """Divisor of a step's summed forget term: |B_f|·|B_r| / min(|D_f|, |B_r|).

    Why this form: a forget sample is drawn with probability |B_f|/|D_f| per step (at most 1), so its
    expected weight per step is min(|D_f|, |B_r|) / (|D_f|·|B_r|), whatever |B_f| is: a smaller forget
    batch (``forget_batch_ratio``) makes steps cheaper (fewer, larger pushes per sample), not the method
    weaker. With |B_f| = min(|B_r|, |D_f|) (ratio 1) it is |B_r|, the 1/B per sample that
    ``partner_size`` describes; with no retain batch it is |B_f| (a mean)."""
    if n_r_batch == 0 or n_forget == 0:
        return float(max(n_f_batch, 1))
    return n_f_batch * n_r_batch / min(n_forget, n_r_batch)


class _ForgetAccuracyStop:
    """Stops once the accuracy on the forget batches of (about) the last pass over D_f is <= the target.
    The correctness flags come from the step's own forward pass; the host syncs only every few steps."""

    def __init__(self, target: float, n_forget: int) -> None:
        self.target, self.n_forget = target, n_forget
        self.window: deque[torch.Tensor] = deque()
        self.seen = 0

    def add(self, correct: torch.Tensor | None) -> None:
        if self.target <= 0 or correct is None:
            return
        self.window.append(correct.detach())
        self.seen += len(correct)
        while self.seen - len(self.window[0]) >= self.n_forget:
            self.seen -= len(self.window.popleft())

    def should_stop(self, step: int, every: int) -> bool:
        if self.target <= 0 or not self.window or step % max(every, 1) or self.seen < self.n_forget:
            return False
        return float(torch.cat(list(self.window)).float().mean()) <= self.target


def _step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    batch: Batch,
    params: GradientParams,
    objective: Objective,
    plan: Plan,
    static_mask: list[torch.Tensor] | None,
    clip: StepClip,
) -> torch.Tensor | None:
    """One optimiser step with the configured mask; returns the forget batch's correctness flags."""
    ps: list[torch.Tensor] = [p for p in model.parameters() if p.requires_grad]
    opt.zero_grad(set_to_none=True)
    weights: list[torch.Tensor] | None = static_mask
    binary = True
    if params.mask in ("none", "salun"):
        terms = objective(model, batch)
        _total_loss(terms, plan).backward()  # type: ignore[no-untyped-call]
    elif params.mask == "and":
        terms = objective(model, batch)
        g_c, g_u = _grads(terms.retain, ps), _grads(terms.forget, ps)
        _set_grads(ps, g_c, g_u, plan)
        weights = [M.and_mask(u, c) for u, c in zip(g_u, g_c, strict=True)]
    else:  # prob / focus: gradient statistics over micro-batches
        terms, stats = _group_gradients(model, batch, params.mask_groups, objective, ps)
        (mean_c, se_c), (mean_u, se_u) = stats
        _set_grads(ps, mean_c, mean_u, plan)
        fn = M.prob_mask if params.mask == "prob" else M.focus_weights
        dof = _group_count(params.mask_groups, batch) - 1  # s comes from G groups: Student's t, G - 1 dof
        weights = [
            fn(mu, su, mc, sc, params.mask_p, dof)
            for mu, su, mc, sc in zip(mean_u, se_u, mean_c, se_c, strict=True)
        ]
        binary = params.mask == "prob"
    if weights is None:
        clip(ps)
        opt.step()
    else:
        M.masked_step(opt, ps, weights, binary=binary, clip=clip)
    return terms.forget_correct


def _total_loss(terms: Terms, plan: Plan) -> torch.Tensor:
    parts = [
        w * t
        for w, t in ((plan.w_retain, terms.retain), (plan.w_forget, terms.forget))
        if w and t is not None
    ]
    if not parts:
        raise ValueError("the objective produced no term with a non-zero weight")
    return torch.stack(parts).sum()


def _grads(loss: torch.Tensor | None, ps: list[torch.Tensor]) -> list[torch.Tensor]:
    if loss is None or not loss.requires_grad:
        return [torch.zeros_like(p) for p in ps]
    # retain_graph: the retain and forget terms may share one forward pass (see methods._joint_forward).
    gs = torch.autograd.grad(loss, ps, allow_unused=True, retain_graph=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(ps, gs, strict=True)]


def _set_grads(ps: list[torch.Tensor], g_c: list[torch.Tensor], g_u: list[torch.Tensor], plan: Plan) -> None:
    for p, c, u in zip(ps, g_c, g_u, strict=True):
        p.grad = plan.w_retain * c + plan.w_forget * u


def _group_count(groups: int, batch: Batch) -> int:
    """G = min(mask_groups, |B_f|, |B_r|): micro-batches need at least one sample of each. (Counted on
    the labels: the inputs may be a dict, whose len is its number of keys.)"""
    n_r, n_f = len(batch.yr), len(batch.yf)
    return max(1, min(groups, n_f, n_r if n_r else n_f))


def _group_gradients(
    model: nn.Module, batch: Batch, groups: int, objective: Objective, ps: list[torch.Tensor]
) -> tuple[
    Terms, tuple[tuple[list[torch.Tensor], list[torch.Tensor]], tuple[list[torch.Tensor], list[torch.Tensor]]]
]:
    """Split B_r and B_f into ``groups`` aligned micro-batches; return the mean and standard error of
    ∇L_C and ∇L_U over them (running sums: memory is 4 gradient copies, not ``groups``)."""
    g = _group_count(groups, batch)
    sums = [[torch.zeros_like(p) for p in ps] for _ in range(4)]  # sum_c, sq_c, sum_u, sq_u
    correct: list[torch.Tensor] = []
    parts = (
        B.split(batch.xr, g),
        batch.yr.tensor_split(g),
        B.split(batch.xf, g),
        batch.yf.tensor_split(g),
        batch.tf.tensor_split(g),
        batch.rf.tensor_split(g) if batch.rf is not None else [None] * g,
    )
    for xr, yr, xf, yf, tf, rf in zip(*parts, strict=True):
        # each group's divisor is its share of the whole batch's: the mean over groups is the full term
        norm = batch.forget_divisor() * len(yf) / max(len(batch.yf), 1)
        terms = objective(model, Batch(xr, yr, xf, yf, tf, norm, rf=rf))
        for k, gs in ((0, _grads(terms.retain, ps)), (2, _grads(terms.forget, ps))):
            for s, sq, gi in zip(sums[k], sums[k + 1], gs, strict=True):
                s.add_(gi)
                sq.addcmul_(gi, gi)
        if terms.forget_correct is not None:
            correct.append(terms.forget_correct)
    stat_c = [M.mean_and_stderr(s, q, g) for s, q in zip(sums[0], sums[1], strict=True)]
    stat_u = [M.mean_and_stderr(s, q, g) for s, q in zip(sums[2], sums[3], strict=True)]
    merged = Terms(None, None, torch.cat(correct) if correct else None)
    return merged, (
        ([m for m, _ in stat_c], [e for _, e in stat_c]),
        ([m for m, _ in stat_u], [e for _, e in stat_u]),
    )
