"""How long a UGradSL run should be, from how much the model has memorised D_f (``pushes``; ours).

Why: a fixed number of epochs pushes every deletion as hard, whatever there is to forget. What won on the
tuning cases differed between models by how far D_f's losses sit below unseen data's, in e-folds of loss:

    distance = max(0, ln(mean CE(held-out) / mean CE(D_f)))       under the model being unlearned
    pushes   = params.pushes · (1 - exp(-distance / params.pushes_efolds))   per forget sample, at least one

Measured (bench/results/memorisation.md, tune_*_pushes.md, tune_stop34_saturating.md): models that
memorised their training set (3.7-4.5 e-folds) forgot random deletions best at about 15-16 pushes per
forget sample; a 60k-sample model that barely memorises (0.16) at about 4 (stop 32's choice; there one
setting closed 38-81% across three run seeds, wider than any difference between 2.8, 3.7 and 6.6
pushes); a model in between (0.85) at 10-12, where 5.9 under-forgot. So the need rises steeply over the first
e-fold and is flat past about two: ``pushes`` is the level a fully memorised D_f gets, and
``pushes_efolds`` the distance at which a run gets 1 - 1/e of it. Stops 32-33 used ``pushes·(1 +
distance)``, a line through the two regimes that undershot the model between them (79 ± 9% of its
closable gap against 99 ± 9% for a longer run). The held-out losses are the bound's
(``models.unlearning.bounds``): measured once, no gradient flows from them.

The retain batch beside each forget batch (UGradSL+) repairs what the pushes cost the rest of the model,
and that need follows memorisation too. ``forget_batch_ratio`` is the forget batch's share of the retain
batch for a fully memorised D_f; a sized run scales it on the same curve, from equal batches (one retain
row per push) at distance 0 to that share at full memorisation:

    ratio = 1 - (1 - params.forget_batch_ratio) · (1 - exp(-distance / params.pushes_efolds))

Measured on the tuning cases with three run seeds each (bench/results/tune_stop35_repair.md): the
memorising model (3.7-4.5 e-folds, ratio 0.5 either way) lost 14 points of its mean with equal batches;
the model between the regimes (0.85: 0.62) closed 90% mean / 86% worst against 85% / 77% at 0.5, and the
60k one (0.16: 0.88) 60% / 50% against 47% / 41%, at 3/4 of the cost: pushes on a barely memorised D_f
move the model little, and two retain rows per push were more repair than it needed.

The run then takes as many steps as those pushes need (``partner_size`` forget samples per step) and
reads that many retain rows. When those rows would pass over the retain pool (``retain_budget``) fewer
times than

    passes = 1 + (params.retain_passes - 1) · exp(-distance / params.pushes_efolds)

the pool shrinks until they pass over it that often: for a D_f that looks unseen, a class-stratified sample
read twice (by default) rather than one twice the size read once, so (under ``train_share``) half as many
retain rows go through the frozen front; for a memorised one, one pass, as before. On the 60k model (0.16
e-folds: 1.77 passes) the tuning cases closed about as much with two passes as with one (48% mean / 33%
worst against 51% / 44%, run seeds spanning 20-67% per case; bench/results/tune_stop36_passes.md) at 5.3%
of retrain instead of 6.8%. Read twice whatever the distance, the memorising model's 1% deletions lost on
the reporting seeds (Avg Gap 3.16 ± 1.40 against 2.33 ± 1.29, quality_stop36_mem.md), so the passes
follow memorisation like the batches: the memorising models' runs are stop 35's.

D_f's losses are read off the network the run trains, on D_f as that network takes it
(``methods._trained_part``): under ``train_share`` that is the front's features, which the run computes
anyway, so sizing costs no pass of its own (it was 0.46 s of a 4.9 s run on the 60k model).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from models.datasets import SampleDataset
from models.metrics import per_sample_loss
from models.unlearning.engine import Plan, count_steps, partner_size, pool_size
from models.unlearning.params import UGradSLParams

MAX_EPOCHS = 200.0  # the params' bound on epochs


def forget_distance(
    model: nn.Module, forget: SampleDataset, heldout_losses: torch.Tensor, shrink: float = 0.0
) -> float:
    """max(0, ln(mean CE(held-out) / mean CE(D_f)) - shrink · its standard error): e-folds of loss
    between D_f and unseen data, less ``shrink`` standard errors: a distance that the noise of two sample
    means could have made is not taken for memorisation (``pushes_shrink``)."""
    return shrunk(*measured_distance(model, forget, heldout_losses), shrink)


def shrunk(distance: float, se: float, shrink: float) -> float:
    """max(0, distance - shrink · se): what a run sized with ``pushes_shrink`` = ``shrink`` sizes by."""
    return max(0.0, distance - shrink * se)


def measured_distance(
    model: nn.Module, forget: SampleDataset, heldout_losses: torch.Tensor
) -> tuple[float, float]:
    """ln(mean CE(held-out) / mean CE(D_f)), at least 0, and its standard error (``distance_se``)."""
    if len(forget) == 0 or len(heldout_losses) == 0:
        return 0.0, 0.0
    heldout = heldout_losses.double()
    losses = torch.as_tensor(per_sample_loss(model, forget)).double()
    ce_heldout, ce_forget = float(heldout.mean()), float(losses.mean())
    if ce_heldout <= 0 or ce_forget >= ce_heldout:
        return 0.0, distance_se(heldout, losses)
    return math.log(ce_heldout / max(ce_forget, 1e-12)), distance_se(heldout, losses)


def distance_se(heldout: torch.Tensor, forget: torch.Tensor) -> float:
    """The standard error of ln(mean(heldout) / mean(forget)) by the delta method: sqrt(var_h / (n_h ·
    mean_h²) + var_f / (n_f · mean_f²)); 0 for a set of one."""
    total = 0.0
    for x in (heldout, forget):
        if len(x) > 1 and float(x.mean()) > 0:
            total += float(x.var()) / (len(x) * float(x.mean()) ** 2)
    return math.sqrt(total)


def pushes_per_sample(params: UGradSLParams, distance: float) -> float:
    """``params.pushes · (1 - exp(-distance / params.pushes_efolds))``, at least one."""
    return max(1.0, params.pushes * -math.expm1(-distance / params.pushes_efolds))


def with_contradicted(params: UGradSLParams, distance: float, share: float) -> float:
    """The distance a run is sized by when ``share`` of D_f is contradicted by its neighbours
    (``neighbour_labels``): the one whose pushes per sample are the mean of D_f's, ``params.pushes`` (all
    there are) for a contradicted sample, which the model memorised against the rest of the data, and
    ``pushes_per_sample(distance)`` for the others. A mislabeled deletion's losses sit above held-out
    ones (the model already gets some of it wrong), so the distance alone sized it at one push a sample."""
    if share <= 0 or params.pushes <= 0:
        return distance
    mean = (1 - share) * pushes_per_sample(params, distance) + share * params.pushes
    return -params.pushes_efolds * math.log1p(-min(mean / params.pushes, 1 - 1e-6))


def forget_ratio(params: UGradSLParams, distance: float) -> float:
    """``1 - (1 - params.forget_batch_ratio) · (1 - exp(-distance / params.pushes_efolds))``: equal batches
    for a D_f the model has not memorised, ``forget_batch_ratio`` for one it has fully memorised."""
    return 1.0 - (1.0 - params.forget_batch_ratio) * -math.expm1(-distance / params.pushes_efolds)


def sized(params: UGradSLParams, plan: Plan, n_forget: int, n_retain: int, distance: float) -> UGradSLParams:
    """``params`` with ``epochs`` (and, for UGradSL+, ``forget_batch_ratio`` and ``retain_budget``) set so
    each forget sample is pushed about ``pushes_per_sample(params, distance)`` times, beside retain batches
    ``1 / forget_ratio(params, distance)`` times its size. Unchanged when ``pushes`` is 0 or a set is
    empty."""
    if params.pushes <= 0 or n_forget == 0 or n_retain == 0:
        return params
    pushes = pushes_per_sample(params, distance)
    if plan.lead == "forget":  # UGradSL: an epoch is one pass over D_f, one push per sample
        return dataclasses.replace(params, epochs=min(pushes, MAX_EPOCHS))
    params = dataclasses.replace(params, forget_batch_ratio=forget_ratio(params, distance))
    pool = pool_size(n_retain, n_forget, params.retain_budget)
    b_r = min(params.batch_size, pool)
    b_f = partner_size(plan, b_r, n_forget, params.forget_batch_ratio)
    steps = math.ceil(pushes * n_forget / b_f)
    scale = long_run_scale(params, steps * b_r / n_retain)
    # never under one pass over D_f (every forget sample is pushed at least once: a review's 90% deletion
    # of a barely memorised set would have left a third of it untouched)
    fewer = max(math.ceil(steps * scale), math.ceil(n_forget / b_f))
    if fewer < steps:  # the lr raised by what was taken off; the record's pushes per sample are the run's
        taken = fewer / steps
        params = dataclasses.replace(params, pushes=params.pushes * taken, lr=params.lr / taken)
        steps = fewer
    return reread(params, plan, n_forget, n_retain, steps, retain_passes(params, distance))


MAX_LR_RAISE = 3.0  # a long run's lr is raised this much at most: 2.83x is the most measured (a half)


def long_run_scale(params: UGradSLParams, passes: float) -> float:
    """The share of its steps a sized run takes when they would pass over D_r ``passes`` times, more than
    ``long_run_passes``: ``sqrt(long_run_passes / passes)``, no lower than ``1 / MAX_LR_RAISE``; 1 below.

    Why: pushes are counted per forget sample, so a run's steps, and the retain rows it reads beside them,
    grow with the deletion: 16 pushes of a random half of the training set read what stays 32 times, as
    long as a retrain, and closed half of its gap or less. At a quarter and a half, fewer steps at an lr
    raised by the inverse (the same summed lr, so the forget set is pushed as far) closed more of the gap
    on both tuning models (stop 59: digits' halves 65-79% against 49-53%, ``blobs_mlp``'s 62-70% against
    27-32%, its quarter as before, at a third of the cost), while a random 10% (3.6 passes) lost with any
    change of its length. So a deletion's run is left as it was below ``long_run_passes`` passes, and past
    them its reads grow as the square root of the deletion's. ``sized`` keeps at least one pass over D_f
    and raises the lr by the steps it actually took off."""
    if params.long_run_passes <= 0 or passes <= params.long_run_passes:
        return 1.0
    return max(math.sqrt(params.long_run_passes / passes), 1.0 / MAX_LR_RAISE)


def retain_passes(params: UGradSLParams, distance: float) -> float:
    """``1 + (params.retain_passes - 1) · exp(-distance / params.pushes_efolds)``: ``retain_passes`` for a
    D_f that looks unseen, one pass for a fully memorised one."""
    return 1.0 + (params.retain_passes - 1.0) * math.exp(-distance / params.pushes_efolds)


def reread(
    params: UGradSLParams,
    plan: Plan,
    n_forget: int,
    n_retain: int,
    steps: int | None = None,
    passes: float | None = None,
) -> UGradSLParams:
    """UGradSL+ ``params`` that take ``steps`` steps (default: as many as ``params`` take now) over a
    retain pool the run's reads pass over at least ``passes`` times (default ``retain_passes``): the pool
    shrinks, never below one batch, and ``epochs`` follows, so the steps, and each forget sample's pushes,
    stay as they were."""
    passes = params.retain_passes if passes is None else passes
    pool = pool_size(n_retain, n_forget, params.retain_budget)
    if pool == 0 or n_forget == 0:
        return params
    b_r = min(params.batch_size, pool)
    b_f = partner_size(plan, b_r, n_forget, params.forget_batch_ratio)
    if steps is None:
        steps = count_steps(plan, params, n_forget, pool)
    reads = steps * b_r  # retain rows the run reads
    if reads < passes * pool:  # a pool that those reads pass over that often
        pool = max(math.ceil(reads / passes), b_r)
        params = dataclasses.replace(params, retain_budget=pool / n_forget)
    per_epoch = max(math.ceil(pool / b_r), math.ceil(n_forget / b_f))  # as engine.count_steps counts
    return dataclasses.replace(params, epochs=min(steps / per_epoch, MAX_EPOCHS))
