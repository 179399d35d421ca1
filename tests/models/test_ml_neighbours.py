"""Neighbour labels (``neighbour_labels``): a forget row whose nearest retained rows are of another class
(a mislabeled or poisoned row) is moved to their class, as a retrain moves it; other rows as before."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.architectures import build_model
from models.datasets import SampleDataset
from models.hooks import Hooks
from models.training import DIGITS_RECIPE, train
from models.unlearning import run_method
from models.unlearning.engine import Batch
from models.unlearning.losses import smoothed_cross_entropy
from models.unlearning.methods import AWAY, Moves, ugradsl_objective
from models.unlearning.neighbours import neighbour_labels
from models.unlearning.params import parse_params


class _Identity(nn.Module):
    """A 'network' whose penultimate features are its inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _points(xy: list[tuple[float, float]], labels: list[int], prefix: str) -> SampleDataset:
    return SampleDataset(torch.tensor(xy), torch.tensor(labels), [f"{prefix}{i}" for i in range(len(xy))])


def test_a_row_takes_the_label_its_neighbours_hold_for_their_class_size() -> None:
    # class 0 around (1, 0), plentiful; class 1 around (0, 1), plentiful; class 2: three rows near (-1, 0)
    pool = _points([(1, 0.01 * i) for i in range(20)] + [(0.01 * i, 1) for i in range(20)]
                   + [(-1, 0.0), (-1, 0.01), (-1, 0.02)], [0] * 20 + [1] * 20 + [2] * 3, "r")  # fmt: skip
    forget = _points([(1, 0.05), (0.02, 1), (1, 0.1), (-1, 0.005)], [0, 0, 1, 2], "f")
    theirs = neighbour_labels(_Identity(), forget, pool, k=5)
    # agrees; labelled 0 among ones -> 1; labelled 1 among zeros -> 0; a class of three rows holds its own
    assert theirs.tolist() == [0, 1, 0, 2]
    # k larger than the pool: every pool row votes, per row of its class
    assert neighbour_labels(_Identity(), forget, pool, k=100).shape == (4,)


