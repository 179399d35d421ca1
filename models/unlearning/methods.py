"""The unlearning methods, registered by decorator. Each is ``fn(model, forget, retain, params, hooks) ->
model``: it updates ``model`` in place on the model's device and returns it."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterator
from typing import Any, Protocol, cast

import torch
import torch.nn.functional as F
from torch import nn

from models import batches as B
from models.adapters import adapt, check_contract, defines_contract
from models.architectures import Classifier, build_model
from models.batches import Loaded
from models.datasets import SampleDataset
from models.hooks import FrontFeatures, Hooks
from models.layout import cpu_channels_last
from models.metrics import accuracy, accuracy_excess, per_sample_loss, predictions
from models.training import TrainRecipe, lr_scheduler, train
from models.unlearning import masks as M
from models.unlearning.batch_stats import frozen_batch_stats, uses_batch_stats
from models.unlearning.bounds import SKEW_ALPHA, HeldoutBound, heldout_bound
from models.unlearning.engine import (
    Batch,
    Objective,
    Plan,
    Terms,
    model_device,
    optimizer,
    retain_pool,
    run_steps,
)
from models.unlearning.last_layers import features, fits, split_last_layers
from models.unlearning.losses import smoothed_cross_entropy
from models.unlearning.neighbours import FLAGGED_NEIGHBOURS, neighbour_labels
from models.unlearning.params import (
    FinetuneParams,
    GradientAscentParams,
    GradientParams,
    RandomLabelParams,
    RetrainParams,
    UGradSLParams,
    params_class,
    params_to_dict,
    parse_params,
)
from models.unlearning.selection import selector
from models.unlearning.sizing import (
    MAX_EPOCHS,
    measured_distance,
    pushes_per_sample,
    reread,
    shrunk,
    sized,
    with_contradicted,
)


class MethodBody(Protocol):
    """What ``register_method`` decorates: a method's own run, given parsed params and hooks."""

    def __call__(
        self,
        model: nn.Module,
        forget: SampleDataset,
        retain: SampleDataset,
        params: Any,
        hooks: Hooks,
        heldout: SampleDataset | None = None,
        mislabeled: torch.Tensor | None = None,
    ) -> nn.Module: ...


class Method(Protocol):
    """``fn(model, forget, retain, params, hooks, heldout=None, mislabeled=None) -> model``. ``heldout``:
    samples the model never trained on (the service passes the calibration part of its held-out data);
    ``mislabeled``: (n_f,) bool, the forget rows whose owner says their labels are wrong (a deletion of
    label-flipped or mislabeled data), passed only when some are (a method registered without the
    argument runs as before). Methods that need neither ignore them."""

    def __call__(
        self,
        model: nn.Module,
        forget: SampleDataset,
        retain: SampleDataset,
        params: Any = None,
        hooks: Hooks | None = None,
        heldout: SampleDataset | None = None,
        **flags: Any,
    ) -> nn.Module: ...


_METHODS: dict[str, Method] = {}


def register_method(name: str) -> Callable[[MethodBody], Method]:
    """Register a method; its params dataclass must exist in ``models.unlearning.params`` (torch-free).

    What is registered, and what the decorated name then holds (``from models.unlearning import
    ugradsl_plus``), is the method behind ``_prepared``, so a researcher calling it directly gets what
    ``run_method`` gives: ``params`` as a dict, an instance or None (the defaults), ``hooks`` optional,
    inputs checked, a model without ``features()``/``head()`` adapted, runs seeded by ``params.seed``
    (dropout included) and the model handed back in the train/eval modes it came in."""

    def deco(fn: MethodBody) -> Method:
        params_class(name)  # raises ValueError if the params are not declared
        if name in _METHODS:
            raise ValueError(f"method {name!r} is already registered")

        @functools.wraps(fn)
        def method(
            model: nn.Module,
            forget: SampleDataset,
            retain: SampleDataset,
            params: Any = None,
            hooks: Hooks | None = None,
            heldout: SampleDataset | None = None,
            **flags: Any,
        ) -> nn.Module:
            p = parse_params(name, params)
            return _prepared(fn, model, forget, retain, p, hooks or Hooks(), heldout, flags)

        _METHODS[name] = cast(Method, method)
        return cast(Method, method)

    return deco


def _prepared(
    fn: MethodBody,
    model: nn.Module,
    forget: SampleDataset,
    retain: SampleDataset,
    params: Any,
    hooks: Hooks,
    heldout: SampleDataset | None,
    flags: dict[str, Any],
) -> nn.Module:
    """Run ``fn`` on the caller's model as the methods assume it: checked inputs, the features/head
    contract (``adapt``), a seeded RNG (the caller's own state restored after), and every module's mode
    restored on the way out (the runs switch modules to train mode, some shared with the caller's front:
    a model handed back half in train mode ran dropout and batch statistics in the caller's next
    evaluation, and moved BatchNorm's running means in a plain forward)."""
    modes = {m: m.training for m in model.modules()}  # before anything here switches one
    _check_inputs(model, forget, retain, heldout)
    device = model_device(model)
    cuda = (
        [device.index if device.index is not None else torch.cuda.current_device()]
        if device.type == "cuda"
        else []
    )
    with torch.random.fork_rng(devices=cuda):
        seed = getattr(params, "seed", None)
        if isinstance(seed, int):  # the forked generators only: torch.manual_seed seeds every GPU's too
            torch.default_generator.manual_seed(seed)
            for index in cuda:
                torch.cuda.default_generators[index].manual_seed(seed)
        try:
            net = model if defines_contract(model) else _adapted(model, forget, retain)
            with cpu_channels_last(net):
                fn(net, forget, retain, params, hooks, heldout=heldout, **flags)
        finally:
            for m, mode in modes.items():
                m.training = mode
    return model


def _check_inputs(
    model: nn.Module, forget: SampleDataset, retain: SampleDataset, heldout: SampleDataset | None
) -> None:
    """What the methods would otherwise fail on deep inside a run, or silently run wrong with."""
    for role, data in (("forget", forget), ("retain", retain), ("heldout", heldout)):
        if data is not None and not isinstance(data, SampleDataset):
            raise TypeError(
                f"{role} must be a models.datasets.SampleDataset(x, y, ids), got {type(data).__name__}"
            )
    if len(forget) and len(retain):
        overlap = set(forget.ids).intersection(retain.ids)
        if overlap:
            raise ValueError(
                f"retain set contains {len(overlap)} forget sample(s), e.g. {sorted(overlap)[:3]}: D_r is "
                "the training set without D_f"
            )
    floats = [p.dtype for p in model.parameters() if p.is_floating_point()]
    tensor_inputs = [d for d in (forget, retain) if len(d) and isinstance(d.x, torch.Tensor)]
    if floats and floats[0] != torch.float32 and tensor_inputs:
        raise ValueError(
            f"the model's parameters are {floats[0]} but a SampleDataset holds float32 inputs: run the "
            "method on model.float() (and convert the result back)"
        )
    if not len(forget):
        return  # nothing to forget: the methods return the model untouched, reading nothing
    labelled = [d for d in (forget, retain, heldout) if d is not None and len(d)]
    low, high = min(int(d.y.min()) for d in labelled), max(int(d.y.max()) for d in labelled)
    k = _num_classes(model, forget)
    if low < 0 or high >= k:
        raise ValueError(f"labels must lie in [0, {k}) (the model's {k} outputs); found {low}..{high}")


