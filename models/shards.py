"""WebDataset tar shards, indexed for random access, and the on-disk layouts of the other streamed kinds.

A WebDataset shard is a plain tar file in which the files of one sample sit together and share a key:
``cat-0001.png`` and ``cat-0001.cls`` are the image and the class of the sample whose ``__key__`` is
``cat-0001`` (the key is the member's path up to the first dot of its file name; what follows is the
extension). Here the key is the sample ID, ``.cls`` holds the label as ASCII digits, and an optional
``.subject_id`` member names the sample's data subject.

Unlearning draws random batches, so shards are not streamed front to back: one pass over the tar headers
(no member's data but the small ``.cls`` and ``.subject_id`` ones) records where each sample's image
bytes lie, and a batch is read with one seek per sample. Reading in dataset order, as a plain WebDataset
pipeline would, gives the same samples; the index only makes any order as cheap.

A ``npy`` dataset is a folder holding ``x.npy`` (one row per sample, memory-mapped, never read whole),
``y.npy`` (integer labels), ``ids.npy`` (unicode sample IDs) and optionally ``subject_ids.npy``.

Torch-free and service-free: the API indexes shards at registration (``service.core.dataset_ids``) and
the worker's loader (``models.streamed``) indexes them again when it reads them.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from models.labels import read_label

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "npy", "bmp", "ppm", "pgm", "webp", "tif", "tiff")
LABEL_EXTENSION = "cls"
SUBJECT_EXTENSION = "subject_id"
NPY_FILES = ("x.npy", "y.npy", "ids.npy")
NPY_OPTIONAL = ("subject_ids.npy",)
_MAX_SMALL_MEMBER = 1024  # bytes of a .cls or .subject_id member; more is not a label


class ShardError(ValueError):
    """Shards that cannot be read as a labelled image dataset (the message names the shard and key)."""


@dataclass(frozen=True)
class Member:
    """Where one sample's image bytes lie: shard number, byte offset of the data, size, extension."""

    shard: int
    offset: int
    size: int
    ext: str


@dataclass
class ShardIndex:
    shards: list[Path]
    sample_ids: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    subject_ids: list[str | None] | None = None  # None: no sample names a subject
    images: list[Member] = field(default_factory=list)


def shard_paths(uri: str | Path) -> list[Path]:
    """The shards of a dataset: the one ``.tar`` file named, or every ``*.tar`` in the folder named, in
    name order (the dataset's sample order)."""
    path = Path(uri)
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix == ".tar" and p.is_file())
        if not found:
            raise ShardError(f"{path}: the folder holds no .tar shards")
        return found
    if path.suffix != ".tar" or not path.is_file():
        raise ShardError(f"{path}: not a .tar shard or a folder of them")
    return [path]


