"""``pushes``: a UGradSL run sized by how much the model has memorised D_f (models/unlearning/sizing.py)."""

import copy
import dataclasses
import math

import pytest
import torch

from models.datasets import SampleDataset
from models.hooks import Hooks
from models.metrics import per_sample_loss
from models.unlearning import run_method
from models.unlearning.bounds import HELDOUT_SAMPLE
from models.unlearning.engine import Plan, count_steps, partner_size, retain_pool
from models.unlearning.params import parse_params
from models.unlearning.sizing import (
    distance_se,
    forget_distance,
    forget_ratio,
    pushes_per_sample,
    reread,
    retain_passes,
    sized,
)

PLUS = Plan("retain", 0.7, 0.3)
SHRINK = 0.0  # the standard errors a run takes off the measured distance by default (pushes_shrink)


def _rule(pushes: float, distance: float, efolds: float = 0.6) -> float:
    """The documented rule, written out: pushes·(1 - exp(-distance / pushes_efolds)), at least one."""
    return max(1.0, pushes * (1 - math.exp(-distance / efolds)))


def _pushes_per_sample(params, n_forget: int, n_retain: int) -> float:
    """What the engine will do with ``params``: steps x forget samples per step / |D_f|."""
    pool = len(retain_pool(_rows(n_retain), n_forget, params.retain_budget, params.seed))
    steps = count_steps(PLUS, params, n_forget, pool)
    b_f = partner_size(PLUS, min(params.batch_size, pool), n_forget, params.forget_batch_ratio)
    return steps * b_f / n_forget


def _rows(n: int) -> SampleDataset:
    return SampleDataset(torch.zeros(n, 1), torch.arange(n) % 5, [f"r{i}" for i in range(n)])


@pytest.mark.parametrize("n_forget, n_retain", [(1000, 9000), (100, 9900), (6000, 54000), (14, 1423)])
def test_a_fully_memorised_deletion_is_pushed_pushes_times_whatever_its_size(n_forget, n_retain) -> None:
    params = sized(parse_params("ugradsl_plus", {"pushes": 16}), PLUS, n_forget, n_retain, distance=4.0)
    assert _pushes_per_sample(params, n_forget, n_retain) == pytest.approx(16, rel=0.05)


def test_a_large_deletion_takes_fewer_longer_steps_past_long_run_passes_over_what_stays() -> None:
    """16 pushes of half the set read D_r 32 times, as long as a retrain: past ``long_run_passes`` (4) the
    run takes sqrt(4 / passes) of its steps at an lr raised by the inverse (the same summed lr), up to 3x;
    a random 10% (3.6 passes) is left as it was."""
    base = parse_params("ugradsl_plus", {"pushes": 16})
    assert base.long_run_passes == 4
    for n_forget, n_retain, scale in ((1500, 1500, math.sqrt(4 / 32)), (9000, 1000, 1 / 3), (1000, 9000, 1)):
        params = sized(base, PLUS, n_forget, n_retain, distance=40.0)
        assert params.lr == pytest.approx(base.lr / scale, rel=0.01)  # the steps are whole
        assert params.lr * params.pushes == pytest.approx(base.lr * 16)  # the summed lr is kept
        assert _pushes_per_sample(params, n_forget, n_retain) == pytest.approx(16 * scale, rel=0.05)
    # never under one pass over D_f: a 90% deletion that looks unseen (one push each) is left as it was
    unseen = sized(base, PLUS, 1293, 144, distance=0.0)
    assert unseen.lr == base.lr and _pushes_per_sample(unseen, 1293, 144) >= 1
    off = sized(dataclasses.replace(base, long_run_passes=0), PLUS, 1500, 1500, distance=40.0)
    assert (off.lr, _pushes_per_sample(off, 1500, 1500)) == (base.lr, pytest.approx(16, rel=0.05))


def test_the_pushes_rise_steeply_over_the_first_e_fold_and_level_off() -> None:
    """Stops 32-33's line (pushes·(1 + d)) undershot a model 0.85 e-folds out; the need saturates."""
    params = parse_params("ugradsl_plus", {})
    assert (params.pushes, params.pushes_efolds) == (16, 0.6)
    at = {d: pushes_per_sample(params, d) for d in (0.0, 0.16, 0.6, 0.85, 2.0, 4.0, 40.0)}
    assert at[0.0] == 1  # at least one push, even for a D_f that looks unseen
    assert at[0.6] == pytest.approx(16 * (1 - math.exp(-1)))
    assert 3 < at[0.16] < 4.5 and 10 < at[0.85] < 13  # the 60k model's and the model between the regimes'
    assert at[2.0] > 0.95 * 16 and at[40.0] == pytest.approx(16)
    assert list(at.values()) == sorted(at.values())
    slower = parse_params("ugradsl_plus", {"pushes_efolds": 2.0})
    assert pushes_per_sample(slower, 0.85) == pytest.approx(_rule(16, 0.85, 2.0))
    assert pushes_per_sample(slower, 0.85) < at[0.85]


