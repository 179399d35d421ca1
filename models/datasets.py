"""Datasets with stable string sample IDs: the one type every loader returns.

Small sets are held in memory as tensors (``npz``, the built-in sources, text). Sets that need not fit
in memory (``npy``, ``webdataset``, ``csv_manifest``) keep their samples on disk: their ``x`` is a
``models.streamed.LazyRows``, read a batch at a time. Labels and IDs are always in memory (they are what a
deletion names). ``subset`` copies an in-memory set's rows and makes a view of a streamed one, so the
retain set (all but a few rows) is never materialised; code that reads rows goes through
``models.batches``, which treats both alike.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models import batches
from models.batches import Inputs
from models.declarations import TEXT_KINDS, DeclarationError, ImageFeatures, TextFeatures, is_text
from models.labels import read_label
from models.manifests import ManifestPathError, manifest_root, resolve_row_path
from models.shards import index_shards, npy_files
from models.streamed import FileRows, LazyRows, NpyRows, RowSource, ShardRows
from models.transforms import apply_features, post_only

Features = ImageFeatures | TextFeatures | dict[str, Any] | None


@dataclass(frozen=True)
class StoredForm:
    """How a loaded dataset's samples were stored, before any declaration was applied: one sample's
    shape and its dtype (for advice when a model cannot read them)."""

    sample_shape: tuple[int, ...]
    dtype: str
    features: ImageFeatures | TextFeatures | None = None  # the declaration applied (None: legacy)


@dataclass
class SampleDataset:
    """``x``: (N, ...) float32, a dict of (N, ...) tensors kept in their own dtypes (a text set's
    ``input_ids`` and ``attention_mask``, int64), or rows on disk (``LazyRows``); code reads it through
    ``models.batches``."""

    x: Inputs
    y: torch.Tensor  # (N,) int64
    ids: list[str]
    _index: dict[str, int] | None = field(default=None, init=False, repr=False, compare=False)
    stored: StoredForm | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = batches.check(self.x)
        if not (n == len(self.y) == len(self.ids)):
            raise ValueError(f"x, y and ids differ in length: {n}, {len(self.y)}, {len(self.ids)}")
        if isinstance(self.x, torch.Tensor):
            self.x = self.x.float()
        elif isinstance(self.x, dict):
            self.x = dict(self.x)  # a copy: the caller's dict is not shared
        if self.y.is_floating_point() and not torch.equal(self.y, self.y.round()):
            raise ValueError("labels must be whole numbers (class indices); y holds fractions or NaN")
        self.y = self.y.long()

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_classes(self) -> int:
        """max label + 1 (0 for an empty dataset)."""
        return int(self.y.max()) + 1 if len(self) else 0

    def _id_index(self) -> dict[str, int]:
        if self._index is None:
            self._index = {sid: i for i, sid in enumerate(self.ids)}
            if len(self._index) != len(self.ids):
                raise ValueError("sample IDs are not unique")
        return self._index

    def index_of(self, ids: Sequence[str]) -> torch.Tensor:
        """Row indices (LongTensor) of ``ids``; KeyError naming every unknown ID."""
        index = self._id_index()
        unknown = [i for i in ids if i not in index]
        if unknown:
            shown = ", ".join(map(repr, unknown[:20])) + (" ..." if len(unknown) > 20 else "")
            raise KeyError(f"{len(unknown)} unknown sample id(s): {shown}")
        return torch.tensor([index[i] for i in ids], dtype=torch.long)

    def subset(self, indices: torch.Tensor | Sequence[int]) -> SampleDataset:
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        return SampleDataset(batches.select(self.x, idx), self.y[idx], [self.ids[i] for i in idx.tolist()])

    def read_ahead_by(self, workers: int) -> SampleDataset:
        """The same dataset, its rows on disk read ahead by ``workers`` processes in loops over many
        batches (``models.loading``); data in memory is returned as it is."""
        if not isinstance(self.x, LazyRows):
            return self
        return SampleDataset(self.x.reading_with(workers), self.y, self.ids, stored=self.stored)

    def split_by_ids(self, forget_ids: Sequence[str]) -> tuple[SampleDataset, SampleDataset]:
        """(forget, retain): the rows named by ``forget_ids`` and all the others, in dataset order."""
        keep = torch.ones(len(self), dtype=torch.bool)
        forget_idx = self.index_of(list(dict.fromkeys(forget_ids)))
        keep[forget_idx] = False
        return self.subset(forget_idx), self.subset(torch.nonzero(keep).flatten())


# ---------------------------------------------------------------- digits (ships with scikit-learn)


def load_digits_split(seed: int = 0, test_fraction: float = 0.2) -> tuple[SampleDataset, SampleDataset]:
    """scikit-learn's digits as (N, 1, 8, 8) in [0, 1], stratified fixed-seed split.
    IDs: ``digits-0000``... (index within the train split), ``digits-test-0000``..."""
    from sklearn.datasets import load_digits  # type: ignore[import-untyped,unused-ignore]
    from sklearn.model_selection import train_test_split  # type: ignore[import-untyped,unused-ignore]

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None]  # (1797, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    train = SampleDataset(
        torch.from_numpy(x_tr), torch.from_numpy(y_tr), [f"digits-{i:04d}" for i in range(len(y_tr))]
    )
    test = SampleDataset(
        torch.from_numpy(x_te), torch.from_numpy(y_te), [f"digits-test-{i:04d}" for i in range(len(y_te))]
    )
    return train, test


# ---------------------------------------------------------------- .npz


def save_npz(ds: SampleDataset, path: str | Path) -> None:
    """Arrays ``x`` (float32), ``y`` (int64) and ``ids`` (unicode, so loading needs no pickle)."""
    if not isinstance(ds.x, torch.Tensor):
        raise ValueError("save_npz stores one array x; this dataset's inputs are a dict of tensors")
    np.savez(path, x=ds.x.cpu().numpy(), y=ds.y.cpu().numpy(), ids=np.asarray(ds.ids, dtype=np.str_))


def load_npz(path: str | Path, features: Features = None) -> SampleDataset:
    """An ``.npz`` with ``x``, ``y`` and ``ids``; ``features`` (a declaration, see ``models.declarations``)
    says how ``x`` becomes float32 (N, C, H, W). Without one, ``x`` is used as it is, as float32."""
    with np.load(path, allow_pickle=False) as f:
        x, y, ids = f["x"], f["y"], f["ids"]
    if ids.dtype.kind != "U":
        raise ValueError(f"{path}: 'ids' must be a unicode string array, got dtype {ids.dtype}")
    decl = declaration(features)
    return SampleDataset(
        apply_features(x, decl, what=f"{Path(path).name}: x"),
        torch.from_numpy(y.astype(np.int64)),
        ids.tolist(),
        stored=StoredForm(tuple(int(d) for d in x.shape[1:]), x.dtype.name, decl),
    )


# ---------------------------------------------------------------- declared features


def declaration(features: Features) -> ImageFeatures | None:
    """An image declaration as stored (a dict) or parsed; DeclarationError if it cannot be parsed (or
    declares text: a text declaration applies to text datasets only)."""
    if features is None or isinstance(features, ImageFeatures):
        return features
    if is_text(features):
        raise DeclarationError(
            f"a text declaration applies to text datasets ({', '.join(TEXT_KINDS)}), not to image data"
        )
    assert not isinstance(features, TextFeatures)
    return ImageFeatures.from_dict(features)


# ---------------------------------------------------------------- Fashion-MNIST (Debian package files)

FASHION_ROOT = "/usr/share/datasets/fashion-mnist"
_FASHION_FILES = {"train": "train-{}-idx{}-ubyte.gz", "test": "t10k-{}-idx{}-ubyte.gz"}


def _read_idx(path: Path) -> np.ndarray:
    """IDX file (gzip'd or not): big-endian magic (dtype code, ndim), dims, then uint8 data."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find(root: Path, name: str) -> Path:
    for candidate in (root / name, root / name.removesuffix(".gz")):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{root / name} not found (apt-get install -y dataset-fashion-mnist)")


def load_fashion_mnist(root: str | Path = FASHION_ROOT, split: str = "train") -> SampleDataset:
    """Fashion-MNIST from the IDX files as (N, 1, 28, 28) in [0, 1]. IDs: ``fashion-train-00000``,
    ``fashion-test-00000`` (index in the official file order)."""
    if split not in _FASHION_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    images = _read_idx(_find(root, _FASHION_FILES[split].format("images", 3)))  # (N, 28, 28) uint8
    labels = _read_idx(_find(root, _FASHION_FILES[split].format("labels", 1)))  # (N,)
    x = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]
    y = torch.from_numpy(labels.astype(np.int64))
    return SampleDataset(x, y, [f"fashion-{split}-{i:05d}" for i in range(len(y))])


