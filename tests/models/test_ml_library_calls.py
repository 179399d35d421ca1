"""The methods called as a researcher calls them, on their own models: what every call checks, and what it
hands back (a library probe found models returned half in train mode, a plain module refused deep in the
first step, seeds that did not hold with dropout, and bad inputs run silently)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.datasets import SampleDataset
from models.unlearning import retrain, run_method, ugradsl_plus

K = 4


def _data(n: int, seed: int, prefix: str) -> SampleDataset:
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % K
    x = torch.randn(n, 8, generator=gen) + 2.0 * nn.functional.one_hot(y, 8).float()
    return SampleDataset(x, y, [f"{prefix}{i}" for i in range(n)])


@pytest.fixture(scope="module")
def sets() -> tuple[SampleDataset, SampleDataset, SampleDataset]:
    train = _data(200, 0, "t")
    forget, retain = train.split_by_ids(train.ids[:20])
    return forget, retain, _data(100, 1, "h")


def _plain() -> nn.Module:
    """A researcher's own module: no features()/head(), batch norm and dropout."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, K))


def _weights(m: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in m.parameters()]


def test_a_plain_module_is_unlearned_and_handed_back_in_the_modes_it_came_in(sets) -> None:
    forget, retain, held = sets
    for prepare in (lambda m: m.eval(), lambda m: m.train() and m[3].eval()):
        model = _plain()
        prepare(model)
        modes = [m.training for m in model.modules()]
        before = _weights(model)
        run_method("ugradsl_plus", model, forget, retain, {}, heldout=held)
        assert [m.training for m in model.modules()] == modes
        assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_a_module_whose_output_is_not_its_classifiers_is_refused(sets) -> None:
    class Tempered(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.out = nn.Linear(8, 16), nn.Linear(16, K)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(torch.relu(self.body(x))) / 2.0  # a temperature: not head(features(x))

    forget, retain, held = sets
    with pytest.raises(ValueError, match="head"):
        run_method("ugradsl_plus", Tempered(), forget, retain, {}, heldout=held)


def test_a_seed_fixes_a_run_with_dropout_and_leaves_the_callers_rng_as_it_was(sets) -> None:
    forget, retain, held = sets
    results = []
    for global_seed in (1, 2):
        model = _plain()
        torch.manual_seed(global_seed)
        state = torch.get_rng_state()
        run_method("finetune", model, forget, retain, {"seed": 3}, heldout=held)
        assert torch.equal(torch.get_rng_state(), state)
        results.append(_weights(model))
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))
    other = _plain()
    run_method("finetune", other, forget, retain, {"seed": 4}, heldout=held)
    assert any(not torch.equal(a, b) for a, b in zip(results[0], other.parameters(), strict=True))


def test_a_method_called_directly_takes_a_dict_or_nothing_for_params_and_no_hooks(sets) -> None:
    forget, retain, held = sets
    a, b = _plain(), _plain()
    ugradsl_plus(a, forget, retain, heldout=held)
    ugradsl_plus(b, forget, retain, {"p": 0.75}, heldout=held)  # the default, given
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))


def test_bad_inputs_are_refused_before_the_run_saying_what_is_wrong(sets) -> None:
    forget, retain, held = sets
    bad_label = SampleDataset(forget.x, torch.full((len(forget),), K), forget.ids)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        run_method("random_label", _plain(), bad_label, retain, {}, heldout=held)
    with pytest.raises(ValueError, match="retain set contains 20 forget sample"):
        run_method("finetune", _plain(), forget, _union(retain, forget), {})
    with pytest.raises(ValueError, match=r"model.float\(\)"):
        run_method("ugradsl_plus", _plain().double(), forget, retain, {}, heldout=held)
    with pytest.raises(TypeError, match="SampleDataset"):
        run_method("finetune", _plain(), torch.utils.data.TensorDataset(forget.x, forget.y), retain, {})
    empty = retain.split_by_ids(retain.ids)[1]
    with pytest.raises(ValueError, match="D_r is empty"):
        retrain(_plain(), forget, empty, {"epochs": 1})
    with pytest.raises(ValueError, match="whole numbers"):
        SampleDataset(forget.x, forget.y.float() + 0.5, forget.ids)


def _union(a: SampleDataset, b: SampleDataset) -> SampleDataset:
    return SampleDataset(torch.cat([a.x, b.x]), torch.cat([a.y, b.y]), a.ids + b.ids)


def test_adapt_takes_the_classifiers_name_where_the_last_linear_is_not_it(sets) -> None:
    from models.adapters import adapt

    class Aux(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.out, self.aux = nn.Linear(8, 16), nn.Linear(16, K), nn.Linear(16, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(torch.relu(self.body(x)))

    forget, retain, held = sets
    with pytest.raises(RuntimeError, match="never reached its classifier 'aux'"):
        run_method("finetune", Aux(), forget, retain, {})
    model = Aux()
    before = model.out.weight.detach().clone()
    run_method("finetune", adapt(model, classifier="out"), forget, retain, {"epochs": 1})
    assert not torch.equal(before, model.out.weight)
