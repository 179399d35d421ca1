"""A model's inputs, as the service holds them: one tensor ``(N, ...)`` (images, vectors) or a dict of
equally long tensors (a text model's ``input_ids``, ``attention_mask``, ...), row i of every tensor being
sample i.

Inputs may also stay on disk (``models.streamed.LazyRows``: a streamed dataset): then ``take`` and
``window`` read the rows, ``to`` says where they will be read to, and ``select`` makes a view.

Every place that takes rows, moves inputs to a device, counts them or cuts them into micro-batches goes
through these helpers, so no method, mask, bound, metric or training loop assumes one tensor. ``len`` of a
dict is its number of keys, never its number of rows: use ``rows``. On a tensor each helper is the very
operation the code ran before (``x[idx]``, ``x[a:b]``, ``x.to(device)``, ``torch.cat``,
``tensor_split``), so image runs are bit-for-bit unchanged.

A model is always called with one positional argument, ``model(x)``: a dict is passed as it is (the
Hugging Face adapter spreads it into keyword arguments itself).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import overload

import torch

from models.streamed import LazyRows

Inputs = torch.Tensor | dict[str, torch.Tensor] | LazyRows
Loaded = torch.Tensor | dict[str, torch.Tensor]  # rows in memory, as a model reads them


def rows(x: Inputs) -> int:
    """Number of samples (the first axis); a dict's tensors must agree (see ``check``)."""
    if isinstance(x, torch.Tensor | LazyRows):
        return len(x)
    return len(next(iter(x.values()))) if x else 0


def check(x: Inputs) -> int:
    """``rows(x)``, after checking a dict is non-empty and its tensors are equally long; ValueError."""
    if isinstance(x, torch.Tensor | LazyRows):
        return len(x)
    if not isinstance(x, Mapping) or not x:
        raise ValueError("inputs must be a tensor or a non-empty dict of tensors")
    lengths = {k: len(v) for k, v in x.items() if isinstance(v, torch.Tensor)}
    if len(lengths) != len(x):
        bad = sorted(k for k in x if k not in lengths)
        raise ValueError(f"inputs {bad} are not tensors")
    if len(set(lengths.values())) > 1:
        raise ValueError(f"input tensors differ in length: {lengths}")
    return next(iter(lengths.values()))


def take(x: Inputs, idx: torch.Tensor) -> Loaded:
    """The rows ``idx`` (a LongTensor) of every tensor (read from disk, for rows that are there)."""
    if isinstance(x, torch.Tensor):
        return x[idx]
    if isinstance(x, LazyRows):
        return x.read(idx)
    return {k: v[idx] for k, v in x.items()}


def select(x: Inputs, idx: torch.Tensor) -> Inputs:
    """``take`` for data kept in memory; a view (nothing read) of rows kept on disk."""
    return x.select(idx) if isinstance(x, LazyRows) else take(x, idx)


def window(x: Inputs, start: int, stop: int) -> Loaded:
    """Rows ``start:stop`` (a view, as slicing a tensor is; read, for rows on disk)."""
    if isinstance(x, torch.Tensor):
        return x[start:stop]
    if isinstance(x, LazyRows):
        return x.read(torch.arange(start, min(stop, len(x))))
    return {k: v[start:stop] for k, v in x.items()}


@overload
def to(x: torch.Tensor, device: str | torch.device) -> torch.Tensor: ...
@overload
def to(x: dict[str, torch.Tensor], device: str | torch.device) -> dict[str, torch.Tensor]: ...
@overload
def to(x: LazyRows, device: str | torch.device) -> LazyRows: ...
@overload
def to(x: Inputs, device: str | torch.device) -> Inputs: ...
def to(x: Inputs, device: str | torch.device) -> Inputs:
    """Every tensor on ``device`` (dtypes kept: token ids stay integers); rows on disk are read there."""
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, LazyRows):
        return x.on(device)
    return {k: v.to(device) for k, v in x.items()}


def cat(parts: Sequence[Loaded]) -> Loaded:
    """Rows of ``parts`` one after the other (dicts: per key; every part must have the same keys)."""
    tensors = [p for p in parts if isinstance(p, torch.Tensor)]
    if len(tensors) == len(parts):
        return torch.cat(tensors)
    dicts = [p for p in parts if isinstance(p, dict)]
    if len(dicts) != len(parts) or any(d.keys() != dicts[0].keys() for d in dicts):
        raise ValueError("cannot concatenate inputs of different kinds or keys")
    return {k: torch.cat([d[k] for d in dicts]) for k in dicts[0]}


def split(x: Loaded, sections: int) -> list[Loaded]:
    """``sections`` nearly equal consecutive parts, as ``Tensor.tensor_split`` makes them."""
    if isinstance(x, torch.Tensor):
        return list(x.tensor_split(sections))
    pieces = {k: v.tensor_split(sections) for k, v in x.items()}
    return [{k: pieces[k][i] for k in x} for i in range(sections)]


def sample_shape(x: Inputs) -> tuple[int, ...] | dict[str, tuple[int, ...]]:
    """One sample's shape: a tuple for a tensor, one per key for a dict."""
    if isinstance(x, torch.Tensor):
        return tuple(int(d) for d in x.shape[1:])
    if isinstance(x, LazyRows):
        return x.sample_shape
    return {k: tuple(int(d) for d in v.shape[1:]) for k, v in x.items()}
