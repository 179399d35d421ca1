"""Reading a dataset's sample IDs, labels and (optionally) data subjects without torch, so the API can
register a dataset and validate deletion requests against it. (The worker reads the samples themselves
with models.datasets.)

Registration reads untrusted files, so it reads no more than it needs: an `.npz`'s `x` (the bulk of it)
is never decompressed, its row count and dtype come from the `.npy` header inside the zip; and a CSV
manifest's paths must stay inside the manifest's folder (models.manifests). The streamed kinds are read
the same way: an `npy` folder's `x.npy` only for its header, WebDataset shards only for their tar headers
and their small label and subject members (models.shards)."""

from __future__ import annotations

import csv
import hashlib
import math
import os
import zipfile
from pathlib import Path
from typing import IO, NamedTuple

import numpy as np
from numpy.lib import format as npy

from models.labels import read_label
from models.manifests import manifest_root, path_problem
from models.shards import index_shards, npy_files, shard_paths
from models.text import TextFileError, read_records
from service.core.errors import ProblemError, Unprocessable

ID_KINDS = ("npz", "csv_manifest", "npy", "webdataset", "jsonl", "text_csv")
# Kinds whose data is a folder (or, for shards, a folder or one .tar file) rather than one file.
FOLDER_KINDS = ("npy", "webdataset")
_SHOWN = 20  # offending manifest lines named in a refusal


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file, read in blocks (a dataset may be gigabytes)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def dataset_files(kind: str, path: str | Path) -> list[Path]:
    """The files a registered dataset's hash covers, in a fixed order: the file itself, or the files of
    a folder kind (an npy folder's arrays, every shard)."""
    if kind == "npy":
        return list(npy_files(path).values())
    if kind == "webdataset":
        return shard_paths(path)
    return [Path(path)]


def dataset_sha256(kind: str, path: str | Path) -> str:
    """The sha256 a dataset is registered with and checked against before a job reads it: the file's own
    for one file; for a folder kind, the sha256 of each file's name and sha256, one per line, so that
    renaming, replacing, adding or removing any file changes it."""
    files = dataset_files(kind, path)
    if kind not in FOLDER_KINDS:
        return file_sha256(files[0])
    return listing_sha256([(f.name, file_sha256(f)) for f in files])


def content_sha256(kind: str, path: str | Path) -> str:
    """A digest of the data's bytes whatever its files are named: a folder kind's registered digest
    covers its files' names, so one shard uploaded (stored as ``upload.tar``) and registered again by path
    read as two data sets (a probe's model took the one as its test set and the other as training)."""
    files = dataset_files(kind, path)
    if kind not in FOLDER_KINDS:
        return file_sha256(files[0])
    return hashlib.sha256("".join(sorted(f"{file_sha256(f)}\n" for f in files)).encode()).hexdigest()


def listing_sha256(files: list[tuple[str, str]]) -> str:
    """A folder kind's sha256 from its files' (name, sha256) pairs, in the dataset's file order (as
    `dataset_sha256` computes it; an upload passes the one digest it took while copying the file)."""
    lines = "".join(f"{name}\t{digest}\n" for name, digest in files)
    return hashlib.sha256(lines.encode()).hexdigest()


class DatasetIds(NamedTuple):
    """What registration mirrors of a dataset file. `subject_ids` is None when the file names no subjects;
    otherwise one entry per sample, None for a sample about no one (an empty string in the file)."""

    sample_ids: list[str]
    labels: list[int]
    subject_ids: list[str | None] | None = None


def read_samples(kind: str, path: Path, max_samples: int | None = None) -> DatasetIds:
    """The sample IDs, labels and subjects of a dataset file; a 422 that names the problem if it is
    malformed. Subjects come from an `.npz`'s optional `subject_ids` array, a manifest's or text CSV's
    optional `subject_id` column, or a JSON line's optional `subject_id`. An npz or npy folder declaring
    more than ``max_samples`` rows is refused from its header, before its IDs are read."""
    try:
        if kind == "npz":
            return _npz(path, max_samples)
        if kind == "csv_manifest":
            return _csv(path)
        if kind == "npy":
            return _npy(path, max_samples)
        if kind == "webdataset":
            index = index_shards(path, one_image=True)
            return DatasetIds(index.sample_ids, index.labels, index.subject_ids)
        if kind in ("jsonl", "text_csv"):
            return _text(kind, path)
    except ProblemError:
        raise
    except TextFileError as exc:  # names the bad lines
        raise Unprocessable(
            f"cannot read {kind} dataset: {exc}",
            lines=[line for line, _ in exc.problems],
            refused_count=exc.total,
        ) from exc
    except Exception as exc:  # noqa: BLE001 - an untrusted file may fail in any way; it is the client's
        raise Unprocessable(f"cannot read {kind} dataset at {path}: {type(exc).__name__}: {exc}") from exc
    raise Unprocessable(f"unknown dataset kind {kind!r}; known: {list(ID_KINDS)}")


