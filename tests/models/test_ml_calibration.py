"""Calibration vs scoring data: a method's held-out data and the data that grades it never overlap, and
the split depends on the sample IDs alone."""

from __future__ import annotations

import torch

from models.calibration import held_out, roles, split_test_set
from models.datasets import SampleDataset


def dataset(n: int, prefix: str = "t") -> SampleDataset:
    return SampleDataset(torch.randn(n, 3), torch.arange(n) % 4, [f"{prefix}-{i}" for i in range(n)])


def test_the_test_set_is_halved_into_disjoint_parts_that_cover_it() -> None:
    test = dataset(1000)
    parts = split_test_set(test)
    calibration, scoring = set(parts.calibration.ids), set(parts.scoring.ids)
    assert not calibration & scoring
    assert calibration | scoring == set(test.ids)
    assert 400 < len(calibration) < 600  # about half


def test_the_halves_depend_on_the_ids_not_their_order() -> None:
    test = dataset(300)
    perm = torch.randperm(300, generator=torch.Generator().manual_seed(1))
    shuffled = test.subset(perm)
    assert set(split_test_set(test).scoring.ids) == set(split_test_set(shuffled).scoring.ids)


def test_a_models_own_heldout_set_calibrates_and_the_whole_test_set_scores() -> None:
    test, heldout = dataset(100), dataset(40, prefix="h")
    parts = held_out(test, heldout)
    assert parts.calibration is heldout and parts.scoring is test
    recorded = roles(parts, "digits-test", "digits-heldout")
    assert recorded["calibration"] == {"dataset": "digits-heldout", "samples": 40}
    assert recorded["scoring"] == {"dataset": "digits-test", "samples": 100}
