from __future__ import annotations

import contextlib
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal, cast

from fastapi import APIRouter, Depends, File, Form, UploadFile, status
from sqlalchemy import select
from starlette.exceptions import HTTPException as StarletteHTTPException

from models.declarations import TEXT_KINDS, UPLOAD_SUFFIXES
from service.api.deps import Admin, SessionDep, SettingsDep
from service.api.errors import KEYED, problems
from service.api.schemas.registry import DatasetCreate, DatasetOut, Name
from service.api.uploads import each_part_once, parse_features, save_upload
from service.core import events
from service.core.dataset_ids import (
    FOLDER_KINDS,
    DatasetIds,
    dataset_files,
    dataset_sha256,
    listing_sha256,
    read_samples,
)
from service.core.db.tables import Dataset
from service.core.errors import NotFound, ProblemError, Unprocessable
from service.core.features import check_features
from service.core.registry import register_dataset

UploadKind = Literal["npz", "webdataset", "jsonl", "text_csv"]


def kind_of(filename: str | None) -> UploadKind:
    """An upload's kind from its name, where the client did not say: a probe's .tar sent without one was
    read as an npz ("BadZipFile"), which named neither the kind nor the fix. The CLI reads the same
    suffixes (and asks for --kind where none fits)."""
    kind = UPLOAD_SUFFIXES.get(Path(filename or "").suffix.lower(), "npz")  # unknown: npz, as before
    return cast(UploadKind, kind)


router = APIRouter(tags=["datasets"], responses=problems(*KEYED))
upload_router = APIRouter(  # carries the larger upload body limit
    tags=["datasets"], responses=problems(*KEYED, 507), dependencies=[Depends(each_part_once)]
)


def dataset_out(d: Dataset) -> DatasetOut:
    return DatasetOut(
        id=d.id,
        name=d.name,
        kind=d.kind,
        uri=d.uri,
        num_samples=d.num_samples,
        sha256=d.sha256,
        features=d.features,
        created_at=d.created_at,
    )


def _register(
    session: SessionDep,
    key: Admin,
    name: str,
    kind: str,
    path: Path,
    sha256: str,
    features: dict[str, Any] | None,
    data_roots: list[Path],
    *,
    uploads: Path,
    own_tokenizer: Path | None = None,
    ids: DatasetIds | None = None,
    max_samples: int | None = None,
    max_npz_bytes: int | None = None,
) -> DatasetOut:
    """Read the IDs (no transaction open: the file may be large) and check the feature declaration
    against the file's headers (a text declaration's tokenizer: under `data_roots`, loadable), then record
    it all in one short transaction. `sha256` is the file's as it was hashed: the worker refuses it if it
    changes. `ids`: what `read_samples` read already, if the caller had to read it first."""
    sample_ids, labels, subjects = read_samples(kind, path, max_samples) if ids is None else ids
    if not sample_ids:
        raise Unprocessable("the dataset has no samples")
    stored_features = check_features(
        kind,
        path,
        features,
        data_roots=data_roots,
        uploads=uploads,
        own_tokenizer=own_tokenizer,
        max_npz_bytes=max_npz_bytes,
    )
    try:
        ds = register_dataset(
            session,
            tenant=key.tenant,
            name=name,
            kind=kind,
            uri=str(path),
            sample_ids=sample_ids,
            labels=labels,
            actor=events.key_actor(key),
            sha256=sha256,
            features=stored_features,
            subject_ids=subjects,
        )
    except ValueError as exc:
        raise Unprocessable(str(exc)) from exc
    session.commit()
    return dataset_out(ds)


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path.is_relative_to(root) for root in roots)


def _files_inside(uri: str, files: list[Path], roots: list[Path], uploads: Path) -> None:
    """A 422 unless every file of a folder resolves inside the data roots and outside the uploads: a
    symlinked shard's labels were read, and quoted back in the refusal, before the check (a probe), and one
    leading to another tenant's upload registered."""
    for f in files:
        try:
            real = f.resolve()
        except (OSError, RuntimeError) as exc:
            raise Unprocessable(f"cannot read {f.name} of {uri}: {exc}") from exc
        if not _inside(real, roots) or real.is_relative_to(uploads):
            where = "an uploaded file" if real.is_relative_to(uploads) else "outside the data roots"
            raise Unprocessable(f"{f.name} of {uri} resolves to {where} (a symlink?): {real}")