def _adapted(model: nn.Module, forget: SampleDataset, retain: SampleDataset) -> nn.Module:
    """A plain module behind ``adapt``'s features/head, checked to compute the module's own outputs (a
    forward that rescales its classifier's output, say, would be a different function to unlearn)."""
    net = adapt(model)
    rows = forget if len(forget) else retain
    if len(rows):
        x = B.to(B.window(rows.x, 0, min(len(rows), 8)), model_device(model))
        check_contract(net, x, _num_classes(net, rows))
    return net


def get_method(name: str) -> Method:
    try:
        return _METHODS[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(sorted(_METHODS))}") from None


def list_methods() -> list[str]:
    return sorted(_METHODS)


def run_method(
    name: str,
    model: nn.Module,
    forget: SampleDataset,
    retain: SampleDataset,
    params: Any = None,
    hooks: Hooks | None = None,
    device: str | torch.device | None = None,
    heldout: SampleDataset | None = None,
    mislabeled: torch.Tensor | None = None,
) -> nn.Module:
    """Validate ``params`` (dict, params dataclass or None for defaults), move the model to ``device`` if
    given, run the method in place and return the model (see ``register_method`` for what every method
    call checks and keeps). ``heldout``: data the model never trained on, for
    methods whose params ask for it (UGradSL's ``bound_by="heldout"``). ``mislabeled``: (n_f,) bool, the
    forget rows whose labels are known to be wrong; UGradSL and UGradSL+ move those their neighbours
    contradict to the neighbours' class (``neighbour_labels``), the other methods ignore it."""
    fn = get_method(name)
    flags: dict[str, torch.Tensor] = {}  # passed only when given: a method registered without it still runs
    if mislabeled is not None:
        if mislabeled.dtype != torch.bool or mislabeled.shape != (len(forget),):
            got = f"{mislabeled.dtype} of shape {list(mislabeled.shape)}"
            raise ValueError(f"mislabeled must hold one bool per forget row ({len(forget)}), got {got}")
        flags["mislabeled"] = mislabeled
    if device is not None:
        model.to(device)
    return fn(model, forget, retain, params, hooks, heldout=heldout, **flags)


# ---------------------------------------------------------------- objectives


def _ce(model: nn.Module, x: Loaded, y: torch.Tensor) -> torch.Tensor | None:
    return F.cross_entropy(model(x), y) if len(y) else None


def _joint_forward(
    net: Classifier, b: Batch
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features and logits of B_r and B_f. Without batch statistics one forward pass over both batches is
    the same computation as two and runs like a plain training step of size |B_r| + |B_f|; with
    BatchNorm at batch statistics the batches keep their own (two passes), as in the paper's algorithm."""
    n = B.rows(b.xr)
    if uses_batch_stats(net) or n == 0:
        feat_r, feat_f = net.features(b.xr), net.features(b.xf)  # type: ignore[arg-type]
        return feat_r, feat_f, net.head(feat_r), net.head(feat_f)
    feats = net.features(b.both())  # type: ignore[arg-type]  # (B_r + B_f, D)
    logits = net.head(feats)  # (B_r + B_f, K)
    return feats[:n], feats[n:], logits[:n], logits[n:]


@dataclasses.dataclass
class Moves:
    """(n_f,) per forget row: the class its neighbours hold where they contradict its label (a class that
    stays in D_r), its own label elsewhere; None: no row is moved. Each run sets it before its first step
    (``_run``) and the UGradSL objective reads it, bounded by held-out data or not."""

    y: torch.Tensor | None = None
    kept: torch.Tensor | None = None  # the classes D_r still holds: where an AWAY row may go


def ugradsl_objective(
    params: UGradSLParams, bound: HeldoutBound | None = None, moves: Moves | None = None
) -> Objective:
    """L_C = CE(B_r); L_U = -mean ℓ_α(B_f) (unbounded) or -Σ live_i·ℓ_α,i / |B_f| (``bounded``): live = still
    correct, or, given a held-out ``bound``, still below the held-out loss of its rank (see
    ``models.unlearning.bounds``). Penultimate features come from the same forward pass. ``push`` (ours, not
    the paper's) swaps the ascent of a live sample for descent towards its nearest wrong class: everywhere
    (``nearest``), or where its rank's held-out loss says an unseen sample would be misclassified, or its
    class left D_r (``nearest_tail``). Ascent on smoothed labels raises every class's probability and
    softens the model around D_f; moving one sample across its nearest boundary does not."""

    def objective(model: nn.Module, b: Batch) -> Terms:
        net = cast(Classifier, model)  # any registered architecture: features() and head()
        feat_r, feat_f, logits_r, logits_f = _joint_forward(net, b)  # (B, D), (B, D), (B, K), (B, K)
        alpha = adaptive_alpha(feat_f.detach(), feat_r.detach(), params)  # (B,) or float
        per_sample = smoothed_cross_entropy(logits_f, b.yf, alpha, reduction="none")  # (B,)
        correct = logits_f.argmax(1) == b.yf  # (B,)
        ce = F.cross_entropy(logits_f.detach(), b.yf, reduction="none")  # (B,)
        if not params.bounded:
            live = torch.ones_like(per_sample)  # (B,)
        elif bound is None:
            live = correct.float()
        else:
            bound.observe(b.rf, ce)
            live = bound.live(ce, b.yf, correct, b.rf).float()
        push = -per_sample  # (B,) ascent
        if params.push != "ascent":
            toward = F.cross_entropy(logits_f, nearest_wrong_class(logits_f.detach(), b.yf), reduction="none")
            push = torch.where(pushed_to_nearest(params.push, bound, ce, b.yf, b.rf), toward, push)
        if moves is not None and moves.y is not None and b.rf is not None:
            # contradicted by its neighbours: descent towards their class until the model predicts it; an
            # AWAY row (flagged, its neighbours agreeing) towards its nearest other class until it goes
            theirs = moves.y[b.rf]  # (B,)
            away = theirs == AWAY
            if bool(away.any()):
                logits = logits_f.detach()
                if moves.kept is not None:  # never into a class the deletion takes away
                    stays = torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device)
                    stays[moves.kept[moves.kept < logits.shape[1]].to(logits.device)] = True
                    logits = logits.masked_fill(~stays, float("-inf"))
                theirs = torch.where(away, nearest_wrong_class(logits, b.yf), theirs)
            moved = theirs != b.yf  # (B,) bool
            live = torch.where(moved, (logits_f.detach().argmax(1) != theirs).float(), live)
            push = torch.where(moved, F.cross_entropy(logits_f, theirs, reduction="none"), push)
        forget = (live * push).sum() / b.forget_divisor()  # 1/B per sample (engine.forget_norm)
        return Terms(F.cross_entropy(logits_r, b.yr), forget, correct)

    return objective


