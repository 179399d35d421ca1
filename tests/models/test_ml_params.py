import subprocess
import sys

import pytest

from models.unlearning.params import METHOD_NAMES, describe_params, params_to_dict, parse_params


def test_params_module_does_not_import_torch() -> None:
    code = "import models.unlearning.params, models.unlearning, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_defaults_parse_and_round_trip(method: str) -> None:
    p = parse_params(method, None)
    assert parse_params(method, params_to_dict(p)) == p


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"learning_rate": 0.1}, "learning_rate"),
        ({"lr": -1.0}, "lr"),
        ({"lr": "fast"}, "lr"),
        ({"p": 0.0}, "p"),
        ({"alpha": -1.5}, "alpha"),
        ({"batch_size": 1.5}, "batch_size"),
        ({"batch_size": True}, "batch_size"),
        ({"bounded": "yes"}, "bounded"),
        ({"mask": "or"}, "mask"),
        ({"adaptive": "sometimes"}, "adaptive"),
        ({"lr": float("nan")}, "lr"),
    ],
)
def test_bad_params_are_rejected_naming_the_field(raw: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        parse_params("ugradsl_plus", raw)


def test_unknown_method_is_rejected() -> None:
    with pytest.raises(ValueError, match="ugradsl_plus"):
        parse_params("forget_everything", {})


def test_finetune_refuses_a_mask() -> None:
    with pytest.raises(ValueError, match="mask"):
        parse_params("finetune", {"mask": "prob"})


def test_ints_are_accepted_for_floats_and_mask_composes() -> None:
    p = parse_params("ugradsl_plus", {"lr": 1, "mask": "prob", "mask_p": 0.45})
    assert p.lr == 1.0 and isinstance(p.lr, float) and p.mask == "prob"


def test_retrain_params_mirror_the_training_recipe() -> None:
    from models.training import TrainRecipe

    assert params_to_dict(parse_params("retrain")) == TrainRecipe().to_dict()


def test_describe_params_lists_bounds() -> None:
    lr = next(d for d in describe_params("ugradsl") if d["name"] == "lr")
    assert lr["min"] > 0 and lr["type"] == "float"


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_explicit_zero_epochs_is_refused_whatever_else_might_size_the_run(method: str) -> None:
    """pushes size only random deletions with held-out data and class_epochs only class-wise ones, so
    neither saves a run of ``epochs: 0`` from being one of no step (a review found both ways round)."""
    for extra in ({}, {"pushes": 4}, {"class_epochs": 1}):
        if extra and method not in ("ugradsl_plus", "ugradsl"):
            continue
        says = r"must be in \[1, 1000\], got 0" if method == "retrain" else "0 runs no step"
        with pytest.raises(ValueError, match=rf"{method}\.epochs {says}") as refused:
            parse_params(method, {"epochs": 0, **extra})
        # the advice names only fields the method has (a probe saw finetune told about pushes)
        assert ("leave epochs out" in str(refused.value)) == (method in ("ugradsl_plus", "ugradsl"))
    fewest = 1 if method == "retrain" else 0.25
    assert parse_params(method, {"epochs": fewest}).epochs == fewest
