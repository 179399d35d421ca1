"""A last-layers run that leaves a memorised deletion recognised far above unseen rows of its classes is
run again on the whole model (``methods._unmoved``): a client's timm ResNet kept every forgotten row."""

from __future__ import annotations

import torch
from torch import nn

from models.datasets import SampleDataset
from models.unlearning.bounds import HeldoutBound
from models.unlearning.methods import _Part, _unmoved
from models.unlearning.params import parse_params


def _always_class_0() -> nn.Module:
    """Predicts class 0 for every row: every forget row of class 0 is recognised."""
    net = nn.Linear(3, 2)
    with torch.no_grad():
        net.weight.zero_()
        net.bias.copy_(torch.tensor([5.0, 0.0]))
    return net


def _part(distance: float, label: int = 0, rows: int = 40) -> _Part:
    forget = SampleDataset(torch.zeros(rows, 3), torch.full((rows,), label), [f"f{i}" for i in range(rows)])
    params = parse_params("ugradsl_plus", {})
    return _Part(_always_class_0(), forget, forget, None, params, {"measured_distance": distance})


def _bound(right: float, retained: tuple[bool, bool] = (True, True), rows: int = 200) -> HeldoutBound:
    """Held-out rows of class 0, ``right`` of them predicted correctly before the run."""
    correct = torch.arange(rows) < right * rows
    return HeldoutBound(
        torch.linspace(0.0, 2.0, rows), torch.tensor(retained),
        heldout_y=torch.zeros(rows, dtype=torch.long), heldout_correct=correct,
    )  # fmt: skip


def test_a_memorised_deletion_still_recognised_far_above_unseen_rows_is_unmoved() -> None:
    # 40 of 40 recognised where unseen rows of the class are right 80% of the time: about 5 SE above
    excess = _unmoved(_part(5.0), _bound(0.8))
    assert excess is not None and excess > 2.5


def test_what_unseen_rows_of_its_class_would_also_get_is_not_unmoved() -> None:
    assert _unmoved(_part(5.0), _bound(1.0)) is None  # a class the model never gets wrong (half a digit)
    assert _unmoved(_part(5.0), _bound(0.95)) is None  # within 2.5 standard errors
    assert _unmoved(_part(0.5), _bound(0.5)) is None  # it looked unseen before the run: nothing to move
    assert _unmoved(_part(5.0), _bound(0.5, retained=(False, True))) is None  # its class left: apart
    assert _unmoved(_part(5.0), None) is None  # no held-out data: nothing to compare with


def test_rows_moved_off_their_label_are_left_out_as_the_gate_leaves_flagged_rows_out() -> None:
    """A job mixing an erasure with flagged rows: the moved rows, counted as forgotten, hid the erased
    ones still recognised (a review)."""
    y = torch.cat([torch.zeros(20, dtype=torch.long), torch.ones(20, dtype=torch.long)])
    forget = SampleDataset(torch.zeros(40, 3), y, [f"f{i}" for i in range(40)])
    moves = torch.zeros(40, dtype=torch.long)  # rows 20-39, labelled 1, moved to class 0 (and there)
    part = _Part(_always_class_0(), forget, forget, None, parse_params("ugradsl_plus", {}),
                 {"measured_distance": 5.0}, moves)  # fmt: skip
    heldout_y = torch.arange(200) % 2  # both classes, 70% right
    bound = HeldoutBound(
        torch.linspace(0.0, 2.0, 200), torch.tensor([True, True]),
        heldout_y=heldout_y, heldout_correct=torch.arange(200) < 140,
    )  # fmt: skip
    excess = _unmoved(part, bound)
    assert excess is not None and excess > 2.5  # the 20 erased rows, all recognised where 14 would be
