from __future__ import annotations

import contextlib
import re
import uuid
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Query, UploadFile, status
from sqlalchemy import and_, select, update
from sqlalchemy.exc import IntegrityError
from starlette.convertors import Convertor, register_url_convertor

from service.api.deps import Admin, CeleryDep, JobsReader, RequestReader, SessionDep, SettingsDep
from service.api.errors import KEYED, problems
from service.api.files import CheckpointFile, stored_sha256
from service.api.pagination import decode_cursor, encode_cursor
from service.api.schemas.common import Page
from service.api.schemas.datasets import SampleOut
from service.api.schemas.models import ModelOut, VersionOut
from service.api.schemas.registry import (
    DEFAULT_FORGET_EXCESS_SE,
    DEFAULT_FORGOTTEN_CLASS_ACCURACY,
    DEFAULT_GATE_ROWS,
    DEFAULT_TEST_ACCURACY_DROP,
    ModelCreate,
    ModelUpdate,
)
from service.api.uploads import (
    each_part_once,
    parse_model_spec,
    save_safetensors_upload,
    with_uploaded_config,
)
from service.api.views import model_out, version_out
from service.core import events
from service.core.dataset_ids import FOLDER_KINDS, content_sha256
from service.core.db.tables import Dataset, DatasetSample, ForgottenSample, Model, ModelVersion, utcnow
from service.core.errors import Conflict, Gone, NotFound, ServiceUnavailable, Unprocessable
from service.core.lookups import get_model, version_label
from service.core.model_specs import (
    check_architecture,
    check_labels,
    check_methods,
    check_recipe,
    check_time_limit,
    registered_dataset,
)
from service.core.queue import send_validate_model
from service.core.registry import is_model_name_clash, register_model, retire_invalid, update_policy
from service.core.states import ModelStatus
from service.core.subjects import spellings

router = APIRouter(tags=["models"], responses=problems(*KEYED))
upload_router = APIRouter(  # the larger upload body limit
    tags=["models"], responses=problems(*KEYED, 507), dependencies=[Depends(each_part_once)]
)


@router.get("/v1/models", response_model=list[ModelOut])
def list_models(session: SessionDep, key: JobsReader) -> list[ModelOut]:
    rows = session.scalars(select(Model).where(Model.tenant == key.tenant).order_by(Model.name)).all()
    return [model_out(session, m) for m in rows]


@router.get("/v1/models/{model}", response_model=ModelOut)
def get_model_route(model: str, session: SessionDep, key: JobsReader) -> ModelOut:
    return model_out(session, get_model(session, key.tenant, model))


@router.get("/v1/models/{model}/versions", response_model=list[VersionOut])
def list_versions(model: str, session: SessionDep, key: JobsReader) -> list[VersionOut]:
    m = get_model(session, key.tenant, model)
    rows = session.scalars(
        select(ModelVersion).where(ModelVersion.model_id == m.id).order_by(ModelVersion.number)
    ).all()
    return [version_out(v) for v in rows]


@router.get(
    "/v1/models/{model}/samples",
    response_model=Page[SampleOut],
    summary="The model's training-set sample IDs, in dataset order, with their forgotten status",
)
def list_samples(
    model: str,
    session: SessionDep,
    key: RequestReader,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    subject_id: Annotated[
        str | None,
        Query(min_length=1, max_length=200, pattern=r"^[^\x00]*$", description="Only this subject's samples"),
    ] = None,
) -> Page[SampleOut]:
    m = get_model(session, key.tenant, model)
    if subject_id is not None and not subject_id.strip():  # as a request naming a blank subject
        raise Unprocessable("subject_id must hold more than spaces")
    after = decode_cursor(cursor, 1, int)[0] if cursor else -1
    query = (
        select(
            DatasetSample.sample_id,
            DatasetSample.label,
            DatasetSample.position,
            ForgottenSample.version_number,
            DatasetSample.subject_id,
        )
        .outerjoin(
            ForgottenSample,
            and_(ForgottenSample.model_id == m.id, ForgottenSample.sample_id == DatasetSample.sample_id),
        )
        .where(DatasetSample.dataset_id == m.train_dataset_id, DatasetSample.position > after)
    )
    if subject_id is not None:  # on the (dataset, subject) index, in the forms registration stores
        query = query.where(DatasetSample.subject_id.in_(spellings(subject_id)))
    rows = session.execute(query.order_by(DatasetSample.position).limit(limit + 1)).all()
    items = [
        SampleOut(sample_id=r[0], label=r[1], forgotten_in=version_label(r[3]), subject_id=r[4])
        for r in rows[:limit]
    ]
    next_cursor = encode_cursor(rows[limit - 1][2]) if len(rows) > limit else None
    return Page[SampleOut](items=items, next_cursor=next_cursor)