# ---------------------------------------------------------------- CSV manifest of image files


def load_csv_manifest(path: str | Path, features: Features = None) -> SampleDataset:
    """CSV with header ``sample_id,path,label``; paths are relative to the CSV's folder and must stay in
    it (``models.manifests``: checked again here, since the folder may have changed since registration).
    The images stay on disk and are read a batch at a time (``models.streamed``); they must have one
    shape (or declare ``size``). Images are read as CHW floats in [0, 1], so a declaration may only
    normalise (``mean``, ``std``) and resize (``size``)."""
    path = Path(path)
    root = manifest_root(path)
    with path.open(newline="", encoding="utf-8-sig") as f:  # a leading BOM (Excel) is not a header
        reader = csv.DictReader(f)
        rows = [(reader.line_num, r) for r in reader]
    missing = {"sample_id", "path", "label"} - set(reader.fieldnames or ())
    if missing:
        raise ValueError(f"{path}: manifest lacks column(s) {sorted(missing)}")
    try:
        files = [resolve_row_path(root, r["path"] or "", line) for line, r in rows]
    except ManifestPathError as exc:
        raise ManifestPathError(f"{path}: {exc}; refusing to load it") from None
    decl = declaration(features)
    source = FileRows(files, decl, what=str(path))
    y = torch.tensor([read_label(r["label"]) for _, r in rows], dtype=torch.long)
    return _streamed(source, y, [r["sample_id"] for _, r in rows], decl, _first_image_shape(source))