@router.post(
    "/v1/datasets",
    response_model=DatasetOut,
    status_code=status.HTTP_201_CREATED,
    summary="Register a dataset file that the workers can read (by path)",
)
def create_dataset(body: DatasetCreate, session: SessionDep, settings: SettingsDep, key: Admin) -> DatasetOut:
    roots, uploads = settings.allowed_data_roots, settings.dataset_dir / "uploads"
    try:  # a symlink loop, a name over 255 bytes: the path's own problem, not a 500 (a probe)
        path = Path(body.uri).resolve()
        found = path.is_file() or (body.kind in FOLDER_KINDS and path.is_dir())
    except (OSError, RuntimeError) as exc:
        raise Unprocessable(f"cannot read the path {body.uri}: {exc}") from exc
    if not _inside(path, roots):
        raise Unprocessable(f"{body.uri} is outside the data roots {[str(r) for r in roots]}")
    if path.is_relative_to(uploads):
        # Another tenant's upload may sit there; an upload is registered by its own request, for its tenant.
        raise Unprocessable(
            f"{body.uri} is an uploaded file: uploads are registered by POST /v1/datasets/upload, for the "
            "tenant that uploaded them; by path, register files under the data roots"
        )
    if not found:
        raise Unprocessable(f"no {'folder or file' if body.kind in FOLDER_KINDS else 'file'} at {body.uri}")
    if body.kind in FOLDER_KINDS:  # the folder is inside the roots; a symlink in it may lead out
        try:
            files = dataset_files(body.kind, path)
        except ValueError as exc:  # no x.npy, no shards, a plain file: the folder's own problem (a review)
            raise Unprocessable(f"cannot read {body.kind} dataset at {body.uri}: {exc}") from exc
        _files_inside(body.uri, files, roots, uploads)  # before any is read
    features = body.features.model_dump(exclude_none=True) if body.features is not None else None
    ids = read_samples(body.kind, path, settings.max_dataset_samples)  # a 422 naming it, before hashing
    # A manifest is hashed itself; the image files it names are not (see README: they are checked
    # only for staying inside the manifest's folder). A folder kind hashes every file it reads.
    digest = dataset_sha256(body.kind, path)
    return _register(
        session, key, body.name, body.kind, path, digest, features, roots, uploads=uploads, ids=ids,
        max_npz_bytes=settings.max_npz_bytes,
    )  # fmt: skip


