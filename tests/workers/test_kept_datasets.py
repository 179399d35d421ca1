"""A worker process keeps the registered .npz datasets it loaded, and hands one back only while its file is
the one whose hash matched: changed in any way since (even with its modification time put back), it is
hashed again and refused."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from service.core.dataset_ids import dataset_sha256
from workers.datasets import DatasetChanged, DatasetRef, load_registered

BIG = 1 << 30


def registered(path: Path, n: int = 40, seed: int = 0) -> DatasetRef:
    """An .npz written at ``path`` and referenced with the hash it has now, as registration records it."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, 1, 4, 4), dtype=np.float32)
    np.savez(path, x=x, y=np.arange(n) % 3, ids=np.array([f"{path.stem}-{i}" for i in range(n)]))
    return DatasetRef("npz", str(path), dataset_sha256("npz", path))


def test_a_loaded_npz_is_handed_back_while_its_file_is_unchanged(tmp_path: Path) -> None:
    ref = registered(tmp_path / "a.npz")
    first = load_registered(ref, keep_bytes=BIG)
    assert load_registered(ref, keep_bytes=BIG) is first
    fresh = load_registered(ref, keep_bytes=0)  # nothing kept: read again, the same rows
    assert fresh is not first and torch.equal(fresh.x, first.x) and fresh.ids == first.ids


def test_a_file_rewritten_with_its_mtime_put_back_is_hashed_again_and_refused(tmp_path: Path) -> None:
    path = tmp_path / "b.npz"
    ref = registered(path)
    load_registered(ref, keep_bytes=BIG)
    st = os.stat(path)
    registered(path, seed=1)  # same size, other pixels
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_size == st.st_size
    with pytest.raises(DatasetChanged, match="changed since registration"):
        load_registered(ref, keep_bytes=BIG)


def test_a_file_touched_but_unchanged_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "c.npz"
    ref = registered(path)
    first = load_registered(ref, keep_bytes=BIG)
    os.utime(path)
    again = load_registered(ref, keep_bytes=BIG)
    assert again is not first and torch.equal(again.x, first.x)
    assert load_registered(ref, keep_bytes=BIG) is again


def test_the_least_recently_used_dataset_is_dropped_past_the_bound(tmp_path: Path) -> None:
    a, b = registered(tmp_path / "d.npz"), registered(tmp_path / "e.npz", seed=2)
    one = 40 * 16 * 4 + 8 * 40  # pixels and a word per row (an ID)
    bound = one + one // 2
    kept_a = load_registered(a, keep_bytes=bound)
    kept_b = load_registered(b, keep_bytes=bound)  # a is dropped to make room
    assert load_registered(b, keep_bytes=bound) is kept_b
    assert load_registered(a, keep_bytes=bound) is not kept_a


def test_a_declaration_is_part_of_what_is_kept(tmp_path: Path) -> None:
    """The same file read with another declaration is other data (here: resized)."""
    ref = registered(tmp_path / "f.npz")
    plain = load_registered(ref, keep_bytes=BIG)
    resized = DatasetRef(
        ref.kind, ref.uri, ref.sha256, {"type": "image", "layout": "CHW", "dtype": "float32", "size": [8, 8]}
    )
    got = load_registered(resized, keep_bytes=BIG)
    assert tuple(got.x.shape[1:]) == (1, 8, 8) and tuple(plain.x.shape[1:]) == (1, 4, 4)
