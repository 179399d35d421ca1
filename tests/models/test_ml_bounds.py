"""The held-out bound of UGradSL's forget term: which forget samples are still pushed."""

import copy

import pytest
import torch

from models.datasets import SampleDataset
from models.metrics import avg_gap, evaluate, per_sample_loss
from models.training import DIGITS_RECIPE
from models.unlearning import run_method
from models.unlearning.bounds import HeldoutBound, heldout_bound


def _bound(retained: list[bool]) -> HeldoutBound:
    return HeldoutBound(torch.arange(1, 11) / 10, torch.tensor(retained))  # quantiles 0.1 .. 1.0


def test_a_forget_sample_is_live_while_its_loss_is_below_the_heldout_loss_of_its_rank() -> None:
    loss = torch.tensor([0.05, 2.0, 0.5, 0.01])  # ranks 1, 3, 2, 0 of a batch of 4
    y = torch.zeros(4, dtype=torch.long)
    correct = torch.ones(4, dtype=torch.bool)
    # rank r reads quantile index floor((r + 0.5) * 10 / 4): ranks 0..3 -> 0.2, 0.4, 0.7, 0.9
    live = _bound([True, True]).live(loss, y, correct)
    assert live.tolist() == [True, False, True, True]


def test_a_forget_sample_whose_class_left_the_retain_set_is_live_while_correct() -> None:
    loss = torch.tensor([5.0, 5.0, 0.0, 0.0])  # far above / below every held-out quantile
    y = torch.tensor([1, 1, 1, 0])
    correct = torch.tensor([True, False, False, True])
    live = _bound([True, False]).live(loss, y, correct)
    assert live.tolist() == [True, False, False, True]  # class 1 follows correctness; class 0 its loss


def test_per_class_targets_rank_a_sample_within_its_class_against_that_classs_heldout_losses() -> None:
    """Class 0's unseen samples are easy (losses 0.1-1.6), class 1's hard (2.1-3.6): a class-1 forget sample
    at 1.0 is far below what a retrained model would give it, though it is the batch's highest loss."""
    easy, hard = torch.arange(1, 17) / 10, 2 + torch.arange(1, 17) / 10
    losses = torch.cat([easy, hard])
    labels = torch.cat([torch.zeros(16), torch.ones(16)]).long()
    order = losses.argsort()
    per_class = HeldoutBound(losses[order], torch.tensor([True, True]), labels[order])
    pooled = HeldoutBound(losses[order], torch.tensor([True, True]))
    loss, y = torch.tensor([0.9, 1.0]), torch.tensor([0, 1])
    correct = torch.ones(2, dtype=torch.bool)
    # alone in its class, each sample reads its class's median (index 8 of 16): 0.9 and 2.9
    torch.testing.assert_close(per_class.targets(loss, y), torch.tensor([0.9, 2.9]))
    assert per_class.live(loss, y, correct).tolist() == [False, True]
    # pooled, rank 1 of 2 reads index 24 of 32 (2.9) and rank 0 reads index 8 (0.9)
    assert pooled.live(loss, y, correct).tolist() == [False, True]
    assert pooled.live(torch.tensor([2.0, 1.0]), y, correct).tolist() == [True, False]
    assert per_class.live(torch.tensor([2.0, 1.0]), y, correct).tolist() == [False, True]


def test_a_class_with_few_heldout_samples_reads_the_pooled_losses() -> None:
    losses = torch.arange(1, 21) / 10  # 20 held-out losses, only 2 of class 1
    labels = torch.zeros(20, dtype=torch.long)
    labels[[0, 1]] = 1
    bound = HeldoutBound(losses, torch.tensor([True, True]), labels)
    # one class-1 sample reads the pooled median (index 10: 1.1), not its two samples' (0.2)
    torch.testing.assert_close(bound.targets(torch.tensor([0.5]), torch.tensor([1])), torch.tensor([1.1]))


def test_overshoot_pull_weights_samples_past_their_target_negatively_except_forgotten_classes() -> None:
    loss = torch.tensor([0.05, 2.0, 5.0, 5.0])  # below target, above, above, above
    y = torch.tensor([0, 0, 0, 1])
    correct = torch.tensor([True, True, True, True])
    bound = _bound([True, False])
    # the class-1 sample (its class left D_r) follows correctness and is never pulled
    assert bound.weights(loss, y, correct).tolist() == [1.0, 0.0, 0.0, 1.0]
    assert bound.weights(loss, y, correct, pull=0.5).tolist() == [1.0, -0.5, -0.5, 1.0]