@upload_router.post(
    "/v1/datasets/upload",
    response_model=DatasetOut,
    status_code=status.HTTP_201_CREATED,
    summary="Upload a dataset file: an .npz (arrays x, y, ids; optionally subject_ids), a WebDataset "
    ".tar shard, or text (jsonl or text_csv) with its tokenizer",
)
def upload_dataset(
    name: Annotated[Name, Form()],
    file: Annotated[
        UploadFile,
        File(
            description=".npz with arrays x, y, ids and optionally subject_ids; a WebDataset .tar shard "
            "(__key__ = sample ID, .cls label, an image member); or a jsonl / text_csv file "
            "(sample_id, text, label; optionally subject_id)"
        ),
    ],
    session: SessionDep,
    settings: SettingsDep,
    key: Admin,
    features: Annotated[
        str | None,
        Form(
            description='JSON: the feature declaration, e.g. {"layout": "HW", "scale": 255} (see '
            "DatasetCreate.features). Required when x holds integer images, and for text "
            '({"type": "text", "max_length": 128}; the tokenizer is the `tokenizer` file)'
        ),
    ] = None,
    kind: Annotated[
        UploadKind | None,
        Form(
            description="the file's kind (webdataset: one .tar shard); left out, it is read from the file "
            "name's suffix (.tar webdataset, .jsonl jsonl, .csv text_csv, anything else npz)"
        ),
    ] = None,
    tokenizer: Annotated[
        UploadFile | None,
        File(description="text kinds: the tokenizer.json (tokenizers library) the texts are tokenized with"),
    ] = None,
) -> DatasetOut:
    declared = parse_features(features)  # refused before the file is copied
    kind = kind or kind_of(file.filename)
    if tokenizer is not None and kind not in TEXT_KINDS:
        raise Unprocessable(f"a tokenizer applies to text datasets (kind jsonl or text_csv), not to {kind}")
    if tokenizer is not None and declared is not None and declared.get("tokenizer"):
        raise Unprocessable("name the tokenizer once: as the `tokenizer` file or as features.tokenizer")
    stem = f"{uuid.uuid4().hex}"
    suffix = {"text_csv": "csv", "webdataset": "tar"}.get(kind, kind)
    target = settings.dataset_dir / "uploads" / f"{stem}.{suffix}"
    if kind in FOLDER_KINDS:  # its digest covers its file's name: one name for every upload lets the same
        target = target.with_suffix("") / f"upload.{suffix}"  # bytes sent twice be told apart from others
    tokenizer_path = settings.dataset_dir / "uploads" / f"{stem}.tokenizer.json"
    try:
        digest = save_upload(file, target)  # hashed as it is copied, before any transaction opens
        if kind in FOLDER_KINDS:  # one shard: pinned as a folder kind is, the way the worker checks it
            digest = listing_sha256([(target.name, digest)])
        if tokenizer is not None:
            save_upload(tokenizer, tokenizer_path)  # hashed again (and stored) by check_features
            declared = {"type": "text", **(declared or {}), "tokenizer": str(tokenizer_path)}
        roots = settings.allowed_data_roots
        own = tokenizer_path if tokenizer is not None else None
        uploads = settings.dataset_dir / "uploads"
        return _register(
            session, key, name, kind, target, digest, declared, roots, uploads=uploads, own_tokenizer=own,
            max_samples=settings.max_dataset_samples, max_npz_bytes=settings.max_npz_bytes,
        )  # fmt: skip
    except Exception as exc:
        target.unlink(missing_ok=True)
        if target.parent.name == stem:
            with contextlib.suppress(OSError):  # never made (a failed mkdir): the error is the other one
                target.parent.rmdir()
        tokenizer_path.unlink(missing_ok=True)
        if isinstance(exc, ProblemError):
            _name_the_upload(
                exc, {target: file.filename or "the uploaded file", tokenizer_path: "the tokenizer"}
            )
        raise


def _name_the_upload(exc: ProblemError, sent: dict[Path, str]) -> None:
    """The readers name the file they read, by its path or its name: for an upload that is the server's
    copy under a random name, which the client never saw (a probe was told about a path of ours); the file
    sent is named instead."""
    for path, label in sent.items():
        for said in (str(path), path.name):  # the path first: it holds the name
            exc.detail = exc.detail.replace(said, repr(label))
            for e in exc.errors or []:
                if isinstance(e.get("msg"), str):
                    e["msg"] = e["msg"].replace(said, repr(label))


@router.get("/v1/datasets", response_model=list[DatasetOut])
def list_datasets(session: SessionDep, key: Admin) -> list[DatasetOut]:
    rows = session.scalars(select(Dataset).where(Dataset.tenant == key.tenant).order_by(Dataset.created_at))
    return [dataset_out(d) for d in rows]


@router.get("/v1/datasets/upload", include_in_schema=False)
def upload_takes_post() -> None:
    """Registered before the next route, which read GET here as the dataset "upload" (a 404) where a
    method the path does not take is a 405 naming the ones it does (POST)."""
    raise StarletteHTTPException(status.HTTP_405_METHOD_NOT_ALLOWED)


@router.get("/v1/datasets/{dataset_id}", response_model=DatasetOut)
def get_dataset(dataset_id: str, session: SessionDep, key: Admin) -> DatasetOut:
    d = session.get(Dataset, dataset_id)
    if d is None or d.tenant != key.tenant:
        raise NotFound(f"dataset {dataset_id!r} not found")
    return dataset_out(d)
