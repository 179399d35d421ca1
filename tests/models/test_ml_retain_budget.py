"""``retain_budget``: a run's retain pool sized by the deletion (a multiple of |D_f|), stratified by class."""

import copy
import math
from collections import Counter

import pytest
import torch

from models.datasets import SampleDataset
from models.hooks import Hooks
from models.unlearning import run_method
from models.unlearning.engine import Batch, Plan, Terms, retain_pool, run_steps
from models.unlearning.params import parse_params


def _labelled(counts: list[int]) -> SampleDataset:
    """A dataset whose class c has counts[c] rows (shuffled, so classes are not contiguous)."""
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(5))]
    return SampleDataset(torch.arange(len(y)).float().reshape(-1, 1), y, [f"r{i}" for i in range(len(y))])


def test_the_pool_has_the_budgeted_size_and_each_class_its_share_of_retain() -> None:
    counts = [500, 300, 150, 45, 5]  # 1,000 rows; class 4's proportional share of 100 is 0.5
    retain = _labelled(counts)
    pool = retain_pool(retain, n_forget=40, budget=2.5, seed=0)  # ceil(2.5 * 40) = 100 rows
    assert len(pool) == 100 and len(set(pool.ids)) == 100 and set(pool.ids) <= set(retain.ids)
    got = Counter(pool.y.tolist())
    assert got[4] == 1  # a rare class keeps one row
    for c, n in enumerate(counts[:4]):
        assert abs(got[c] - 100 * n / 1000) <= 1, (c, got)
    # rows keep their labels (the pool is a subset of retain, not a relabelling)
    index = {sid: i for i, sid in enumerate(retain.ids)}
    assert all(int(retain.y[index[s]]) == int(y) for s, y in zip(pool.ids, pool.y, strict=True))


def test_a_pool_too_small_for_every_class_takes_the_largest_ones() -> None:
    pool = retain_pool(_labelled([500, 300, 150, 45, 5]), n_forget=1, budget=3.0, seed=0)
    assert sorted(pool.y.tolist()) == [0, 0, 1]  # quotas 1.5, 0.9, 0.45, ...: largest remainders


def test_the_pool_is_seeded() -> None:
    retain = _labelled([400, 400, 200])
    a, b = (retain_pool(retain, 50, 2.0, seed=3) for _ in range(2))
    other = retain_pool(retain, 50, 2.0, seed=4)
    assert a.ids == b.ids
    assert a.ids != other.ids and Counter(a.y.tolist()) == Counter(other.y.tolist())


def test_budget_zero_or_covering_retain_is_all_of_retain() -> None:
    retain = _labelled([30, 20])
    assert parse_params("finetune", {}).retain_budget == 0.0  # off by default where an epoch has no D_f
    assert retain_pool(retain, 10, 0.0, seed=0) is retain
    assert retain_pool(retain, 10, 5.0, seed=0) is retain  # 50 rows asked, 50 there


@pytest.mark.slow
def test_a_budget_covering_retain_gives_the_same_weights_as_none_and_a_smaller_one_changes_them(
    digits_model, digits_random10
) -> None:
    """Off, a budget covering all of D_r, and the default on a 10% deletion (24·|D_f| > |D_r|) run the same
    steps bit for bit: the default pool changes nothing where the other defaults were tuned."""
    forget, retain = digits_random10
    weights = {}
    runs = (
        ("off", {"retain_budget": 0}),
        ("default", {}),
        ("covering", {"retain_budget": 1e6}),
        ("budget", {"retain_budget": 2}),
    )
    for name, extra in runs:
        params = {"epochs": 0.5, "bound_by": "correct", **extra}
        model = run_method("ugradsl_plus", copy.deepcopy(digits_model), forget, retain, params)
        weights[name] = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert torch.equal(weights["off"], weights["default"])
    assert torch.equal(weights["off"], weights["covering"])
    assert not torch.allclose(weights["off"], weights["budget"])


def _steps(model, forget: SampleDataset, retain: SampleDataset, method: str, params: dict) -> int:
    calls: list[float] = []
    hooks = Hooks(progress=calls.append, check_every=1)
    run_method(method, copy.deepcopy(model), forget, retain, params, hooks)
    return len(calls) - 2  # start and finish bracket one call per step


@pytest.mark.parametrize("n_forget", [20, 50, 100])
def test_steps_scale_with_the_deletion_when_budgeted(digits_model, digits, n_forget: int) -> None:
    train_ds = digits[0]
    forget, retain = train_ds.split_by_ids(train_ds.ids[:n_forget])
    params = {"epochs": 2, "batch_size": 32, "retain_budget": 3.0, "bound_by": "correct", "lr": 1e-6}
    assert _steps(digits_model, forget, retain, "ugradsl_plus", params) == 2 * math.ceil(3 * n_forget / 32)
    salun_style = {"epochs": 1, "batch_size": 32, "retain_budget": 3.0, "lr": 1e-6}
    assert _steps(digits_model, forget, retain, "random_label", salun_style) == math.ceil(
        n_forget / 32
    ) + math.ceil(3 * n_forget / 32)


