"""The worker reads a registered dataset as its row declares (datasets.features), after the sha256 check;
a row without a declaration is read as before."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from service.core.dataset_ids import file_sha256
from service.core.db.engine import session_scope
from service.core.db.tables import Dataset
from service.core.registry import register_dataset
from workers.datasets import DatasetRef, load_registered


def test_a_registered_declaration_reaches_the_loader(db_url: str, tmp_path: Path) -> None:
    x = np.arange(4 * 8 * 8, dtype=np.uint8).reshape(4, 8, 8) % 17
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=np.arange(4), ids=np.array(["a", "b", "c", "d"]))
    features = {"type": "image", "dtype": "uint8", "layout": "HW", "scale": 16.0}
    with session_scope(db_url) as s:
        ids = [
            register_dataset(
                s,
                tenant="t",
                name=name,
                kind="npz",
                uri=str(path),
                sample_ids=["a", "b", "c", "d"],
                labels=[0, 1, 2, 3],
                actor="test",
                sha256=file_sha256(path),
                features=declared,
            ).id
            for name, declared in (("declared", features), ("legacy", None))
        ]
    with session_scope(db_url) as s:
        declared_ref, legacy_ref = (DatasetRef.of(s.get_one(Dataset, i)) for i in ids)
    assert declared_ref.features == features and legacy_ref.features is None
    declared, legacy = load_registered(declared_ref), load_registered(legacy_ref)
    assert torch.equal(declared.x, torch.from_numpy(x[:, None].astype(np.float32) / 16))
    assert torch.equal(legacy.x, torch.from_numpy(x.astype(np.float32)))