def split_key(name: str) -> tuple[str, str]:
    """(``__key__``, extension) of a member name, as WebDataset splits it: at the first dot of the file
    name (``a/b.c/x.seg.png`` -> ``a/b.c/x``, ``seg.png``)."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (ext.lower() if dot else "")


def index_shards(uri: str | Path, *, one_image: bool = False) -> ShardIndex:
    """Scan every shard's headers once; ShardError naming the first sample that lacks an image or a
    label, a key that appears twice, or a label that is not an integer. ``one_image`` (registration):
    also a sample with two image members, whose first in tar order would be the one read. Datasets
    registered before that check keep loading, with that first image."""
    index = ShardIndex(shard_paths(uri))
    seen: dict[str, int] = {}
    pending: dict[str, dict[str, object]] = {}
    any_subject = False
    for number, path in enumerate(index.shards):
        with _open_tar(path) as tar:
            for info in tar:
                if not info.isfile():
                    continue
                key, full_ext = split_key(info.name)
                ext = full_ext.rpartition(".")[2]  # what decodes it: `seg.png` is a PNG
                if key in seen:
                    raise ShardError(
                        f"{path.name}: sample {key!r} appears again (first in shard {seen[key]})"
                    )
                sample = pending.setdefault(key, {})
                if ext in sample:
                    raise ShardError(f"{path.name}: sample {key!r} has two .{ext} members")
                sample[ext] = True
                if ext in IMAGE_EXTENSIONS:
                    first = sample.get("image")
                    if isinstance(first, Member) and one_image:
                        raise ShardError(
                            f"{path.name}: sample {key!r} has two images ({sample['image_name']} and "
                            f"{info.name}); a sample holds one image member"
                        )
                    if first is None:
                        sample["image"] = Member(number, info.offset_data, info.size, ext)
                        sample["image_name"] = info.name  # for the message above ('.png and a.jpg')
                elif ext in (LABEL_EXTENSION, SUBJECT_EXTENSION):
                    sample[ext] = _small_text(tar, info, path, key)
        for key, sample in pending.items():  # a sample's files are adjacent: it ends with its shard
            seen[key] = number
            any_subject |= _add(index, path, key, sample)
        pending.clear()
    if not index.sample_ids:
        raise ShardError(f"{index.shards[0].name}: no samples found")
    if not any_subject:
        index.subject_ids = None
    return index


def _open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, mode="r:")  # uncompressed only: random access needs byte offsets
    except tarfile.TarError as exc:
        raise ShardError(f"{path.name}: not an uncompressed tar file ({exc})") from None


def _small_text(tar: tarfile.TarFile, info: tarfile.TarInfo, path: Path, key: str) -> str:
    if info.size > _MAX_SMALL_MEMBER:
        raise ShardError(f"{path.name}: {info.name} is {info.size} bytes; a label or subject is a short text")
    fh = tar.extractfile(info)
    assert fh is not None  # a regular file
    try:
        return fh.read().decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ShardError(f"{path.name}: {info.name} is not UTF-8 text") from None


def _add(index: ShardIndex, path: Path, key: str, sample: dict[str, object]) -> bool:
    """Append one complete sample; True if it names a subject."""
    image, label = sample.get("image"), sample.get(LABEL_EXTENSION)
    if not isinstance(image, Member):
        raise ShardError(f"{path.name}: sample {key!r} has no image ({', '.join(IMAGE_EXTENSIONS)})")
    if not isinstance(label, str):
        raise ShardError(f"{path.name}: sample {key!r} has no .{LABEL_EXTENSION} label")
    try:
        value = read_label(label)
    except ValueError:
        raise ShardError(f"{path.name}: sample {key!r} has label {label!r}, not an integer") from None
    if value < 0:
        raise ShardError(f"{path.name}: sample {key!r} has a negative label {value}")
    subject = sample.get(SUBJECT_EXTENSION)
    if index.subject_ids is None:
        index.subject_ids = []
    index.sample_ids.append(key)
    index.labels.append(value)
    index.images.append(image)
    index.subject_ids.append(str(subject) if subject else None)
    return bool(subject)


def read_member(path: Path, member: Member) -> bytes:
    """The bytes of one member, by offset."""
    with open(path, "rb") as fh:
        fh.seek(member.offset)
        data = fh.read(member.size)
    if len(data) != member.size:
        raise ShardError(f"{path.name}: truncated at byte {member.offset + len(data)}")
    return data


def npy_files(uri: str | Path) -> dict[str, Path]:
    """The files of an ``npy`` dataset folder by name (the optional ones when present); ShardError naming
    what is missing."""
    folder = Path(uri)
    if not folder.is_dir():
        raise ShardError(f"{folder}: an npy dataset is a folder holding {', '.join(NPY_FILES)}")
    missing = [name for name in NPY_FILES if not (folder / name).is_file()]
    if missing:
        raise ShardError(f"{folder}: missing {', '.join(missing)} (need {', '.join(NPY_FILES)})")
    return {name: folder / name for name in (*NPY_FILES, *NPY_OPTIONAL) if (folder / name).is_file()}
