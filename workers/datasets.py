"""Loading a registered dataset only if its file is still the one that was registered.

The API hashed the file (for a CSV manifest, the manifest itself; for a folder of shards or arrays, every
file in it) into `datasets.sha256`; a job may run
months later, and a file replaced in between would silently train and score on other data, or make the
mirrored sample IDs lie. So the file is hashed again here and refused if it differs. (Null hashes are
datasets registered before hashes were recorded: loaded as before.)

A worker process remembers what it checked and what it loaded (``Checked``): a file whose inode, size,
modification and change times are those it had when its hash last matched is not hashed again, and an
``.npz`` loaded then is handed back instead of read again. Why: on the 60k Fashion-MNIST model, reading and
hashing the training file was 1.1 s of a 6.4 s job, paid again by every deletion. The change time (ctime)
is set by the kernel on every write, rename or ``touch``, and no call can set it back, so a file written
in place since it was checked is hashed again; only someone who can reset the clock could slip one past.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch

from models.datasets import SampleDataset, load_dataset
from service.core.dataset_ids import dataset_files, dataset_sha256
from service.core.db.tables import Dataset

# Kinds whose `uri` is a single file we hashed at registration. (A text dataset's tokenizer is hashed
# too: its sha256 is in the declaration, and the loader checks it.)
HASHED_KINDS = frozenset({"npz", "csv_manifest", "npy", "webdataset", "jsonl", "text_csv"})
# Kinds whose hash covers only part of what a load reads: a manifest's, not the images it names. Nothing
# derived from their rows is kept between loads (``workers.front_cache``): an image replaced since is read.
PARTLY_HASHED = frozenset({"csv_manifest"})


class DatasetChanged(ValueError):
    """The dataset file on disk is not the one that was registered."""


@dataclass(frozen=True)
class DatasetRef:
    """What a worker needs to load a registered dataset and check it."""

    kind: str
    uri: str
    sha256: str | None = None
    features: dict[str, Any] | None = None  # the declaration registered with it (None: legacy)

    @classmethod
    def of(cls, dataset: Dataset) -> DatasetRef:
        """The reference to a registered dataset's row."""
        return cls(dataset.kind, dataset.uri, dataset.sha256, dataset.features)


# Kinds held whole in memory once loaded, all of whose data is in the files the hash covers. (A manifest's
# images and a text set's tokenizer lie outside them; npy folders and shards are read from disk anyway.)
KEPT_KINDS = frozenset({"npz"})
_Key = tuple[str, str, str | None, str]  # a DatasetRef with its declaration as JSON


def signature(ref: DatasetRef) -> tuple[tuple[str, int, int, int, int], ...]:
    """What the files of ``ref`` are on disk without reading them: each one's inode, size, mtime and
    ctime. Raises OSError if one is gone."""
    out = []
    for f in dataset_files(ref.kind, ref.uri):
        st = os.stat(f)
        out.append((str(f), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(out)


@dataclass
class _Entry:
    signature: tuple[tuple[str, int, int, int, int], ...]
    data: SampleDataset | None  # None: checked, not kept (another kind, or over the bound)
    nbytes: int = 0


class Checked:
    """The datasets this process found matching their registered hash, and the loaded ones it keeps,
    within ``max_bytes`` (least recently used dropped first). Locked, so a thread beside a job (a
    heartbeat, a test's) may load too."""

    def __init__(self) -> None:
        self._entries: OrderedDict[_Key, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def load(self, ref: DatasetRef, *, workers: int, max_bytes: int) -> SampleDataset:
        hashed = ref.sha256 is not None and ref.kind in HASHED_KINDS
        sig = signature(ref) if hashed else None
        key = _key(ref)
        with self._lock:
            entry = self._entries.get(key)
        if entry is None or sig is None or entry.signature != sig:
            entry = None
            if hashed:
                _check(ref)
        if entry is not None and entry.data is not None and entry.nbytes <= max_bytes:
            with self._lock:
                self._entries.move_to_end(key)
            return entry.data  # shared: jobs read datasets and subset them, never write into them
        data = load_dataset(ref.kind, ref.uri, ref.features, workers=workers)
        if sig is not None:
            self._keep(key, _Entry(sig, None), data if ref.kind in KEPT_KINDS else None, max_bytes)
        return data

    def recheck(self, ref: DatasetRef) -> None:
        """DatasetChanged if a file of ``ref`` changed on disk since this process loaded it: its inode,
        size or times moved (then it is hashed again: a file touched but not changed passes). A job reads
        streamed rows all through its run and scores them at its end, and a probe's in-place edit of an
        npy file mid-run was published as a version scored on the changed rows."""
        hashed = ref.sha256 is not None and ref.kind in HASHED_KINDS
        if not hashed:
            return
        with self._lock:
            entry = self._entries.get(_key(ref))
        try:
            sig = signature(ref)
        except OSError as exc:
            raise DatasetChanged(f"dataset {ref.uri} changed during the job: {exc}") from None
        if entry is not None and entry.signature == sig:
            return
        _check(ref, "during the job")
        with self._lock:
            if (kept := self._entries.get(_key(ref))) is not None:
                kept.signature = sig

    def _keep(self, key: _Key, entry: _Entry, data: SampleDataset | None, max_bytes: int) -> None:
        size = _nbytes(data) if data is not None else 0
        if data is not None and size <= max_bytes:
            entry.data, entry.nbytes = data, size
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while sum(e.nbytes for e in self._entries.values()) > max_bytes:
                oldest = next(k for k, e in self._entries.items() if e.nbytes)
                self._entries[oldest].data, self._entries[oldest].nbytes = None, 0


_checked = Checked()


def _nbytes(data: SampleDataset) -> int:
    xs = data.x.values() if isinstance(data.x, dict) else [data.x]
    return sum(t.element_size() * t.numel() for t in xs if isinstance(t, torch.Tensor)) + 8 * len(data)


def _key(ref: DatasetRef) -> _Key:
    """``ref`` as a dict key (its declaration is a dict)."""
    return ref.kind, ref.uri, ref.sha256, json.dumps(ref.features, sort_keys=True, default=str)


def _check(ref: DatasetRef, when: str = "since registration") -> None:
    assert ref.sha256 is not None
    actual = dataset_sha256(ref.kind, ref.uri)
    if actual != ref.sha256:
        what = (
            f"dataset folder {ref.uri} (a file in it was changed, added or removed)"
            if os.path.isdir(ref.uri)
            else f"dataset file {ref.uri}"
        )
        raise DatasetChanged(
            f"{what} changed {when} (sha256 {actual[:16]}..., registered {ref.sha256[:16]}...); refusing "
            "to use it"
        )


def recheck_registered(ref: DatasetRef) -> None:
    """DatasetChanged if ``ref``'s files changed since this process loaded them (``Checked.recheck``)."""
    _checked.recheck(ref)


def load_registered(ref: DatasetRef, *, workers: int = 0, keep_bytes: int = 0) -> SampleDataset:
    """The dataset, after checking its files against the sha256 recorded at registration, read as its
    feature declaration says. ``workers``: processes reading a streamed dataset ahead of each loop.
    ``keep_bytes``: how much of this process's memory loaded datasets may keep (0: none; files whose
    hash matched are still not hashed again while unchanged on disk)."""
    return _checked.load(ref, workers=workers, max_bytes=keep_bytes)