class AnyText(Convertor[str]):
    """The rest of the path, newlines included: `path`'s `.*` stops at one, and a sample ID that holds one
    (which registration accepts) could not be looked up (a route-level 404). At least one character: an
    empty one read `/samples/` as the lookup of sample '' (a 404), where every other trailing slash is
    redirected to its route."""

    regex = r"[\s\S]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("anytext", AnyText())


@router.get(
    "/v1/models/{model}/samples/{sample_id:anytext}",
    response_model=SampleOut,
    summary="Look up one sample ID",
)
def get_sample(model: str, sample_id: str, session: SessionDep, key: RequestReader) -> SampleOut:
    m = get_model(session, key.tenant, model)
    row = session.execute(
        select(DatasetSample.label, ForgottenSample.version_number, DatasetSample.subject_id)
        .outerjoin(
            ForgottenSample,
            and_(ForgottenSample.model_id == m.id, ForgottenSample.sample_id == DatasetSample.sample_id),
        )
        .where(DatasetSample.dataset_id == m.train_dataset_id, DatasetSample.sample_id == sample_id)
    ).first()
    if row is None:
        raise NotFound(f"sample {sample_id!r} is not in the training set of model {model!r}")
    return SampleOut(sample_id=sample_id, label=row[0], forgotten_in=version_label(row[1]), subject_id=row[2])


def _get_version(session: SessionDep, m: Model, version: str) -> ModelVersion:
    number = version[1:] if version.startswith("v") else version
    v = None
    if re.fullmatch(r"[0-9]{1,9}", number):
        v = session.scalar(
            select(ModelVersion).where(ModelVersion.model_id == m.id, ModelVersion.number == int(number))
        )
    if v is None:
        raise NotFound(f"model {m.name!r} has no version {version!r}")
    return v


@router.get("/v1/models/{model}/versions/{version}", response_model=VersionOut)
def get_version(model: str, version: str, session: SessionDep, key: JobsReader) -> VersionOut:
    return version_out(_get_version(session, get_model(session, key.tenant, model), version))


@router.get(
    "/v1/models/{model}/versions/{version}/checkpoint",
    summary="Download a version's safetensors checkpoint (sha256 in the X-Checkpoint-SHA256 header)",
    response_class=CheckpointFile,
    responses={
        206: {"description": "The byte ranges a `Range` header asked for"},
        304: {"description": "`If-None-Match` names its digest, or `If-Modified-Since` is not earlier"},
        412: {"description": "`If-Match` names another digest, or `If-Unmodified-Since` is before the file"},
        416: {"description": "None of the byte ranges asked for lies in the file"},
        **problems(410),
    },
)
def download_checkpoint(model: str, version: str, session: SessionDep, key: JobsReader) -> CheckpointFile:
    m = get_model(session, key.tenant, model)
    v = _get_version(session, m, version)
    if v.checkpoint_retired_at is not None:
        raise Gone(
            f"the checkpoint of {m.name}/v{v.number} was deleted by an admin at "
            f"{version_out(v).checkpoint_retired_at} (it held samples later versions forgot); its "
            f"sha256 {v.sha256} stays in the version record and the audit log"
        )
    path = Path(v.checkpoint_uri)
    try:
        stored = stored_sha256(path)
    except (FileNotFoundError, IsADirectoryError):  # gone since the row was read: a 500 (a probe)
        raise NotFound(f"the checkpoint file of {m.name}/v{v.number} is missing from storage") from None
    except OSError as exc:  # storage the server cannot read (permissions, a lost volume): no 500 (a review)
        raise ServiceUnavailable(
            f"the checkpoint file of {m.name}/v{v.number} cannot be read from storage "
            f"({type(exc).__name__}); retry later"
        ) from None
    if stored != v.sha256:
        raise Conflict(
            f"the checkpoint file of {m.name}/v{v.number} changed on storage since it was published (sha256 "
            f"{stored[:16]}..., recorded {v.sha256[:16]}...); refusing to serve it: restore it from a backup"
        )
    return CheckpointFile(
        path,
        media_type="application/octet-stream",
        filename=f"{m.name}-v{v.number}.safetensors",
        headers={"X-Checkpoint-SHA256": v.sha256, "ETag": f'"{v.sha256}"'},
    )