def test_heldout_bound_by_class_keeps_the_labels_of_its_sorted_losses(
    digits_model, digits, digits_random10
) -> None:
    forget, retain = digits_random10
    test = digits[1]
    bound = heldout_bound(digits_model, test, retain, by_class=True)
    assert bound is not None and bound.labels is not None
    loss = torch.from_numpy(per_sample_loss(digits_model, test))
    for c in range(10):
        expected = loss[test.y == c].sort().values
        torch.testing.assert_close(bound.quantiles[bound.labels == c], expected.to(bound.quantiles.dtype))


def test_a_pull_lowers_the_loss_of_forget_samples_past_their_target(
    digits_model, digits, digits_random10
) -> None:
    """Forget samples under wrong labels have losses far above any held-out loss: without a pull the forget
    term leaves them alone (weight 0); with one it descends on them, so their loss falls further."""
    forget, retain = digits_random10
    wrong = SampleDataset(forget.x, (forget.y + 1) % 10, list(forget.ids))
    runs = [
        run_method("ugradsl_plus", copy.deepcopy(digits_model), wrong, retain, p, heldout=digits[1])
        for p in ({"epochs": 0.5}, {"epochs": 0.5, "overshoot_pull": 1.0})
    ]
    loss = [float(torch.from_numpy(per_sample_loss(r, wrong)).mean()) for r in runs]
    assert loss[1] < loss[0] - 0.5, loss


def test_heldout_bound_reads_the_models_sorted_heldout_losses_and_the_retained_classes(
    digits_model, digits, digits_random10
) -> None:
    forget, retain = digits_random10
    test = digits[1]
    without_class_3 = retain.subset(torch.nonzero(retain.y != 3).flatten())
    bound = heldout_bound(digits_model, test, without_class_3)
    assert bound is not None
    expected = torch.from_numpy(per_sample_loss(digits_model, test)).sort().values
    torch.testing.assert_close(bound.quantiles, expected)
    assert bound.retained.tolist() == [k != 3 for k in range(10)]
    assert heldout_bound(digits_model, test.subset([]), retain) is None


def test_the_heldout_bound_refuses_to_run_without_heldout_data(digits_model, digits, digits_random10) -> None:
    """Falling back to another bound silently would change the method under the caller's feet."""
    forget, retain = digits_random10
    with pytest.raises(ValueError, match="heldout=test_set"):
        run_method("ugradsl_plus", copy.deepcopy(digits_model), forget, retain, {"bound_by": "heldout"})


def test_an_empty_heldout_set_bounds_by_correctness(digits_model, digits, digits_random10) -> None:
    forget, retain = digits_random10
    empty = digits[1].subset([])
    runs = [
        run_method("ugradsl_plus", copy.deepcopy(digits_model), forget, retain, p, heldout=empty)
        for p in ({"epochs": 0.3, "bound_by": "heldout"}, {"epochs": 0.3, "bound_by": "correct"})
    ]
    for (k, a), (_, b) in zip(runs[0].state_dict().items(), runs[1].state_dict().items(), strict=True):
        assert torch.equal(a, b), k


@pytest.mark.slow
def test_the_heldout_bound_lands_closer_to_retraining_than_correctness_on_a_generalising_model(
    digits_model, digits, digits_random10
) -> None:
    """Digits' retrained model still classifies ~98% of a random forget set correctly: pushing every
    forget sample until it is misclassified overshoots (measured: gap 4-7.5 points, worse than doing
    nothing), pushing it to held-out losses does not (0.4-1.3)."""
    forget, retain = digits_random10
    test: SampleDataset = digits[1]
    reference = run_method("retrain", copy.deepcopy(digits_model), forget, retain, DIGITS_RECIPE.to_dict())
    ref = evaluate(reference, forget=forget, retain=retain, test=test)

    def gap(bound_by: str) -> float:
        model = run_method(
            "ugradsl_plus", copy.deepcopy(digits_model), forget, retain, {"bound_by": bound_by}, heldout=test
        )
        return avg_gap(evaluate(model, forget=forget, retain=retain, test=test), ref)

    heldout, correct = gap("heldout"), gap("correct")
    assert heldout < correct
    assert heldout < avg_gap(evaluate(digits_model, forget=forget, retain=retain, test=test), ref)
