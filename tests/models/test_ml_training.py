import math

import pytest
import torch

from models.architectures import build_model
from models.datasets import SampleDataset
from models.hooks import Cancelled, Hooks
from models.metrics import accuracy
from models.training import TrainRecipe, clip_gradients, lr_scheduler, train


def test_digits_model_memorises_and_generalises(
    digits: tuple[SampleDataset, SampleDataset], digits_model
) -> None:
    train_ds, test_ds = digits
    assert accuracy(digits_model, train_ds) >= 0.99
    assert accuracy(digits_model, test_ds) >= 0.95


def test_training_is_deterministic_on_cpu(digits: tuple[SampleDataset, SampleDataset]) -> None:
    small = digits[0].subset(range(200))
    recipe = TrainRecipe(epochs=2, batch_size=32, seed=3)
    outs = []
    for _ in range(2):
        torch.manual_seed(0)
        outs.append(train(build_model("mlp", hidden=(16,)), small, recipe).state_dict())
    for k in outs[0]:
        assert torch.equal(outs[0][k], outs[1][k]), k


def test_recipe_round_trips_through_dict() -> None:
    r = TrainRecipe(epochs=3, lr=0.1, optimizer="adam")
    assert TrainRecipe.from_dict(r.to_dict()) == r


def test_training_reports_progress_and_honours_cancellation(
    digits: tuple[SampleDataset, SampleDataset],
) -> None:
    small = digits[0].subset(range(256))
    seen: list[float] = []
    train(build_model("mlp"), small, TrainRecipe(epochs=2, batch_size=32), hooks=Hooks(progress=seen.append))
    assert seen[0] == 0.0 and seen[-1] == 1.0 and seen == sorted(seen)
    calls = {"n": 0}

    def cancel_on_second_check() -> bool:
        calls["n"] += 1
        return calls["n"] >= 2

    try:
        train(
            build_model("mlp"),
            small,
            TrainRecipe(epochs=5, batch_size=8),
            hooks=Hooks(should_cancel=cancel_on_second_check, check_every=3),
        )
    except Cancelled:
        pass
    else:
        raise AssertionError("training was not cancelled")


def test_cosine_schedule_decays_the_learning_rate_to_zero() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = lr_scheduler(opt, "cosine", total=4)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([2.0, 1.0 + math.cos(math.pi / 4), 1.0, 1.0 - math.cos(math.pi / 4)])
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    flat = lr_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0), "constant", total=4)
    assert flat.get_last_lr() == [2.0]


def _grads(scale: float) -> list[torch.Tensor]:
    ps = [torch.nn.Parameter(torch.zeros(3, 4)), torch.nn.Parameter(torch.zeros(5))]
    gen = torch.Generator().manual_seed(0)
    for p in ps:
        p.grad = torch.randn(p.shape, generator=gen) * scale
    return ps


@pytest.mark.parametrize("scale", [0.01, 10.0])
def test_clip_gradients_gives_clip_grad_norm_s_result_bit_for_bit(scale: float) -> None:
    ours, theirs = _grads(scale), _grads(scale)
    clip_gradients(ours, 1.0)
    torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    for a, b in zip(ours, theirs, strict=True):
        assert a.grad is not None and torch.equal(a.grad, b.grad)
    norm = float(torch.nn.utils.get_total_norm([p.grad for p in ours]))
    assert norm == pytest.approx(1.0, rel=1e-5) if scale > 1 else norm < 1.0  # clipped, or left


def test_clip_gradients_leaves_gradients_under_the_limit_untouched() -> None:
    ps = _grads(0.01)
    versions = [p.grad._version for p in ps]  # bumped by every in-place write, a multiply by 1 included
    clip_gradients(ps, 1.0)
    assert [p.grad._version for p in ps] == versions
    clip_gradients(ps, 1e-6)
    assert [p.grad._version for p in ps] != versions
