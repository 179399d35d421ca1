"""A deletion that takes whole classes and rows of classes that stay."""

from __future__ import annotations

import copy

import torch

from models.datasets import SampleDataset
from models.hooks import Hooks
from models.metrics import accuracy
from models.unlearning import run_method


def test_whole_classes_and_other_rows_run_apart_the_rows_by_pushes_then_the_classes(
    digits_model: torch.nn.Module, digits: tuple[SampleDataset, SampleDataset]
) -> None:
    """Together, the class rules sized the whole run by epochs and its reruns checked the class only: a
    probe's class plus 10% of the other classes left those rows 99% recognised (its retrains 84-88%) and
    the version failed the forget-excess gate. The rows of classes that stay are now sized by pushes, as
    alone, and the class runs last, so it ends forgotten."""
    train_ds, test_ds = digits
    labels = train_ds.y.tolist()
    whole = [i for i, y in zip(train_ds.ids, labels, strict=True) if y == 3]
    others = [i for i, y in zip(train_ds.ids, labels, strict=True) if y != 3][::10]
    forget, retain = train_ds.split_by_ids(whole + others)
    plans: list[dict] = []
    model = run_method(
        "ugradsl_plus",
        copy.deepcopy(digits_model),
        forget,
        retain,
        {},
        Hooks(on_plan=plans.append),
        heldout=test_ds.subset(torch.arange(0, 180)),
    )
    runs = [p for p in plans if p.get("sized_by") in ("pushes", "epochs")]
    assert runs[0]["sized_by"] == "pushes" and runs[0]["forget_rows"] == len(others)
    assert all(r["sized_by"] == "epochs" and r["forget_rows"] == len(whole) for r in runs[1:]) and runs[1:]
    assert accuracy(model, forget.subset(torch.nonzero(forget.y == 3).flatten())) <= 0.01