def read_ids(kind: str, path: Path) -> tuple[list[str], list[int]]:
    """(sample_ids, labels) of a dataset file (`read_samples` without the subjects)."""
    got = read_samples(kind, path)
    return got.sample_ids, got.labels


def _subject(value: str) -> str | None:
    return value or None  # an empty cell or string: the sample is about no one


def npy_header(fh: IO[bytes]) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from the header of a `.npy` stream, reading only the header."""
    version = npy.read_magic(fh)
    if version == (1, 0):
        shape, _, dtype = npy.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, _, dtype = npy.read_array_header_2_0(fh)
    else:
        raise ValueError(f"unsupported .npy format version {version}")
    return shape, dtype


def npz_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype, int]]:
    """Per array of the archive: shape, dtype and the uncompressed size the zip records for it."""
    headers = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if info.filename.endswith(".npy"):
                with zf.open(info) as fh:
                    shape, dtype = npy_header(fh)
                headers[info.filename.removesuffix(".npy")] = (shape, dtype, info.file_size)
    return headers


def _at_most(n: int, max_samples: int | None) -> None:
    if max_samples is not None and n > max_samples:
        raise Unprocessable(
            f"the dataset declares {n:,} samples, more than the {max_samples:,} a dataset may hold "
            "(UNLEARN_MAX_DATASET_SAMPLES)"
        )


def _npz(path: Path, max_samples: int | None = None) -> DatasetIds:
    headers = npz_headers(path)
    missing = [k for k in ("x", "y", "ids") if k not in headers]
    if missing:
        raise ValueError(f"missing arrays {missing} (need x, y, ids)")
    (x_shape, x_dtype, _), (y_shape, y_dtype, y_size), (ids_shape, ids_dtype, ids_size) = (
        headers[k] for k in ("x", "y", "ids")
    )
    if len(x_shape) < 1 or x_dtype.kind not in "biuf":
        raise ValueError(f"x must be a numeric array with one row per sample, got {x_dtype} {x_shape}")
    n = x_shape[0]
    _at_most(max(n, *y_shape[:1], *ids_shape[:1]), max_samples)
    if len(y_shape) != 1 or len(ids_shape) != 1 or not (n == y_shape[0] == ids_shape[0]):
        shapes = ", ".join(f"{k} {list(v)}" for k, v in (("x", x_shape), ("y", y_shape), ("ids", ids_shape)))
        raise ValueError(f"x, y and ids must be one row per sample (y and ids 1-D); their shapes: {shapes}")
    if not np.issubdtype(y_dtype, np.integer):
        raise ValueError("y must hold integer class labels")
    if ids_dtype.kind != "U":
        raise ValueError(f"ids must be a unicode string array (as the worker requires), got {ids_dtype}")
    x_size = headers["x"][2]
    checked = [
        ("x", x_shape, x_dtype, x_size),
        ("y", y_shape, y_dtype, y_size),
        ("ids", ids_shape, ids_dtype, ids_size),
    ]
    if "subject_ids" in headers:  # optional: the data subject of each sample ("" for none)
        s_shape, s_dtype, s_size = headers["subject_ids"]
        if len(s_shape) != 1 or s_shape[0] != n:
            raise ValueError(f"subject_ids must hold one entry per sample ({n}), got shape {s_shape}")
        if s_dtype.kind != "U":
            raise ValueError(f"subject_ids must be a unicode string array, got {s_dtype}")
        checked.append(("subject_ids", s_shape, s_dtype, s_size))
    # y, ids and subject_ids are read in full (they are registered), but never more than the archive says
    # they hold: a header that declares more data than its zip entry has would make numpy allocate for
    # nothing. x is not read here, but a worker would find it short only once a model was on it.
    for name, shape, dtype, size in checked:
        if math.prod(shape) * dtype.itemsize > size:
            raise ValueError(f"array {name} declares more data than the archive holds")
        if dtype.kind == "U" and dtype.itemsize // 4 > MAX_ID_CHARS:  # one row would be read whole
            what = "subject" if name == "subject_ids" else "sample"
            raise ValueError(
                f"{what} ID(s) are stored {dtype.itemsize // 4:,} characters wide, longer than "
                f"{MAX_ID_CHARS} characters, the most a deletion request can name: store them at their own "
                "width (np.array(ids))"
            )
    with np.load(path, allow_pickle=False) as data:
        labels = data["y"]
    subjects = None
    if "subject_ids" in headers:
        subjects = [_subject(v) for v in _strings(path, "subject_ids")]
    return DatasetIds(_strings(path, "ids"), [int(v) for v in labels.tolist()], subjects)


STRING_CHUNK = 8 << 20  # bytes of a string array decoded at a time
MAX_ID_CHARS = 200  # a sample or subject ID a deletion request can name (registry.register_dataset)


def _strings(path: Path, name: str) -> list[str]:
    """An npz's 1-D unicode array ``name``, decoded a chunk at a time: numpy holds every string at the
    width of the longest, 4 bytes a character, and reading 4 million IDs declared 200 characters wide
    whole (3.2 GB of compressed zeros in a 3.3 MB upload) held the API at 1.6 GB (a probe). The list holds
    each string at its own length."""
    out: list[str] = []
    with zipfile.ZipFile(path) as zf, zf.open(f"{name}.npy") as fh:
        shape, dtype = npy_header(fh)
        n, width = math.prod(shape), dtype.itemsize
        per = max(1, STRING_CHUNK // max(width, 1))
        for start in range(0, n, per):
            k = min(per, n - start)
            raw = fh.read(k * width)
            if len(raw) < k * width:
                raise ValueError(f"array {name} is cut short")
            out.extend(np.frombuffer(raw, dtype=dtype).tolist())
    return out


def npy_x_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of an npy folder's `x.npy`, from its header; ValueError where the file is shorter
    than its header says (it registered, and every model on it went invalid at "mmap length is greater
    than file size": a probe)."""
    with open(npy_files(path)["x.npy"], "rb") as fh:
        shape, dtype = npy_header(fh)
        declared = fh.tell() + math.prod(shape) * dtype.itemsize
        held = os.fstat(fh.fileno()).st_size
    if held < declared:
        raise ValueError(
            f"x.npy is cut short: its header declares {declared:,} bytes, the file holds {held:,}"
        )
    return shape, dtype