def _ratio(distance: float, full: float = 0.5, efolds: float = 0.6) -> float:
    """The documented forget batch share, written out: 1 - (1 - full)·(1 - exp(-distance / efolds))."""
    return 1 - (1 - full) * (1 - math.exp(-distance / efolds))


def test_the_repair_follows_memorisation_equal_batches_unseen_half_size_memorised() -> None:
    params = parse_params("ugradsl_plus", {})
    at = {d: forget_ratio(params, d) for d in (0.0, 0.16, 0.6, 0.85, 4.0, 40.0)}
    assert at[0.0] == 1 and at[40.0] == pytest.approx(0.5)
    assert at[0.6] == pytest.approx(_ratio(0.6)) and at[0.16] == pytest.approx(_ratio(0.16))
    assert 0.85 < at[0.16] < 0.9 and 0.6 < at[0.85] < 0.65 and at[4.0] < 0.51  # the three tuning models
    assert list(at.values()) == sorted(at.values(), reverse=True)
    quarter = parse_params("ugradsl_plus", {"forget_batch_ratio": 0.25})
    assert forget_ratio(quarter, 40.0) == pytest.approx(0.25) and forget_ratio(quarter, 0.0) == 1
    # a sized run's steps carry that share: one 64-row retain batch beside round(64·ratio) forget rows
    for d in (0.16, 0.85, 4.0):
        run = sized(params, PLUS, 6000, 54000, distance=d)
        assert run.forget_batch_ratio == pytest.approx(_ratio(d))
        b_f = partner_size(PLUS, 64, 6000, run.forget_batch_ratio)
        assert b_f == round(64 * _ratio(d))
        assert _pushes_per_sample(run, 6000, 54000) == pytest.approx(_rule(16, d), rel=0.05)


def _passes(distance: float, passes: float = 2.0, efolds: float = 0.6) -> float:
    """The documented passes over the pool, written out: 1 + (retain_passes - 1)·exp(-distance / efolds)."""
    return 1 + (passes - 1) * math.exp(-distance / efolds)


@pytest.mark.parametrize("passes", [1.0, 2.0, 3.0])
def test_a_short_run_passes_over_a_pool_of_just_the_rows_it_reads_as_often_as_d_says(passes) -> None:
    params = sized(
        parse_params("ugradsl_plus", {"pushes": 0.5, "retain_passes": passes}), PLUS, 1000, 9000, 0.1
    )
    pool = len(retain_pool(_rows(9000), 1000, params.retain_budget, params.seed))
    steps = math.ceil(1000 / round(64 * _ratio(0.1)))  # one push each: 59 forget rows beside 64 retain rows
    assert pool == math.ceil(steps * 64 / _passes(0.1, passes)) < 9000
    assert count_steps(PLUS, params, 1000, pool) == steps
    assert _pushes_per_sample(params, 1000, 9000) == pytest.approx(1, abs=0.03)


def test_the_passes_follow_memorisation_twice_for_unseen_once_for_memorised() -> None:
    """The 1% deletions of the memorising model lost with their pool read twice (Avg Gap 3.16 against
    2.33 on the reporting seeds), the 60k model's random 10% did not: repair follows d, like the batches."""
    params = parse_params("ugradsl_plus", {})
    at = {d: retain_passes(params, d) for d in (0.0, 0.16, 0.85, 4.0)}
    assert at[0.0] == 2 and at[4.0] < 1.01 and at[0.16] == pytest.approx(_passes(0.16))
    assert list(at.values()) == sorted(at.values(), reverse=True)
    small = sized(params, PLUS, 100, 9900, distance=4.0)  # 50 steps of 64 retain rows: 3,200 reads
    assert len(retain_pool(_rows(9900), 100, small.retain_budget, small.seed)) == 2400  # the 24x pool, kept
    big = sized(params, PLUS, 6000, 54000, distance=0.16)
    pool = len(retain_pool(_rows(54000), 6000, big.retain_budget, big.seed))
    assert pool == math.ceil(count_steps(PLUS, big, 6000, pool) * 64 / _passes(0.16))


