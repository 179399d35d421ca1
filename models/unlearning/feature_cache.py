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

With a ``store`` (``models.unlearning.feature_store``) the rows are shared between processes: each chunk a
process computes is written to disk, and a process missing rows reads the chunks others wrote for the same
front and source before it computes any.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from models.datasets import SampleDataset
from models.hooks import FrontFeatures
from models.unlearning.feature_store import FeatureStore
from models.unlearning.last_layers import features, rows_like


@dataclass
class _Rows:
    """One front's outputs, in the chunks that runs computed: chunk ``c`` holds rows ``starts[c]`` on, and
    ``index[id]`` is sample ``id``'s row. Each value of a chunk is one tensor (its name "" when the front
    gives one). Why chunks and not one growing tensor: growing copied every kept row at every run that
    added some (0.75 GB on the 60k model)."""

    index: dict[str, int] = field(default_factory=dict)
    chunks: list[dict[str, torch.Tensor]] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    stored: set[str] = field(default_factory=set)  # names of the store's chunks these rows hold

    def nbytes(self) -> int:
        return sum(t.element_size() * t.numel() for c in self.chunks for t in c.values())

    def add(self, fresh: SampleDataset) -> None:
        values = dict(fresh.x) if isinstance(fresh.x, dict) else {"": fresh.x}
        self.add_values(values, fresh.ids)  # type: ignore[arg-type]

    def add_values(self, values: dict[str, torch.Tensor], ids: list[str]) -> None:
        self.starts.append(len(self.index))
        self.chunks.append(values)
        self.index.update((sid, self.starts[-1] + i) for i, sid in enumerate(ids))

    def take(self, data: SampleDataset) -> SampleDataset:
        """``data``'s rows. Rows that one chunk holds in that order (a run's own, as it computed them) are
        views of it, not copies: runs read their features and never write them."""
        rows = torch.tensor([self.index[sid] for sid in data.ids], dtype=torch.long)
        ends = [*self.starts[1:], len(self.index)]
        first = int(rows[0]) if len(rows) else 0
        in_order = len(rows) > 0 and torch.equal(rows, torch.arange(first, first + len(rows)))
        out: dict[str, torch.Tensor] = {}
        for start, end, chunk in zip(self.starts, ends, self.chunks, strict=True):
            at = torch.nonzero((rows >= start) & (rows < end)).flatten()
            if in_order and len(at) == len(rows):
                lo = first - start  # one run of this chunk, in order: a view
                out = {k: v[lo : lo + len(rows)] for k, v in chunk.items()}
                break
            if len(rows) and not len(at):
                continue
            for k, v in chunk.items():
                if k not in out:
                    out[k] = rows_like(v, len(rows))
                if len(at) == len(rows):  # all from this chunk: straight into the output
                    torch.index_select(v, 0, rows - start, out=out[k])
                elif len(at):
                    out[k].index_copy_(0, at, v.index_select(0, rows[at] - start))
        return SampleDataset(out[""] if list(out) == [""] else out, data.y.clone(), list(data.ids))


@dataclass
class CacheStats:
    """Rows served from the cache and rows passed through a front, since the cache was made."""

    read: int = 0
    computed: int = 0
    loaded: int = 0  # rows read from the store (written there by this or another process)


class FeatureCache:
    """Front outputs by (source, front fingerprint, sample ID), within ``max_bytes``."""

    def __init__(self, max_bytes: int, store: FeatureStore | None = None) -> None:
        self.max_bytes = max_bytes
        self.store = store
        self.stats = CacheStats()
        self._fronts: OrderedDict[tuple[str, str], _Rows] = OrderedDict()

    def nbytes(self) -> int:
        return sum(r.nbytes() for r in self._fronts.values())

    def features(
        self, front: nn.Module, data: SampleDataset, device: torch.device, source: str
    ) -> SampleDataset:
        """``last_layers.features(front, data, device)``, from the rows kept for ``front`` and ``source``
        where there are, computing (and keeping) only the others."""
        kept, missing = self._computed(front, data, device, source)
        self.stats.read += len(data) - missing
        return kept.take(data)

    def keep(self, front: nn.Module, data: SampleDataset, device: torch.device, source: str) -> int:
        """Compute and keep the rows of ``data`` not kept yet, returning none of them (a warm-up: no copy
        of the rows is made); the number computed."""
        return self._computed(front, data, device, source)[1]

    def _computed(
        self, front: nn.Module, data: SampleDataset, device: torch.device, source: str
    ) -> tuple[_Rows, int]:
        """The front's rows with ``data``'s added, and how many were computed for it."""
        key = (source, fingerprint(front, device))
        kept = self._fronts.get(key) or _Rows()  # left in place: a pass that fails keeps what was kept
        missing = [i for i, sid in enumerate(data.ids) if sid not in kept.index]
        if missing and self.store is not None:
            self._load(kept, "\n".join(key), {data.ids[i] for i in missing})
            missing = [i for i in missing if data.ids[i] not in kept.index]
        if missing:
            fresh = features(front, data.subset(missing), device)
            kept.add(fresh)
            self.stats.computed += len(missing)
            if self.store is not None:
                name = self.store.write("\n".join(key), fresh.ids, kept.chunks[-1])
                kept.stored.update([name] if name else [])
        if kept.nbytes() <= self.max_bytes:
            self._fronts[key] = kept
            self._fronts.move_to_end(key)  # most recently used last
            while self.nbytes() > self.max_bytes:
                self._fronts.popitem(last=False)
        else:
            self._fronts.pop(key, None)
        return kept, len(missing)

    def _load(self, kept: _Rows, key: str, wanted: set[str]) -> None:
        """Add to ``kept`` the store's chunks of ``key`` that hold any of the ``wanted`` rows."""
        assert self.store is not None
        for name in self.store.chunks(key, skip=kept.stored):
            chunk = self.store.read(key, name, wanted)  # None: none of them, gone, or dropped as corrupt
            if chunk is None:
                continue
            kept.stored.add(name)
            kept.add_values(chunk.values, chunk.ids)
            self.stats.loaded += len(chunk.ids)
            wanted.difference_update(chunk.ids)
            if not wanted:
                break

    def bound(self, source: str) -> FrontFeatures:
        """This cache as a run's ``Hooks.front_features``, for rows of ``source``."""

        def front_features(front: nn.Module, data: SampleDataset, device: torch.device) -> SampleDataset:
            return self.features(front, data, device, source)

        return front_features


def fingerprint(front: nn.Module, device: torch.device) -> str:
    """A hash of what a front's outputs depend on besides its inputs: its code, its tensors and their
    layouts (a channels-last convolution rounds differently: ``models.layout.cpu_channels_last``), the
    device kind and the autocast in effect (a worker at ``UNLEARN_PRECISION=bf16`` computes bf16 outputs)."""
    cast = torch.is_autocast_enabled(device.type) and torch.get_autocast_dtype(device.type)
    h = hashlib.sha256(f"{device.type}:{cast}".encode())
    h.update(repr(front).encode())
    for m in front.modules():
        if isinstance(m, fx.GraphModule):
            h.update(m.code.encode())
    for name, t in front.state_dict().items():
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}:{t.stride()}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
