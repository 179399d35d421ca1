"""Unlearning metrics (docs/methods.md#metrics): UA, RA, TA, MIA-efficacy, a loss-threshold MIA, Avg Gap.

Predictions are computed batched on the model's device and summed there; the host syncs once per metric,
never per sample.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from models import batches as B
from models.datasets import SampleDataset
from models.layout import cpu_batch, cpu_channels_last
from models.loading import in_order

GAP_KEYS = ("unlearning_accuracy", "mia_score", "retain_accuracy", "test_accuracy")
# Inference batch off the CPU: a GPU is near its peak at this size for the models here. On the CPU the
# batch is sized to the cache by the model's activations (models.layout.cpu_batch), at most this.
EVAL_BATCH = 256


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def _map_batches(model: nn.Module, data: SampleDataset, fn: Any, batch_size: int) -> torch.Tensor:
    """Concatenate ``fn(logits (B, K), y (B,)) -> (B,)`` over batches of at most ``batch_size`` rows (on a
    CPU, fewer when the activations would outgrow the cache), in eval mode, on the model's device."""
    was_training = model.training
    model.eval()
    device = _device(model)
    try:
        with cpu_channels_last(model):
            size = cpu_batch(model, data.x, batch_size)
            outs = [
                fn(model(B.to(xb, device)), data.y[i * size : (i + 1) * size].to(device))
                for i, xb in enumerate(in_order(data.x, size))
            ]
    finally:
        model.train(was_training)
    return torch.cat(outs) if outs else torch.empty(0, device=device)


def accuracy(model: nn.Module, data: SampleDataset, *, batch_size: int = EVAL_BATCH) -> float:
    """Fraction of ``data`` classified correctly (NaN for an empty set)."""
    if len(data) == 0:
        return float("nan")
    correct = _map_batches(model, data, lambda logits, y: logits.argmax(1) == y, batch_size)
    return float(correct.float().mean())


