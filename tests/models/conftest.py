"""Factories for the ML-core tests: the digits split and a memorising small CNN, trained once per session."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch

from models.architectures import build_model
from models.datasets import SampleDataset, load_digits_split
from models.training import DIGITS_RECIPE, train


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """These models are tiny: one thread is as fast, and on a shared 2-core machine two OpenMP threads
    spin-wait for each other (10x slower under load). Restored when the session ends."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def digits() -> tuple[SampleDataset, SampleDataset]:
    return load_digits_split(seed=0)


@pytest.fixture(scope="session")
def digits_model(digits: tuple[SampleDataset, SampleDataset]) -> torch.nn.Module:
    train_ds, _ = digits
    torch.manual_seed(0)
    return train(
        build_model("small_cnn", in_channels=1, image_size=8, num_classes=10), train_ds, DIGITS_RECIPE
    )


@pytest.fixture()
def fresh_digits_model(digits_model: torch.nn.Module) -> torch.nn.Module:
    """A private copy: methods update models in place."""
    return copy.deepcopy(digits_model)


def random_forget_split(
    train_ds: SampleDataset, fraction: float, seed: int
) -> tuple[SampleDataset, SampleDataset]:
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(train_ds), generator=gen)[: int(fraction * len(train_ds))]
    return train_ds.split_by_ids([train_ds.ids[i] for i in idx.tolist()])


@pytest.fixture(scope="session")
def digits_random10(digits: tuple[SampleDataset, SampleDataset]) -> tuple[SampleDataset, SampleDataset]:
    """(forget, retain): a random 10% of the digits train split."""
    return random_forget_split(digits[0], 0.1, seed=1)
