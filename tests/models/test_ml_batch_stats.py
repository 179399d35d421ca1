"""BatchNorm held at its running statistics during a run (``batch_stats="frozen"``)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from models.architectures import Classifier
from models.datasets import SampleDataset
from models.unlearning import run_method
from models.unlearning.batch_stats import frozen_batch_stats, uses_batch_stats
from models.unlearning.params import parse_params


class _Normed(Classifier):
    """A linear layer, BatchNorm, a classifier: the smallest network whose train-mode forward differs from
    its eval-mode one."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU())
        self.classifier = nn.Linear(16, 3)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(x)
        return out


def _data(n: int = 240) -> SampleDataset:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=gen) * 3 + 1  # far from the initial running statistics (0, 1)
    return SampleDataset(x, torch.randint(0, 3, (n,), generator=gen), [f"s{i}" for i in range(n)])


def _stats(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


def test_frozen_layers_compute_the_eval_forward_in_train_mode_and_keep_their_statistics() -> None:
    torch.manual_seed(0)
    model, x = _Normed(), _data().x[:32]
    model.eval()
    expected = model(x)
    before = _stats(model)
    model.train()
    assert not torch.allclose(model(x), expected)  # batch statistics: another function
    model.load_state_dict({**model.state_dict(), **before})
    with frozen_batch_stats(model):
        model.train()
        assert torch.allclose(model(x), expected)
        model.eval()  # a scoring in between, then back to training: still frozen
        model.train()
        assert torch.allclose(model(x), expected)
        assert not uses_batch_stats(model)
    assert all(torch.equal(before[k], v) for k, v in _stats(model).items())
    assert model.body[1].training  # on exit the layer follows the model's mode again
    assert uses_batch_stats(model)
    assert not torch.allclose(model(x), expected)


def test_not_frozen_changes_nothing() -> None:
    model = _Normed().train()
    with frozen_batch_stats(model, frozen=False):
        assert uses_batch_stats(model)
    assert not model.body[0]._forward_pre_hooks and not model.body[1]._forward_pre_hooks


@pytest.mark.parametrize(
    ("method", "own"), [("ugradsl_plus", {"bound_by": "correct", "train_share": 0}), ("salun", {})]
)
def test_a_frozen_run_trains_the_normalisation_weights_and_keeps_the_statistics(
    method: str, own: dict
) -> None:
    torch.manual_seed(0)
    data = _data()
    forget, retain = data.split_by_ids(data.ids[:24])
    model = _Normed()
    before = _stats(model)
    params = {"epochs": 1, "batch_size": 16, "retain_budget": 0, **own}
    frozen = run_method(method, copy.deepcopy(model), forget, retain, {**params, "batch_stats": "frozen"})
    after = _stats(frozen)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(frozen.body[1].weight, model.body[1].weight)  # BatchNorm's affine still trains
    assert not any(m._forward_pre_hooks for m in frozen.modules())
    moved = _stats(
        run_method(method, copy.deepcopy(model), forget, retain, {**params, "batch_stats": "batch"})
    )
    assert not torch.equal(before["body.1.running_mean"], moved["body.1.running_mean"])


def test_the_service_default_runs_frozen_and_the_papers_methods_at_batch_statistics() -> None:
    assert parse_params("ugradsl_plus", {}).batch_stats == "frozen"
    assert all(parse_params(m, {}).batch_stats == "batch" for m in ("ugradsl", "salun", "finetune"))
