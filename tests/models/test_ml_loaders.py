"""Fashion-MNIST (IDX), CSV-manifest and torchvision-from-local-root loaders on small generated files."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from models import batches as B
from models.datasets import FASHION_ROOT, load_dataset, load_fashion_mnist


def _write_idx(path: Path, arr: np.ndarray, compress: bool) -> None:
    raw = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def _fake_fashion(root: Path, n: int, compress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    suffix = ".gz" if compress else ""
    for split in ("train", "t10k"):
        _write_idx(root / f"{split}-images-idx3-ubyte{suffix}", images, compress)
        _write_idx(root / f"{split}-labels-idx1-ubyte{suffix}", labels, compress)
    return images, labels


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_loader_reads_idx_files(tmp_path: Path, compress: bool) -> None:
    images, labels = _fake_fashion(tmp_path, 5, compress)
    ds = load_dataset("fashion_mnist", f"{tmp_path}:test")
    assert ds.x.shape == (5, 1, 28, 28) and ds.ids[0] == "fashion-test-00000"
    torch.testing.assert_close(ds.x[:, 0] * 255, torch.from_numpy(images).float())
    assert ds.y.tolist() == labels.tolist()


def test_fashion_loader_rejects_a_non_idx_file(tmp_path: Path) -> None:
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x01\x02\x03\x04rest")
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(ValueError, match="IDX"):
        load_fashion_mnist(tmp_path, "train")


def test_fashion_loader_says_how_to_install_when_absent(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path / "missing", "train")


@pytest.mark.skipif(
    not Path(FASHION_ROOT, "t10k-labels-idx1-ubyte.gz").exists(),
    reason=f"Fashion-MNIST not installed under {FASHION_ROOT} (apt-get install -y dataset-fashion-mnist)",
)
def test_real_fashion_mnist_test_split_from_the_debian_package() -> None:
    ds = load_dataset("fashion_mnist", ":test")
    assert ds.x.shape == (10_000, 1, 28, 28) and ds.num_classes == 10
    assert torch.bincount(ds.y).tolist() == [1000] * 10


def test_csv_manifest_loads_png_and_npy_images(tmp_path: Path) -> None:
    from PIL import Image

    img = np.arange(16, dtype=np.uint8).reshape(4, 4) * 16
    Image.fromarray(img).save(tmp_path / "a.png")
    np.save(tmp_path / "b.npy", np.full((4, 4), 0.5, dtype=np.float32))
    (tmp_path / "m.csv").write_text("sample_id,path,label\ns-a,a.png,3\ns-b,b.npy,1\n")
    ds = load_dataset("csv_manifest", str(tmp_path / "m.csv"))
    x = B.window(ds.x, 0, 2)  # the images stay on disk until read
    assert ds.ids == ["s-a", "s-b"] and ds.y.tolist() == [3, 1] and x.shape == (2, 1, 4, 4)
    torch.testing.assert_close(x[0, 0], torch.from_numpy(img).float() / 255)
    assert float(x[1].mean()) == 0.5


def test_csv_manifest_requires_its_columns(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("id,file,label\nx,y,1\n")
    with pytest.raises(ValueError, match="sample_id"):
        load_dataset("csv_manifest", str(tmp_path / "m.csv"))


def test_torchvision_loader_reads_a_local_root_without_downloading(tmp_path: Path) -> None:
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    images, labels = _fake_fashion(raw, 6, compress=False)
    ds = load_dataset("torchvision", f"FashionMNIST:{tmp_path}:train")
    assert ds.x.shape == (6, 1, 28, 28) and ds.y.tolist() == labels.tolist()
    assert ds.ids[5] == "fashionmnist-train-00005"
    with pytest.raises(RuntimeError):  # absent files: torchvision refuses instead of downloading
        load_dataset("torchvision", f"FashionMNIST:{tmp_path / 'empty'}:test")
