"""The first-order methods' optimiser: SGD by default, Adam where asked, and Adam at the recipe's lr for a
model whose registered recipe trained it with Adam (models/unlearning/params.py: with_recipe)."""

import copy

import torch
from torch import nn

from models.datasets import SampleDataset
from models.unlearning import masks as M
from models.unlearning import run_method
from models.unlearning.engine import optimizer
from models.unlearning.params import ADAM_LR_SHARE, parse_params, with_recipe

ADAM_RECIPE = {"epochs": 50, "lr": 0.002, "batch_size": 32, "optimizer": "adam", "weight_decay": 0.0}
SGD_RECIPE = {"epochs": 30, "lr": 0.05, "batch_size": 64, "momentum": 0.9}


def test_an_adam_trained_transformer_is_unlearned_with_adam_at_its_recipes_lr_unless_the_request_says() -> (
    None
):
    for method in ("ugradsl_plus", "ugradsl", "finetune", "gradient_ascent", "random_label", "salun"):
        got = parse_params(method, with_recipe(method, {"epochs": 2.0}, ADAM_RECIPE, layer_norm=True))
        assert (got.optimizer, got.lr, got.epochs) == ("adam", 0.002 * ADAM_LR_SHARE, 2.0), method
    # the request's own optimizer or lr wins, whole: no Adam at an SGD lr, no SGD at Adam's
    assert with_recipe("ugradsl_plus", {"lr": 0.01}, ADAM_RECIPE, layer_norm=True) == {"lr": 0.01}
    assert with_recipe("ugradsl_plus", {"optimizer": "sgd"}, ADAM_RECIPE, layer_norm=True) == {
        "optimizer": "sgd"
    }
    # a CNN trained with Adam (no LayerNorm), an SGD recipe, or none: the defaults, tuned with SGD
    assert with_recipe("ugradsl_plus", {}, ADAM_RECIPE, layer_norm=False) == {}
    assert with_recipe("gradient_ascent", {}, ADAM_RECIPE, layer_norm=False) == {}
    assert with_recipe("ugradsl_plus", {}, SGD_RECIPE, layer_norm=True) == {}
    assert with_recipe("ugradsl_plus", {}, None, layer_norm=True) == {}
    assert parse_params("ugradsl_plus").optimizer == "sgd"
    # exact retrain takes the recipe itself, the request's fields over it
    assert with_recipe("retrain", {"epochs": 3}, {**SGD_RECIPE, "stale_field": 1}) == {
        **SGD_RECIPE,
        "epochs": 3,
    }


def test_the_fine_tuning_baselines_take_adam_from_any_adam_recipe_as_the_fallbacks_they_are() -> None:
    """Fine-tuning at SGD's 0.1 collapsed an MLP trained with Adam: a client's fallback, then refused."""
    for method in ("finetune", "random_label", "salun"):
        got = parse_params(method, with_recipe(method, {}, ADAM_RECIPE, layer_norm=False))
        assert (got.optimizer, got.lr) == ("adam", 0.002 * ADAM_LR_SHARE), method
        assert with_recipe(method, {}, SGD_RECIPE) == {}, method
        assert with_recipe(method, {"lr": 0.05}, ADAM_RECIPE) == {"lr": 0.05}, method
        # a recipe's lr at the edge of what the API takes gives an lr the params take, not a failed job
        tiny = parse_params(method, with_recipe(method, {}, {**ADAM_RECIPE, "lr": 1e-8}))
        assert tiny.lr == 1e-8, method


def test_a_request_for_adam_without_an_lr_gets_the_recipes_adam_lr_not_the_sgd_default() -> None:
    """A client's {"optimizer": "adam"} ran fine-tuning at SGD's 0.1, a hundred times its recipe's lr."""
    for method in ("finetune", "salun", "ugradsl_plus"):
        got = parse_params(method, with_recipe(method, {"optimizer": "adam"}, ADAM_RECIPE))
        assert (got.optimizer, got.lr) == ("adam", 0.002 * ADAM_LR_SHARE), method
    # ascent's own lr is below the recipe's, and nothing else stops it
    assert with_recipe("gradient_ascent", {"optimizer": "adam"}, ADAM_RECIPE) == {"optimizer": "adam"}
    # an lr of its own, or a recipe that says nothing of Adam, and the request is taken as it is
    assert with_recipe("finetune", {"optimizer": "adam", "lr": 0.01}, ADAM_RECIPE) == {
        "optimizer": "adam",
        "lr": 0.01,
    }
    assert with_recipe("finetune", {"optimizer": "adam"}, SGD_RECIPE) == {"optimizer": "adam"}