def _first_image_shape(source: FileRows | ShardRows) -> tuple[int, ...]:
    """One stored image's shape as it is decoded (CHW), before the declaration: for advice."""
    if not len(source):
        return ()
    undeclared = dataclasses.replace(source, decl=None)
    return tuple(int(d) for d in undeclared.read(np.arange(1)).shape[1:])


def _streamed(
    source: RowSource,
    y: torch.Tensor,
    ids: list[str],
    decl: ImageFeatures | None,
    stored_shape: tuple[int, ...],
) -> SampleDataset:
    dtype = source.stored_dtype if isinstance(source, NpyRows) else "float32"
    return SampleDataset(LazyRows(source), y, ids, stored=StoredForm(stored_shape, dtype, decl))


# ---------------------------------------------------------------- memory-mapped .npy and WebDataset shards


def load_npy(path: str | Path, features: Features = None) -> SampleDataset:
    """A folder with ``x.npy`` (memory-mapped: rows are read when a batch needs them), ``y.npy`` and
    ``ids.npy`` (``models.shards``). ``features`` applies to each batch as ``load_npz`` applies it to the
    whole array; the declaration is checked against the file before anything is read."""
    files = npy_files(path)
    decl = declaration(features)
    source = NpyRows(files["x.npy"], decl)
    if decl is not None:
        problems = decl.problems(source.stored_shape, source.stored_dtype, what="x.npy")
        if decl.layout is None:
            problems.insert(0, "x.npy: an array's declaration needs features.layout (HW, HWC or CHW)")
        if problems:
            raise DeclarationError("; ".join(problems))
    y = np.load(files["y.npy"], allow_pickle=False)
    ids = np.load(files["ids.npy"], allow_pickle=False)
    if ids.dtype.kind != "U":
        raise ValueError(f"{files['ids.npy']}: must be a unicode string array, got dtype {ids.dtype}")
    return _streamed(source, torch.from_numpy(y.astype(np.int64)), ids.tolist(), decl, source.stored_shape)


