"""A frozen front's outputs kept between runs, by sample ID (ours, not the paper's).

Why: a run that trains only a network's last layers (``models.unlearning.last_layers``) first passes
every row it will read through the frozen front, and on the 60k Fashion-MNIST model that pass was 45% of
a random deletion's run (1.6 of 3.6 s). Such runs publish versions whose front is the base's, bit for bit,
so a model taking deletions one after another passed the same rows through the same front in every job:
a cost that follows the dataset, not the deletion. Here each row goes through a given front once; a later
run on any version that kept that front reads it back and computes only rows it has not seen.

A front is known by its fingerprint: a hash of its code, of every tensor it holds (weights and buffers:
it runs in eval mode), of the device kind (a GPU's kernels round differently from a CPU's) and of the
autocast in effect. A row is known by the ``source`` the caller names (what the rows are: a registered
dataset's file hash and declaration) and its sample ID, so two datasets that both number their samples
from 0 never meet.

Memory is bounded by ``max_bytes``: the least recently used front is dropped first, and a front whose rows
alone would pass the bound is not kept at all (its run computes its rows as if there were no cache). Not
safe to share between threads; a worker process runs one job at a time.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from models.datasets import SampleDataset
from models.hooks import FrontFeatures
from models.unlearning.last_layers import features, rows_like


@dataclass
class _Rows:
    """One front's outputs: ``values[name][index[id]]`` is sample ``id``'s value ``name`` ("" when the
    front gives one tensor)."""

    index: dict[str, int] = field(default_factory=dict)
    values: dict[str, torch.Tensor] = field(default_factory=dict)

    def nbytes(self) -> int:
        return sum(t.element_size() * t.numel() for t in self.values.values())

    def add(self, ids: list[str], fresh: SampleDataset) -> None:
        parts = fresh.x if isinstance(fresh.x, dict) else {"": fresh.x}
        n = len(self.index)
        for k, v in parts.items():
            assert isinstance(v, torch.Tensor)
            if n:  # fresh rows are a new tensor of ``features``': the first are kept as they are
                grown = rows_like(v, n + len(v))
                grown[:n] = self.values[k]
                grown[n:] = v
                v = grown
            self.values[k] = v
        self.index.update((sid, n + i) for i, sid in enumerate(ids))

    def take(self, data: SampleDataset) -> SampleDataset:
        rows = torch.tensor([self.index[sid] for sid in data.ids], dtype=torch.long)
        out = {}
        for k, v in self.values.items():
            out[k] = rows_like(v, len(rows))
            torch.index_select(v, 0, rows, out=out[k])
        return SampleDataset(out[""] if list(out) == [""] else out, data.y.clone(), list(data.ids))


@dataclass
class CacheStats:
    """Rows served from the cache and rows passed through a front, since the cache was made."""

    read: int = 0
    computed: int = 0


class FeatureCache:
    """Front outputs by (source, front fingerprint, sample ID), within ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.stats = CacheStats()
        self._fronts: OrderedDict[tuple[str, str], _Rows] = OrderedDict()

    def nbytes(self) -> int:
        return sum(r.nbytes() for r in self._fronts.values())

    def features(
        self, front: nn.Module, data: SampleDataset, device: torch.device, source: str
    ) -> SampleDataset:
        """``last_layers.features(front, data, device)``, from the rows kept for ``front`` and ``source``
        where there are, computing (and keeping) only the others."""
        key = (source, fingerprint(front, device))
        kept = self._fronts.pop(key, _Rows())
        missing = [i for i, sid in enumerate(data.ids) if sid not in kept.index]
        if missing:
            fresh = features(front, data.subset(missing), device)
            kept.add(fresh.ids, fresh)
            self.stats.computed += len(missing)
        self.stats.read += len(data) - len(missing)
        out = kept.take(data)
        if kept.nbytes() <= self.max_bytes:
            self._fronts[key] = kept  # most recently used last
            while self.nbytes() > self.max_bytes:
                self._fronts.popitem(last=False)
        return out

    def bound(self, source: str) -> FrontFeatures:
        """This cache as a run's ``Hooks.front_features``, for rows of ``source``."""

        def front_features(front: nn.Module, data: SampleDataset, device: torch.device) -> SampleDataset:
            return self.features(front, data, device, source)

        return front_features


def fingerprint(front: nn.Module, device: torch.device) -> str:
    """A hash of what a front's outputs depend on besides its inputs: its code, its tensors, the device
    kind and the autocast in effect (a worker at ``UNLEARN_PRECISION=bf16`` computes bf16 outputs)."""
    cast = torch.is_autocast_enabled(device.type) and torch.get_autocast_dtype(device.type)
    h = hashlib.sha256(f"{device.type}:{cast}".encode())
    h.update(repr(front).encode())
    for m in front.modules():
        if isinstance(m, fx.GraphModule):
            h.update(m.code.encode())
    for name, t in front.state_dict().items():
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