def test_transformers_normalise_with_layer_norm_and_the_cnns_do_not() -> None:
    """What ``layer_norm`` is read from (models.architectures.layer_normed)."""
    from models.architectures import build_model, layer_normed

    bert = {"model_type": "bert", "vocab_size": 50, "hidden_size": 8, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 16, "max_position_embeddings": 20}  # fmt: skip
    assert layer_normed(build_model("hf:sequence-classification", num_classes=3, config=bert))
    for arch, kw in (("small_cnn", {}), ("resnet18_cifar", {}), ("mlp", {})):
        assert not layer_normed(build_model(arch, **kw)), arch


def _tiny() -> tuple[nn.Module, SampleDataset, SampleDataset]:
    from models.architectures import build_model

    torch.manual_seed(0)
    model = build_model("mlp", in_features=8, num_classes=3)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(40, 8, generator=gen), torch.arange(40) % 3
    data = SampleDataset(x, y, [f"s{i}" for i in range(40)])
    return model, data.subset(range(4)), data.subset(range(4, 40))


def test_adams_first_step_moves_every_weight_by_about_the_lr_whatever_its_gradient() -> None:
    """What makes Adam's lr a unit-free step: SGD's first step is lr times the gradient, Adam's is lr
    times its sign (to eps), so a model's gradient scale does not size it."""
    moves = {}
    for opt in ("sgd", "adam"):
        model, forget, retain = _tiny()
        before = copy.deepcopy(model)
        params = {"optimizer": opt, "lr": 1e-3, "epochs": 1.0, "batch_size": 64, "train_share": 0.0}
        run_method("finetune", model, forget, retain, params)  # one pass over 36 rows: one step
        moves[opt] = torch.cat(
            [
                (a - b).detach().abs().flatten()
                for a, b in zip(model.parameters(), before.parameters(), strict=True)
            ]
        )
    adam, sgd = moves["adam"], moves["sgd"]
    moved = adam[adam > 0]  # a weight with no gradient (a dead unit's) does not move
    assert len(moved) > 0.5 * len(adam) and float(moved.max()) <= 1e-3 * (1 + 1e-4)
    assert float((moved > 0.99e-3).float().mean()) > 0.9  # all but gradients near eps: the lr itself
    sgd_moved = sgd[sgd > 0]
    assert float((sgd_moved > 0.99e-3).float().mean()) < 0.1  # SGD's moves follow the gradient


def test_a_coordinate_masked_at_one_step_keeps_its_adam_moments_from_before() -> None:
    """As for SGD's momentum (test_ml_masks.py): masked at step 1 (gradient 5), kept at step 2 with
    gradient 0, the coordinate stays; Adam's moments must not have taken the vetoed gradient in."""
    w = nn.Parameter(torch.tensor([1.0, 1.0]))
    opt = optimizer([w], parse_params("ugradsl_plus", {"optimizer": "adam", "lr": 0.1}))
    assert isinstance(opt, torch.optim.Adam)
    w.grad = torch.tensor([5.0, 5.0])
    M.masked_step(opt, [w], [torch.tensor([False, True])], binary=True)
    assert w[0].item() == 1.0 and abs(w[1].item() - 0.9) < 1e-4
    w.grad = torch.tensor([0.0, 0.0])
    M.masked_step(opt, [w], [torch.tensor([True, True])], binary=True)
    assert w[0].item() == 1.0  # its first moment was kept at zero, so a zero gradient moves it nowhere
    assert w[1].item() < 0.9  # the kept coordinate keeps its moments, and moves on


def test_an_adamw_recipe_trains_and_unlearns_with_adamw_as_an_adam_one_does_with_adam() -> None:
    """A transformer's usual recipe is AdamW, which a recipe could not say: a probe's BERT registered with
    none ran SGD at 0.03, and a retrain fallback would have run SGD for 30 epochs."""
    from models.training import TrainRecipe, make_optimizer

    adamw = {**ADAM_RECIPE, "optimizer": "adamw", "weight_decay": 0.01}
    got = parse_params("ugradsl_plus", with_recipe("ugradsl_plus", {}, adamw, layer_norm=True))
    assert (got.optimizer, got.lr) == ("adamw", 0.002 * ADAM_LR_SHARE)
    net = nn.Linear(3, 2)
    assert type(optimizer(list(net.parameters()), got)) is torch.optim.AdamW
    assert (
        type(optimizer(list(net.parameters()), parse_params("finetune", {"optimizer": "adam"})))
        is torch.optim.Adam
    )
    retrain = parse_params("retrain", with_recipe("retrain", {}, adamw))
    recipe = TrainRecipe(**{k: v for k, v in vars(retrain).items()})
    assert type(make_optimizer(net, recipe)) is torch.optim.AdamW
