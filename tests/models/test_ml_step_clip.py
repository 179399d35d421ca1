"""``clip_to_first`` (``StepClip``): an unlearning step's gradient is held to a multiple of the run's first
step's norm, so a run whose gradients grow as it leaves the original's basin cannot take ever larger steps."""

import copy

import pytest
import torch

from models.datasets import SampleDataset
from models.hooks import Hooks
from models.training import StepClip, clip_gradients
from models.unlearning import masks as M
from models.unlearning import run_method
from models.unlearning.engine import Batch, Plan, Terms, run_steps
from models.unlearning.params import parse_params


def _with_grads(*grads: list[float]) -> list[torch.nn.Parameter]:
    ps = [torch.nn.Parameter(torch.zeros(len(g))) for g in grads]
    for p, g in zip(ps, grads, strict=True):
        p.grad = torch.tensor(g)
    return ps


def _norm(ps: list[torch.nn.Parameter]) -> float:
    return float(torch.nn.utils.get_total_norm([p.grad for p in ps]))


def test_a_step_is_held_to_a_multiple_of_the_first_step_s_norm() -> None:
    clip = StepClip(limit=0.0, to_first=2.0)
    first = _with_grads([3.0, 0.0], [4.0])  # norm 5: sets the scale, untouched
    clip(first)
    assert _norm(first) == pytest.approx(5.0)
    small = _with_grads([6.0, 0.0], [8.0])  # norm 10 = 2x: allowed
    clip(small)
    assert _norm(small) == pytest.approx(10.0)
    large = _with_grads([30.0, 0.0], [40.0])  # norm 50: scaled to 10, direction kept
    clip(large)
    assert _norm(large) == pytest.approx(10.0, rel=1e-5)
    assert float(large[0].grad[0] / large[1].grad[0]) == pytest.approx(0.75)


def test_the_fixed_limit_still_applies_and_a_zero_first_step_sets_no_scale() -> None:
    clip = StepClip(limit=4.0, to_first=2.0)
    zero = _with_grads([0.0, 0.0])
    clip(zero)  # nothing to forget yet: no scale
    first = _with_grads([3.0, 4.0])  # norm 5, over the fixed limit: clipped to 4, but the scale is 5
    clip(first)
    assert _norm(first) == pytest.approx(4.0, rel=1e-5)
    assert clip.first is not None and float(clip.first) == pytest.approx(5.0)
    later = _with_grads([30.0, 40.0])
    clip(later)
    assert _norm(later) == pytest.approx(4.0, rel=1e-5)  # min(4, 2 * 5)


def test_off_it_is_the_fixed_clip_bit_for_bit() -> None:
    ours, theirs = _with_grads([30.0, 1.0], [40.0]), _with_grads([30.0, 1.0], [40.0])
    StepClip(limit=1.0)(ours)
    clip_gradients(theirs, 1.0)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a.grad, b.grad)


def test_a_masked_step_takes_the_run_s_clip() -> None:
    clip = StepClip(limit=0.0, to_first=1.0)
    clip(_with_grads([1.0, 0.0]))  # the first step: scale 1
    (w,) = _with_grads([10.0, 0.0])
    opt = torch.optim.SGD([w], lr=1.0)
    M.masked_step(opt, [w], [torch.tensor([True, True])], binary=True, clip=clip)
    assert torch.allclose(w.detach(), torch.tensor([-1.0, 0.0]))  # a step of 1, not 10


def _growing_run(extra: dict) -> list[float]:
    """The norm of every step's change to a linear model under an objective whose gradient grows 10x per
    step (plain SGD, constant lr: a step's change is lr times its clipped gradient)."""
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    data = SampleDataset(x, torch.zeros(8, dtype=torch.long), [f"s{i}" for i in range(8)])
    forget, retain = data.split_by_ids(data.ids[:4])
    torch.manual_seed(0)  # the same weights each call: a step's norm is a difference of them, rounded
    model = torch.nn.Linear(4, 2)
    params = parse_params(
        "ugradsl_plus",
        {"epochs": 4, "batch_size": 4, "lr": 0.1, "momentum": 0.0, "schedule": "constant", **extra},
    )
    seen: list[torch.Tensor] = []

    def growing(m: torch.nn.Module, b: Batch) -> Terms:
        seen.append(torch.cat([p.detach().flatten() for p in m.parameters()]))
        return Terms(10.0 ** len(seen) * m(b.xr).sum() * 1e-3, None)

    run_steps(copy.deepcopy(model), forget, retain, params, Hooks(), growing, Plan("retain", 1.0, 0.0))
    return [float((b - a).norm()) for a, b in zip(seen, seen[1:], strict=False)]


def test_a_run_s_steps_stay_within_the_multiple_of_its_first() -> None:
    free = _growing_run({"grad_clip": 0.0, "clip_to_first": 0.0})
    held = _growing_run({"grad_clip": 0.0, "clip_to_first": 2.0})
    assert len(free) == len(held) >= 3
    assert free[2] > 50 * free[0]  # unheld, the steps grow with the gradient
    assert held[0] == pytest.approx(free[0])  # the first step is the scale, untouched
    assert all(step <= 2.0 * held[0] * (1 + 1e-5) for step in held)
    assert held[-1] == pytest.approx(2.0 * held[0], rel=1e-4)


def test_ugradsl_plus_holds_its_steps_to_twice_the_first_by_default() -> None:
    assert parse_params("ugradsl_plus", {}).clip_to_first == 2.0
    assert parse_params("ugradsl", {}).clip_to_first == 0.0  # the paper's method as it was


def _plans(
    model: torch.nn.Module, forget: SampleDataset, retain: SampleDataset, heldout: SampleDataset
) -> list[dict]:
    """What each run of a default UGradSL+ deletion reported before its first step."""
    plans: list[dict] = []
    hooks = Hooks(on_plan=plans.append)
    run_method("ugradsl_plus", copy.deepcopy(model), forget, retain, {}, hooks, heldout=heldout)
    return plans


def test_a_random_deletion_is_held_and_a_class_wise_one_is_not(digits_model, digits) -> None:
    """A class leaving D_r is pushed until it is forgotten (reruns): held steps only made it rerun more
    (ResNet-18, stop 43)."""
    train_ds, test_ds = digits
    forget, retain = train_ds.split_by_ids(train_ds.ids[:40])
    assert [p["clip_to_first"] for p in _plans(digits_model, forget, retain, test_ds)] == [2.0]
    gone = [i for i, y in zip(train_ds.ids, train_ds.y.tolist(), strict=True) if y == 3]
    forget, retain = train_ds.split_by_ids(gone)
    plans = _plans(digits_model, forget, retain, test_ds)
    assert plans and all(p["clip_to_first"] == 0.0 for p in plans)