def pushed_to_nearest(
    push: str,
    bound: HeldoutBound | None,
    loss: torch.Tensor,
    y: torch.Tensor,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B,) bool: the forget samples that ``push`` moves towards their nearest wrong class. Under
    ``nearest_tail``, those whose rank's held-out loss is above ln 2 (an unseen sample of that rank would be
    misclassified, so a retrained model likely misclassifies this one) and those whose class left D_r.
    Without a held-out bound there is no rank to read, and every sample goes."""
    if push == "ascent":
        return torch.zeros_like(y, dtype=torch.bool)
    if push == "nearest" or bound is None:
        return torch.ones_like(y, dtype=torch.bool)
    return (bound.targets(loss, rows) > math.log(2)) | ~bound.in_retain(y)


def nearest_wrong_class(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) the most likely class other than the label: where a sample that only memorisation holds on its
    label goes when the memory is gone (Boundary Unlearning's "nearest incorrect label", Chen et al. 2023)."""
    return logits.scatter(1, y[:, None], float("-inf")).argmax(1)


def adaptive_alpha(feat_f: torch.Tensor, feat_r: torch.Tensor, params: UGradSLParams) -> torch.Tensor | float:
    """Self-adaptive smoothing rate per forget sample (Di et al.). c_i = #{z_r in B_r : d(z_r, z_f,i) < β}
    with d the cosine distance (1 - cos)/2 in [0, 1] on penultimate features.

    - ``intuition`` (the preferred reading): α_i = -α_max·(1 - c_i/|B_f|). The paper's stated intuition: a
      forget sample in a dense retain neighbourhood needs less forgetting, i.e. a smaller NLS magnitude.
      With the held-out bound (bench/results/quality_full.md, random 10%, seeds 1-3) it beat ``literal``
      and the fixed α on Fashion-MNIST 10k (Avg Gap 1.82 ± 0.44 vs 3.30 ± 0.66 and 2.28 ± 0.66) and on
      digits (0.78 vs 0.94 and 1.07). The default stays ``adaptive="off"`` (α = -0.5): on the tuning
      splits, where defaults are chosen, its worst digits split was worse (11% of the gap closed vs 20%;
      bench/results/tune_digits_adaptive.md), and β is a radius in one architecture's feature space.
    - ``literal``: α_i = -c_i/|B_f|, the formula as printed (more forgetting in dense neighbourhoods).
    ``off`` uses the fixed ``alpha``. Features are detached: α is a rate, not a path for gradients."""
    if params.adaptive == "off":
        return params.alpha
    cos = F.normalize(feat_f, dim=1) @ F.normalize(feat_r, dim=1).T  # (B_f, B_r)
    dense = ((1 - cos) / 2 < params.beta).float().sum(1) / len(feat_f)  # (B_f,) c_i / |B_f|
    dense = dense.clamp(max=1.0)
    if params.adaptive == "intuition":
        return -params.alpha_max * (1 - dense)
    return -dense


def _ascent_objective(model: nn.Module, b: Batch) -> Terms:
    logits_f = model(b.xf)
    return Terms(_ce(model, b.xr, b.yr), -F.cross_entropy(logits_f, b.yf), logits_f.argmax(1) == b.yf)


def _random_label_objective(model: nn.Module, b: Batch) -> Terms:
    logits_f = model(b.xf)
    return Terms(_ce(model, b.xr, b.yr), F.cross_entropy(logits_f, b.tf), logits_f.argmax(1) == b.yf)


def _finetune_objective(model: nn.Module, b: Batch) -> Terms:
    return Terms(_ce(model, b.xr, b.yr), None)


# ---------------------------------------------------------------- masks fixed before the run


def salun_mask(
    model: nn.Module, forget: SampleDataset, keep: float, batch_size: int = 256
) -> list[torch.Tensor]:
    """SalUn's weight saliency: |∇θ of the gradient-ascent loss on D_f| (summed over D_f, eval mode so no
    BatchNorm statistic moves), top ``keep`` fraction of all weights globally."""
    device, was_training = model_device(model), model.training
    ps = [p for p in model.parameters() if p.requires_grad]
    model.eval()
    model.zero_grad(set_to_none=True)
    for i in range(0, len(forget), batch_size):
        x, y = B.to(B.window(forget.x, i, i + batch_size), device), forget.y[i : i + batch_size].to(device)
        (-F.cross_entropy(model(x), y, reduction="sum")).backward()  # type: ignore[no-untyped-call]
    scores = [torch.zeros_like(p) if p.grad is None else p.grad.abs() for p in ps]
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return M.top_fraction_mask(scores, keep)


def _static_mask(
    model: nn.Module, forget: SampleDataset, params: GradientParams
) -> list[torch.Tensor] | None:
    return salun_mask(model, forget, params.salun_keep) if params.mask == "salun" and len(forget) else None


@dataclasses.dataclass
class _Part:
    """What a run trains and reads: the network (the model, or its last layers), its data as that network
    takes it, and the params the run is sized to, with what sizing recorded for the plan."""

    net: nn.Module
    forget: SampleDataset
    retain: SampleDataset
    heldout: SampleDataset | None
    params: GradientParams
    about: dict[str, Any]
    moves: torch.Tensor | None = None  # (n_f,) the class each row is moved to (``Moves``), or None


# Sizes a run from the network it trains, D_f as that network takes it, and which rows of D_f their
# neighbours contradict ((n_f,) bool, ``neighbour_labels``; None: off): (sized params, plan notes).
Sizer = Callable[
    [nn.Module, SampleDataset, GradientParams, torch.Tensor | None, torch.Tensor | None],
    tuple[GradientParams, dict[str, Any]],
]