@router.delete(
    "/v1/models/{model}/versions/{version}/checkpoint",
    response_model=VersionOut,
    summary="Delete a superseded version's checkpoint file (it may hold samples later versions forgot)",
)
def retire_checkpoint(
    model: str, version: str, session: SessionDep, settings: SettingsDep, key: Admin
) -> VersionOut:
    """An erasure leaves every earlier version's weights on storage, downloadable: a compliance team
    asked where an erased subject still was (a probe). The file goes, the record and its digest stay,
    the audit log says who; the latest version serves the model and is refused (409). Idempotent.

    The model row is locked first, as a publish locks it: read unlocked, the latest version was the one
    before a publish that committed a moment later, and a probe's call deleted the new latest checkpoint
    (every later job failed). The record is committed before the file goes, so a download from then on
    is a 410, never a file cut short; a call that dies between the two leaves the file, which the same
    call, retried, deletes (and the beat's sweep, which no longer counts a retired version's file)."""
    m = get_model(session, key.tenant, model, for_update=True)
    v = _get_version(session, m, version)
    if v.number == m.latest_version:
        raise Conflict(
            f"v{v.number} is the latest version of {m.name}: it serves the model; a later deletion "
            "supersedes it"
        )
    path = Path(v.checkpoint_uri)
    if path.exists() and not path.resolve().is_relative_to(settings.checkpoint_dir.resolve()):
        raise Conflict(  # said deleted while kept (a review): this service deletes only its own files
            f"the checkpoint of {m.name}/v{v.number} is outside UNLEARN_STORAGE_DIR "
            f"({settings.checkpoint_dir}); delete it where it is stored"
        )
    marked = session.execute(  # one of two calls at once records it (the other finds it done)
        update(ModelVersion)
        .where(ModelVersion.id == v.id, ModelVersion.checkpoint_retired_at.is_(None))
        .values(checkpoint_retired_at=utcnow())
    )
    if marked.rowcount:  # type: ignore[attr-defined]
        events.checkpoint_retired(session, m, v, actor=events.key_actor(key))
    session.commit()
    path.unlink(missing_ok=True)
    session.refresh(v)
    return version_out(v)


# HEAD: the size and the sha256 before a download (a probe's client asked); out of the schema, where it
# would repeat the GET's operation id.
router.add_api_route(
    "/v1/models/{model}/versions/{version}/checkpoint",
    download_checkpoint,
    methods=["HEAD"],
    include_in_schema=False,
    response_class=CheckpointFile,
)


