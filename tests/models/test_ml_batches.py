"""Inputs that are dicts of tensors (a text model's input_ids and attention_mask): the helpers of
``models.batches`` on tensors and dicts, datasets holding dicts, and every unlearning method, mask, bound,
metric and the training loop on a small model that reads a dict."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from models import batches as B
from models.adapters import check_contract
from models.datasets import SampleDataset
from models.metrics import accuracy, evaluate
from models.training import TrainRecipe, train
from models.unlearning import list_methods, run_method
from models.unlearning.bounds import heldout_bound

VOCAB, LENGTH, K = 40, 12, 3


def _dict(n: int) -> dict[str, torch.Tensor]:
    return {
        "input_ids": torch.arange(n * 4).reshape(n, 4),
        "attention_mask": torch.ones(n, 4, dtype=torch.long),
    }


# ---------------------------------------------------------------- the helpers


def test_rows_take_window_cat_split_on_a_tensor_are_the_tensor_operations() -> None:
    x = torch.randn(10, 3)
    idx = torch.tensor([7, 2, 2])
    assert B.rows(x) == B.check(x) == 10
    assert torch.equal(B.take(x, idx), x[idx])
    assert torch.equal(B.window(x, 2, 5), x[2:5])
    assert torch.equal(B.cat([x[:3], x[3:]]), x)
    assert [p.tolist() for p in B.split(x, 3)] == [p.tolist() for p in x.tensor_split(3)]
    assert B.to(x, "cpu") is x.to("cpu")
    assert B.sample_shape(x) == (3,)


def test_rows_take_window_cat_split_on_a_dict_apply_to_every_tensor_and_keep_dtypes() -> None:
    x = _dict(10)
    idx = torch.tensor([7, 2, 2])
    assert B.rows(x) == B.check(x) == 10 and len(x) == 2  # rows, not keys
    taken = B.take(x, idx)
    assert isinstance(taken, dict) and set(taken) == set(x)
    assert torch.equal(taken["input_ids"], x["input_ids"][idx])
    assert taken["input_ids"].dtype == torch.long
    window = B.window(x, 2, 5)
    assert isinstance(window, dict) and B.rows(window) == 3
    assert torch.equal(window["attention_mask"], x["attention_mask"][2:5])
    joined = B.cat([B.window(x, 0, 4), B.window(x, 4, 10)])
    assert isinstance(joined, dict) and all(torch.equal(joined[k], x[k]) for k in x)
    parts = B.split(x, 3)
    assert [B.rows(p) for p in parts] == [4, 3, 3]
    assert torch.equal(torch.cat([p["input_ids"] for p in parts]), x["input_ids"])  # type: ignore[index]
    moved = B.to(x, "cpu")
    assert isinstance(moved, dict) and moved["input_ids"].device.type == "cpu"
    assert B.sample_shape(x) == {"input_ids": (4,), "attention_mask": (4,)}
    assert B.rows(B.window(x, 0, 0)) == 0


def test_check_refuses_unequal_lengths_non_tensors_and_empty_dicts() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        B.check({"input_ids": torch.zeros(3, 2), "attention_mask": torch.zeros(4, 2)})
    with pytest.raises(ValueError, match="not tensors"):
        B.check({"input_ids": torch.zeros(3, 2), "text": ["a", "b", "c"]})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="non-empty dict"):
        B.check({})
    with pytest.raises(ValueError, match="different kinds or keys"):
        B.cat([_dict(2), {"input_ids": torch.zeros(2, 4, dtype=torch.long)}])


def test_a_dataset_of_dicts_keeps_integer_inputs_and_subsets_every_key() -> None:
    ds = SampleDataset(_dict(6), torch.tensor([0, 1, 2, 0, 1, 2]), [f"s{i}" for i in range(6)])
    assert isinstance(ds.x, dict) and ds.x["input_ids"].dtype == torch.long  # not made float
    forget, retain = ds.split_by_ids(["s4", "s1"])
    assert forget.ids == ["s4", "s1"] and len(retain) == 4
    assert isinstance(forget.x, dict)
    assert torch.equal(forget.x["input_ids"], ds.x["input_ids"][torch.tensor([4, 1])])
    with pytest.raises(ValueError, match="differ in length"):
        SampleDataset(_dict(6), torch.zeros(5, dtype=torch.long), [f"s{i}" for i in range(5)])


# ---------------------------------------------------------------- every method on a dict-input model


class ToyText(nn.Module):
    """Mean of token embeddings under the attention mask, one hidden layer, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16)
        self.body = nn.Linear(16, 16)
        self.classifier = nn.Linear(16, K)

    def features(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = x["attention_mask"].unsqueeze(-1).float()
        pooled = (self.embed(x["input_ids"]) * mask).sum(1) / mask.sum(1).clamp_min(1)
        return torch.relu(self.body(pooled))

    def head(self, f: torch.Tensor) -> torch.Tensor:
        return self.classifier(f)

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.features(x))