def _trained_part(
    model: nn.Module,
    forget: SampleDataset,
    retain: SampleDataset,
    heldout: SampleDataset | None,
    params: GradientParams,
    size: Sizer | None = None,
    front_features: FrontFeatures | None = None,
    mislabeled: torch.Tensor | None = None,
) -> _Part:
    """The network a run trains (the model, or its last layers: ``train_share``, see
    models/unlearning/last_layers.py) and the data it reads, as that network takes it.

    D_f goes through the front first and ``size`` reads the network's losses on it, so the pass that sizing
    needs is the one the run makes anyway: as a pass of its own over the whole model it took 0.46 s of a
    4.9 s run on the 60k model. The retain pool is drawn next, at the sized budget, so only rows the run
    reads go through the front; held-out rows only for ``select_checks`` (the held-out bound was measured
    on the whole model before). Should the pool's features not fit ``FEATURE_BYTES`` beside D_f's, the run
    trains the whole model. ``front_features`` (``Hooks``): how D_f's and the pool's front outputs are
    got, where the caller keeps them between runs (``models.unlearning.feature_cache``); held-out rows
    are another set's, and are always computed. Rows whose neighbours contradict their label and that the
    network already predicts as the neighbours' class (``_held``) are where a retrain has them: the run
    leaves them out (``skipped_rows``), and reads and is sized by the others."""
    device = model_device(model)
    front = front_features or features
    share = params.train_share if len(forget) else 0.0  # nothing to forget: no step, no front pass
    split = split_last_layers(model, share) if share > 0 else None
    if split is not None and not fits(split, forget, len(forget), device):
        split = None
    net, seen = (split.tail, front(split.front, forget, device)) if split is not None else (model, forget)
    about: dict[str, Any] = {}
    front_net = split.front if split is not None else None
    theirs = _neighbours(net, seen, retain, params, front_net, front, mislabeled)
    contradicted = _contradicted(theirs, seen.y, retain.y)
    away = _away(theirs, contradicted, mislabeled, retain.y)
    moves, notes = None, {}
    if theirs is not None and contradicted is not None:  # the job's runs say so
        moves = torch.where(contradicted, theirs, seen.y.to(theirs.device))
        notes = {"contradicted_rows": int(contradicted.sum())}
        if away is not None:
            moves = torch.where(away, torch.full_like(moves, AWAY), moves)
            notes["away_rows"] = int(away.sum())
            contradicted = contradicted | away  # moved all the way too: sized and skipped like them
    held = _held(net, seen, moves, contradicted)
    if moves is not None and contradicted is not None and held is not None:
        notes["held_rows"] = int(held.sum())
        done = contradicted & ~held  # already predicted as their neighbours' class, as a retrain has them
        if bool(done.any()):  # nothing left to do for them: the run reads the others only
            keep = torch.nonzero(~done.cpu()).flatten()
            notes["skipped_rows"] = len(seen) - len(keep)
            forget, seen = forget.subset(keep), seen.subset(keep)
            moves, contradicted, held = (t[keep.to(t.device)] for t in (moves, contradicted, held))
    if size is not None:
        params, about = size(net, seen, params, contradicted, held)
    about = {**about, **notes}
    pool = retain_pool(retain, len(forget), params.retain_budget, params.seed)
    rest = [pool] + ([heldout] if heldout is not None and params.select_checks else [])
    if split is not None and fits(split, forget, len(forget) + sum(len(s) for s in rest), device):
        pool = front(split.front, pool, device) if len(pool) else pool  # held-out rows: another set's
        rest = [pool, *(features(split.front, s, device) if len(s) else s for s in rest[1:])]
    else:
        net, seen = model, forget
    return _Part(net, seen, rest[0], rest[1] if len(rest) > 1 else heldout, params, about, moves)


NEIGHBOUR_ROWS = 8192  # retained rows a forget sample's neighbours are looked for among, at most


