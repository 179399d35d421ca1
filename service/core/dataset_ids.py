"""Reading a dataset's sample IDs and labels without torch, so the API can register a dataset and
validate deletion requests against it. (The worker reads the samples themselves with models.datasets.)"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from service.core.errors import Unprocessable

ID_KINDS = ("npz", "csv_manifest")


def read_ids(kind: str, path: Path) -> tuple[list[str], list[int]]:
    """(sample_ids, labels) of a dataset file; a 422 that names the problem if it is malformed."""
    try:
        if kind == "npz":
            return _npz(path)
        if kind == "csv_manifest":
            return _csv(path)
    except Exception as exc:  # noqa: BLE001 - an untrusted file may fail in any way; it is the client's
        raise Unprocessable(f"cannot read {kind} dataset at {path}: {type(exc).__name__}: {exc}") from exc
    raise Unprocessable(f"unknown dataset kind {kind!r}; known: {list(ID_KINDS)}")


def _npz(path: Path) -> tuple[list[str], list[int]]:
    with np.load(path, allow_pickle=False) as data:
        missing = [k for k in ("x", "y", "ids") if k not in data.files]
        if missing:
            raise ValueError(f"missing arrays {missing} (need x, y, ids)")
        ids, labels, n = data["ids"], data["y"], data["x"].shape[0]
    if not (len(ids) == len(labels) == n):
        raise ValueError(f"x, y and ids differ in length ({n}, {len(labels)}, {len(ids)})")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError("y must hold integer class labels")
    return [str(i) for i in ids.tolist()], [int(v) for v in labels.tolist()]


def _csv(path: Path) -> tuple[list[str], list[int]]:
    ids: list[str] = []
    labels: list[int] = []
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        need = {"sample_id", "path", "label"}
        if not need <= set(reader.fieldnames or ()):
            raise ValueError(f"the header must have columns {sorted(need)}")
        for row_no, row in enumerate(reader, start=2):
            if not row["sample_id"]:
                raise ValueError(f"line {row_no}: empty sample_id")
            ids.append(row["sample_id"])
            labels.append(int(row["label"]))
    return ids, labels
