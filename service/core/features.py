"""Checking a dataset's feature declaration against its file at registration, torch-free.

The declaration (``models.declarations``) says how the worker turns the stored samples into the tensors a
model reads. A declaration that cannot describe the file (a layout of the wrong rank, a dtype the file
does not have, a mean per channel for the wrong number of channels) is refused here with a 422 that names
the problem, before anything is stored, instead of failing months later inside a job. So is an array of
integer images without a declaration: read as they are, 0..255 pixels would reach a model trained on
[0, 1] and score as noise, or not fit it at all.

Only headers are read: an `.npz`'s `x` shape and dtype come from its `.npy` header (as in
``service.core.dataset_ids``), a manifest's first image from its `.npy` header or its image header.

A text dataset (`jsonl`, `text_csv`) must declare its tokenizer (``{"type": "text", "tokenizer": ...}``):
the path is resolved (relative to the dataset file's folder), must stay under the data roots, and must
load as a `tokenizers` tokenizer with a padding token; the declaration is stored with the resolved path
and the tokenizer file's sha256, which the worker checks again before it tokenizes.
"""

from __future__ import annotations

import csv
import io
import math
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from models.declarations import (
    DTYPES,
    TEXT_KINDS,
    DeclarationError,
    ImageFeatures,
    TextFeatures,
    is_text,
    undeclared_problem,
)
from models.image_modes import decoded_mode
from models.manifests import manifest_root, path_problem
from models.shards import IMAGE_EXTENSIONS, shard_paths, split_key
from models.text import TokenizerError, file_sha256, load_tokenizer
from service.core.dataset_ids import npy_header, npy_x_header, npz_headers
from service.core.errors import Unprocessable

# A declaration for images a loader already reads as CHW floats (CSV manifests) may only say these.
_MANIFEST_FIELDS = ("mean", "std", "size")


def check_features(
    kind: str,
    path: Path,
    features: dict[str, Any] | None,
    *,
    data_roots: Sequence[Path] = (),
    uploads: Path | None = None,
    own_tokenizer: Path | None = None,
    max_npz_bytes: int | None = None,
) -> dict[str, Any] | None:
    """The declaration to store for the dataset file at `path` (the file's dtype filled in, a float's
    scale defaulted to 1; a text declaration's tokenizer resolved and hashed), or a 422 naming why it
    cannot describe the file. None without a declaration, where the file may be used as it is.
    `data_roots`: where a declared tokenizer may be read from (none given: anywhere), but for `uploads`,
    whose files are their tenants' own: only `own_tokenizer`, the one uploaded with this dataset. An npz
    whose x would take more than `max_npz_bytes` of a worker's memory is refused (``_npz_fits``)."""
    if kind in TEXT_KINDS:
        return _text(kind, path, features, data_roots, uploads, own_tokenizer)
    if features is not None and is_text(features):
        raise Unprocessable(
            f"a text declaration applies to text datasets ({', '.join(TEXT_KINDS)}), not to {kind}",
            field="features",
        )
    try:
        decl = None if features is None else ImageFeatures.from_dict(features)
    except DeclarationError as exc:
        raise Unprocessable(f"impossible features declaration: {exc}") from exc
    if kind == "npz":
        x_shape, x_dtype, _ = npz_headers(path)["x"]  # present: read_samples checked the archive first
        stored = _array(x_shape, x_dtype, decl, "an .npz")
        _npz_fits(x_shape, x_dtype, decl, max_npz_bytes)
        return stored
    if kind == "npy":
        return _array(*npy_x_header(path), decl, "an npy folder's x.npy")
    if kind in ("csv_manifest", "webdataset"):
        return _decoded_images(kind, path, decl)
    if decl is not None:
        raise Unprocessable(f"features cannot be declared for {kind} datasets")
    return None


def _text(
    kind: str,
    path: Path,
    features: dict[str, Any] | None,
    data_roots: Sequence[Path],
    uploads: Path | None,
    own_tokenizer: Path | None,
) -> dict[str, Any]:
    example = '{"type": "text", "tokenizer": "tokenizer.json", "max_length": 128}'
    if features is None or not is_text(features):
        raise Unprocessable(
            f"a {kind} dataset needs a text declaration naming its tokenizer, e.g. features: {example}",
            field="features",
        )
    if not features.get("tokenizer"):
        raise Unprocessable(
            "features.tokenizer: give the path of the tokenizer.json (relative to the dataset's folder, "
            "or absolute), or upload it as the `tokenizer` file",
            field="features",
        )
    try:
        decl = TextFeatures.from_dict({k: v for k, v in features.items() if k != "tokenizer_sha256"})
    except DeclarationError as exc:
        raise Unprocessable(f"impossible features declaration: {exc}", field="features") from exc
    tokenizer = Path(decl.tokenizer)
    tokenizer = (tokenizer if tokenizer.is_absolute() else path.parent / tokenizer).resolve()
    if data_roots and not any(tokenizer.is_relative_to(root) for root in data_roots):
        raise Unprocessable(
            f"features.tokenizer {decl.tokenizer} is outside the data roots {[str(r) for r in data_roots]}",
            field="features",
        )
    theirs = uploads is not None and tokenizer.is_relative_to(uploads.resolve())
    if theirs and (own_tokenizer is None or tokenizer != own_tokenizer.resolve()):  # maybe another tenant's
        raise Unprocessable(
            f"features.tokenizer {decl.tokenizer} is an uploaded file: a tokenizer is uploaded with its "
            "dataset (the `tokenizer` file of POST /v1/datasets/upload) or read from the data roots",
            field="features",
        )
    resolved = TextFeatures(str(tokenizer), decl.max_length, None, decl.pad_token)
    try:
        load_tokenizer(resolved)
    except TokenizerError as exc:
        raise Unprocessable(f"impossible features declaration: {exc}", field="features") from exc
    digest = file_sha256(tokenizer)
    return TextFeatures(str(tokenizer), decl.max_length, digest, decl.pad_token).to_dict()