@pytest.fixture(scope="module")
def mislabeled_digits(
    digits: tuple[SampleDataset, SampleDataset],
) -> tuple[nn.Module, SampleDataset, SampleDataset, torch.Tensor]:
    """A model trained on digits with one training row in ten given another class's label (seeded), its
    forget set (exactly those rows), retain set, and the rows' true labels."""
    train_ds, _ = digits
    gen = torch.Generator().manual_seed(0)
    rows = torch.randperm(len(train_ds), generator=gen)[: len(train_ds) // 10]
    y = train_ds.y.clone()
    y[rows] = (y[rows] + torch.randint(1, 10, (len(rows),), generator=gen)) % 10
    noisy = SampleDataset(train_ds.x, y, train_ds.ids)
    torch.manual_seed(0)
    model = train(build_model("small_cnn", in_channels=1, image_size=8, num_classes=10), noisy, DIGITS_RECIPE)
    forget, retain = noisy.split_by_ids([noisy.ids[i] for i in rows.tolist()])
    true_y = train_ds.y[train_ds.index_of(forget.ids)]
    return model, forget, retain, true_y


def test_a_deletion_of_mislabeled_rows_is_moved_to_their_true_class(
    mislabeled_digits: tuple[nn.Module, SampleDataset, SampleDataset, torch.Tensor],
    digits: tuple[SampleDataset, SampleDataset],
) -> None:
    """A retrain on the clean rows predicts the mislabeled rows' true class. The held-out bound aims them at
    losses of correctly labelled unseen data and left most of them as the model had memorised them."""
    model, forget, retain, true_y = mislabeled_digits
    plans: list[dict] = []

    class Plans(Hooks):
        def plan(self, about: dict) -> None:
            plans.append(about)

    results: dict[int, tuple[float, ...]] = {}
    for k in (0, 15):
        out = run_method("ugradsl_plus", copy.deepcopy(model), forget, retain, {"neighbour_labels": k},
                         Plans(), heldout=digits[1])  # fmt: skip
        with torch.no_grad():
            predicted = out.eval()(forget.x).argmax(1)
        results[k] = tuple(float((predicted == y).float().mean()) for y in (forget.y, true_y))
    (kept_off, true_off), (kept_on, true_on) = results[0], results[15]
    assert kept_on < 0.1 < kept_off  # the memorised wrong labels: most gone only with neighbour labels
    assert true_on > 0.8 > true_off  # predicted as their true class, as a retrain predicts them
    assert plans[1]["steps"] > 5 * plans[0]["steps"]  # sized as a memorised deletion, not as one push each
    assert "contradicted_rows" not in plans[0] and plans[1]["contradicted_rows"] > 0.9 * len(forget)


def test_a_random_deletion_of_a_clean_model_is_unlearned_as_without(
    digits_model: nn.Module, digits: tuple[SampleDataset, SampleDataset], digits_random10
) -> None:
    forget, retain = digits_random10
    runs = [
        run_method("ugradsl_plus", copy.deepcopy(digits_model), forget, retain, p, heldout=digits[1])
        for p in ({"neighbour_labels": 0}, {"neighbour_labels": 15})
    ]
    with torch.no_grad():
        a, b = (m.eval()(forget.x).argmax(1) for m in runs)
    assert float((a == b).float().mean()) > 0.97  # the same predictions on D_f, but for a contradicted few


def _predicted(model: nn.Module, data: SampleDataset) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(data.x).argmax(1)


def test_only_the_rows_flagged_mislabeled_are_moved_to_their_neighbours_class(
    mislabeled_digits: tuple[nn.Module, SampleDataset, SampleDataset, torch.Tensor],
    digits: tuple[SampleDataset, SampleDataset],
) -> None:
    """A deletion request that says its rows are mislabeled flags them (``mislabeled``), and the default
    params (``neighbour_labels`` 0) look at their neighbours only: every row flagged, the neighbours
    contradict the same rows as under ``neighbour_labels`` 15, and the few they agree with are pushed off
    their label too (``away_rows``: the owner says it is wrong), where ``neighbour_labels`` alone bounds them
    like any deletion; half flagged, the other half is pushed as any deletion is."""
    model, forget, retain, true_y = mislabeled_digits
    flags = torch.ones(len(forget), dtype=torch.bool)
    seen: list[dict] = []
    by_flags = run_method("ugradsl_plus", copy.deepcopy(model), forget, retain, None,
                          Hooks(on_plan=seen.append), heldout=digits[1], mislabeled=flags)  # fmt: skip
    by_param = run_method("ugradsl_plus", copy.deepcopy(model), forget, retain, {"neighbour_labels": 15},
                          Hooks(on_plan=seen.append), heldout=digits[1])  # fmt: skip
    flagged_plan, param_plan = seen
    assert flagged_plan["contradicted_rows"] == param_plan["contradicted_rows"]
    assert flagged_plan["away_rows"] == len(forget) - flagged_plan["contradicted_rows"] > 0
    assert "away_rows" not in param_plan
    # every row flagged: no row was left to measure memorisation on, and the plan says so, not 0.0
    assert flagged_plan["measured_distance"] is None and flagged_plan["distance_se"] is None
    assert isinstance(param_plan["measured_distance"], float)  # measured on the rows left
    kept = [float((_predicted(m, forget) == forget.y).float().mean()) for m in (by_flags, by_param)]
    assert kept[0] < kept[1]  # fewer of the wrong labels left

    half = torch.arange(len(forget)) % 2 == 0
    plans: list[dict] = []
    out = run_method("ugradsl_plus", copy.deepcopy(model), forget, retain, None,
                     Hooks(on_plan=plans.append), heldout=digits[1], mislabeled=half)  # fmt: skip
    # the neighbours moved flagged rows only (nearly all of them: each is mislabeled); the run read the
    # ones the model did not already predict as their neighbours' class
    assert 0.8 * int(half.sum()) < plans[0]["contradicted_rows"] <= int(half.sum())
    assert "anchor" not in plans[0]  # moved rows are descended on until predicted: not pulled back
    done = plans[0]["contradicted_rows"] + plans[0]["away_rows"] - plans[0]["held_rows"]  # moved already
    assert plans[0]["skipped_rows"] == done and plans[0]["forget_rows"] == len(forget) - done
    right = (_predicted(out, forget) == true_y).float()
    flagged, unflagged = float(right[half].mean()), float(right[~half].mean())
    # the unflagged half gains from the longer run too (sized on memorised rows), the flagged half more
    assert flagged > 0.7 and unflagged < flagged - 0.15, (flagged, unflagged)


def test_the_flags_must_match_the_forget_rows(
    digits_model: nn.Module, digits: tuple[SampleDataset, SampleDataset], digits_random10
) -> None:
    forget, retain = digits_random10
    for wrong in (torch.ones(len(forget) - 1, dtype=torch.bool), torch.ones(len(forget), dtype=torch.long)):
        with pytest.raises(ValueError, match="one bool per forget row"):
            run_method("ugradsl_plus", copy.deepcopy(digits_model), forget, retain, None, heldout=digits[1],
                       mislabeled=wrong)  # fmt: skip


def test_the_move_is_the_objectives_with_or_without_a_heldout_bound(
    digits_model: nn.Module, digits_random10: tuple[SampleDataset, SampleDataset]
) -> None:
    """UGradSL's own default (bounded by correctness, no held-out data) moves a contradicted row too: its
    forget term is descent towards the neighbours' class while the model predicts another, then nothing."""
    forget, _ = digits_random10
    x, y = forget.x[:4], forget.y[:4]
    with torch.no_grad():
        predicted = digits_model.eval()(x).argmax(1)
    theirs = (y + 1) % 10  # a class the model does not predict for these rows
    assert bool((predicted != theirs).all())
    params = parse_params("ugradsl", None)
    batch = Batch(x[:0], y[:0], x, y, y, 4.0, rf=torch.arange(4))
    moved = ugradsl_objective(params, None, Moves(theirs))(digits_model, batch)
    expected = F.cross_entropy(digits_model(x), theirs, reduction="sum") / 4.0
    assert moved.forget is not None and torch.allclose(moved.forget, expected)
    away = ugradsl_objective(params, None, Moves(torch.full_like(y, AWAY)))(digits_model, batch)
    logits = digits_model(x)  # AWAY: descent towards the most likely class other than the label
    nearest = logits.detach().scatter(1, y[:, None], float("-inf")).argmax(1)
    assert bool((nearest != y).all()) and away.forget is not None
    assert torch.allclose(away.forget, F.cross_entropy(logits, nearest, reduction="sum") / 4.0)
    # where the nearest class is one the deletion takes away, the next: never a class that leaves
    gone = int(nearest[0])
    kept = torch.tensor([c for c in range(10) if c != gone])
    away_kept = ugradsl_objective(params, None, Moves(torch.full_like(y, AWAY), kept))(digits_model, batch)
    masked = logits.detach().clone()
    masked[:, gone] = float("-inf")
    second = masked.scatter(1, y[:, None], float("-inf")).argmax(1)
    assert bool((second != gone).all()) and away_kept.forget is not None
    assert torch.allclose(away_kept.forget, F.cross_entropy(logits, second, reduction="sum") / 4.0)
    stays = ugradsl_objective(params, None, Moves(y))(digits_model, batch)  # none contradicted: ascent
    ascent = -smoothed_cross_entropy(digits_model(x), y, params.alpha, reduction="none").sum() / 4.0
    assert stays.forget is not None and torch.allclose(stays.forget, ascent)


def test_rows_the_model_already_predicts_as_their_neighbours_class_are_not_sized_as_memorised(
    digits_model: nn.Module,
    digits: tuple[SampleDataset, SampleDataset],
    digits_random10: tuple[SampleDataset, SampleDataset],
    mislabeled_digits: tuple[nn.Module, SampleDataset, SampleDataset, torch.Tensor],
) -> None:
    """A model trained on the true labels predicts a deletion flagged mislabeled as its neighbours' class
    already, as a retrain does: nothing to move, and no run sized as for memorised rows (on the 60k
    Fashion-MNIST model that had run long and ended further from the retrain than doing nothing)."""
    forget, retain = digits_random10
    wrong = SampleDataset(forget.x, (forget.y + 1) % 10, forget.ids)  # labels the model never trained on
    plans: list[dict] = []
    run_method("ugradsl_plus", copy.deepcopy(digits_model), wrong, retain, None, Hooks(on_plan=plans.append),
               heldout=digits[1], mislabeled=torch.ones(len(wrong), dtype=torch.bool))  # fmt: skip
    model, m_forget, m_retain, _ = mislabeled_digits
    run_method("ugradsl_plus", copy.deepcopy(model), m_forget, m_retain, None, Hooks(on_plan=plans.append),
               heldout=digits[1], mislabeled=torch.ones(len(m_forget), dtype=torch.bool))  # fmt: skip
    clean, memorised = plans
    assert clean["contradicted_rows"] > 0.9 * len(wrong) and clean["held_rows"] < 0.1 * len(wrong)
    assert memorised["held_rows"] > 0.2 * len(m_forget)  # the noisy model predicts some as labelled
    assert clean["pushes_per_sample"] < memorised["pushes_per_sample"] / 2


def _triggered(x: torch.Tensor) -> torch.Tensor:
    """Digits with a backdoor's trigger: a 2x2 white square in the bottom-right corner."""
    out = x.clone()
    out[..., -2:, -2:] = 1.0
    return out


def test_a_flagged_backdoor_is_pushed_off_the_target_class_its_neighbours_agree_with(
    digits: tuple[SampleDataset, SampleDataset],
) -> None:
    """A backdoor (BadNets): one row in ten of classes 1-9 carries a trigger and class 0's label. In the
    model's features a triggered row sits among class 0, so its neighbours agree with the wrong label and
    did not move it; flagged, it is pushed to its nearest other class until the model predicts one (its
    own digit), and the trigger stops working on unseen rows, as after a retrain without the rows."""
    train_ds, test_ds = digits
    gen = torch.Generator().manual_seed(0)
    hit = (torch.rand(len(train_ds), generator=gen) < 0.1) & (train_ds.y != 0)
    x = torch.where(hit.view(-1, 1, 1, 1), _triggered(train_ds.x), train_ds.x)
    poisoned = SampleDataset(x, torch.where(hit, 0, train_ds.y), train_ds.ids)
    torch.manual_seed(0)
    model = train(
        build_model("small_cnn", in_channels=1, image_size=8, num_classes=10), poisoned, DIGITS_RECIPE
    )
    forget, retain = poisoned.split_by_ids([poisoned.ids[i] for i in torch.nonzero(hit).flatten().tolist()])
    others = test_ds.subset(torch.nonzero(test_ds.y != 0).flatten())
    attack = SampleDataset(_triggered(others.x), others.y, others.ids)

    def success(m: nn.Module) -> float:  # triggered unseen rows predicted as the target
        return float((_predicted(m, attack) == 0).float().mean())

    assert success(model) > 0.8
    plans: list[dict] = []
    out = run_method("ugradsl_plus", copy.deepcopy(model), forget, retain, None, Hooks(on_plan=plans.append),
                     heldout=test_ds, mislabeled=torch.ones(len(forget), dtype=torch.bool))  # fmt: skip
    # most rows' neighbours agreed with the wrong label; the others' neighbours moved them
    assert plans[0]["away_rows"] > 0.5 * len(forget)
    assert plans[0]["away_rows"] + plans[0]["contradicted_rows"] == len(forget)
    assert success(out) < 0.1
    true_y = train_ds.y[hit]
    assert float((_predicted(out, forget) == true_y).float().mean()) > 0.6  # most predicted as their digit
    assert float((_predicted(out, test_ds) == test_ds.y).float().mean()) > 0.9  # the model still works
