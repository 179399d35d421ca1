"""Loading a registered dataset only if its file is still the one that was registered.

The API hashed the file (for a CSV manifest, the manifest itself; for a folder of shards or arrays, every
file in it) into `datasets.sha256`; a job may run
months later, and a file replaced in between would silently train and score on other data, or make the
mirrored sample IDs lie. So the file is hashed again here and refused if it differs. (Null hashes are
datasets registered before hashes were recorded: loaded as before.)"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from models.datasets import SampleDataset, load_dataset
from service.core.dataset_ids import dataset_sha256
from service.core.db.tables import Dataset

# Kinds whose `uri` is a single file we hashed at registration. (A text dataset's tokenizer is hashed
# too: its sha256 is in the declaration, and the loader checks it.)
HASHED_KINDS = frozenset({"npz", "csv_manifest", "npy", "webdataset", "jsonl", "text_csv"})


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


def load_registered(ref: DatasetRef, *, workers: int = 0) -> SampleDataset:
    """The dataset, after checking its files against the sha256 recorded at registration, read as its
    feature declaration says. ``workers``: processes reading a streamed dataset ahead of each loop."""
    if ref.sha256 is not None and ref.kind in HASHED_KINDS:
        actual = dataset_sha256(ref.kind, ref.uri)
        if actual != ref.sha256:
            raise DatasetChanged(
                f"dataset file {ref.uri} changed since registration (sha256 {actual[:16]}..., registered "
                f"{ref.sha256[:16]}...); refusing to load it"
            )
    return load_dataset(ref.kind, ref.uri, ref.features, workers=workers)