@upload_router.post(
    "/v1/models",
    response_model=ModelOut,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Register a model: a spec (JSON) and its v1 checkpoint (safetensors)",
)
def register_model_route(
    spec: Annotated[
        str,
        Form(
            description="JSON: name, architecture, arch_kwargs, num_classes, train_dataset, "
            "test_dataset, default_method, default_params, gates, train_recipe"
        ),
    ],
    checkpoint: Annotated[UploadFile, File(description="the v1 weights, safetensors")],
    session: SessionDep,
    settings: SettingsDep,
    celery: CeleryDep,
    key: Admin,
    config: Annotated[
        UploadFile | None,
        File(
            description="hf:<task> architectures: the config.json that save_pretrained wrote (stored as "
            "arch_kwargs.config; or give it there instead)"
        ),
    ] = None,
) -> ModelOut:
    """Answers 202: a worker then loads the checkpoint into the architecture and measures v1; the model
    accepts deletion requests once its status is `ready` (or shows why it is `invalid`).

    An architecture the service does not know, kwargs asking for pretrained weights, or a built-in above
    UNLEARN_MAX_PARAMS is a 422 here. A torchvision, timm, plugin or hf model is sized by the worker on
    the meta device before anything is allocated; above the limit it becomes `invalid`, saying its size.
    An `hf:<task>` model is built from its config.json: the optional `config` file, or
    `arch_kwargs.config`; its checkpoint is the `model.safetensors` that save_pretrained wrote.

    The checkpoint (up to UNLEARN_MAX_UPLOAD_BYTES) is copied and hashed with no transaction open: on
    SQLite every transaction holds the database's write lock, so copying inside one stalled every other
    writer for as long as the copy took. The checks run once before the copy (to refuse early) and again
    in the one short transaction that records the model; a registration that still loses a race for
    the name (PostgreSQL's unique index) is a 409 like any other duplicate."""
    body = parse_model_spec(spec)
    if config is not None:
        body = with_uploaded_config(body, config)
    check_architecture(body.architecture, body.arch_kwargs, body.num_classes, settings.max_params)
    check_methods(body.default_method, body.default_params, body.fallback_methods)
    check_recipe(body.train_recipe)
    check_time_limit(body.time_limit_seconds, settings.job_time_limit_seconds)
    _check_registrable(session, key.tenant, body)
    session.commit()  # end the checks' transaction before the long copy
    path = settings.checkpoint_dir / "uploads" / f"{uuid.uuid4().hex}.safetensors"
    digest = save_safetensors_upload(checkpoint, path)
    try:
        train, test, heldout = _check_registrable(session, key.tenant, body)
        retire_invalid(session, key.tenant, body.name, events.key_actor(key))
        m = register_model(
            session,
            tenant=key.tenant,
            name=body.name,
            architecture=body.architecture,
            arch_kwargs=body.arch_kwargs,
            num_classes=body.num_classes,
            train=train,
            test=test,
            heldout=heldout,
            checkpoint_uri=str(path),
            checkpoint_sha256=digest,
            default_method=body.default_method,
            default_params=body.default_params,
            train_recipe=body.train_recipe,
            gates=registered_gates(body, test, heldout),
            metrics={},
            actor=events.key_actor(key),
            status=ModelStatus.VALIDATING,
            fallback_methods=body.fallback_methods,
            time_limit_seconds=body.time_limit_seconds,
            retrain_above_share=body.retrain_above_share,
            retrain_above_class_share=body.retrain_above_class_share,
        )
        session.commit()
    except IntegrityError as exc:
        path.unlink(missing_ok=True)  # the session is rolled back when the request closes it
        if is_model_name_clash(exc):
            raise _name_taken(body.name) from exc
        raise
    except Exception:
        path.unlink(missing_ok=True)
        raise
    send_validate_model(celery, m.id)
    return model_out(session, m)


def registered_gates(body: ModelCreate, test: Dataset, heldout: Dataset | None) -> dict[str, Any]:
    """The spec's gates, or where it names none the collapse guard and the guards against a run that forgot
    nothing (rows of classes that stay; a class taken whole), if the model is scored on enough test rows
    for them (all of them with a held-out set, else the half the hash picks: about half)."""
    if "gates" in body.model_fields_set:
        return body.gates.model_dump(exclude_none=True)
    scored = test.num_samples if heldout is not None else test.num_samples // 2
    if scored < DEFAULT_GATE_ROWS:
        return {}
    return {
        "max_test_accuracy_drop": DEFAULT_TEST_ACCURACY_DROP,
        "max_forget_accuracy_excess_se": DEFAULT_FORGET_EXCESS_SE,
        "max_forgotten_class_accuracy": DEFAULT_FORGOTTEN_CLASS_ACCURACY,
    }


def _name_taken(name: str) -> Conflict:
    return Conflict(f"a model named {name!r} already exists")