def test_the_pool_is_read_twice_by_default_and_never_shrinks_below_one_batch() -> None:
    assert parse_params("ugradsl_plus", {}).retain_passes == 2
    # a memorised 10% deletion already reads all of D_r 3.6 times: its pool stays D_r
    long = sized(parse_params("ugradsl_plus", {}), PLUS, 1000, 9000, distance=4.0)
    assert len(retain_pool(_rows(9000), 1000, long.retain_budget, long.seed)) == 9000
    # ten forget rows pushed once: one step, one 64-row retain batch, not a pool of 32
    tiny = sized(parse_params("ugradsl_plus", {"pushes": 1}), PLUS, 10, 1000, distance=0.1)
    pool = len(retain_pool(_rows(1000), 10, tiny.retain_budget, tiny.seed))
    assert pool == 64 and count_steps(PLUS, tiny, 10, pool) == 1


def test_off_or_nothing_to_size_leaves_the_params_alone() -> None:
    assert parse_params("ugradsl_plus", {}).pushes == 16  # on by default for UGradSL+
    off = parse_params("ugradsl_plus", {"pushes": 0})
    assert sized(off, PLUS, 1000, 9000, distance=1.0) is off
    on = parse_params("ugradsl_plus", {"pushes": 4})
    assert sized(on, PLUS, 0, 9000, distance=1.0) is on
    # UGradSL's epoch is one pass over D_f: pushes are epochs
    on_forget = sized(parse_params("ugradsl", {"pushes": 4}), Plan("forget", 0.7, 0.3), 10, 90, 2.0)
    assert on_forget.epochs == pytest.approx(_rule(4, 2.0))


def _steps(model, forget: SampleDataset, retain: SampleDataset, heldout, params: dict) -> int:
    calls: list[float] = []
    hooks = Hooks(calls.append, check_every=1)
    run_method("ugradsl_plus", copy.deepcopy(model), forget, retain, params, hooks, heldout=heldout)
    return len(calls) - 2  # start and finish bracket one call per step


def test_the_model_decides_the_length_memorised_training_rows_run_long_unseen_rows_short(
    digits_model, digits
) -> None:
    """The digits model memorised its training set: 100 of its training rows sit e-folds of loss below
    held-out data. 100 test rows handed in as a "deletion" are held-out data already: the run is the
    shortest the rule allows, ``pushes`` each."""
    train_ds, test_ds = digits
    calib, unseen = test_ds.subset(torch.arange(0, 250)), test_ds.subset(torch.arange(250, 350))
    memorised, retain = train_ds.split_by_ids(train_ds.ids[:100])
    far = forget_distance(digits_model, memorised, _losses(digits_model, calib), SHRINK)
    assert far > 2 and forget_distance(digits_model, unseen, _losses(digits_model, calib)) < 0.25
    params = {"pushes": 16, "lr": 1e-6}
    long = _steps(digits_model, memorised, retain, calib, params)
    short = _steps(digits_model, unseen, retain, calib, params)
    near = forget_distance(digits_model, unseen, _losses(digits_model, calib), SHRINK)
    assert long == math.ceil(_rule(16, far) * 100 / round(64 * _ratio(far)))  # forget rows per step
    assert short == math.ceil(_rule(16, near) * 100 / round(64 * _ratio(near))) < long / 2


def test_the_distance_standard_error_matches_a_bootstrap_of_heavy_tailed_losses() -> None:
    """The delta method's error of ln(mean_h / mean_f) against 400 bootstrap redraws of both samples, on
    losses shaped like a classifier's: mostly near zero, a tenth of them large."""
    gen = torch.Generator().manual_seed(0)

    def losses(n: int, scale: float) -> torch.Tensor:
        wrong = torch.rand(n, generator=gen) < 0.1
        return torch.where(wrong, 2.0, 0.02) * scale * torch.empty(n).exponential_(generator=gen)

    heldout, forget = losses(2048, 1.0).double(), losses(6000, 0.8).double()
    redraws = []
    for _ in range(400):
        h = heldout[torch.randint(len(heldout), (len(heldout),), generator=gen)]
        f = forget[torch.randint(len(forget), (len(forget),), generator=gen)]
        redraws.append(math.log(float(h.mean()) / float(f.mean())))
    assert distance_se(heldout, forget) == pytest.approx(float(torch.tensor(redraws).std()), rel=0.15)
    assert distance_se(heldout[:512], forget) > distance_se(heldout, forget)  # fewer rows, more noise
    assert distance_se(heldout[:1], forget[:1]) == 0.0