def predictions(model: nn.Module, data: SampleDataset, *, batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """(N,) the class the model predicts for each sample, on its device."""
    return _map_batches(model, data, lambda logits, _y: logits.argmax(1), batch_size)


def true_label_confidence(
    model: nn.Module, data: SampleDataset, *, batch_size: int = EVAL_BATCH
) -> np.ndarray:
    """softmax(h(x))_y per sample, shape (N,)."""
    conf = _map_batches(
        model, data, lambda logits, y: logits.softmax(1).gather(1, y[:, None]).squeeze(1), batch_size
    )
    return conf.float().cpu().numpy()


def per_sample_loss(model: nn.Module, data: SampleDataset, *, batch_size: int = EVAL_BATCH) -> np.ndarray:
    """Cross-entropy per sample, shape (N,)."""
    loss = _map_batches(
        model, data, lambda logits, y: nn.functional.cross_entropy(logits, y, reduction="none"), batch_size
    )
    return loss.float().cpu().numpy()


def _member_sample(retain: SampleDataset, n: int, seed: int) -> SampleDataset:
    return retain.subset(_sample_order(len(retain), seed)[: min(n, len(retain))])


def mia_efficacy(
    model: nn.Module, forget: SampleDataset, retain: SampleDataset, test: SampleDataset, *, seed: int = 0
) -> float:
    """MIA-efficacy as in the SalUn / l1-sparse code: an SVC (RBF, C=3, gamma='auto') on the true-label
    confidence, members = a seeded sample of D_r the size of D_te (label 1), non-members = D_te (label 0);
    see ``mia_sets`` for a retain set smaller than D_te. Returns the fraction of D_f predicted non-member:
    high = D_f looks unseen."""
    if len(forget) == 0:
        return float("nan")
    members, non_members = mia_sets(retain, test, seed)
    return mia_efficacy_from_confidence(
        true_label_confidence(model, members),
        true_label_confidence(model, non_members),
        true_label_confidence(model, forget),
    )


def mia_sets(retain: SampleDataset, test: SampleDataset, seed: int) -> tuple[SampleDataset, SampleDataset]:
    """(members, non-members) of the attack's training set: a seeded sample of D_r the size of D_te, and
    D_te. When D_r is the smaller one (a 9k retain set against a 10k test set), D_te is subsampled to
    |D_r| instead: with unequal classes and indistinguishable confidences the SVC predicts the majority
    class everywhere, and the score flips to 0 or 100 for reasons unrelated to the model."""
    n = min(len(retain), len(test))
    return _member_sample(retain, n, seed), (_member_sample(test, n, seed + 1) if n < len(test) else test)


MIA_GRID = 1e-3  # the attack sees confidences rounded to this grid (see mia_efficacy_from_confidence)


def mia_efficacy_from_confidence(
    members: np.ndarray, non_members: np.ndarray, forget: np.ndarray, *, grid: float = MIA_GRID
) -> float:
    """The SVC attack on precomputed confidences (see ``mia_efficacy``); ``grid`` 0 fits the exact ones.

    The SVC is fitted on the distinct (confidence, label) pairs, each weighted by how often it occurs: n
    identical points of one label enter the dual problem as one point with n times the box constraint, so
    the optimisation problem, and the classifier, are the same. Confidences are first rounded to
    ``MIA_GRID``: with one feature, gamma='auto' is 1, and the kernel exp(-(x - x')^2) moves by at most
    0.86x the rounding (4.3e-4) when a point does, inside the solver's own stopping tolerance (1e-3), while
    the fit grows with the square of the distinct points and the prediction with distinct points times
    support vectors. A model that has just been unlearned does not saturate, so its 9k + 9k
    Fashion-MNIST confidences are ~14k distinct points: 2-5 s to fit exactly. On the earlier 1e-4 grid that
    was 0.1-0.5 s, and the attack still 0.2-0.5 s of each of a 60k job's two scorings; on this one
    (at most 1,001 distinct values per label) 0.02-0.06 s. Scores measured on digits, the memorising
    10k model and the 60k model (originals, defaults, retrains; bench/results/mia_grid_stop45.md) moved
    from the exact fit's by at most 0.2 points (2 of 1,000 forget samples; on 1e-4, 0.03; the exact fit
    itself moved 0.03 on the 60k model when its solver ran to convergence)."""
    from sklearn.svm import SVC  # type: ignore[import-untyped,unused-ignore]

    def on_grid(conf: np.ndarray) -> np.ndarray:
        conf = conf.astype(np.float64)
        return np.round(conf / grid) * grid if grid > 0 else conf

    feats = np.concatenate([on_grid(members), on_grid(non_members)])
    labels = np.concatenate([np.ones(len(members)), np.zeros(len(non_members))])
    pairs, counts = np.unique(np.stack([feats, labels], 1), axis=0, return_counts=True)
    clf = SVC(C=3, gamma="auto", kernel="rbf").fit(
        pairs[:, :1], pairs[:, 1], sample_weight=counts.astype(float)
    )
    probes, which = np.unique(on_grid(forget), return_inverse=True)
    return float((clf.predict(probes[:, None])[which] == 0).mean())


def loss_threshold_mia(
    model: nn.Module, forget: SampleDataset, retain: SampleDataset, test: SampleDataset, *, seed: int = 0
) -> float:
    """A second attack (Yeom et al.'s loss threshold): pick the per-sample-loss threshold that best separates
    a seeded D_r sample (members) from D_te (non-members); return the fraction of D_f whose loss is above
    it (called non-member). Same reading as ``mia_efficacy``: high = D_f looks unseen."""
    if len(forget) == 0:
        return float("nan")
    member_set, non_member_set = mia_sets(retain, test, seed)
    losses = [per_sample_loss(model, d) for d in (member_set, non_member_set, forget)]
    return loss_threshold_mia_from_loss(*losses)


def loss_threshold_mia_from_loss(members: np.ndarray, non_members: np.ndarray, forget: np.ndarray) -> float:
    """The loss-threshold attack on precomputed per-sample losses (see ``loss_threshold_mia``)."""
    return float((forget > _best_threshold(members, non_members)).mean())


def _best_threshold(members: np.ndarray, non_members: np.ndarray) -> float:
    """Threshold t maximising balanced accuracy of 'loss > t -> non-member'."""
    cands = np.unique(np.concatenate([members, non_members]))
    m_sorted, n_sorted = np.sort(members), np.sort(non_members)
    tpr_m = np.searchsorted(m_sorted, cands, side="right") / max(len(members), 1)  # members <= t (correct)
    tnr_n = 1 - np.searchsorted(n_sorted, cands, side="right") / max(len(non_members), 1)  # non-members > t
    return float(cands[np.argmax(tpr_m + tnr_n)])


@dataclass(frozen=True)
class SetScores:
    """What one forward pass over a scored set yields, per sample: correctness (0/1) and the log of the
    true-label confidence (= minus the cross-entropy, so both attacks read the same pass). A model's
    scores on a fixed set depend on nothing else: a version's scores on the scoring data can be kept and
    read back instead of recomputed (``evaluate``'s ``test_scores``)."""

    correct: np.ndarray  # (N,) float32, 1.0 = classified correctly
    log_confidence: np.ndarray  # (N,) float32

    def __len__(self) -> int:
        return len(self.correct)

    def take(self, idx: torch.Tensor) -> SetScores:
        i = idx.numpy()
        return SetScores(self.correct[i], self.log_confidence[i])


class NonFiniteOutputs(ValueError):
    """The model's outputs are NaN on some scored rows: a run diverged, and no metric of it means anything
    (the attack's classifier cannot even be fitted)."""


def _finite(scores: SetScores, what: str) -> SetScores:
    bad = int(np.isnan(scores.log_confidence).sum())
    if bad:
        raise NonFiniteOutputs(f"the model's outputs are NaN on {bad} of {len(scores)} {what} rows")
    return scores


def score_set(model: nn.Module, data: SampleDataset) -> SetScores:
    """One pass over ``data``: its ``SetScores``."""
    out = _map_batches(
        model,
        data,
        lambda logits, y: torch.stack(
            [(logits.argmax(1) == y).float(), logits.log_softmax(1).gather(1, y[:, None])[:, 0]], 1
        ),
        EVAL_BATCH,
    )  # (N, 2)
    arr = out.float().cpu().numpy().reshape(-1, 2)
    return SetScores(np.ascontiguousarray(arr[:, 0]), np.ascontiguousarray(arr[:, 1]))


def _sample_order(n: int, seed: int) -> torch.Tensor:
    """The seeded permutation ``_member_sample`` takes its prefix of."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def evaluate(
    model: nn.Module,
    *,
    forget: SampleDataset,
    retain: SampleDataset,
    test: SampleDataset,
    retain_sample: int = 10_000,
    seed: int = 0,
    forgotten_classes: Iterable[int] | None = None,
    test_scores: SetScores | None = None,
    train_scores: Callable[[SampleDataset], SetScores] | None = None,
    forget_flagged: torch.Tensor | None = None,
    judged_classes: Iterable[int] | None = None,
) -> dict[str, float | int | None]:
    """UA, MIA-efficacy, RA, TA as fractions, with counts, and the loss-threshold MIA (``mia_loss_score``)
    so that one attack is not the only judge. RA uses a fixed-seed sample of at most
    ``retain_sample`` rows (``retain_count`` is that sample's size). With an empty forget set the forget
    metrics (UA, MIA) are ``None``: there is nothing to measure; likewise RA and the attacks when the
    whole training set has been forgotten (no member is left), and TA on an empty set. (``None``, not
    NaN: these numbers are stored as JSON, which has no NaN.)

    This is the one way a version is scored: the worker, the bench and the tests all call it, so a bench
    number and a version's audit number mean the same thing. Class-wise forgetting (``forgotten_classes``,
    see ``forgotten_classes()``): a retrained model could never predict a class it never saw, so TA and
    ``test_count`` exclude those classes and ``forgotten_class_test_accuracy`` (with its count) reports
    them apart, read off the same test pass; ``judged_classes``, where given, are the forgotten classes
    that number reads (a deletion's own, not those earlier deletions took, whose switched-off rows at 0
    had diluted a class still predicted on 95% of its rows to 17%: a probe). The attacks still use all
    of D_te as non-members: the formula's D_te, whatever was forgotten. Outputs that are NaN on any
    scored row raise ``NonFiniteOutputs``.

    Each scored set is read once: the RA sample and the attack's members are both prefixes of the same
    seeded permutation of D_r (``_member_sample``), so one pass over the longer serves both; the
    attack's non-members are D_te or a seeded sample of it (``mia_sets``), read off the test pass.
    ``test_scores``: this model's ``score_set`` on ``test``, kept from an earlier scoring (a version's
    scores on the scoring data depend on nothing a deletion changes); then D_te is not read at all.
    ``train_scores``: how rows of the training set (D_f, D_r's sample) are scored, where the caller has a
    cheaper way to ``score_set(model, rows)`` (a worker passes them through the front's kept outputs and
    the last layers: ``workers.front_cache``). ``forget_flagged``: (n_f,) bool, forget rows whose label the
    deleter says is wrong, which ``forget_accuracy_excess_se`` leaves out (see ``accuracy_excess``), and
    whose share still predicted as that label is ``flagged_label_accuracy`` (with ``flagged_count``),
    and the test accuracy on the classes they were sent with ``flagged_classes_test_accuracy`` (with its
    count)."""
    scored = train_scores or functools.partial(score_set, model)
    n_ra = min(len(retain), retain_sample)
    n_members = min(len(retain), len(test))  # as ``mia_sets``
    retained = _finite(scored(_member_sample(retain, max(n_ra, n_members), seed)), "retained")
    if test_scores is None:
        test_scores = score_set(model, test)
    elif len(test_scores) != len(test):
        raise ValueError(f"test_scores has {len(test_scores)} rows for a test set of {len(test)}")
    _finite(test_scores, "test")
    te_correct = test_scores.correct
    out: dict[str, float | int | None] = {
        "unlearning_accuracy": None,
        "mia_score": None,
        "mia_loss_score": None,
        "retain_accuracy": float(retained.correct[:n_ra].mean()) if n_ra else None,
        "test_accuracy": float(te_correct.mean()) if len(test) else None,
        "forget_count": len(forget),
        "retain_count": n_ra,
        "test_count": len(test),
    }
    if len(forget):
        forgot = _finite(scored(forget), "forgotten")
        out["unlearning_accuracy"] = 1.0 - float(forgot.correct.mean())
        if len(test):
            judged, expected, excess = accuracy_excess(
                forgot.correct,
                forget.y.numpy(),
                te_correct,
                test.y.numpy(),
                gone=set(forgotten_classes or ()),
                skip=None if forget_flagged is None else forget_flagged.numpy(),
            )
            out["forget_accuracy_judged"] = judged
            out["forget_accuracy_expected"], out["forget_accuracy_excess_se"] = expected, excess
        if forget_flagged is not None and bool(forget_flagged.any()):
            out["flagged_label_accuracy"] = float(forgot.correct[forget_flagged.bool().numpy()].mean())
            out["flagged_count"] = int(forget_flagged.sum())
            if len(test):  # the classes they were sent with: what rows pushed off a label they hold cost
                sent = set(forget.y[forget_flagged.bool()].unique().tolist()) - set(forgotten_classes or ())
                theirs = np.isin(test.y.numpy(), sorted(sent))  # a class taken whole is lost by design
                out["flagged_classes_test_count"] = int(theirs.sum())
                out["flagged_classes_test_accuracy"] = (
                    float(te_correct[theirs].mean()) if theirs.any() else None
                )
    if len(forget) and n_members:  # no attack without members: everything was forgotten
        m_log = retained.log_confidence[:n_members]
        n_log = (
            test_scores.log_confidence
            if n_members == len(test)
            else test_scores.take(_sample_order(len(test), seed + 1)[:n_members]).log_confidence
        )
        f_log = forgot.log_confidence
        out["mia_score"] = mia_efficacy_from_confidence(np.exp(m_log), np.exp(n_log), np.exp(f_log))
        out["mia_loss_score"] = loss_threshold_mia_from_loss(-m_log, -n_log, -f_log)
    if forgotten_classes is not None:
        gone = np.isin(test.y.numpy(), sorted(set(forgotten_classes)))
        mean = lambda v: float(v.mean()) if len(v) else None  # noqa: E731 - None: nothing to measure
        out["test_accuracy"] = mean(te_correct[~gone])
        out["test_count"] = int((~gone).sum())
        if judged_classes is not None:
            gone = np.isin(test.y.numpy(), sorted(set(judged_classes)))
        out["forgotten_class_test_accuracy"] = mean(te_correct[gone])
        out["forgotten_class_test_count"] = int(gone.sum())
    return out


def accuracy_excess(
    forget_correct: np.ndarray,
    forget_y: np.ndarray,
    test_correct: np.ndarray,
    test_y: np.ndarray,
    *,
    gone: set[int] | frozenset[int] = frozenset(),
    skip: np.ndarray | None = None,
) -> tuple[float | None, float | None, float | None]:
    """(D_f's accuracy over the rows judged; the accuracy a retrain would have on them, from unseen rows
    of their classes in their class mix; how many standard errors the first lies above the second), or
    Nones where no row can be judged.

    A retrained model never read D_f, so D_f scores like unseen data of its classes, and a version that
    recognises it far better did not forget it: a probe's lr-1e-8 run moved no weight and was published.
    Per class, since a deletion drawn from an easy class is recognised above the overall test accuracy by
    a retrain too: each class's rate is read off its test rows, its variance with one success and one
    failure added (so a class every test row gets right still leaves room), and the error counts D_f's
    draw and the estimate's. Rows judged otherwise are left out: ``skip`` (rows flagged mislabeled, whose
    stored label a retrain does not predict), rows of a class the deletion takes whole (``gone``: judged
    by ``forgotten_class_test_accuracy``; pooled here, a large fall on them hid a no-op on the rest, a
    review found) and rows of a class with no test row. The rows are taken as
    independent draws, which rows of one subject are not (an easy person's rows are all easy): the number
    then spreads wider than a standard normal, so the gate over it asks for more (``workers.gates``)."""
    keep = np.ones(len(forget_y), dtype=bool) if skip is None else ~np.asarray(skip, dtype=bool)
    classes, per_class = np.unique(test_y, return_inverse=True)
    hits = np.bincount(per_class, weights=test_correct, minlength=len(classes))
    rows = np.bincount(per_class, minlength=len(classes)).astype(float)
    tested = {int(c): (float(h), float(n)) for c, h, n in zip(classes, hits, rows, strict=True)}
    keep &= np.isin(forget_y, list(tested)) & ~np.isin(forget_y, sorted(gone))
    if not keep.any():
        return None, None, None
    ys, correct = forget_y[keep], np.asarray(forget_correct, dtype=float)[keep]
    expected, variance = 0.0, 0.0
    for c, k in zip(*np.unique(ys, return_counts=True), strict=True):
        h, n = tested[int(c)]
        s = (h + 1.0) / (n + 2.0)
        expected += float(k) * h / n
        variance += float(k) * s * (1.0 - s) * (1.0 + float(k) / (n + 2.0))  # D_f's draw, the estimate's
    excess = (float(correct.sum()) - expected) / np.sqrt(variance)
    return float(correct.mean()), expected / len(ys), float(excess)


def forgotten_classes(train_labels: torch.Tensor, retain_labels: torch.Tensor) -> list[int] | None:
    """Classes of the training set with no sample left in D_r (every one of them forgotten), or None
    when every class keeps a sample: the argument ``evaluate`` takes for class-wise scoring."""
    gone = sorted(set(train_labels.tolist()) - set(retain_labels.tolist()))
    return gone or None


def avg_gap(
    metrics: Mapping[str, Any], reference: Mapping[str, Any], keys: Iterable[str] = GAP_KEYS
) -> float:
    """Mean over UA, MIA, RA, TA of |metric - reference| in percentage points (the papers' Avg Gap)."""
    gaps = [abs(float(metrics[k]) - float(reference[k])) * 100 for k in keys]
    return float(np.mean(gaps))