def load_webdataset(path: str | Path, features: Features = None) -> SampleDataset:
    """WebDataset tar shards (a ``.tar`` or a folder of them): ``__key__`` is the sample ID, ``.cls`` the
    label, the image any of ``models.shards.IMAGE_EXTENSIONS``. Indexed once, then read by offset a batch
    at a time. Images are read as CHW floats in [0, 1]: a declaration may only say mean, std, size."""
    index = index_shards(path)
    decl = declaration(features)
    source = ShardRows(index.shards, index.images, decl, keys=index.sample_ids)
    y = torch.tensor(index.labels, dtype=torch.long)
    return _streamed(source, y, index.sample_ids, decl, _first_image_shape(source))


# ---------------------------------------------------------------- torchvision from a local root


def load_torchvision(name: str, root: str | Path, split: str = "train") -> SampleDataset:
    """A torchvision dataset class (e.g. ``FashionMNIST``, ``MNIST``, ``CIFAR10``) read from ``root``
    with ``download=False``: never touches the network. IDs: ``{name}-{split}-{index:05d}``."""
    import torchvision  # type: ignore[import-untyped,unused-ignore]

    cls = getattr(torchvision.datasets, name, None)
    if cls is None or not isinstance(cls, type):
        raise ValueError(f"unknown torchvision dataset {name!r}")
    ds = cls(root=str(root), train=(split == "train"), download=False)
    data = ds.data.numpy() if isinstance(ds.data, torch.Tensor) else np.asarray(ds.data)
    x = torch.from_numpy(data.astype(np.float32) / 255.0)
    x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)  # (N, C, H, W)
    y = torch.as_tensor(np.asarray(ds.targets), dtype=torch.long)
    return SampleDataset(x, y, [f"{name.lower()}-{split}-{i:05d}" for i in range(len(y))])


# ---------------------------------------------------------------- text (jsonl, text_csv)


def load_text(kind: str, path: str | Path, features: Features) -> SampleDataset:
    """A ``jsonl`` or ``text_csv`` file (``models.text``) tokenized as its text declaration says: ``x`` is
    ``{"input_ids", "attention_mask"}``, int64 (N, max_length), padded and truncated to max_length."""
    from models import text

    if features is None:
        raise DeclarationError(
            f"a {kind} dataset needs a text declaration: features {{type: text, tokenizer: <path of a "
            "tokenizer.json>, max_length: 128}}"
        )
    decl = features if isinstance(features, TextFeatures) else None
    if decl is None:
        if isinstance(features, ImageFeatures) or not is_text(features):
            raise DeclarationError(f"a {kind} dataset needs a text declaration (features.type 'text')")
        assert isinstance(features, dict)
        decl = TextFeatures.from_dict(features)
    records = text.read_records(kind, path)
    tok = text.load_tokenizer(decl)
    ids, mask = text.encode(tok, [r.text for r in records], [r.line for r in records])
    n = len(records)
    x = {
        "input_ids": torch.tensor(ids, dtype=torch.long).reshape(n, decl.max_length),
        "attention_mask": torch.tensor(mask, dtype=torch.long).reshape(n, decl.max_length),
    }
    y = torch.tensor([r.label for r in records], dtype=torch.long)
    stored = StoredForm((decl.max_length,), "text", decl)
    return SampleDataset(x, y, [r.sample_id for r in records], stored=stored)