def _neighbours(
    net: nn.Module,
    seen: SampleDataset,
    retain: SampleDataset,
    params: GradientParams,
    front_net: nn.Module | None,
    front: FrontFeatures,
    mislabeled: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """(n_f,) the majority label of each forget row's ``neighbour_labels`` nearest rows of a seeded,
    class-stratified sample of D_r (``models.unlearning.neighbours``); None when off. Looked for before
    the run is sized, since a contradicted row is one the run must move all the way.

    With ``neighbour_labels`` 0 (the default) only rows flagged ``mislabeled`` are looked at, with
    FLAGGED_NEIGHBOURS neighbours, and every other row keeps its own label: checked on every row, the
    neighbours also contradict the rows of a random deletion that a model which barely memorises gets
    wrong anyway, and pushing those all the way cost the 60k Fashion-MNIST model's random deletions
    (docs/methods.md, stop 48)."""
    chosen = getattr(params, "neighbour_labels", 0)
    rows = None if chosen > 0 or mislabeled is None else torch.nonzero(mislabeled.cpu()).flatten()
    k = chosen if chosen > 0 else (FLAGGED_NEIGHBOURS if rows is not None and len(rows) else 0)
    if k <= 0 or len(seen) == 0 or len(retain) == 0:
        return None
    looked = seen if rows is None else seen.subset(rows)
    if not bool(torch.isin(looked.y, retain.y.unique()).any()):  # class-wise: nothing to contradict
        return None
    ref = retain_pool(retain, len(seen), NEIGHBOUR_ROWS / len(seen), params.seed)
    if front_net is not None:
        ref = front(front_net, ref, model_device(net))
    theirs = neighbour_labels(net, looked, ref, k)
    if rows is None:
        return theirs
    out = seen.y.to(theirs.device).clone()  # unflagged rows keep their label: not contradicted
    out[rows.to(theirs.device)] = theirs
    return out


def _contradicted(
    theirs: torch.Tensor | None, forget_y: torch.Tensor, retain_y: torch.Tensor
) -> torch.Tensor | None:
    """(n_f,) bool: the rows of D_f whose neighbours' label is another class, of a class that stays in D_r
    (None without neighbour labels)."""
    if theirs is None:
        return None
    y = forget_y.to(theirs.device)
    return (theirs != y) & torch.isin(y, retain_y.unique().to(theirs.device))


AWAY = -1  # ``Moves.y`` of a row pushed off its own label towards whichever class is nearest (``_away``)


def _away(
    theirs: torch.Tensor | None,
    contradicted: torch.Tensor | None,
    mislabeled: torch.Tensor | None,
    retain_y: torch.Tensor,
) -> torch.Tensor | None:
    """(n_f,) bool: the rows flagged ``mislabeled`` whose neighbours agree with their label (None when no row
    is flagged). Their owner says the label is wrong, so a retrain, which learns each input's class from the
    rest of the data, does not predict it; where the neighbours in the model's own features agree with it
    anyway, the model has learnt a pattern that only the poisoned rows teach: a backdoor's trigger puts its
    rows among the target class it was taught (stop 55: 80-93% of digits' triggered rows). Aimed at held-out
    losses like an erasure, they kept 11% of the trigger's hold (a retrain keeps none): they are pushed
    towards their nearest other class while the model predicts their label, for one sized run. The trigger
    stops working (digits: 0% of its hold left), but only about two thirds of the rows land in their own
    class, where a retrain has 94% (a client's measurement): the push stops at the first class it reaches."""
    if theirs is None or contradicted is None or mislabeled is None:
        return None
    stays = torch.isin(theirs, retain_y.unique().to(theirs.device))  # a class that leaves: pushed anyway
    return mislabeled.to(theirs.device) & ~contradicted & stays


def _held(
    net: nn.Module, seen: SampleDataset, moves: torch.Tensor | None, contradicted: torch.Tensor | None
) -> torch.Tensor | None:
    """(n_f,) bool: the moved rows the network does not yet predict where they go (their neighbours' class,
    or for an ``AWAY`` row any class but its label), the ones it memorised against the rest of the data
    (None without neighbour labels). A model that barely memorises already predicts most of a mislabeled
    deletion as the class around it, as a retrain does: sized as if it held them all, the 60k Fashion-MNIST
    model's mislabeled deletion ran long and ended further from the retrain than doing nothing (stop 49)."""
    if moves is None or contradicted is None or not bool(contradicted.any()):
        return contradicted
    rows = torch.nonzero(contradicted.cpu()).flatten()
    predicted = predictions(net, seen.subset(rows)).to(moves.device)
    target, own = moves[rows.to(moves.device)], seen.y[rows].to(moves.device)
    held = torch.zeros_like(contradicted)
    held[rows.to(held.device)] = torch.where(target == AWAY, predicted == own, predicted != target)
    return held


def _run(
    model: nn.Module,
    forget: SampleDataset,
    retain: SampleDataset,
    params: GradientParams,
    hooks: Hooks,
    objective: Objective,
    plan: Plan,
    forget_targets: torch.Tensor | None = None,
    heldout: SampleDataset | None = None,
    bound: HeldoutBound | None = None,
    about: dict[str, Any] | None = None,
    size: Sizer | None = None,
    mislabeled: torch.Tensor | None = None,
    moves: Moves | None = None,
) -> _Part:
    """Run ``objective`` on what ``_trained_part`` gives and return that part: the network it trained, in
    place, and the data as that network read it (checks after the run need no pass through the front)."""
    part = _trained_part(model, forget, retain, heldout, params, size, hooks.front_features, mislabeled)
    net, params = part.net, part.params
    if part.moves is not None and bool((part.moves != part.forget.y.to(part.moves.device)).any()):
        # rows moved to their neighbours' class are descended on until the model predicts it: a pull
        # back towards a model that predicted their label works against that, as for a class that leaves
        params = dataclasses.replace(params, anchor=0.0)
    mask = _static_mask(net, part.forget, params)
    refresh = bound.refresh if bound is not None and params.select_refresh else None
    if bound is not None and bound.ranks.startswith("train"):  # each row's own target, fixed
        about = {**(about or {}), **_placed(bound, part, params.seed, mislabeled)}
    if bound is not None and bound.in_retain_rank:
        bound.fix(part.forget.ids)
    elif bound is not None and bound.ranks in ("forget", "both"):  # ranks among D_f, as the net reads it
        bound.track(torch.as_tensor(per_sample_loss(net, part.forget)))
    if bound is not None and bound.by == "jitter":  # one offset per row the run reads
        bound.jitter(len(part.forget), params.seed)
    if moves is not None:
        moves.y, moves.kept = part.moves, retain.y.unique()
    checks, matched = params.select_checks, params.select_match
    select = selector(net, part.forget, part.retain, part.heldout, checks, params.seed, refresh, matched)
    about = {**(about or {}), **part.about, "trained": "model" if net is model else "last_layers",
             "model_weights": sum(p.numel() for p in model.parameters() if p.requires_grad)}  # fmt: skip
    run_steps(net, part.forget, part.retain, params, hooks, objective, plan, forget_targets=forget_targets,
              static_mask=mask, selector=select, about=about,
              class_error=bound.class_error if bound is not None else None,
              retain_rows=len(retain))  # fmt: skip
    return part


# ---------------------------------------------------------------- methods


def _placed(bound: HeldoutBound, part: _Part, seed: int, mislabeled: torch.Tensor | None) -> dict[str, Any]:
    """``bound_ranks`` train (and, where D_f's losses stand apart from D_r's, train_when_skewed): each
    forget row placed among the retain pool's losses, read off the network the first run trains on its
    cached features (no pass through the front; a later run, on a network the first moved, keeps those
    places). Not for a deletion with flagged rows or rows moved to their neighbours' class (tuned with
    batch ranks; their losses sit high by construction), nor where the held-out table was reshaped to
    D_f's classes (a place among all of D_r read off one class's table would aim a hard class too high).
    Returns what the run's record says of it."""
    if bound.rank_skew is None:
        moved = part.moves is not None and bool((part.moves != part.forget.y.to(part.moves.device)).any())
        flagged = mislabeled is not None and bool(mislabeled.any())
        # a table reshaped to D_f's classes (``bound.read``) is read per class; places are D_r-wide
        if not len(part.forget) or not len(part.retain) or flagged or moved or bound.read:
            return {}
        bound.rank_in_retain(part.net, part.forget, part.retain, seed)
        if bound.ranks == "train_when_skewed" and (bound.rank_skew or 0.0) >= SKEW_ALPHA:
            bound.in_retain_rank = {}  # rows of D_r's kind: batch ranks
    return {"loss_rank_skew": bound.rank_skew, "ranked_in_retain": bool(bound.in_retain_rank)}


@register_method("ugradsl_plus")
def ugradsl_plus(
    model: nn.Module,
    forget: SampleDataset,
    retain: SampleDataset,
    params: UGradSLParams,
    hooks: Hooks,
    heldout: SampleDataset | None = None,
    mislabeled: torch.Tensor | None = None,
) -> nn.Module:
    """UGradSL+ (Di et al., Eq. 8 on fine-tuning): L = p·CE(B_r) - (1 - p)·ℓ_α(B_f); an epoch is one pass
    over D_r, cycling D_f. B_f is ``forget_batch_ratio`` of B_r's size unless D_f is smaller, when
    B_f = D_f (never repeated; the forget sum is still divided by B). Better quality than UGradSL, cost
    ∝ |D_r|, or ∝ |D_f| with ``retain_budget`` (D_r replaced by a class-stratified sample of
    retain_budget·|D_f| rows)."""
    return _ugradsl("retain", model, forget, retain, params, hooks, heldout, mislabeled)


@register_method("ugradsl")
def ugradsl(
    model: nn.Module,
    forget: SampleDataset,
    retain: SampleDataset,
    params: UGradSLParams,
    hooks: Hooks,
    heldout: SampleDataset | None = None,
    mislabeled: torch.Tensor | None = None,
) -> nn.Module:
    """UGradSL (Di et al., Algorithm 1 on gradient ascent): same loss as UGradSL+, but an epoch is one pass
    over D_f with retain batches sampled alongside. Cost ∝ |D_f|."""
    return _ugradsl("forget", model, forget, retain, params, hooks, heldout, mislabeled)


CLASSWISE_LEFT = 0.01  # a forgotten class's samples still classified correctly that end the run
# further runs (2x, 4x, 8x, 16x the epochs) while more are: up to 12 epochs from class_epochs' 0.75, the
# ceiling that 1.5 epochs and three rounds had (an MLP on 300 samples needed all of it)
CLASSWISE_ROUNDS = 4


def _ugradsl(
    lead: str,
    model: nn.Module,
    forget: SampleDataset,
    retain: SampleDataset,
    params: UGradSLParams,
    hooks: Hooks,
    heldout: SampleDataset | None,
    mislabeled: torch.Tensor | None = None,
) -> nn.Module:
    """UGradSL and UGradSL+ differ only in the set that defines an epoch (``lead``).

    Bounded runs keep a promise of ours (not the paper's): a class with no retain sample left is pushed
    until its samples are misclassified, as a retrained model, which never saw the class, would have them.
    If one run leaves more than CLASSWISE_LEFT of them classified correctly, it is run again from where it
    ended with twice the epochs, up to CLASSWISE_ROUNDS times. A step count sized for a small training
    set is too short to move a network: an MLP on 300 samples still recognised a whole forgotten class
    after 1.5 epochs (6 steps) and forgot it after 12 (48 steps)."""
    emptied = ~torch.isin(forget.y, retain.y.unique())
    if emptied.any() and not emptied.all():
        # Whole classes and rows of classes that stay, in one deletion: run apart, each as it would run
        # alone. Together, the class rules (epochs, not pushes) sized the run and its reruns checked the
        # classes only: a probe's class plus 10% of the rest left those rows 99% recognised (a retrain
        # 84-88%), and the version failed the forget-excess gate. The classes go last: their reruns end
        # only once the classes are forgotten, so no later run can bring them back.
        for rows in (torch.nonzero(~emptied).flatten(), torch.nonzero(emptied).flatten()):
            flagged = None if mislabeled is None else mislabeled[rows.to(mislabeled.device)]
            flagged = flagged if flagged is not None and bool(flagged.any()) else None
            _ugradsl(lead, model, forget.subset(rows), retain, params, hooks, heldout, flagged)
        return model
    bound = _bound(model, forget, retain, params, heldout)
    moves = Moves()
    objective = ugradsl_objective(params, bound, moves)
    plan = Plan(lead, params.p, 1 - params.p)
    gone_rows = torch.nonzero(emptied).flatten()
    if len(gone_rows) and params.class_epochs > 0:  # a deletion that takes a whole class (params.py)
        params = dataclasses.replace(params, epochs=params.class_epochs)
    if len(gone_rows):  # its reruns push until the class is forgotten: steps held back only rerun more,
        # and a pull back towards a model that knew the class left 0.3-0.7% of it recognised (stop 53)
        params = dataclasses.replace(params, clip_to_first=0.0, anchor=0.0)
    if len(gone_rows) and params.class_retain_budget > 0:
        budgets = [b for b in (params.retain_budget, params.class_retain_budget) if b > 0]
        params = dataclasses.replace(params, retain_budget=min(budgets))
    if len(gone_rows) and params.retain_budget > 0 and plan.lead == "retain":
        params = reread(params, plan, len(forget), len(retain))  # the class's pool, read retain_passes times
    about: dict[str, Any] = {
        "sized_by": "epochs",
        **({"heldout_table": bound.read} if bound and bound.read else {}),
    }
    size = None
    if params.pushes > 0 and not len(gone_rows) and len(forget) and len(retain) and heldout is not None:
        losses = _heldout_losses(model, retain, params, heldout, bound)
        size = _by_pushes(plan, len(retain), losses)
    run = functools.partial(
        _run,
        hooks=hooks,
        objective=objective,
        plan=plan,
        heldout=heldout,
        bound=bound,
        mislabeled=mislabeled,
        moves=moves,
    )
    start = None  # kept on the CPU: a GPU would hold the weights three times over
    expected = bound is not None and bound.heldout_expected is not None
    if params.overshoot_se > 0 and not len(gone_rows) and expected:
        start = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    part = run(model, forget, retain, params, about=about, size=size)
    if size is not None and part.net is not model and (excess := _unmoved(part, bound)) is not None:
        # the last layers could not move D_f: the whole model is run, from where they ended, sized again
        whole = dataclasses.replace(params, train_share=0.0)
        why = f"the forget set stood {excess:.1f} standard errors above unseen rows of its classes"
        part = run(model, forget, retain, whole, about={**about, "rerun": 1, "reason": why}, size=size)
    if start is not None and (pulled := _pull_back(model, start, part, bound, params.overshoot_se)):
        hooks.plan({"sized_by": "pull_back", "steps": 0, **pulled})
    epochs = params.epochs
    for rerun in range(1, 1 + (CLASSWISE_ROUNDS if params.bounded and len(gone_rows) else 0)):
        # read off the trained network on the features the run cached: no pass through the front
        # by id: the run may have left out rows already where a retrain has them (``_trained_part``)
        gone = part.forget.index_of([forget.ids[i] for i in gone_rows.tolist()])
        if accuracy(part.net, part.forget.subset(gone)) <= CLASSWISE_LEFT:
            break
        epochs = min(2 * epochs, MAX_EPOCHS)
        again = dataclasses.replace(params, epochs=epochs)
        about = {
            "sized_by": "epochs",
            "rerun": rerun,
            "reason": "a forgotten class still classified correctly",
        }
        part = run(model, forget, retain, again, about=about)
    return model


UNMOVED_SE = 2.5  # standard errors D_f's accuracy may stand above unseen rows' after a last-layers run
MEMORISED = 1.0  # e-folds D_f's losses sat below held-out ones before it, below which none is unmoved


def _unmoved(part: _Part, bound: HeldoutBound | None) -> float | None:
    """Whether a last-layers run left a memorised D_f recognised far above unseen rows of its classes
    (those the bound read before the run, under the model's own prior), as the service's gate
    ``max_forget_accuracy_excess_se`` (default 3) judges a version. A client's timm ``test_resnet`` (72%
    of its weights in the last layers) kept every row of a memorised 5% and 40% deletion through the run
    (UA 0%, its retrains 15-29%) and each job failed that gate; the whole model, run the same way, forgot
    13% and 17%. Read by accuracy, not by losses: half of a digits class the model never gets wrong
    keeps losses below the held-out mean after a good run, and a rerun there cost it the gap. Returns
    how many standard errors above it stands where that is past UNMOVED_SE, else None."""
    before = part.about.get("measured_distance")
    if before is None or before < MEMORISED:
        return None
    excess = _excess(part, bound)
    if excess is None or excess <= UNMOVED_SE:
        return None
    return excess


def _excess(part: _Part, bound: HeldoutBound | None, shifted: bool = False) -> float | None:
    """How many standard errors D_f's accuracy, as the trained network now has it, stands above that of
    the held-out rows of its classes as the model predicted them before the run (``accuracy_excess``),
    or with ``shifted`` as a model trained on D_r would (``HeldoutBound.heldout_expected``); None where
    it cannot be read."""
    against = None if bound is None else bound.heldout_expected if shifted else bound.heldout_correct
    if bound is None or bound.heldout_y is None or against is None or len(part.forget) == 0:
        return None
    forget_correct = predictions(part.net, part.forget).cpu() == part.forget.y.cpu()
    gone = set(torch.nonzero(~bound.retained.cpu()).flatten().tolist())
    # rows moved off their label (flagged, or contradicted by their neighbours) are judged apart, as the
    # gate leaves flagged rows out: counted here, their moves hid the rest still recognised (a review)
    moved = None if part.moves is None else (part.moves.cpu() != part.forget.y.cpu()).numpy()
    _, _, excess = accuracy_excess(
        forget_correct.numpy(),
        part.forget.y.cpu().numpy(),
        against.numpy().astype(float),
        bound.heldout_y.numpy(),
        gone=gone,
        skip=moved,
    )
    return excess


BLEND_STEPS = 8  # halvings of the way back from a run's end towards its start (1/256 of the way)


def _pull_back(
    model: nn.Module, start: dict[str, torch.Tensor], part: _Part, bound: HeldoutBound | None, limit: float
) -> dict[str, Any] | None:
    """Where a run left D_f recognised more than ``limit`` standard errors below unseen rows of its classes
    (over-forgotten: a retrain scores D_f like them), take the weights back along the straight line to
    where the run started, to the furthest point at which D_f is no longer below them. Returns what it
    did, or None where it did nothing."""
    if part.moves is not None and bool((part.moves != part.forget.y.to(part.moves.device)).any()):
        return None  # rows moved off their label (flagged, a backdoor's): taking back would undo their push
    excess = _excess(part, bound, shifted=True)
    if excess is None or excess >= -limit:
        return None
    end = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    _blend(model, start, end, 0.0)
    at_start = _excess(part, bound, shifted=True)
    if at_start is None or at_start < 0:  # below before the run too (rows hard or odd for their class):
        _blend(model, start, end, 1.0)  # taking back would only undo the deletion
        return None
    lo, hi = 0.0, 1.0  # lo: a share of the way from start to end at which D_f is not below
    for _ in range(BLEND_STEPS):
        mid = (lo + hi) / 2
        _blend(model, start, end, mid)
        now = _excess(part, bound, shifted=True)
        if now is not None and now >= 0:
            lo = mid
        else:
            hi = mid
    _blend(model, start, end, lo)
    after = _excess(part, bound, shifted=True)
    return {"excess_before": round(excess, 2), "kept_share": lo, "excess_after": after}


@torch.no_grad()
def _blend(model: nn.Module, start: dict[str, torch.Tensor], end: dict[str, torch.Tensor], t: float) -> None:
    """The model's floating-point weights and buffers set to start + t·(end - start) (the ends exactly:
    an infinite weight makes the mix NaN); others as at end."""
    for name, value in model.state_dict().items():
        if not value.is_floating_point() or t in (0.0, 1.0):
            value.copy_(start[name] if t == 0.0 and value.is_floating_point() else end[name])
        else:
            value.copy_(start[name] + t * (end[name] - start[name]))


def _by_pushes(plan: Plan, n_retain: int, heldout_losses: torch.Tensor) -> Sizer:
    """A run sized by how far D_f's losses sit below held-out ones (models/unlearning/sizing.py)."""

    def size(
        net: nn.Module,
        seen: SampleDataset,
        params: GradientParams,
        contradicted: torch.Tensor | None,
        held: torch.Tensor | None,
    ) -> tuple[UGradSLParams, dict[str, Any]]:
        # memorisation is read on the rows that look like their class: a contradicted row's loss sits
        # above held-out ones, and a few of them had sized a random deletion at one push a sample. The
        # contradicted rows the model still holds against their neighbours get every push; those it
        # already predicts as their neighbours' class need none, and do not dilute the others' pushes
        share, like_class = 0.0, seen
        if contradicted is not None and held is not None and len(seen):
            n_held, n_like = int(held.sum()), int((~contradicted).sum())
            share = n_held / (n_held + n_like) if n_held + n_like else 0.0
            if bool(contradicted.any()):
                like_class = seen.subset(torch.nonzero(~contradicted.cpu()).flatten())
        measured, se = measured_distance(net, like_class, heldout_losses)
        distance = shrunk(measured, se, cast(UGradSLParams, params).pushes_shrink)
        distance = with_contradicted(cast(UGradSLParams, params), distance, share)
        run = sized(cast(UGradSLParams, params), plan, len(seen), n_retain, distance)
        return run, {
            "sized_by": "pushes",
            "distance": distance,
            # nothing measured where every row was flagged and moved (the set it is read on is empty)
            "measured_distance": measured if len(like_class) else None,
            "distance_se": se if len(like_class) else None,
            "pushes_per_sample": pushes_per_sample(run, distance),
            "forget_batch_ratio": run.forget_batch_ratio,
            **({"long_run_lr_raise": run.lr / params.lr} if run.lr != params.lr else {}),
        }

    return size


def _heldout_losses(
    model: nn.Module,
    retain: SampleDataset,
    params: UGradSLParams,
    heldout: SampleDataset,
    bound: HeldoutBound | None,
) -> torch.Tensor:
    """The held-out losses ``pushes`` sizes the run by: the bound's when there is one (measured once)."""
    if bound is not None:
        return bound.quantiles
    found = heldout_bound(model, heldout, retain, params.seed)
    return found.quantiles if found is not None else torch.zeros(0)


def _bound(
    model: nn.Module,
    forget: SampleDataset,
    retain: SampleDataset,
    params: UGradSLParams,
    heldout: SampleDataset | None,
) -> HeldoutBound | None:
    """The held-out bound when the params ask for one. An empty held-out set (none of the classes left)
    gives None, and the bounded forget term falls back to ``correct``; no held-out set at all is an error
    rather than a silent change of method."""
    if not (params.bounded and params.bound_by == "heldout"):
        return None
    if heldout is None:
        raise ValueError(
            "bound_by='heldout' needs held-out data the model never trained on (run_method(..., "
            "heldout=test_set)); pass bound_by='correct' to bound the forget term by correctness instead"
        )
    bound = heldout_bound(
        model,
        heldout,
        retain,
        params.seed,
        forget.y,
        prior=params.bound_prior,
        prior_power=params.bound_prior_power,
        match=params.bound_match,
        when=params.bound_when,
        match_rows=params.bound_match_rows,
        match_stayed=params.bound_match_stayed,
    )
    if bound is not None:
        bound.by, bound.ranks = params.bound_targets, params.bound_ranks
    return bound


@register_method("finetune")
def finetune(
    model: nn.Module,
    forget: SampleDataset,
    retain: SampleDataset,
    params: FinetuneParams,
    hooks: Hooks,
    heldout: SampleDataset | None = None,
    mislabeled: torch.Tensor | None = None,
) -> nn.Module:
    """Fine-tuning: descent on D_r only (catastrophic forgetting of D_f); epoch = one pass over D_r."""
    plan = Plan("retain", 1.0, 0.0)
    _run(model, forget, retain, params, hooks, _finetune_objective, plan, heldout=heldout)
    return model


@register_method("gradient_ascent")
def gradient_ascent(
    model: nn.Module,
    forget: SampleDataset,
    retain: SampleDataset,
    params: GradientAscentParams,
    hooks: Hooks,
    heldout: SampleDataset | None = None,
    mislabeled: torch.Tensor | None = None,
) -> nn.Module:
    """Gradient ascent on D_f only; epoch = one pass over D_f (retain batches only feed a mask)."""
    plan = Plan("forget", 0.0, 1.0)
    _run(model, forget, retain, params, hooks, _ascent_objective, plan, heldout=heldout)
    return model


def random_wrong_labels(y: torch.Tensor, num_classes: int, seed: int) -> torch.Tensor:
    """A fixed random label != y per sample (drawn once, as SalUn relabels its forget set)."""
    gen = torch.Generator().manual_seed(seed + 1)
    return (y.cpu() + torch.randint(1, max(num_classes, 2), (len(y),), generator=gen)) % max(num_classes, 2)


def _num_classes(model: nn.Module, forget: SampleDataset) -> int:
    with torch.no_grad():
        was = model.training
        model.eval()
        k = model(B.to(B.window(forget.x, 0, 1), model_device(model))).shape[1]
        model.train(was)
    return int(k)


@register_method("random_label")
def random_label(
    model: nn.Module,
    forget: SampleDataset,
    retain: SampleDataset,
    params: RandomLabelParams,
    hooks: Hooks,
    heldout: SampleDataset | None = None,
    mislabeled: torch.Tensor | None = None,
) -> nn.Module:
    """Random labels (see ``RandomLabelParams.relabel``): SalUn's passes over D_f then D_r with labels
    redrawn per batch, or ours, fixed wrong labels with retain batches alongside."""
    return _random_labels(model, forget, retain, params, hooks, heldout)


def _random_labels(
    model: nn.Module,
    forget: SampleDataset,
    retain: SampleDataset,
    params: RandomLabelParams,
    hooks: Hooks,
    heldout: SampleDataset | None,
) -> nn.Module:
    if params.relabel == "salun":
        return salun_passes(model, forget, retain, params, hooks, heldout)
    targets = random_wrong_labels(forget.y, _num_classes(model, forget), params.seed) if len(forget) else None
    plan = Plan("forget", 1.0, 1.0)
    _run(model, forget, retain, params, hooks, _random_label_objective, plan, targets, heldout)
    return model


def salun_passes(
    model: nn.Module,
    forget: SampleDataset,
    retain: SampleDataset,
    params: RandomLabelParams,
    hooks: Hooks,
    heldout: SampleDataset | None = None,
) -> nn.Module:
    """SalUn's random-label loop (its ``unlearn/RL.py`` for CIFAR-10): per epoch, a shuffled pass over D_f
    with labels drawn uniformly from all classes for every batch, then a shuffled pass over D_r with true
    labels; cross-entropy descent throughout, each step masked by the saliency mask when there is one
    (``mask='salun'``), on the whole model or on its last layers (``train_share``)."""
    hooks.start()
    if len(forget) == 0:
        hooks.finish()
        return model
    device, k = model_device(model), _num_classes(model, forget)
    full = model
    part = _trained_part(full, forget, retain, heldout, params, front_features=hooks.front_features)
    model, forget, retain, heldout = part.net, part.forget, part.retain, part.heldout
    static_mask = _static_mask(model, forget, params)
    gen = torch.Generator().manual_seed(params.seed)
    per_epoch = math.ceil(len(forget) / params.batch_size) + math.ceil(len(retain) / params.batch_size)
    total = max(1, round(params.epochs * per_epoch)) if params.epochs > 0 else 0
    ps = [p for p in model.parameters() if p.requires_grad]
    opt = optimizer(ps, params)
    sched = lr_scheduler(opt, params.schedule, total)

    def batches() -> Iterator[tuple[Loaded, torch.Tensor]]:
        while True:
            for idx in torch.randperm(len(forget), generator=gen).split(params.batch_size):
                yield B.take(forget.x, idx), torch.randint(0, k, (len(idx),), generator=gen)
            for idx in torch.randperm(len(retain), generator=gen).split(params.batch_size):
                yield B.take(retain.x, idx), retain.y[idx]

    checks, matched = params.select_checks, params.select_match
    select = selector(model, forget, retain, heldout, checks, params.seed, matched=matched)
    model.train()
    stream = batches()
    step = 0
    if select is not None:
        select.start(model, total)
    with frozen_batch_stats(model, params.batch_stats == "frozen"):
        for step in range(1, total + 1):
            x, y = next(stream)
            loss = F.cross_entropy(model(B.to(x, device)), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            if static_mask is None:
                opt.step()
            else:
                M.masked_step(opt, ps, static_mask, binary=True, clip=params.grad_clip)
            sched.step()
            hooks.step(step, total)
            if select is not None:
                select.after_step(model, step)
    if select is not None:
        select.finish(model, step)
    hooks.finish()
    return full


@register_method("salun")
def salun(
    model: nn.Module,
    forget: SampleDataset,
    retain: SampleDataset,
    params: RandomLabelParams,
    hooks: Hooks,
    heldout: SampleDataset | None = None,
    mislabeled: torch.Tensor | None = None,
) -> nn.Module:
    """SalUn (Fan et al.): random labels restricted by the saliency mask (``mask='salun'`` by default)."""
    return _random_labels(model, forget, retain, params, hooks, heldout)


@register_method("retrain")
def retrain(
    model: nn.Module,
    forget: SampleDataset,
    retain: SampleDataset,
    params: RetrainParams,
    hooks: Hooks,
    heldout: SampleDataset | None = None,
    mislabeled: torch.Tensor | None = None,
) -> nn.Module:
    """Exact unlearning: re-initialise the architecture and train on D_r only with the recipe in ``params``
    (the recipe that trained the original, so the comparison is honest). D_f is never touched; passing a
    retain set that shares IDs with the forget set is an error."""
    if len(retain) == 0:  # a fresh initialisation trained on nothing is not a model that forgot
        raise ValueError("retrain needs retain samples to train on; D_r is empty")
    device = model_device(model)
    recipe = TrainRecipe.from_dict(params_to_dict(params))
    fresh = fresh_init(model, recipe.seed).to(device)
    train(fresh, retain, recipe, device=device, hooks=hooks)
    model.load_state_dict(fresh.state_dict())
    return model


def fresh_init(model: nn.Module, seed: int) -> nn.Module:
    """The architecture's own initialisation, seeded, without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        name, kwargs = getattr(model, "architecture", None), getattr(model, "architecture_kwargs", None)
        if isinstance(name, str) and isinstance(kwargs, dict):
            return build_model(name, **kwargs)
        import copy

        fresh = copy.deepcopy(model)
        for m in fresh.modules():
            reset = getattr(m, "reset_parameters", None)
            if callable(reset):
                reset()
        return fresh
