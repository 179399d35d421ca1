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

import numpy as np
import torch
from torch import fx, nn

from models.datasets import SampleDataset
from models.hooks import FrontFeatures
from models.streamed import LazyRows
from models.unlearning.feature_store import FeatureStore
from models.unlearning.last_layers import features, rows_like


@dataclass
class _Rows:
    """One front's outputs, in the chunks that runs computed: chunk ``c`` holds rows ``starts[c]`` on, and
    ``index[id]`` is sample ``id``'s row. Each value of a chunk is one tensor (its name "" when the front
    gives one). Why chunks and not one growing tensor: growing copied every kept row at every run that
    added some (0.75 GB on the 60k model); they are merged only as a growing vector reallocates
    (``_merge``)."""

    index: dict[str, int] = field(default_factory=dict)
    chunks: list[dict[str, torch.Tensor]] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    stored: set[str] = field(default_factory=set)  # names of the store's chunks these rows hold
    rows: int = 0  # rows held, served or not: a forgotten row leaves the index, not the chunk (``forget``)

    def nbytes(self) -> int:
        return sum(t.element_size() * t.numel() for c in self.chunks for t in c.values())

    def add(self, fresh: SampleDataset) -> dict[str, torch.Tensor]:
        """Keep ``fresh``'s rows; its values by name (what a store writes: the chunk may merge)."""
        values = dict(fresh.x) if isinstance(fresh.x, dict) else {"": fresh.x}
        self.add_values(values, fresh.ids)  # type: ignore[arg-type]
        return values  # type: ignore[return-value]

    def add_values(self, values: dict[str, torch.Tensor], ids: list[str]) -> None:
        self.starts.append(self.rows)
        self.chunks.append(values)
        self.index.update((sid, self.starts[-1] + i) for i, sid in enumerate(ids))
        self.rows += len(ids)
        self._merge()

    def _merge(self) -> None:
        """The chunks as one again once the newest holds at least as many rows as all before it. Why: a
        batch spread over two chunks is read in two gathers and a scatter (``KeptRows``), 3x as long as
        out of one tensor; a worker's validation keeps the 10k rows it scores, then the rest of the
        training set, so every later job read from two. Merged only at that size, as a growing vector
        reallocates, each row is copied a bounded number of times over the cache's life (merging at every
        add copied every kept row at every run that added some); the merge holds the rows twice for
        its moment."""
        if len(self.chunks) > 1 and self.rows - self.starts[-1] >= self.starts[-1]:
            self.chunks = [{k: torch.cat([c[k] for c in self.chunks]) for k in self.chunks[0]}]
            self.starts = [0]

    def take(self, data: SampleDataset, lazy: bool = False) -> SampleDataset:
        """``data``'s rows. Rows that one chunk holds in that order (a run's own, as it computed them) are
        views of it, not copies: runs read their features and never write them. ``lazy``: rows of one
        tensor are not copied at all but read a batch at a time from the chunks (``KeptRows``)."""
        if not self.chunks:  # nothing kept: no rows asked for
            return SampleDataset({}, data.y.clone(), list(data.ids))
        rows = torch.tensor([self.index[sid] for sid in data.ids], dtype=torch.long)
        first = int(rows[0]) if len(rows) else 0
        in_order = len(rows) > 0 and torch.equal(rows, torch.arange(first, first + len(rows)))
        for start, chunk in zip(self.starts, self.chunks, strict=True):
            if in_order and start <= first and first + len(rows) <= start + _length(chunk):
                lo = first - start  # one run of this chunk, in order: a view
                out = {k: v[lo : lo + len(rows)] for k, v in chunk.items()}
                return SampleDataset(out[""] if list(out) == [""] else out, data.y.clone(), list(data.ids))
        kept = KeptRows.of(self) if lazy else None
        if kept is not None and len(rows):
            return SampleDataset(LazyRows(kept, rows.numpy()), data.y.clone(), list(data.ids))
        out = {
            k: KeptRows([c[k] for c in self.chunks], self.starts).read(rows.numpy()) for k in self.chunks[0]
        }
        return SampleDataset(out[""] if list(out) == [""] else out, data.y.clone(), list(data.ids))


