import pytest
import torch

from models.architectures import build_model, list_models, model_input_shape

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
