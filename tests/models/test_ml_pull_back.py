"""A run that leaves D_f recognised far below unseen rows of its classes is taken back along the line to
where it started (``methods._pull_back``, ``overshoot_se``): an MLP over overlapping classes and a
client's subject deletion ended with D_f over-forgotten (UA 91% against a retrain's 58%)."""

from __future__ import annotations

import torch
from torch import nn

from models.datasets import SampleDataset
from models.unlearning.bounds import HeldoutBound
from models.unlearning.methods import _blend, _Part, _pull_back
from models.unlearning.params import parse_params


def _linear(sign: float) -> nn.Module:
    """Class 0 where x0 > 0 (sign 1), or the reverse (sign -1)."""
    net = nn.Linear(2, 2)
    with torch.no_grad():
        net.weight.copy_(sign * torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
        net.bias.zero_()
    return net


def _part(net: nn.Module, rows: int = 50) -> _Part:
    x = torch.stack([torch.linspace(0.5, 2.0, rows), torch.zeros(rows)], 1)  # class 0 rows, x0 > 0
    forget = SampleDataset(x, torch.zeros(rows, dtype=torch.long), [f"f{i}" for i in range(rows)])
    return _Part(net, forget, forget, None, parse_params("ugradsl_plus", {}), {})


def _bound(right: float, rows: int = 200) -> HeldoutBound:
    """Held-out rows of class 0, ``right`` of them expected right by a retrain (read under D_r's prior);
    under the model's own prior every one was wrong, which the pull-back must not read."""
    expected = torch.arange(rows) < right * rows
    return HeldoutBound(
        torch.linspace(0.0, 2.0, rows), torch.tensor([True, True]),
        heldout_y=torch.zeros(rows, dtype=torch.long), heldout_correct=torch.zeros(rows, dtype=torch.bool),
        heldout_expected=expected,
    )  # fmt: skip


def test_an_over_forgotten_deletion_is_taken_back_to_where_it_is_no_longer_below_unseen_rows() -> None:
    start = {k: v.clone() for k, v in _linear(1.0).state_dict().items()}
    net = _linear(-1.0)  # the run's end: every row of D_f misclassified, unseen rows 80% right
    end = {k: v.clone() for k, v in net.state_dict().items()}
    done = _pull_back(net, start, _part(net), _bound(0.8), limit=1.0)
    assert done is not None and done["excess_before"] < -1.0
    # along the line the weights are (1 - 2t)·start: D_f is right up to t = 1/2 and wrong past it
    assert 0.49 <= done["kept_share"] <= 0.5 and done["excess_after"] >= 0
    t = done["kept_share"]
    for name, value in net.state_dict().items():
        assert torch.allclose(value, start[name] + t * (end[name] - start[name]))


def test_a_deletion_within_the_limit_is_left_where_the_run_ended() -> None:
    net = _linear(1.0)  # D_f all right: above unseen rows, not below
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert _pull_back(net, {k: -v for k, v in before.items()}, _part(net), _bound(0.8), limit=1.0) is None
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_blend_mixes_floating_point_state_and_keeps_the_end_of_the_rest() -> None:
    net = nn.BatchNorm1d(2)
    start = {k: torch.zeros_like(v) for k, v in net.state_dict().items()}
    end = {k: torch.ones_like(v) * (4 if v.is_floating_point() else 7) for k, v in net.state_dict().items()}
    _blend(net, start, end, 0.25)
    assert torch.equal(net.running_mean, torch.ones(2)) and int(net.num_batches_tracked) == 7


def test_a_deletion_below_unseen_rows_before_the_run_too_is_not_undone() -> None:
    """Rows hard or odd for their class (one person's corner of it) are below before the run: taking the
    weights back would only restore the model that knew them."""
    net = _linear(-1.0)
    end = {k: v.clone() for k, v in net.state_dict().items()}
    start = {k: v.clone() for k, v in _linear(-0.5).state_dict().items()}  # D_f wrong at the start too
    assert _pull_back(net, start, _part(net), _bound(0.8), limit=1.0) is None
    assert all(torch.equal(v, end[k]) for k, v in net.state_dict().items())


def test_a_deletion_with_rows_moved_off_their_label_is_not_taken_back() -> None:
    net = _linear(-1.0)
    end = {k: v.clone() for k, v in net.state_dict().items()}
    part = _part(net)
    part.moves = torch.ones(len(part.forget), dtype=torch.long)  # flagged: pushed to class 1
    assert _pull_back(net, {k: -v for k, v in end.items()}, part, _bound(0.8), limit=1.0) is None
    assert all(torch.equal(v, end[k]) for k, v in net.state_dict().items())
