import pytest
import torch

from models.architectures import build_model, list_models, model_input_shape
from models.sources import builtin_parameter_count

CASES = {
    "mlp": [{}, {"in_features": 784, "hidden": (32, 16), "num_classes": 3}, {"hidden": ()}],
    "small_cnn": [{"image_size": 8}, {"image_size": 28, "num_classes": 4}],
    "resnet18_cifar": [{}, {"in_channels": 1, "num_classes": 5}],
}


def test_every_registered_architecture_has_test_cases() -> None:
    assert set(list_models()) == set(CASES)


@pytest.mark.parametrize(("name", "kwargs"), [(n, kw) for n, kws in CASES.items() for kw in kws])
def test_architecture_forward_and_backward_on_random_input(name: str, kwargs: dict) -> None:
    torch.manual_seed(0)
    model = build_model(name, **kwargs)
    x = torch.randn(2, *model_input_shape(name, **kwargs))
    logits = model(x)
    k = kwargs.get("num_classes", 10)
    assert logits.shape == (2, k)
    feats = model.features(x)
    assert feats.ndim == 2 and feats.shape[0] == 2
    model.eval()  # BatchNorm: compare in eval mode, where the two paths are deterministic
    torch.testing.assert_close(model.head(model.features(x)), model(x))
    model.train()
    model(x).logsumexp(1).sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_unknown_architecture_lists_known_names() -> None:
    with pytest.raises(KeyError, match="small_cnn"):
        build_model("vgg99")


@pytest.mark.parametrize(
    ("name", "kwargs", "exc"),
    [
        ("mlp", {"hiddn": (3,)}, TypeError),
        ("small_cnn", {"image_size": 10}, ValueError),
        ("mlp", {"num_classes": 0}, ValueError),
        ("resnet18_cifar", {"in_channels": -1}, ValueError),
    ],
)
def test_bad_architecture_kwargs_are_rejected(name: str, kwargs: dict, exc: type) -> None:
    with pytest.raises(exc):
        build_model(name, **kwargs)


def test_build_model_remembers_its_architecture() -> None:
    model = build_model("mlp", hidden=(8,))
    assert model.architecture == "mlp" and model.architecture_kwargs == {"hidden": (8,)}


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [(n, kw) for n, kws in CASES.items() for kw in kws]
    + [("small_cnn", {"in_channels": 3, "image_size": 32}), ("resnet18_cifar", {"in_channels": 7})],
)
def test_the_torch_free_size_of_a_built_in_is_its_exact_parameter_count(name: str, kwargs: dict) -> None:
    built = sum(p.numel() for p in build_model(name, **kwargs).parameters())
    assert builtin_parameter_count(name, **kwargs) == built


@pytest.mark.parametrize(
    ("name", "kwargs", "exc"),
    [
        ("mlp", {"hiddn": (3,)}, TypeError),
        ("mlp", {"hidden": "256"}, ValueError),
        ("mlp", {"hidden": [0]}, ValueError),
        ("small_cnn", {"image_size": 10}, ValueError),
        ("resnet18_cifar", {"in_channels": True}, ValueError),
    ],
)
def test_the_torch_free_size_refuses_what_the_builder_refuses(name: str, kwargs: dict, exc: type) -> None:
    with pytest.raises(exc):
        builtin_parameter_count(name, **kwargs)
    with pytest.raises(exc):
        build_model(name, **kwargs)