def _npz_fits(
    x_shape: tuple[int, ...], x_dtype: np.dtype, decl: ImageFeatures | None, max_bytes: int | None
) -> None:
    """A worker decompresses an npz whole and holds x beside it as float32, at the declared ``size``
    where there is one: refused from the headers where that would pass ``max_bytes``. A few MB of
    compressed zeros declared gigabytes, and a 6 KB one with a 4096x4096 resize 125 GiB (a review)."""
    n, sample = int(x_shape[0]) if x_shape else 0, tuple(int(d) for d in x_shape[1:])
    held = (
        math.prod(decl.output_shape(sample)) if decl is not None and len(sample) >= 2 else math.prod(sample)
    )
    need = n * (math.prod(sample) * x_dtype.itemsize + held * 4)
    if max_bytes is not None and need > max_bytes:
        raise Unprocessable(
            f"x {list(x_shape)} ({x_dtype.name}) would take {need / 2**20:,.0f} MiB of a worker's memory "
            f"(read whole, and held as float32{' at the declared size' if decl and decl.size else ''}), "
            f"more than the {max_bytes / 2**20:,.0f} MiB an npz may (UNLEARN_MAX_NPZ_BYTES): register the "
            "data as an npy folder or WebDataset shards, which are read from disk as needed"
        )


def _array(
    x_shape: tuple[int, ...], x_dtype: np.dtype, decl: ImageFeatures | None, what: str
) -> dict[str, Any] | None:
    sample, dtype = tuple(int(d) for d in x_shape[1:]), x_dtype.name
    if decl is None:
        problem = undeclared_problem(sample, dtype)
        if problem is not None:
            raise Unprocessable(problem, field="features")
        return None
    if len(sample) < 2:  # vectors (tabular rows, embeddings) have no layout to declare
        raise Unprocessable(
            f"features declarations apply to images; {what}'s x holds vectors ({sample[0] if sample else 1} "
            f"values, {dtype}), which are read as stored: register it without features",
            field="features",
        )
    problems = []
    if decl.layout is None:
        problems.append(f'features.layout is required for {what}: "HW", "HWC" or "CHW" (one sample)')
    if dtype not in DTYPES:
        problems.append(f"x is stored as {dtype}; features apply to integer or float arrays")
    else:
        problems += decl.problems(sample, dtype)
    if problems:
        raise Unprocessable("impossible features declaration: " + "; ".join(problems), field="features")
    return decl.resolved(dtype).to_dict()


def _decoded_images(kind: str, path: Path, decl: ImageFeatures | None) -> dict[str, Any] | None:
    """Image files (a manifest's, or inside shards) are decoded to (C, H, W) floats in [0, 1]: a
    declaration may only normalise and resize them."""
    if decl is None:
        return None
    what = "a CSV manifest" if kind == "csv_manifest" else "WebDataset shards"
    fixed = [f"features.{k}" for k in ("layout", "dtype", "scale") if getattr(decl, k) is not None]
    if fixed:
        raise Unprocessable(
            f"impossible features declaration: {', '.join(fixed)} cannot apply to {what}, whose "
            f"images are read as (C, H, W) floats in [0, 1]; declare only {', '.join(_MANIFEST_FIELDS)}",
            field="features",
        )
    channels = _manifest_channels(path) if kind == "csv_manifest" else _shard_channels(path)
    if channels is not None:
        for name, values in (("mean", decl.mean), ("std", decl.std)):
            if values is not None and len(values) != channels:
                raise Unprocessable(
                    f"impossible features declaration: features.{name} has {len(values)} value(s) but the "
                    f"images have {channels} channel(s)",
                    field="features",
                )
    return decl.to_dict()


def _manifest_channels(path: Path) -> int | None:
    """Channels of the manifest's first image, from its header (None if it cannot tell: the loader
    checks again when it reads them all)."""
    root = manifest_root(path)
    with open(path, newline="", encoding="utf-8-sig") as fh:  # as service.core.dataset_ids reads it
        row = next(csv.DictReader(fh), None)
    raw = (row or {}).get("path") or ""
    if not raw or path_problem(root, raw) is not None:
        return None
    image = root / raw
    try:
        with open(image, "rb") as fh:
            return _channels(fh, image.suffix == ".npy")
    except Exception:  # noqa: BLE001 - unreadable here means: the loader will say why
        return None


def _channels(fh: IO[bytes], is_npy: bool) -> int | None:
    """Channels of one image (an .npy array is (H, W) or (C, H, W)), from its header."""
    if is_npy:
        shape, _ = npy_header(fh)
        return 1 if len(shape) == 2 else int(shape[0]) if len(shape) == 3 else None
    from PIL import Image

    with Image.open(fh) as img:  # reads the header only
        return Image.getmodebands(decoded_mode(img))  # as the loaders decode it


def _shard_channels(path: Path) -> int | None:
    """Channels of the first image in the first shard, from its header (None if it cannot tell)."""
    try:
        with tarfile.open(shard_paths(path)[0], mode="r:") as tar:
            for info in tar:
                if info.isfile() and split_key(info.name)[1].rpartition(".")[2] in IMAGE_EXTENSIONS:
                    fh = tar.extractfile(info)
                    assert fh is not None
                    return _channels(io.BytesIO(fh.read()), info.name.endswith(".npy"))
    except Exception:  # noqa: BLE001 - unreadable here means: the loader will say why
        return None
    return None
