"""Batches for a loop, read ahead of it: rows kept on disk (``models.streamed``) are read by DataLoader
worker processes while the model computes, so a pass over a streamed set is not serialised on decoding
and disk reads. Rows in memory are taken in the calling process, as they always were.

The caller says which rows each step needs (its *plan*, drawn from its own seeded generator in this
process), so the order, and hence the result, is the same whether rows come from memory or from disk, and
whatever the number of reader processes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from models import batches as B
from models.batches import Inputs, Loaded
from models.streamed import LazyRows

PREFETCH = 4  # batches each reader process keeps ready


Step = Sequence[torch.Tensor]


class _Reader(Dataset[tuple[Step, list[Loaded | None]]]):
    """For one step's index tensors: the step itself (the loop needs it for the labels and for inputs in
    memory) and the rows of each streamed input (None for inputs in memory)."""

    def __init__(self, views: Sequence[LazyRows | None]) -> None:
        self.views = views

    def __getitem__(self, step: Step) -> tuple[Step, list[Loaded | None]]:  # type: ignore[override]
        return step, [None if v is None else v.read(i) for v, i in zip(self.views, step, strict=True)]


def read_ahead(xs: Sequence[Inputs], plan: Iterable[Step]) -> Iterator[tuple[Step, list[Loaded]]]:
    """For each step of ``plan`` (one CPU index tensor per input): the step and the rows of each input, on
    the input's device. Streamed inputs are read ahead by as many processes as the most any of them asks
    for; the plan is drawn in this process, ahead of the loop by a few steps."""
    lazy = [x if isinstance(x, LazyRows) else None for x in xs]
    workers = max((x.workers for x in lazy if x is not None), default=0)
    if not any(lazy) or workers == 0:
        for step in plan:
            yield step, [B.take(x, _on(x, i)) for x, i in zip(xs, step, strict=True)]
        return
    reader = _Reader([None if x is None else x.on("cpu") for x in lazy])
    loader = DataLoader(reader, sampler=plan, batch_size=None, num_workers=workers, prefetch_factor=PREFETCH)
    for step, read in loader:
        yield (
            step,
            [
                B.take(x, _on(x, i)) if r is None else B.to(r, _device(x))
                for x, i, r in zip(xs, step, read, strict=True)
            ],
        )


def _device(x: Inputs) -> torch.device:
    if isinstance(x, LazyRows):
        return x.device
    return x.device if isinstance(x, torch.Tensor) else next(iter(x.values())).device


def _on(x: Inputs, idx: torch.Tensor) -> torch.Tensor:
    """Indices where ``x`` lives (in-memory inputs were moved to the model's device once)."""
    if isinstance(x, torch.Tensor):
        return idx.to(x.device)
    if isinstance(x, dict) and x:
        return idx.to(next(iter(x.values())).device)
    return idx


def in_order(x: Inputs, batch_size: int) -> Iterator[Loaded]:
    """Consecutive batches of ``x`` (the last may be short), on its device: slices of data in memory,
    rows read ahead for data on disk."""
    n = B.rows(x)
    if not isinstance(x, LazyRows):
        for start in range(0, n, batch_size):
            yield B.window(x, start, start + batch_size)
        return
    plan = ((torch.arange(start, min(start + batch_size, n)),) for start in range(0, n, batch_size))
    for _, (rows,) in read_ahead([x], plan):
        yield rows
