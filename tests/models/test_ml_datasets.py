from pathlib import Path

import numpy as np
import pytest
import torch

from models.datasets import SampleDataset, load_dataset, load_digits_split, load_npz, save_npz


def test_digits_split_shapes_ids_and_stratification() -> None:
    train, test = load_digits_split(seed=0)
    assert train.x.shape[1:] == (1, 8, 8) and train.x.dtype == torch.float32
    assert float(train.x.min()) >= 0.0 and float(train.x.max()) <= 1.0
    assert len(train) + len(test) == 1797 and len(test) == 360
    assert train.ids[0] == "digits-0000" and test.ids[-1] == f"digits-test-{len(test) - 1:04d}"
    assert torch.bincount(test.y).min() >= 35  # stratified: every class ~36 in the test split
    again, _ = load_digits_split(seed=0)
    assert torch.equal(again.x, train.x) and train.num_classes == 10


def test_index_of_and_split_by_ids(digits: tuple[SampleDataset, SampleDataset]) -> None:
    train, _ = digits
    forget, retain = train.split_by_ids(["digits-0005", "digits-0001"])
    assert forget.ids == ["digits-0005", "digits-0001"] and len(retain) == len(train) - 2
    assert "digits-0005" not in retain.ids
    assert torch.equal(forget.x[0], train.x[5])
    assert train.index_of(["digits-0003"]).tolist() == [3]


def test_index_of_names_unknown_ids(digits: tuple[SampleDataset, SampleDataset]) -> None:
    with pytest.raises(KeyError, match="nope-1"):
        digits[0].index_of(["digits-0000", "nope-1"])


def test_npz_round_trip_without_pickle(tmp_path: Path, digits: tuple[SampleDataset, SampleDataset]) -> None:
    _, test = digits
    save_npz(test, tmp_path / "t.npz")
    with np.load(tmp_path / "t.npz", allow_pickle=False) as f:
        assert f["ids"].dtype.kind == "U"
    back = load_dataset("npz", str(tmp_path / "t.npz"))
    assert back.ids == test.ids and torch.equal(back.x, test.x) and torch.equal(back.y, test.y)
    assert load_npz(tmp_path / "t.npz").num_classes == 10


def test_dataset_rejects_mismatched_lengths_and_unknown_kind() -> None:
    with pytest.raises(ValueError):
        SampleDataset(torch.zeros(2, 1), torch.zeros(3, dtype=torch.long), ["a", "b"])
    with pytest.raises(ValueError, match="npz"):
        load_dataset("parquet-ish", "x")


def test_digits_kind_loads_either_split() -> None:
    train, test = load_digits_split()
    assert load_dataset("digits", ":test").ids == test.ids
    assert len(load_dataset("digits", ":train")) == len(train)
