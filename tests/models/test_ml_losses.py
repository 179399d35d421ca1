import pytest
import torch
import torch.nn.functional as F

from models.unlearning.losses import smoothed_cross_entropy


@pytest.mark.parametrize("a", [0.0, 0.1, 0.5, 1.0])
def test_smoothed_ce_equals_torch_label_smoothing_for_nonnegative_alpha(a: float) -> None:
    torch.manual_seed(0)
    logits, y = torch.randn(16, 7), torch.randint(0, 7, (16,))
    ours = smoothed_cross_entropy(logits, y, a)
    ref = F.cross_entropy(logits, y, label_smoothing=a)
    torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize("a", [-0.2, -0.5, -1.0])
def test_smoothed_ce_matches_formula_for_negative_alpha(a: float) -> None:
    torch.manual_seed(1)
    logits, y = torch.randn(12, 5, dtype=torch.float64), torch.randint(0, 5, (12,))
    k = logits.shape[1]
    target = (1 - a) * F.one_hot(y, k).double() + a / k  # y^α, may be negative
    ref = -(target * logits.log_softmax(1)).sum(1)
    torch.testing.assert_close(smoothed_cross_entropy(logits, y, a, reduction="none"), ref)


def test_smoothed_ce_accepts_a_per_sample_alpha_tensor() -> None:
    torch.manual_seed(2)
    logits, y = torch.randn(6, 4), torch.randint(0, 4, (6,))
    alpha = torch.tensor([-1.0, -0.5, 0.0, 0.2, 0.7, 1.0])
    per_sample = smoothed_cross_entropy(logits, y, alpha, reduction="none")
    one_by_one = torch.stack(
        [smoothed_cross_entropy(logits[i : i + 1], y[i : i + 1], float(alpha[i])) for i in range(6)]
    )
    torch.testing.assert_close(per_sample, one_by_one)
    torch.testing.assert_close(smoothed_cross_entropy(logits, y, alpha, reduction="sum"), per_sample.sum())


def test_smoothed_ce_gradient_flows_to_logits() -> None:
    logits = torch.randn(3, 4, requires_grad=True)
    smoothed_cross_entropy(logits, torch.tensor([0, 1, 2]), -0.5).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_smoothed_ce_rejects_unknown_reduction() -> None:
    with pytest.raises(ValueError, match="reduction"):
        smoothed_cross_entropy(torch.randn(2, 3), torch.tensor([0, 1]), 0.1, reduction="max")
