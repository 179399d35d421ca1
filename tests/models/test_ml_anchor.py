"""``anchor`` (``engine.Anchor``): after each step the trained weights are pulled back towards where the run
started, by its step's share of the run's summed lr times anchor (times the share of D_r the retain pool
leaves unread), so drift that no forget row needed and no retain row read repairs is undone."""

import copy
import math

import pytest
import torch

from models.hooks import Hooks
from models.unlearning import run_method
from models.unlearning.engine import Anchor
from models.unlearning.params import parse_params


def _distance(a: torch.nn.Module, b: torch.nn.Module) -> float:
    pairs = zip(a.parameters(), b.parameters(), strict=True)
    return sum(float((p - q).detach().pow(2).sum()) for p, q in pairs) ** 0.5


def test_a_pull_takes_its_step_s_share_of_the_run_s_lr_in_e_folds() -> None:
    model = torch.nn.Linear(2, 1)
    start = copy.deepcopy(model)
    anchor = Anchor(model, strength=5.0, lr_total=1.0)
    with torch.no_grad():
        model.weight.add_(torch.tensor([[2.0, -4.0]]))
    anchor.pull(lr=0.1)  # 5 · 0.1 / 1 = half an e-fold: e^-0.5 of the distance is left
    left = math.exp(-0.5)
    assert torch.allclose(model.weight - start.weight, torch.tensor([[2.0 * left, -4.0 * left]]))
    assert torch.equal(model.bias, start.bias)  # no distance, no move
    anchor.pull(lr=10.0)  # 50 e-folds: all the way back, not past the start
    assert torch.allclose(model.weight, start.weight, atol=1e-12)


def test_a_run_s_pulls_take_back_strength_e_folds_whatever_its_length() -> None:
    """A distance that stood still keeps e^-strength of itself after a run of 1, 10 or 1000 steps."""
    for steps in (10, 1000):
        model = torch.nn.Linear(1, 1, bias=False)
        anchor = Anchor(model, strength=1.0, lr_total=0.03 * steps)
        with torch.no_grad():
            model.weight.add_(1.0)  # a distance of 1 from the start
        for _ in range(steps):
            anchor.pull(lr=0.03)
        assert float(model.weight - anchor.start[0]) == pytest.approx(math.exp(-1.0), rel=1e-4)
    one = torch.nn.Linear(1, 1, bias=False)  # a one-step run is not undone: e^-1 of its step is kept
    anchor = Anchor(one, strength=1.0, lr_total=0.03)
    with torch.no_grad():
        one.weight.add_(1.0)
    anchor.pull(lr=0.03)
    assert float(one.weight - anchor.start[0]) == pytest.approx(math.exp(-1.0), rel=1e-4)


def test_off_it_keeps_no_copy_and_moves_nothing() -> None:
    model = torch.nn.Linear(2, 1)
    anchor = Anchor(model, strength=0.0, lr_total=1.0)
    assert anchor.start == []
    before = copy.deepcopy(model)
    anchor.pull(lr=1.0)
    assert torch.equal(model.weight, before.weight)


def test_a_full_pull_each_step_returns_the_original_and_a_partial_one_keeps_it_closer(
    digits_model, digits
) -> None:
    """A 1% deletion: its retain pool (24·|D_f| rows) leaves three quarters of D_r unread."""
    train_ds, heldout = digits
    forget, retain = train_ds.split_by_ids(train_ds.ids[:14])

    plans: list[dict] = []

    def run(params: dict) -> torch.nn.Module:
        model = copy.deepcopy(digits_model)
        hooks = Hooks(on_plan=plans.append)
        return run_method("ugradsl_plus", model, forget, retain, params, hooks, heldout=heldout)

    free = run({"schedule": "constant", "anchor": 0.0})
    held = run({"schedule": "constant", "anchor": 3.0})
    assert "anchor" not in plans[0]
    unread = 1 - plans[1]["retain_rows"] / len(retain)
    assert 0.5 < unread < 1
    assert plans[1]["anchor"] == pytest.approx(3.0 * unread, abs=1e-5)  # the plan says how hard it held
    pinned = run({"schedule": "constant", "anchor": 1e4})  # 1e4 · 0.76 / steps >= 1: every step is undone
    assert _distance(free, digits_model) > 0
    assert _distance(held, digits_model) < _distance(free, digits_model)
    assert _distance(pinned, digits_model) == pytest.approx(0.0, abs=1e-6)


def test_a_run_that_reads_all_of_d_r_is_not_held(digits_model, digits, digits_random10) -> None:
    """A 10% deletion's pool (24·|D_f| rows) is all of D_r: the retain term repairs what the run moves."""
    forget, retain = digits_random10
    runs = [
        run_method(
            "ugradsl_plus", copy.deepcopy(digits_model), forget, retain, params, Hooks(), heldout=digits[1]
        )  # fmt: skip
        for params in ({"anchor": 0.0}, {"anchor": 1e4})
    ]
    assert _distance(runs[0], digits_model) > 0
    assert _distance(runs[0], runs[1]) == 0.0


def test_ugradsl_plus_holds_by_default_and_the_paper_s_ugradsl_does_not() -> None:
    assert parse_params("ugradsl_plus", {}).anchor == 2.0
    assert parse_params("ugradsl", {}).anchor == 0.0


def test_a_run_without_a_retain_term_leaves_all_of_d_r_unread(digits_model, digits_random10) -> None:
    """Gradient ascent reads no retain row, whatever its pool: held at the full strength."""
    forget, retain = digits_random10
    plans: list[dict] = []
    hooks = Hooks(on_plan=plans.append)
    for params in ({"anchor": 0.5}, {"anchor": 0.5, "retain_budget": 5.0}):
        run_method("gradient_ascent", copy.deepcopy(digits_model), forget, retain, params, hooks)
    assert [p["anchor"] for p in plans] == [0.5, 0.5]


def test_a_deletion_that_takes_a_whole_class_is_not_held(digits_model, digits) -> None:
    """Such a run pushes until the class is forgotten: a pull towards a model that knew it works against
    that (the 60k Fashion-MNIST model's class 0 stayed 0.3-0.7% recognised)."""
    train_ds, heldout = digits
    gone = [i for i, y in zip(train_ds.ids, train_ds.y.tolist(), strict=True) if y == 3]
    forget, retain = train_ds.split_by_ids(gone)
    plans: list[dict] = []
    run_method(
        "ugradsl_plus", copy.deepcopy(digits_model), forget, retain, {}, Hooks(on_plan=plans.append),
        heldout=heldout,
    )  # fmt: skip
    assert plans and all("anchor" not in p for p in plans)
    assert plans[0]["retain_rows"] < len(retain)  # its pool leaves D_r partly unread: held, were it not