def _length(chunk: dict[str, torch.Tensor]) -> int:
    return len(next(iter(chunk.values())))


class KeptRows:
    """A front's kept rows of one tensor, across its chunks, as a ``models.streamed.RowSource``: a
    ``LazyRows`` over it reads a batch at a time, straight from the chunks.

    Why: a run's retain pool and D_f were gathered out of the chunks into tensors of their own before its
    first step, a copy of every row it would read (on the 60k model 24-37k rows, 0.3-0.5 GB: 0.2 s a job,
    1.3 s on a process's first job, whose fresh pages the kernel had to fault in), and the steps then
    gathered each batch out of that copy. Read from the chunks, each batch is gathered once and the copy
    is not made. A batch comes out in the chunks' layout (a channels-last front output stays channels-last),
    as it did out of the copy. Only rows of one tensor on the CPU are read this way (``of``); a front that
    gives a dict, and a run on a GPU (its rows are moved there once), take a copy as before."""

    def __init__(self, chunks: list[torch.Tensor], starts: list[int]) -> None:
        self.chunks = chunks
        self.starts = torch.tensor(starts, dtype=torch.long)
        self.n = int(starts[-1]) + len(chunks[-1]) if chunks else 0

    @classmethod
    def of(cls, rows: _Rows) -> KeptRows | None:
        """The kept rows of a front whose output is one CPU tensor; None for others (a dict of tensors)."""
        tensors = [c.get("") for c in rows.chunks]
        if not tensors or any(
            t is None or len(c) != 1 or t.device.type != "cpu"
            for t, c in zip(tensors, rows.chunks, strict=True)
        ):
            return None
        return cls([t for t in tensors if t is not None], rows.starts)

    def __len__(self) -> int:
        return self.n

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.chunks[0].shape[1:])

    def empty(self, n: int) -> torch.Tensor:
        """An uninitialised (n, ...) tensor that ``read_into`` can fill: these rows' dtype and layout."""
        return rows_like(self.chunks[0], n)

    def read(self, rows: np.ndarray) -> torch.Tensor:
        out = self.empty(len(rows))
        self.read_into(rows, out)
        return out

    def read_into(self, rows: np.ndarray, out: torch.Tensor) -> None:
        """Rows ``rows`` (numbered across the chunks, as ``_Rows.index`` numbers them) written to ``out``."""
        idx = torch.from_numpy(np.asarray(rows, dtype=np.int64))
        if len(self.chunks) == 1:
            torch.index_select(self.chunks[0], 0, idx, out=out)
            return
        which = torch.searchsorted(self.starts, idx, right=True) - 1
        for c, chunk in enumerate(self.chunks):
            at = torch.nonzero(which == c).flatten()
            if len(at) == len(idx):  # all from this chunk: straight into the output
                torch.index_select(chunk, 0, idx - self.starts[c], out=out)
            elif len(at):
                out.index_copy_(0, at, chunk.index_select(0, idx[at] - self.starts[c]))


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

    def forget(self, source: str, ids: set[str]) -> int:
        """Rows a deletion forgot are kept nowhere once it is published: they leave every front's index of
        ``source`` here (what is not indexed is never served, and goes with its chunk) and every chunk of
        the store. Returns how many rows left the store."""
        for (src, _), rows in self._fronts.items():
            if src == source:
                for sid in ids & rows.index.keys():
                    del rows.index[sid]
        return self.store.purge(ids) if self.store is not None else 0

    def features(
        self, front: nn.Module, data: SampleDataset, device: torch.device, source: str
    ) -> SampleDataset:
        """``last_layers.features(front, data, device)``, from the rows kept for ``front`` and ``source``
        where there are, computing (and keeping) only the others. For a run on the CPU the rows stay in the
        kept chunks and are read a batch at a time (``KeptRows``)."""
        kept, missing = self._computed(front, data, device, source)
        self.stats.read += len(data) - missing
        return kept.take(data, lazy=device.type == "cpu")

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
            values = kept.add(fresh)
            self.stats.computed += len(missing)
            if self.store is not None:
                name = self.store.write("\n".join(key), fresh.ids, values)
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