def _same_data(a: Dataset, b: Dataset) -> bool:
    """One registration, or two of the same bytes (a probe registered its test file again under a new
    id and named the copy as the held-out set: the id check let the method calibrate on the scoring
    data)."""
    same_bytes = a.sha256 is not None and a.sha256 == b.sha256
    if a.kind == "csv_manifest":  # its hash covers its own text: the same text names other images elsewhere
        same_bytes = same_bytes and Path(a.uri).parent == Path(b.uri).parent
    elif not same_bytes and a.kind in FOLDER_KINDS and b.kind == a.kind and a.num_samples == b.num_samples:
        with contextlib.suppress(OSError):  # files gone since: the worker says so, not this check
            same_bytes = content_sha256(a.kind, a.uri) == content_sha256(b.kind, b.uri)
    return a.id == b.id or same_bytes


def _twice(a: Dataset, b: Dataset) -> str:
    if a.id == b.id:
        return ""
    return f" ({a.id} and {b.id} are registrations of the same data, sha256 {a.sha256})"


def _one_tokenizer(train: Dataset, test: Dataset, heldout: Dataset | None) -> None:
    """Text sets read by one model are tokenized by one tokenizer: a probe's training set under another
    tokenizer whose ids fitted the vocabulary made a model `ready` that read its own training data at
    chance (retain accuracy 0.33 on 3 classes) while its test set scored 0.97."""
    named = {"train_dataset": train, "test_dataset": test, "heldout_dataset": heldout}
    digests = {f: (d.features or {}).get("tokenizer_sha256") for f, d in named.items() if d is not None}
    if len({v for v in digests.values() if v}) > 1:
        said = ", ".join(f"{f} {(v or 'none')[:16]}" for f, v in digests.items())
        raise Unprocessable(
            f"the datasets are tokenized by different tokenizers (sha256: {said}): the model reads every "
            "set with one; register the sets with the tokenizer it was trained with"
        )


def _check_registrable(
    session: SessionDep, tenant: str, body: ModelCreate
) -> tuple[Dataset, Dataset, Dataset | None]:
    """The registration's database checks: a free name, its datasets, the labels of each. Returns the
    datasets (training, test, held-out or None)."""
    status = session.scalar(select(Model.status).where(Model.tenant == tenant, Model.name == body.name))
    if status is not None and status != ModelStatus.INVALID:  # an invalid one gives its name up
        raise _name_taken(body.name)
    train, test = (registered_dataset(session, tenant, d) for d in (body.train_dataset, body.test_dataset))
    heldout = registered_dataset(session, tenant, body.heldout_dataset) if body.heldout_dataset else None
    if _same_data(test, train):
        raise Unprocessable(
            "test_dataset must not be the training set: test accuracy, the membership attacks and the "
            f"gates compare the model with data it never trained on{_twice(test, train)}"
        )
    if heldout is not None and (_same_data(heldout, train) or _same_data(heldout, test)):
        other = train if _same_data(heldout, train) else test
        raise Unprocessable(
            "heldout_dataset must be neither the training nor the test set: the method reads it, so "
            f"scoring on it would grade the method on data it was tuned against{_twice(heldout, other)}"
        )
    _one_tokenizer(train, test, heldout)
    check_labels(session, train, body.num_classes)
    check_labels(session, test, body.num_classes, "test")
    if heldout is not None:
        check_labels(session, heldout, body.num_classes, "held-out")
    return train, test, heldout


@router.patch("/v1/models/{model}", response_model=ModelOut, summary="Change a model's unlearning policy")
def update_model(
    model: str, body: ModelUpdate, session: SessionDep, settings: SettingsDep, key: Admin
) -> ModelOut:
    """Method, params, fallback chain, gates, retrain recipe, job time limit or the shares (of what is
    left, of a class) above which a deletion is retrained; applies to jobs that start afterwards."""
    m = get_model(session, key.tenant, model, for_update=True)
    check_time_limit(body.time_limit_seconds, settings.job_time_limit_seconds, where="body")
    changes = body.model_dump(exclude_unset=True)
    if body.gates is not None:  # the gates sent, a null one included (it removes that gate)
        changes["gates"] = body.gates.model_dump(exclude_unset=True)
    update_policy(session, m, changes, actor=events.key_actor(key))
    session.commit()
    return model_out(session, m)