def test_a_shrunk_distance_takes_off_its_standard_errors_and_stops_at_zero(digits_model, digits) -> None:
    train_ds, test_ds = digits
    calib, unseen = test_ds.subset(torch.arange(0, 250)), test_ds.subset(torch.arange(250, 350))
    memorised = train_ds.subset(torch.arange(100))
    heldout = _losses(digits_model, calib)
    far = forget_distance(digits_model, memorised, heldout)
    se = distance_se(heldout.double(), _losses(digits_model, memorised).double())
    assert 0 < se < far / 4
    assert forget_distance(digits_model, memorised, heldout, 2.0) == pytest.approx(far - 2 * se)
    assert forget_distance(digits_model, unseen, heldout, 10.0) == 0.0  # within the noise: nothing to push
    assert parse_params("ugradsl_plus", {}).pushes_shrink == SHRINK


def _losses(model, data: SampleDataset) -> torch.Tensor:
    return torch.from_numpy(per_sample_loss(model, data))


def test_epochs_decide_without_held_out_data_or_when_given_alone(digits_model, digits_random10) -> None:
    forget, retain = digits_random10
    base = {"lr": 1e-6, "bound_by": "correct"}
    by_epochs = _steps(digits_model, forget, retain, None, {**base, "pushes": 0})
    assert _steps(digits_model, forget, retain, None, {**base, "pushes": 4}) == by_epochs
    # an explicit epochs turns pushes off unless pushes is given too
    assert parse_params("ugradsl_plus", {"epochs": 3}).pushes == 0
    assert parse_params("ugradsl_plus", {"epochs": 3, "pushes": 2}).pushes == 2
    stored = parse_params("ugradsl_plus", {"pushes": 4})
    assert parse_params("ugradsl_plus", stored) == stored  # a stored record re-parses unchanged


def test_a_deletion_that_takes_a_class_keeps_its_epochs(digits_model, digits) -> None:
    train_ds, test_ds = digits
    threes = [i for i, y in zip(train_ds.ids, train_ds.y.tolist(), strict=True) if y == 3]
    forget, retain = train_ds.split_by_ids(threes)
    for pool in (5.0, 0.0):  # the class-wise pool, and none
        base = {"lr": 1e-6, "bound_by": "correct", "class_retain_budget": pool}
        epochs = _steps(digits_model, forget, retain, test_ds, {**base, "pushes": 0})
        assert epochs > 0
        assert _steps(digits_model, forget, retain, test_ds, {**base, "pushes": 100}) == epochs


def test_each_run_reports_what_sized_it_and_what_it_read(digits_model, digits) -> None:
    """The params a run is given no longer say how long it ran: the plan it reports does (``Hooks.plan``)."""
    train_ds, test_ds = digits
    forget, retain = train_ds.split_by_ids(train_ds.ids[:100])
    plans: list[dict] = []
    calls: list[float] = []
    hooks = Hooks(calls.append, check_every=1, on_plan=plans.append)
    params = {"pushes": 4, "lr": 1e-6}
    run_method("ugradsl_plus", copy.deepcopy(digits_model), forget, retain, params, hooks, heldout=test_ds)
    (plan,) = plans
    far = forget_distance(digits_model, forget, _losses(digits_model, test_ds), SHRINK)
    assert plan["sized_by"] == "pushes" and plan["distance"] == pytest.approx(far, rel=1e-3)
    shrunk: list[dict] = []
    run_method("ugradsl_plus", copy.deepcopy(digits_model), forget, retain, {**params, "pushes_shrink": 2.0},
               Hooks(on_plan=shrunk.append), heldout=test_ds)  # fmt: skip
    near = max(0.0, shrunk[0]["measured_distance"] - 2 * shrunk[0]["distance_se"])
    assert shrunk[0]["measured_distance"] == pytest.approx(plan["measured_distance"]) and near < far
    assert shrunk[0]["distance"] == pytest.approx(near) and shrunk[0]["distance_se"] > 0
    assert shrunk[0]["pushes_per_sample"] == pytest.approx(_rule(4, near), rel=1e-3)
    assert plan["pushes_per_sample"] == pytest.approx(_rule(4, far), rel=1e-3)
    assert plan["forget_batch_ratio"] == pytest.approx(_ratio(far), rel=1e-3)
    assert plan["steps"] == len(calls) - 2 and plan["forget_rows"] == 100
    assert plan["retain_rows"] <= len(retain)
    off: list[dict] = []
    run_method("ugradsl_plus", copy.deepcopy(digits_model), forget, retain, {**params, "pushes": 0},
               Hooks(on_plan=off.append), heldout=test_ds)  # fmt: skip
    assert off[0]["sized_by"] == "epochs" and "distance" not in off[0]


