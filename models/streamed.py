"""Samples that stay on disk: a dataset's inputs read a batch at a time, so a worker's memory is bounded by
its batches, not by the dataset.

A ``LazyRows`` stands where a ``SampleDataset`` would hold its input tensor. It is a *source* (a memory-
mapped ``.npy``, the image files of a CSV manifest, WebDataset tar shards) and the rows of that source it
holds: ``select`` makes a view (the retain set is the training set minus a few rows, and is never copied),
``read`` materialises rows as the float32 (C, H, W) tensors a model reads, with the dataset's feature
declaration applied per batch exactly as the in-memory loaders apply it to the whole array, so the same
data gives the same tensors either way.

Sources hold paths, not open files or mappings: a view is pickled into the DataLoader worker processes
that read ahead of the training loop (``models.loading``), and each process opens what it reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from models.declarations import ImageFeatures
from models.shards import Member, read_member
from models.transforms import apply_features, post_only, read_image, stack_images


class RowSource(Protocol):
    """Rows of a dataset on disk. ``read`` returns (len(rows), ...) float32, declared features applied."""

    def __len__(self) -> int: ...

    def read(self, rows: np.ndarray) -> torch.Tensor: ...

    @property
    def sample_shape(self) -> tuple[int, ...]: ...


@dataclass
class NpyRows:
    """Rows of a memory-mapped ``x.npy``: only the rows read are paged in."""

    path: Path
    decl: ImageFeatures | None
    _array: np.ndarray | None = field(default=None, init=False, repr=False)

    def __getstate__(self) -> dict[str, object]:
        return {"path": self.path, "decl": self.decl, "_array": None}  # each process maps the file itself

    def _x(self) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r", allow_pickle=False)
        return self._array

    def __len__(self) -> int:
        return int(self._x().shape[0])

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.read(np.arange(min(1, len(self)))).shape[1:])

    def read(self, rows: np.ndarray) -> torch.Tensor:
        return apply_features(np.ascontiguousarray(self._x()[rows]), self.decl, what=f"{self.path.name}: x")

    @property
    def stored_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self._x().shape[1:])

    @property
    def stored_dtype(self) -> str:
        return self._x().dtype.name


@dataclass
class FileRows:
    """Rows that are image files (a CSV manifest's paths, already checked to stay in its folder)."""

    files: list[Path]
    decl: ImageFeatures | None
    what: str = "manifest"

    def __len__(self) -> int:
        return len(self.files)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.read(np.arange(min(1, len(self)))).shape[1:])

    def read(self, rows: np.ndarray) -> torch.Tensor:
        names = [str(self.files[i]) for i in rows.tolist()]
        arrays = [
            read_image(self.files[i], self.files[i].suffix.lstrip(".").lower(), name, self.decl)
            for i, name in zip(rows.tolist(), names, strict=True)
        ]
        return post_only(stack_images(arrays, self.what, names), self.decl) if arrays else torch.empty(0)


@dataclass
class ShardRows:
    """Rows that are images inside WebDataset tar shards, read by offset (``models.shards``)."""

    shards: list[Path]
    members: list[Member]
    decl: ImageFeatures | None
    keys: list[str] | None = None  # each member's sample ID, to name an image that does not fit

    def __len__(self) -> int:
        return len(self.members)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.read(np.arange(min(1, len(self)))).shape[1:])

    def read(self, rows: np.ndarray) -> torch.Tensor:
        arrays, names = [], []
        for i in rows.tolist():
            member = self.members[i]
            where = f"sample {self.keys[i]!r}" if self.keys else f"the member at byte {member.offset}"
            names.append(f"{self.shards[member.shard].name}: {where}")
            data = read_member(self.shards[member.shard], member)
            arrays.append(read_image(data, member.ext, names[-1], self.decl))
        return (
            post_only(stack_images(arrays, self.shards[0].parent.name, names), self.decl)
            if arrays
            else torch.empty(0)
        )


class LazyRows:
    """The rows ``index`` of a source (all of them when None), read on demand onto ``device``; loops that
    walk many batches have ``workers`` processes read ahead of them (``models.loading``; 0: read in the
    calling process)."""

    def __init__(
        self,
        source: RowSource,
        index: np.ndarray | None = None,
        device: torch.device | str = "cpu",
        workers: int = 0,
    ) -> None:
        self.source = source
        self.index = index
        self.device = torch.device(device)
        self.workers = workers

    def __len__(self) -> int:
        return len(self.source) if self.index is None else len(self.index)

    def __repr__(self) -> str:
        return f"LazyRows({type(self.source).__name__}, rows={len(self)}, device={self.device})"

    def _rows(self, idx: np.ndarray) -> np.ndarray:
        return idx if self.index is None else self.index[idx]

    def select(self, idx: torch.Tensor | np.ndarray) -> LazyRows:
        """A view of the rows ``idx`` of this view (nothing is read)."""
        rows = self._rows(np.asarray(idx, dtype=np.int64).reshape(-1))
        return LazyRows(self.source, rows, self.device, self.workers)

    def on(self, device: torch.device | str) -> LazyRows:
        """The same rows, read onto ``device``."""
        return LazyRows(self.source, self.index, device, self.workers)

    def reading_with(self, workers: int) -> LazyRows:
        """The same rows, read ahead by ``workers`` processes."""
        return LazyRows(self.source, self.index, self.device, workers)

    def source_rows(self, idx: torch.Tensor | np.ndarray) -> np.ndarray:
        """The source's numbers of this view's rows ``idx``."""
        return self._rows(np.asarray(torch.as_tensor(idx).cpu(), dtype=np.int64).reshape(-1))

    def read(self, idx: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Rows ``idx`` of this view, materialised on its device."""
        rows = self.source_rows(idx)
        if len(rows) == 0:
            shape = self.sample_shape if len(self.source) else ()
            return torch.empty((0, *shape), device=self.device)
        return self.source.read(rows).to(self.device)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.source.sample_shape
