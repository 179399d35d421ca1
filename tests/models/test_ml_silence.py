"""A class no training row of which is left is switched off in the output layer (models/unlearning/
silence.py): never predicted again, the other classes' predictions untouched, and a head the surgery
cannot reach left exactly as it was."""

import copy

import torch
from torch import nn

from models.architectures import build_model
from models.datasets import SampleDataset
from models.unlearning.silence import SILENT, silence_classes


def _probe(n: int = 200, features: int = 8) -> SampleDataset:
    x = torch.randn(n, features, generator=torch.Generator().manual_seed(0)) * 5
    return SampleDataset(x, torch.arange(n) % 3, [f"s{i}" for i in range(n)])


def _same(a: nn.Module, b: nn.Module) -> bool:
    pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    return all(torch.equal(x, y) for x, y in pairs)


def test_a_switched_off_class_is_never_predicted_and_the_others_keep_their_predictions() -> None:
    torch.manual_seed(0)
    model = build_model("mlp", in_features=8, num_classes=3)
    with torch.no_grad():
        model.classifier.bias[1] += 50.0  # class 1 wins everywhere before
    data = _probe()
    before = model(data.x).argmax(1)
    assert bool((before == 1).all())
    assert silence_classes(model, [1], data) == [1]
    after = model(data.x)
    assert not bool((after.argmax(1) == 1).any())
    assert bool((after[:, 1] == SILENT).all())
    assert model.training  # left in the mode it was in


def test_predictions_of_classes_left_on_are_unchanged() -> None:
    torch.manual_seed(1)
    model = build_model("mlp", in_features=8, num_classes=3)
    data = _probe()
    before = model(data.x).detach()
    silence_classes(model, [2], data)
    after = model(data.x).detach()
    assert torch.equal(after[:, :2], before[:, :2])
    kept = before.argmax(1) != 2
    assert torch.equal(after.argmax(1)[kept], before.argmax(1)[kept])


def test_a_head_that_normalises_its_logits_is_switched_off_in_the_normalisation() -> None:
    """A client's head was LayerNorm(linear(f)): a bias of -1e4 in the linear layer is normalised away, and
    its deleted class came back in later versions. The LayerNorm's own affine part is the last step."""
    torch.manual_seed(2)
    data = _probe()
    model = nn.Sequential(nn.Linear(8, 3), nn.LayerNorm(3))
    before = model(data.x).detach()
    assert silence_classes(model, [0], data) == [0]
    after = model(data.x).detach()
    assert bool((after[:, 0] == SILENT).all()) and torch.equal(after[:, 1:], before[:, 1:])
    assert not bool(model[1].weight.detach()[0]) and bool(model[0].weight.detach()[0].any())


def test_a_head_the_surgery_cannot_reach_is_left_exactly_as_it_was() -> None:
    torch.manual_seed(2)
    data = _probe()
    normalised = nn.Sequential(nn.Linear(8, 3), nn.LayerNorm(3, elementwise_affine=False))  # undoes -1e4
    unbiased = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3, bias=False))
    # a hidden layer as wide as the logits, before an unbiased head: a bias of -1e4 there moves every logit
    hidden = nn.Sequential(nn.Linear(8, 3), nn.ReLU(), nn.Linear(3, 3, bias=False))
    for model in (normalised, unbiased, hidden):
        was = copy.deepcopy(model)
        assert silence_classes(model, [0], data) == []
        assert _same(model, was)
    mlp = build_model("mlp", in_features=8, num_classes=3)
    assert silence_classes(mlp, [3], data) == []  # no such output
    assert silence_classes(mlp, [], data) == []