def test_a_sized_run_sends_each_forget_row_through_the_front_once(digits_model, digits) -> None:
    """Sizing reads D_f's losses off the features the run trains on: the pass it needs is the run's own,
    not a second pass over the whole model (0.46 s of a 4.9 s run on the 60k model)."""
    train_ds, test_ds = digits
    forget, retain = train_ds.split_by_ids(train_ds.ids[:100])
    model = copy.deepcopy(digits_model)
    rows: list[int] = []
    model.body[0].register_forward_hook(lambda _m, args, _out: rows.append(len(args[0])))
    plans: list[dict] = []
    params = {"pushes": 4, "lr": 1e-6}
    run_method("ugradsl_plus", model, forget, retain, params, Hooks(on_plan=plans.append), heldout=test_ds)
    (plan,) = plans
    assert plan["sized_by"] == "pushes" and plan["trained"] == "last_layers"
    bound = min(HELDOUT_SAMPLE, len(test_ds))  # the held-out bound's one pass over the whole model
    read = bound + len(forget) + plan["retain_rows"]
    assert read <= sum(rows) < read + 10  # beyond those: one-row probes of activation and feature sizes
    far = forget_distance(digits_model, forget, _losses(digits_model, test_ds))
    assert plan["distance"] == pytest.approx(far, rel=1e-4)  # the same distance as on the whole model


@pytest.mark.parametrize("n_forget, n_retain", [(6000, 54000), (1000, 9000), (144, 1293)])
def test_a_class_wise_pool_shrinks_to_what_its_steps_read_twice_and_keeps_the_steps(
    n_forget, n_retain
) -> None:
    """A class-wise run keeps its epochs' steps (and so each forget sample's pushes), on a pool that those
    steps' retain rows pass over ``retain_passes`` times: 3/4 of the 5·|D_f| pool at 1.5 epochs."""
    params = dataclasses.replace(parse_params("ugradsl_plus", {}), retain_budget=5.0)  # the class-wise pool
    pool = len(retain_pool(_rows(n_retain), n_forget, 5.0, params.seed))
    steps = count_steps(PLUS, params, n_forget, pool)
    run = reread(params, PLUS, n_forget, n_retain)
    shrunk = len(retain_pool(_rows(n_retain), n_forget, run.retain_budget, run.seed))
    assert shrunk == math.ceil(steps * 64 / 2) < pool
    assert count_steps(PLUS, run, n_forget, shrunk) == steps
    once = reread(dataclasses.replace(params, retain_passes=1.0), PLUS, n_forget, n_retain)
    assert len(retain_pool(_rows(n_retain), n_forget, once.retain_budget, once.seed)) == pool  # read 1.5x


def test_a_class_wise_run_reads_its_pool_twice(digits_model, digits) -> None:
    train_ds, test_ds = digits
    threes = [i for i, y in zip(train_ds.ids, train_ds.y.tolist(), strict=True) if y == 3]
    forget, retain = train_ds.split_by_ids(threes)
    plans: list[dict] = []
    run_method("ugradsl_plus", copy.deepcopy(digits_model), forget, retain, {"lr": 1e-6},
               Hooks(on_plan=plans.append), heldout=test_ds)  # fmt: skip
    first = plans[0]
    assert first["sized_by"] == "epochs"
    assert first["steps"] * 64 / first["retain_rows"] == pytest.approx(2, abs=0.15)


def test_a_class_wise_deletion_runs_class_epochs_unless_epochs_are_given(digits_model, digits) -> None:
    assert parse_params("ugradsl_plus", {}).class_epochs == 0.75
    assert parse_params("ugradsl_plus", {"epochs": 2}).class_epochs == 0  # the caller chose the length
    assert parse_params("ugradsl", {}).class_epochs == 0
    train_ds, test_ds = digits
    threes = [i for i, y in zip(train_ds.ids, train_ds.y.tolist(), strict=True) if y == 3]
    forget, retain = train_ds.split_by_ids(threes)
    base = {"lr": 1e-6, "bounded": False}  # unbounded: no rerun for a class still recognised
    default = _steps(digits_model, forget, retain, test_ds, base)
    given = _steps(digits_model, forget, retain, test_ds, {**base, "epochs": 1.5})
    assert given == _steps(digits_model, forget, retain, test_ds, {**base, "class_epochs": 1.5})
    assert default == pytest.approx(given / 2, abs=1)