def test_by_default_a_small_deletion_costs_in_proportion_to_its_size(digits_model, digits) -> None:
    """UGradSL+'s default pool is 24·|D_f| retain rows: 10 forgotten samples take a third of the steps of
    30, where without a pool both cost as much as forgetting 10% of the set. 143 of the model's 1,437
    samples (10%) is above 1/25 of it: all of D_r, as without a pool."""
    train_ds = digits[0]
    params = {"bound_by": "correct", "lr": 1e-6}
    steps, unpooled = {}, {}
    for n in (10, 30, 143):
        forget, retain = train_ds.split_by_ids(train_ds.ids[:n])
        steps[n] = _steps(digits_model, forget, retain, "ugradsl_plus", params)
        assert steps[n] == round(1.5 * math.ceil(min(len(retain), 24 * n) / 64))
        unpooled[n] = _steps(digits_model, forget, retain, "ugradsl_plus", {**params, "retain_budget": 0})
    assert (steps[10], steps[30], steps[143]) == (6, 18, 32)
    assert unpooled == {10: 34, 30: 33, 143: 32}


def test_an_epoch_over_retain_is_an_epoch_over_the_pool(digits_model, digits_random10) -> None:
    """Every retain batch of one epoch comes from the pool, each pool row exactly once."""
    forget, retain = digits_random10
    params = parse_params("ugradsl_plus", {"epochs": 1, "batch_size": 32, "retain_budget": 1.5, "lr": 1e-6})
    pool = retain_pool(retain, len(forget), 1.5, params.seed)
    seen: list[torch.Tensor] = []

    def spy(model: torch.nn.Module, b: Batch) -> Terms:
        seen.append(b.xr.flatten(1))
        return Terms(torch.nn.functional.cross_entropy(model(b.xr), b.yr), None)

    run_steps(copy.deepcopy(digits_model), forget, retain, params, Hooks(), spy, Plan("retain", 1.0, 0.0))
    rows = torch.cat(seen)
    assert len(rows) == len(pool) == math.ceil(1.5 * len(forget)) < len(retain)
    key = lambda t: sorted(map(tuple, t.tolist()))  # noqa: E731 - rows compared as sets of pixel tuples
    assert key(rows) == key(pool.x.flatten(1))


def _class_deletion(digits, cls: int) -> tuple[SampleDataset, SampleDataset]:
    train_ds = digits[0]
    return train_ds.split_by_ids(
        [i for i, y in zip(train_ds.ids, train_ds.y.tolist(), strict=True) if y == cls]
    )


def test_a_deletion_that_takes_a_whole_class_runs_on_a_pool_of_five_times_its_size(
    digits_model, digits
) -> None:
    """A class leaving D_r runs its ``class_epochs`` (0.75) over 5·|D_f| retain rows by default
    (``class_retain_budget``): 5/9 of the steps of all of D_r on a 10-class set. A random deletion of the
    same size keeps all of D_r and its 1.5 epochs."""
    forget, retain = _class_deletion(digits, 3)
    params = {"bounded": False, "lr": 1e-6}  # unbounded: no rerun for a class still recognised
    pooled = _steps(digits_model, forget, retain, "ugradsl_plus", params)
    assert pooled == round(0.75 * math.ceil(5 * len(forget) / 64))
    assert _steps(
        digits_model, forget, retain, "ugradsl_plus", {**params, "class_retain_budget": 0}
    ) == round(0.75 * math.ceil(len(retain) / 64))
    train_ds = digits[0]
    r_forget, r_retain = train_ds.split_by_ids(train_ds.ids[len(train_ds) - len(forget) :])
    assert set(r_retain.y.tolist()) == set(range(10))  # every class keeps samples: not class-wise
    assert _steps(digits_model, r_forget, r_retain, "ugradsl_plus", params) == round(
        1.5 * math.ceil(len(r_retain) / 64)
    )


@pytest.mark.slow
def test_the_class_budget_is_the_retain_budget_a_class_wise_run_uses(digits_model, digits) -> None:
    """The default class-wise run is the run with ``retain_budget`` 5, bit for bit; the smaller of the two
    budgets wins, and 0 turns the class budget off."""
    forget, retain = _class_deletion(digits, 3)

    def weights(extra: dict) -> torch.Tensor:
        params = {"epochs": 0.5, "bound_by": "correct", **extra}
        model = run_method("ugradsl_plus", copy.deepcopy(digits_model), forget, retain, params)
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    default = weights({})
    assert torch.equal(default, weights({"retain_budget": 5, "class_retain_budget": 0}))
    assert torch.equal(weights({"retain_budget": 2}), weights({"retain_budget": 2, "class_retain_budget": 0}))

    def rows(extra: dict) -> int:
        plans: list[dict] = []
        params = {"epochs": 0.5, "bound_by": "correct", **extra}
        run_method(
            "ugradsl_plus", copy.deepcopy(digits_model), forget, retain, params, Hooks(on_plan=plans.append)
        )
        return int(plans[0]["retain_rows"])

    assert rows({"retain_budget": 0, "class_retain_budget": 0}) == len(retain)  # 0 and 0: all of D_r
    assert rows({}) < len(retain)
    assert not torch.equal(default, weights({"class_retain_budget": 0}))