def _npy(path: Path, max_samples: int | None = None) -> DatasetIds:
    files = npy_files(path)
    x_shape, x_dtype = npy_x_header(path)
    if len(x_shape) < 1 or x_dtype.kind not in "biuf":
        raise ValueError(f"x.npy must be a numeric array with one row per sample, got {x_dtype} {x_shape}")
    _at_most(x_shape[0], max_samples)
    arrays = {
        name: np.load(files[f"{name}.npy"], mmap_mode="r", allow_pickle=False)
        for name in ("y", "ids", "subject_ids")
        if f"{name}.npy" in files
    }
    n = x_shape[0]
    for name, arr in arrays.items():
        if arr.ndim != 1 or len(arr) != n:
            raise ValueError(f"{name}.npy must hold one entry per row of x.npy ({n}), got shape {arr.shape}")
    if not np.issubdtype(arrays["y"].dtype, np.integer):
        raise ValueError("y.npy must hold integer class labels")
    for name in ("ids", "subject_ids"):
        if name in arrays and arrays[name].dtype.kind != "U":
            raise ValueError(f"{name}.npy must be a unicode string array, got {arrays[name].dtype}")
    subjects = [_subject(v) for v in arrays["subject_ids"].tolist()] if "subject_ids" in arrays else None
    return DatasetIds(arrays["ids"].tolist(), [int(v) for v in arrays["y"].tolist()], subjects)


def _text(kind: str, path: Path) -> DatasetIds:
    """A text file's IDs, labels and subjects (the texts are read, and dropped: the worker tokenizes)."""
    records = read_records(kind, path)
    subjects = [r.subject_id for r in records]
    return DatasetIds(
        [r.sample_id for r in records],
        [r.label for r in records],
        subjects if any(s is not None for s in subjects) else None,
    )


def _csv(path: Path) -> DatasetIds:
    ids: list[str] = []
    labels: list[int] = []
    subjects: list[str | None] = []
    root = manifest_root(path)
    refused: list[tuple[int, str]] = []
    with open(path, newline="", encoding="utf-8-sig") as fh:  # a leading BOM is not a header
        reader = csv.DictReader(fh)
        need = {"sample_id", "path", "label"}
        if not need <= set(reader.fieldnames or ()):
            raise ValueError(f"the header must have columns {sorted(need)}")
        has_subjects = "subject_id" in (reader.fieldnames or ())  # optional column
        paths_only = True  # every refused line is a path problem (they get a message of their own)
        for row in reader:
            line = reader.line_num
            # every problem of every line, as text datasets list theirs: a manifest's first bad label had
            # hidden the rest, and its path errors too (a probe fixed one line at a time)
            problems = [] if row["sample_id"] else ["empty sample_id"]
            bad_path = path_problem(root, row["path"] or "")
            ids.append(row["sample_id"])
            try:
                labels.append(read_label(row["label"]))
            except (TypeError, ValueError):
                problems.append(f"label {row['label']!r} is not a whole number")
            paths_only = paths_only and not problems
            refused += [(line, why) for why in ([bad_path] if bad_path else []) + problems]
            if has_subjects:
                subjects.append(_subject(row["subject_id"] or ""))
    if refused:
        shown = "; ".join(f"line {line}: {why}" for line, why in refused[:_SHOWN])
        more = f" (and {len(refused) - _SHOWN} more)" if len(refused) > _SHOWN else ""
        what = f"manifest path(s) are not files inside the manifest's folder {root}"
        raise Unprocessable(
            f"{len(refused)} {what if paths_only else 'problem(s) in the manifest'}: {shown}{more}",
            lines=sorted({line for line, _ in refused})[:100],
            refused_count=len(refused),
        )
    return DatasetIds(ids, labels, subjects if has_subjects else None)
