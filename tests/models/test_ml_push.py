"""How UGradSL's forget term pushes a live sample: ascent on smoothed labels, or descent towards the
model's nearest wrong class (``push``)."""

import copy

import torch

from models.architectures import build_model
from models.metrics import evaluate
from models.unlearning import run_method
from models.unlearning.bounds import HeldoutBound
from models.unlearning.engine import Batch
from models.unlearning.methods import nearest_wrong_class, pushed_to_nearest, ugradsl_objective
from models.unlearning.params import parse_params


def test_the_nearest_wrong_class_is_the_most_likely_class_other_than_the_label() -> None:
    logits = torch.tensor([[5.0, 1.0, 3.0, 2.0], [0.0, 9.0, 8.5, -1.0]])
    assert nearest_wrong_class(logits, torch.tensor([0, 2])).tolist() == [2, 1]


def _head_step(push: str) -> tuple[torch.Tensor, int, int]:
    """The head bias's descent direction from the forget term of one live sample: a linear head turns it
    into how each class's logit moves. Returns it with the sample's label and nearest wrong class."""
    torch.manual_seed(0)
    model = build_model("mlp", in_features=6, hidden=(8,), num_classes=5)
    x = torch.randn(1, 6)
    with torch.no_grad():
        y = model(x).argmax(1)  # correct, so live under the correctness bound
        nearest = int(nearest_wrong_class(model(x), y))
    params = parse_params("ugradsl_plus", {"push": push, "bound_by": "correct"})
    terms = ugradsl_objective(params)(model, Batch(x, y, x, y, y))
    assert terms.forget is not None
    terms.forget.backward()
    bias = model.classifier.bias.grad  # type: ignore[union-attr]
    assert bias is not None
    return -bias, int(y), nearest


def test_the_nearest_push_raises_one_wrong_class_where_ascent_raises_them_all() -> None:
    """Ascent on negatively smoothed labels lifts every wrong class (it flattens the prediction, and the
    model around D_f with it); the nearest push lifts only the class the sample crosses to."""
    step, y, nearest = _head_step("nearest")
    rising = [k for k in range(5) if step[k] > 0]
    assert rising == [nearest]
    step, y, _ = _head_step("ascent")
    assert sorted(k for k in range(5) if step[k] > 0) == [k for k in range(5) if k != y]


def test_nearest_tail_sends_the_ranks_that_unseen_data_gets_wrong_and_the_classes_that_left() -> None:
    # Held-out losses: 80% confident (0.01), 20% wrong (3.0): the top fifth of a batch's ranks is the tail.
    bound = HeldoutBound(torch.tensor([0.01] * 8 + [3.0] * 2), torch.tensor([True, True, False]))
    loss = torch.tensor([0.5, 0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.007, 0.008, 0.009])
    y = torch.tensor([0, 0, 1, 1, 0, 2, 0, 1, 0, 1])
    sent = pushed_to_nearest("nearest_tail", bound, loss, y)
    # rank 9 (loss 0.5) and rank 8 (0.009) read the 3.0 quantile; row 5's class 2 has no retain sample
    assert torch.nonzero(sent).flatten().tolist() == [0, 5, 9]
    assert bool(pushed_to_nearest("nearest", bound, loss, y).all())
    assert not bool(pushed_to_nearest("ascent", bound, loss, y).any())
    assert bool(pushed_to_nearest("nearest_tail", None, loss, y).all())  # no ranks to read


def test_the_nearest_push_forgets_without_losing_test_accuracy(digits_model, digits, digits_random10) -> None:
    forget, retain = digits_random10
    test = digits[1]
    before = evaluate(digits_model, forget=forget, retain=retain, test=test)
    for push in ("nearest", "nearest_tail"):
        model = run_method(
            "ugradsl_plus", copy.deepcopy(digits_model), forget, retain, {"push": push}, heldout=test
        )
        after = evaluate(model, forget=forget, retain=retain, test=test)
        assert after["mia_score"] > before["mia_score"], push
        assert after["test_accuracy"] >= before["test_accuracy"] - 0.03, push
