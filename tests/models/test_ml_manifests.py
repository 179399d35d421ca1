"""The worker's CSV-manifest loader reads only files inside the manifest's folder, whatever was true at
registration: a symlink or a row added later that points elsewhere is refused, naming the line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models import batches as B
from models.datasets import load_csv_manifest
from models.manifests import ManifestPathError


def manifest(folder: Path, rows: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("a.npy", "b.npy"):
        np.save(folder / name, np.full((2, 2), 0.5, dtype=np.float32))
    path = folder / "manifest.csv"
    path.write_text("sample_id,path,label\n" + "".join(f"{r}\n" for r in rows))
    return path


def test_files_inside_the_folder_load(tmp_path: Path) -> None:
    ds = load_csv_manifest(manifest(tmp_path / "m", ["s1,a.npy,0", "s2,./b.npy,1"]))
    assert (
        ds.ids == ["s1", "s2"]
        and ds.y.tolist() == [0, 1]
        and tuple(B.window(ds.x, 0, 2).shape) == (2, 1, 2, 2)
    )


def test_a_manifest_starting_with_a_byte_order_mark_loads(tmp_path: Path) -> None:
    path = manifest(tmp_path / "m", ["s1,a.npy,0", "s2,b.npy,1"])
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # as Excel writes "CSV UTF-8"
    ds = load_csv_manifest(path)
    assert ds.ids == ["s1", "s2"] and ds.y.tolist() == [0, 1]


@pytest.mark.parametrize(
    ("row", "says"),
    [
        ("s2,../outside.npy,1", "line 3: path '../outside.npy' has a '..' component"),
        ("s2,{outside},1", "line 3: absolute path"),
        ("s2,link.npy,1", "line 3: path 'link.npy' resolves to"),
        ("s2,,1", "line 3: empty path"),
    ],
)
def test_paths_leaving_the_folder_are_refused(tmp_path: Path, row: str, says: str) -> None:
    outside = tmp_path / "outside.npy"
    np.save(outside, np.ones((2, 2), dtype=np.float32))
    folder = tmp_path / "m"
    path = manifest(folder, ["s1,a.npy,0", row.format(outside=outside)])
    (folder / "link.npy").symlink_to(outside)  # e.g. planted after registration
    with pytest.raises(ManifestPathError) as err:
        load_csv_manifest(path)
    assert says in str(err.value) and "refusing to load" in str(err.value)