def text_set(n: int, seed: int, prefix: str) -> SampleDataset:
    """Class c draws its tokens from [1 + 13c, 14 + 13c); texts are padded (0) to LENGTH."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % K
    ids = 1 + 13 * y[:, None] + torch.randint(0, 13, (n, LENGTH), generator=gen)
    lengths = torch.randint(4, LENGTH + 1, (n,), generator=gen)
    mask = (torch.arange(LENGTH)[None] < lengths[:, None]).long()
    x = {"input_ids": ids * mask, "attention_mask": mask}
    return SampleDataset(x, y, [f"{prefix}-{i:03d}" for i in range(n)])


@pytest.fixture(scope="module")
def toy() -> tuple[nn.Module, SampleDataset, SampleDataset]:
    torch.manual_seed(0)
    data, test = text_set(60, 0, "t"), text_set(30, 1, "te")
    model = train(ToyText(), data, TrainRecipe(epochs=8, lr=0.1, batch_size=16))
    return model, data, test


def test_training_and_metrics_read_dict_inputs(toy: tuple[nn.Module, SampleDataset, SampleDataset]) -> None:
    model, data, test = toy
    assert accuracy(model, data) > 0.9 and accuracy(model, test) > 0.8
    forget, retain = data.split_by_ids(data.ids[:6])
    scores = evaluate(model, forget=forget, retain=retain, test=test)
    assert scores["forget_count"] == 6 and scores["test_count"] == 30
    assert scores["mia_score"] is not None and scores["unlearning_accuracy"] is not None
    check_contract(model, B.window(data.x, 0, 2), K)
    bound = heldout_bound(model, test, retain)
    assert bound is not None and len(bound.quantiles) == 30


METHODS = [
    ("ugradsl_plus", {"bound_by": "heldout"}),
    ("ugradsl_plus", {"adaptive": "intuition"}),
    ("ugradsl_plus", {"mask": "and"}),
    ("ugradsl_plus", {"mask": "prob"}),
    ("ugradsl_plus", {"mask": "focus"}),
    ("ugradsl_plus", {"mask": "salun"}),
    ("ugradsl", {}),
    ("gradient_ascent", {"mask": "and"}),
    ("random_label", {}),
    ("salun", {}),
    ("finetune", {}),
    ("retrain", {"epochs": 1}),
]


def test_the_list_covers_every_registered_method() -> None:
    assert {name for name, _ in METHODS} == set(list_methods())


@pytest.mark.parametrize(("name", "params"), METHODS, ids=[f"{n}-{p}" for n, p in METHODS])
def test_every_method_and_mask_runs_on_a_model_that_reads_dicts(
    toy: tuple[nn.Module, SampleDataset, SampleDataset], name: str, params: dict
) -> None:
    model, data, test = toy
    forget, retain = data.split_by_ids(data.ids[:6])
    steps = {"epochs": 1, "batch_size": 16} if name != "retrain" else {"batch_size": 16}
    out = run_method(name, copy.deepcopy(model), forget, retain, {**steps, **params}, heldout=test)
    changed = [not torch.equal(a, b) for a, b in zip(out.parameters(), model.parameters(), strict=True)]
    assert any(changed), f"{name} {params} changed no weight"
    assert 0.0 <= accuracy(out, test) <= 1.0  # it still reads the inputs
