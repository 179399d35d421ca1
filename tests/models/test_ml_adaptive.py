"""Self-adaptive smoothing rate (both readings) and the bounded forget term of UGradSL/UGradSL+."""

import torch

from models.architectures import build_model
from models.unlearning.engine import Batch
from models.unlearning.methods import adaptive_alpha, ugradsl_objective
from models.unlearning.params import parse_params


def _features() -> tuple[torch.Tensor, torch.Tensor]:
    """Forget sample 0 sits on top of all 4 retain samples; forget sample 1 is orthogonal to all of them."""
    retain = torch.tensor([[1.0, 0.0], [1.0, 0.01], [1.0, -0.01], [2.0, 0.0]])
    forget = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    return forget, retain


def test_adaptive_alpha_intuition_gives_dense_neighbourhoods_less_forgetting() -> None:
    forget, retain = _features()
    p = parse_params("ugradsl_plus", {"adaptive": "intuition", "alpha_max": 0.8, "beta": 0.1})
    alpha = adaptive_alpha(forget, retain, p)
    assert isinstance(alpha, torch.Tensor)
    torch.testing.assert_close(alpha, torch.tensor([0.0, -0.8, 0.0, -0.8]))  # c_i = 4, 0, 4, 0 of |B_f| = 4


def test_adaptive_alpha_literal_is_minus_the_neighbour_fraction() -> None:
    forget, retain = _features()
    p = parse_params("ugradsl_plus", {"adaptive": "literal", "beta": 0.1})
    torch.testing.assert_close(adaptive_alpha(forget, retain, p), torch.tensor([-1.0, 0.0, -1.0, 0.0]))


def test_fixed_alpha_when_adaptive_is_off() -> None:
    forget, retain = _features()
    assert adaptive_alpha(forget, retain, parse_params("ugradsl", {"alpha": -0.3})) == -0.3


def test_bounded_forget_term_ignores_already_forgotten_samples() -> None:
    torch.manual_seed(0)
    model = build_model("mlp", in_features=3, hidden=(4,), num_classes=2)
    x = torch.randn(4, 3)
    with torch.no_grad():
        pred = model(x).argmax(1)
    y_wrong = 1 - pred  # every forget sample is already misclassified
    b = Batch(x, pred, x, y_wrong, y_wrong)
    bounded = ugradsl_objective(parse_params("ugradsl", {"bounded": True}))(model, b)
    unbounded = ugradsl_objective(parse_params("ugradsl", {"bounded": False}))(model, b)
    assert bounded.forget is not None and unbounded.forget is not None
    assert float(bounded.forget.detach()) == 0.0 and float(unbounded.forget.detach()) < 0.0
    assert bounded.forget_correct is not None and not bool(bounded.forget_correct.any())
