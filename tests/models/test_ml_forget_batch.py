"""``forget_batch_ratio``: fewer forget samples per UGradSL+ step, each weighted so a pass over D_r pushes
D_f as hard as with full forget batches (``engine.forget_norm``)."""

import copy

import pytest
import torch

from models.hooks import Hooks
from models.unlearning import run_method
from models.unlearning.engine import Batch, Plan, Terms, forget_norm, run_steps
from models.unlearning.params import parse_params


def _record(digits_model, forget, retain, extra: dict) -> list[tuple[int, int, float]]:
    """(|B_f|, |B_r|, divisor) of every step of one UGradSL+-shaped run (lead = retain)."""
    params = parse_params("ugradsl_plus", {"epochs": 1, "batch_size": 32, "lr": 1e-6, **extra})
    seen: list[tuple[int, int, float]] = []

    def spy(model: torch.nn.Module, b: Batch) -> Terms:
        seen.append((len(b.yf), len(b.yr), b.forget_divisor()))
        return Terms(torch.nn.functional.cross_entropy(model(b.xr), b.yr), None)

    run_steps(copy.deepcopy(digits_model), forget, retain, params, Hooks(), spy, Plan("retain", 1.0, 0.0))
    return seen


def _push(steps: list[tuple[int, int, float]]) -> float:
    """Total forget weight over the run: Σ_steps |B_f| / divisor."""
    return sum(n_f / div for n_f, _, div in steps)


@pytest.mark.parametrize("n_forget", [10, 20, 100])
def test_a_smaller_forget_batch_keeps_the_push_per_pass(digits_model, digits, n_forget: int) -> None:
    train_ds = digits[0]
    forget, retain = train_ds.split_by_ids(train_ds.ids[:n_forget])
    full = _record(digits_model, forget, retain, {"forget_batch_ratio": 1.0})
    small = _record(digits_model, forget, retain, {"forget_batch_ratio": 0.25})
    assert [r for _, r, _ in full] == [r for _, r, _ in small]  # the same retain batches, step for step
    assert max(f for f, _, _ in small) == min(8, n_forget)
    assert max(f for f, _, _ in full) == min(32, n_forget)
    assert _push(small) == pytest.approx(_push(full), rel=1e-9)
    assert _push(full) > 0


def test_the_default_divisor_is_the_retain_batch() -> None:
    """With |B_f| = min(|B_r|, |D_f|), the divisor is |B_r|: 1/B per forget sample, as before the option."""
    assert forget_norm(32, 32, 1000) == 32
    assert forget_norm(10, 32, 10) == 32  # a 10-sample deletion: not pushed 3.2x harder
    assert forget_norm(8, 32, 1000) == 8  # a mean over the smaller batch
    assert forget_norm(8, 32, 16) == 16  # drawn half the time, weighted 2/32 when drawn
    assert forget_norm(8, 0, 1000) == 8  # no retain batch: a mean


@pytest.mark.slow
def test_ugradsl_plus_defaults_to_half_size_forget_batches(digits_model, digits_random10) -> None:
    forget, retain = digits_random10
    assert parse_params("ugradsl_plus", {}).forget_batch_ratio == 0.5
    assert parse_params("ugradsl", {}).forget_batch_ratio == 1.0  # UGradSL's epoch is a pass over D_f
    weights = {}
    runs = (("default", {}), ("half", {"forget_batch_ratio": 0.5}), ("full", {"forget_batch_ratio": 1.0}))
    for name, extra in runs:
        params = {"epochs": 0.5, "bound_by": "correct", **extra}
        model = run_method("ugradsl_plus", copy.deepcopy(digits_model), forget, retain, params)
        weights[name] = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert torch.equal(weights["default"], weights["half"])
    assert not torch.allclose(weights["default"], weights["full"])