# ---------------------------------------------------------------- dispatch


def _split_suffix(uri: str, default: str = "train") -> tuple[str, str]:
    """``root:train`` / ``root:test`` -> (root, split); no suffix -> the default split."""
    head, sep, tail = uri.rpartition(":")
    if sep and tail in ("train", "test"):
        return head, tail
    return uri, default


def _torchvision_uri(uri: str) -> SampleDataset:
    root, split = _split_suffix(uri)
    name, sep, path = root.partition(":")
    if not sep:
        raise ValueError(f"torchvision uri must be NAME:ROOT[:train|:test], got {uri!r}")
    return load_torchvision(name, path, split)


def _fashion_uri(uri: str) -> SampleDataset:
    root, split = _split_suffix(uri)
    return load_fashion_mnist(root or FASHION_ROOT, split)


def _digits_uri(uri: str) -> SampleDataset:
    _, split = _split_suffix(uri)
    train, test = load_digits_split()
    return train if split == "train" else test


# Kinds whose samples stay on disk (``models.streamed``), each applying its own declaration.
_STREAMED: dict[str, Callable[[str, Features], SampleDataset]] = {
    "csv_manifest": load_csv_manifest,
    "npy": load_npy,
    "webdataset": load_webdataset,
}
_LOADERS: dict[str, Callable[[str], SampleDataset]] = {
    "fashion_mnist": _fashion_uri,
    "torchvision": _torchvision_uri,
    "digits": _digits_uri,
}


def load_dataset(kind: str, uri: str, features: Features = None, *, workers: int = 0) -> SampleDataset:
    """Load a registered dataset. Kinds and URIs:

    - ``npz``: path to a ``.npz`` with ``x``, ``y``, ``ids``.
    - ``csv_manifest``: path to a CSV ``sample_id,path,label`` (streamed: images stay on disk).
    - ``npy``: a folder with ``x.npy`` (memory-mapped), ``y.npy``, ``ids.npy`` (streamed).
    - ``webdataset``: a ``.tar`` shard or a folder of them (streamed).
    - ``fashion_mnist``: ``ROOT[:train|:test]`` (folder with the IDX files; empty ROOT = the Debian path).
    - ``torchvision``: ``NAME:ROOT[:train|:test]``, e.g. ``FashionMNIST:/data:test`` (never downloads).
    - ``digits``: ``:train`` / ``:test`` (scikit-learn's digits, the split of ``load_digits_split()``).
    - ``jsonl`` / ``text_csv``: path to a text file (``models.text``); needs a text declaration.

    ``workers``: processes that read a streamed dataset's rows ahead of the loops over it (0: read in
    this process, when a batch is needed).

    ``features`` is the dataset's declaration (``models.declarations``; None: the legacy behaviour). The
    built-in image sources are already float CHW in [0, 1]: for them it may only normalise and resize.
    """
    if kind == "npz":
        return load_npz(uri, features)
    if kind in _STREAMED:
        return _STREAMED[kind](uri, features).read_ahead_by(workers)
    if kind in TEXT_KINDS:
        return load_text(kind, uri, features)
    try:
        loader = _LOADERS[kind]
    except KeyError:
        known = ", ".join(sorted(["npz", *_STREAMED, *_LOADERS, *TEXT_KINDS]))
        raise ValueError(f"unknown dataset kind {kind!r}; known: {known}") from None
    ds = loader(uri)
    decl = declaration(features)
    if decl is None:
        return ds
    assert isinstance(ds.x, torch.Tensor)  # the built-in sources are images
    stored = StoredForm(tuple(ds.x.shape[1:]), "float32", decl)
    return SampleDataset(post_only(ds.x, decl), ds.y, ds.ids, stored=stored)
