"""``keep_heldout`` (``models/unlearning/keep.py``): a KL term holds the model's predictions on held-out
inputs where the original had them, so pushing D_f away moves unseen samples' predictions less."""

import copy

import torch

from models.hooks import Hooks
from models.metrics import log_probs
from models.unlearning import run_method
from models.unlearning.keep import KeepHeldout


def _kl(before: torch.Tensor, model: torch.nn.Module, data) -> float:
    """Mean KL(before ‖ model) over ``data``'s rows."""
    after = log_probs(model, data)
    return float((before.exp() * (before - after)).sum(1).mean())


def test_the_term_is_zero_at_the_start_and_grows_as_the_model_moves(digits_model, digits) -> None:
    model = copy.deepcopy(digits_model)
    keep = KeepHeldout(model, digits[1], weight=1.0, batch_size=64, seed=0)
    with torch.no_grad():
        assert float(keep.loss(model)) == 0.0
        model.classifier.bias.add_(torch.linspace(-3, 3, 10))
        assert float(keep.loss(model)) > 0.01


def test_held_out_predictions_move_less_with_the_term(digits_model, digits, digits_random10) -> None:
    forget, retain = digits_random10
    heldout = digits[1]
    before = log_probs(digits_model, heldout)

    def run(params: dict) -> torch.nn.Module:
        return run_method(
            "ugradsl_plus", copy.deepcopy(digits_model), forget, retain, params, Hooks(), heldout=heldout
        )

    free, kept = run({}), run({"keep_heldout": 10.0})
    assert _kl(before, kept, heldout) < 0.5 * _kl(before, free, heldout)


def test_without_held_out_data_it_is_off(digits_model, digits_random10) -> None:
    forget, retain = digits_random10
    runs = [
        run_method("ugradsl_plus", copy.deepcopy(digits_model), forget, retain, params, Hooks())
        for params in ({"bound_by": "correct"}, {"bound_by": "correct", "keep_heldout": 10.0})
    ]
    for a, b in zip(runs[0].parameters(), runs[1].parameters(), strict=True):
        assert torch.equal(a, b)
