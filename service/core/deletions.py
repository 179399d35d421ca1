"""Deletion requests: accepting them (validate every ID against the model's training set, record each with
its audit event, then wake a worker; the API commits the requests that arrive together in one transaction,
`accept_many`) and withdrawing one. Nothing is written for a rejected request.

A request may name data subjects instead of (or as well as) samples: each subject stands for every sample
of the training set the dataset attributes to it, and the request records those samples in `sample_ids`
(so jobs, forgetting and metrics never see subjects) and the subjects as named in `subject_ids`."""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from celery import Celery
from sqlalchemy import and_, exists, insert, select, text
from sqlalchemy.orm import Session

from service.core import callbacks, events
from service.core.canonical import canonical_json
from service.core.db.engine import is_postgres
from service.core.db.tables import (
    ApiKey,
    AuditEvent,
    DatasetSample,
    DeletionRequest,
    ForgottenSample,
    Model,
    new_id,
    utcnow,
)
from service.core.errors import Conflict, NotFound, PayloadTooLarge, ProblemError, Unprocessable
from service.core.queue import send_deliver_webhook, send_run_model, wake_due
from service.core.states import PENDING, ModelStatus, RequestState, WebhookState

MAX_REPORTED_UNKNOWN = 100
_CHUNK = 500


def dedupe(ids: Iterable[str]) -> list[str]:
    """Distinct IDs in first-seen order."""
    return list(dict.fromkeys(ids))


def _chunks(items: Sequence[str], size: int = _CHUNK) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def classify_ids(session: Session, model: Model, ids: Sequence[str]) -> tuple[list[str], set[str]]:
    """(IDs not in the model's training set, in request order; IDs it has already forgotten): one round
    trip per chunk of IDs, the intake's hot path."""
    known: set[str] = set()
    forgotten: set[str] = set()
    for chunk in _chunks(ids):
        rows = session.execute(
            select(DatasetSample.sample_id, ForgottenSample.sample_id)
            .outerjoin(
                ForgottenSample,
                and_(
                    ForgottenSample.model_id == model.id, ForgottenSample.sample_id == DatasetSample.sample_id
                ),
            )
            .where(DatasetSample.dataset_id == model.train_dataset_id, DatasetSample.sample_id.in_(chunk))
        )
        for sample_id, gone in rows:
            known.add(sample_id)
            if gone is not None:
                forgotten.add(sample_id)
    return [i for i in ids if i not in known], forgotten


def expand_subjects(session: Session, model: Model, subjects: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the training samples of `subjects`, in dataset order; the subjects no training sample has, in
    request order): one round trip per chunk of subjects, on the (dataset, subject) index."""
    found: list[tuple[int, str]] = []
    seen: set[str] = set()
    for chunk in _chunks(subjects):
        rows = session.execute(
            select(DatasetSample.position, DatasetSample.sample_id, DatasetSample.subject_id).where(
                DatasetSample.dataset_id == model.train_dataset_id, DatasetSample.subject_id.in_(chunk)
            )
        )
        for position, sample_id, subject_id in rows:
            found.append((position, sample_id))
            if subject_id is not None:
                seen.add(subject_id)
    found.sort()
    return [sample_id for _, sample_id in found], [s for s in subjects if s not in seen]


def has_subjects(session: Session, model: Model) -> bool:
    """Whether the model's training set attributes any sample to a data subject."""
    return bool(
        session.scalar(
            select(
                exists().where(
                    DatasetSample.dataset_id == model.train_dataset_id, DatasetSample.subject_id.is_not(None)
                )
            )
        )
    )


def body_digest(
    ids: Sequence[str],
    reference: str | None,
    callback_url: str | None = None,
    subject_ids: Sequence[str] = (),
) -> str:
    """What an Idempotency-Key is bound to: the body as named (subjects, not the samples they stand for).
    A body without subjects hashes as it did before requests could name them."""
    body: dict[str, object] = {
        "sample_ids": sorted(ids),
        "reference": reference,
        "callback_url": callback_url,
    }
    if subject_ids:
        body["subject_ids"] = sorted(subject_ids)
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


def _refuse_unknown(
    session: Session, model: Model, unknown: list[str], unknown_subjects: list[str]
) -> Unprocessable:
    """One 422 naming every unknown sample ID and subject (capped lists, with counts)."""
    parts: list[str] = []
    extra: dict[str, Any] = {}
    if unknown:
        parts.append(f"{len(unknown)} sample ID(s) are not in the training set of model {model.name!r}")
        extra |= {"unknown_ids": unknown[:MAX_REPORTED_UNKNOWN], "unknown_count": len(unknown)}
    if unknown_subjects:
        if has_subjects(session, model):
            parts.append(
                f"{len(unknown_subjects)} subject ID(s) have no sample in the training set of model "
                f"{model.name!r}"
            )
        else:
            parts.append(
                f"the training set of model {model.name!r} has no subjects (its dataset was registered "
                f"without subject_ids), so {len(unknown_subjects)} subject ID(s) match nothing"
            )
        extra |= {
            "unknown_subject_ids": unknown_subjects[:MAX_REPORTED_UNKNOWN],
            "unknown_subject_count": len(unknown_subjects),
        }
    return Unprocessable("; ".join(parts), **extra)


def find_idempotent(
    session: Session, *, tenant: str, idempotency_key: str, digest: str
) -> DeletionRequest | None:
    """The request an Idempotency-Key already created, if any. The same key with another body is an error:
    the client is reusing keys, and silently returning the old request would hide that."""
    if is_postgres(session):
        # Two concurrent first attempts: one proceeds, the other is told to retry (409), never a duplicate.
        lock_key = zlib.crc32(f"{tenant}\x00{idempotency_key}".encode())
        if not session.scalar(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": lock_key}):
            raise Conflict("a request with this Idempotency-Key is still in flight; retry shortly")
    existing = session.scalar(
        select(DeletionRequest).where(
            DeletionRequest.tenant == tenant, DeletionRequest.idempotency_key == idempotency_key
        )
    )
    if existing is not None and existing.body_sha256 != digest:
        raise Unprocessable(
            "this Idempotency-Key was already used with a different body; use a new key for a new request"
        )
    return existing


@dataclass(frozen=True)
class _Named:
    """What a request names once screened: distinct samples as named, distinct subjects, every sample
    (subjects expanded), and the subjects that matched nothing."""

    samples: list[str]
    subjects: list[str]
    ids: list[str]
    unknown_subjects: list[str]


def _screen(
    session: Session,
    model: Model,
    *,
    sample_ids: Sequence[str],
    subject_ids: Sequence[str],
    max_ids: int,
    callback_url: str | None,
    allowed_hosts: Sequence[str],
    allow_http: bool,
) -> _Named:
    """Every check but the training-set lookup of the samples (which the group commit does once for a
    whole batch): the model's status, the callback URL, the counts; subjects are expanded."""
    if model.status != ModelStatus.READY:
        detail = f": {model.status_detail}" if model.status_detail else ""
        raise Conflict(f"model {model.name!r} is {model.status}{detail}; it accepts requests once ready")
    if callback_url is not None:
        callbacks.check_callback_url(callback_url, allowed_hosts, allow_http=allow_http)
    named, subjects = dedupe(sample_ids), dedupe(subject_ids)
    if not named and not subjects:
        raise Unprocessable("name at least one sample in sample_ids or one subject in subject_ids")
    for what, items in (("sample", named), ("subject", subjects)):
        if len(items) > max_ids:
            raise PayloadTooLarge(
                f"{len(items)} distinct {what} IDs; at most {max_ids} per request", limit=max_ids
            )
    ids, unknown_subjects = named, list[str]()
    if subjects:
        subject_samples, unknown_subjects = expand_subjects(session, model, subjects)
        ids = dedupe([*named, *subject_samples])
        if len(ids) > max_ids:
            raise PayloadTooLarge(
                f"{len(ids)} distinct sample IDs once the {len(subjects)} subject(s) are expanded into "
                f"their samples; at most {max_ids} per request",
                limit=max_ids,
            )
    return _Named(named, subjects, ids, unknown_subjects)


def _new_request(
    session: Session,
    model: Model,
    key: ApiKey,
    named: _Named,
    *,
    unknown: set[str],
    forgotten: set[str],
    reference: str | None,
    idempotency_key: str | None,
    callback_url: str | None,
) -> DeletionRequest:
    """The request row (transient, every column set), or the 422 naming what the training set lacks.
    `unknown` and `forgotten` may cover more IDs than this request names (a batch's)."""
    missing = [i for i in named.ids if i in unknown]
    if missing or named.unknown_subjects:
        raise _refuse_unknown(session, model, missing, named.unknown_subjects)
    now = utcnow()
    return DeletionRequest(
        id=new_id(),  # known before the insert, so the request and its event are inserted together
        tenant=model.tenant,
        model_id=model.id,
        sample_ids=named.ids,
        subject_ids=named.subjects or None,
        sample_count=len(named.ids),
        already_forgotten_count=len(forgotten.intersection(named.ids)),
        requester_key_id=key.id,
        idempotency_key=idempotency_key,
        body_sha256=body_digest(named.samples, reference, callback_url, named.subjects),
        reference=reference,
        callback_url=callback_url,
        state=RequestState.RECEIVED,
        job_id=None,
        model_version=None,
        error=None,
        webhook_state=None,
        webhook_attempts=0,
        created_at=now,
        updated_at=now,
        completed_at=None,
    )


def submit(
    session: Session,
    *,
    model: Model,
    key: ApiKey,
    sample_ids: Sequence[str],
    reference: str | None,
    max_ids: int,
    idempotency_key: str | None = None,
    callback_url: str | None = None,
    allowed_hosts: Sequence[str] = (),
    allow_http: bool = False,
    subject_ids: Sequence[str] = (),
) -> DeletionRequest:
    """Validate and record a request (state `received`) with its audit event; the caller commits. Named
    subjects are expanded into their samples; `max_ids` bounds the distinct samples after expansion.
    (The API takes requests through `accept_many`, the same checks for a batch.)"""
    named = _screen(
        session,
        model,
        sample_ids=sample_ids,
        subject_ids=subject_ids,
        max_ids=max_ids,
        callback_url=callback_url,
        allowed_hosts=allowed_hosts,
        allow_http=allow_http,
    )
    unknown, already = classify_ids(session, model, named.ids)
    req = _new_request(
        session,
        model,
        key,
        named,
        unknown=set(unknown),
        forgotten=already,
        reference=reference,
        idempotency_key=idempotency_key,
        callback_url=callback_url,
    )
    session.add(req)
    events.request_received(session, req, model_name=model.name, actor=events.key_actor(key))
    return req


def _locked(session: Session, request_id: str) -> DeletionRequest | None:
    """The request row, locked and re-read, so a worker's claim and this change cannot interleave."""
    return session.scalar(
        select(DeletionRequest)
        .where(DeletionRequest.id == request_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )


@dataclass(frozen=True)
class Submission:
    """One deletion request as the API received it (the body, the key, the model's name), not yet
    checked."""

    key: ApiKey
    model: str
    sample_ids: Sequence[str]
    subject_ids: Sequence[str] = ()
    reference: str | None = None
    idempotency_key: str | None = None
    callback_url: str | None = None


@dataclass(frozen=True)
class IntakePolicy:
    """The settings intake checks against."""

    max_ids: int
    allowed_hosts: Sequence[str] = ()
    allow_http: bool = False
    wake_seconds: float = 1.0


@dataclass(frozen=True)
class Accepted:
    """A request the service took (`created`), or the earlier one an Idempotency-Key replayed."""

    request: DeletionRequest
    model_name: str
    created: bool


def _model(session: Session, models: dict[tuple[str, str], Model], tenant: str, name: str) -> Model:
    """`get_model`, once per (tenant, name) per batch."""
    if (tenant, name) not in models:
        model = session.scalar(select(Model).where(Model.tenant == tenant, Model.name == name))
        if model is None:
            raise NotFound(f"model {name!r} not found")
        models[(tenant, name)] = model
    return models[(tenant, name)]


def accept_many(
    session: Session, celery: Celery, batch: Sequence[Submission], policy: IntakePolicy
) -> list[Accepted | ProblemError]:
    """The intake of a batch of requests in one transaction (group commit): each one's outcome, in order,
    an accepted request or the error that refused it. A refused request writes nothing and does not
    affect the others: every check (including an Idempotency-Key's) is made before anything is written,
    and then all new requests go in with one INSERT and all their audit events with another. Each model
    gets one training-set lookup for all the batch's IDs and one wake decision (`queue.wake_due`), and
    a worker is woken after the commit; if the broker is down, the reconciler finds the requests.

    A replay of an Idempotency-Key returns the first request (created False). Two requests of one batch
    with the same key: the second is told to retry (409), as when two processes race."""
    outcomes: list[Accepted | ProblemError | None] = [None] * len(batch)
    models: dict[tuple[str, str], Model] = {}
    screened: dict[str, list[tuple[int, _Named]]] = {}  # model id -> (index, what it names)
    keys_seen: set[tuple[str, str]] = set()
    for i, sub in enumerate(batch):
        try:
            model = _model(session, models, sub.key.tenant, sub.model)
            if sub.idempotency_key is not None:
                if (sub.key.tenant, sub.idempotency_key) in keys_seen:
                    raise Conflict("a request with this Idempotency-Key is still in flight; retry shortly")
                keys_seen.add((sub.key.tenant, sub.idempotency_key))
                digest = body_digest(
                    dedupe(sub.sample_ids), sub.reference, sub.callback_url, dedupe(sub.subject_ids)
                )
                existing = find_idempotent(
                    session, tenant=sub.key.tenant, idempotency_key=sub.idempotency_key, digest=digest
                )
                if existing is not None:
                    if existing.model_id != model.id:
                        raise Unprocessable("this Idempotency-Key was already used for another model")
                    outcomes[i] = Accepted(existing, model.name, created=False)
                    continue
            named = _screen(
                session,
                model,
                sample_ids=sub.sample_ids,
                subject_ids=sub.subject_ids,
                max_ids=policy.max_ids,
                callback_url=sub.callback_url,
                allowed_hosts=policy.allowed_hosts,
                allow_http=policy.allow_http,
            )
            screened.setdefault(model.id, []).append((i, named))
        except ProblemError as exc:
            outcomes[i] = exc
    by_id = {m.id: m for m in models.values()}
    requests: list[dict[str, Any]] = []
    audit_rows: list[dict[str, Any]] = []
    woken: list[Model] = []
    for model_id, group in screened.items():
        model = by_id[model_id]
        unknown, forgotten = classify_ids(session, model, dedupe(i for _, n in group for i in n.ids))
        missing = set(unknown)
        for i, named in group:
            sub = batch[i]
            try:
                req = _new_request(
                    session,
                    model,
                    sub.key,
                    named,
                    unknown=missing,
                    forgotten=forgotten,
                    reference=sub.reference,
                    idempotency_key=sub.idempotency_key,
                    callback_url=sub.callback_url,
                )
            except ProblemError as exc:
                outcomes[i] = exc
                continue
            requests.append({c.key: getattr(req, c.key) for c in _REQUEST_COLUMNS})
            audit_rows.append(
                events.request_received_row(req, model_name=model.name, actor=events.key_actor(sub.key))
            )
            outcomes[i] = Accepted(req, model.name, created=True)
        if any(isinstance(outcomes[i], Accepted) for i, _ in group):
            woken.append(model)
    wakes: list[tuple[str, float | None]] = []
    if requests:
        session.execute(insert(DeletionRequest), requests)
        session.execute(insert(AuditEvent), audit_rows)
        wakes = [(m.id, wake_due(session, m, policy.wake_seconds)) for m in woken]
    session.commit()
    for model_id, countdown in wakes:
        if countdown is not None:
            send_run_model(celery, model_id, countdown)
    assert all(o is not None for o in outcomes)
    return [o for o in outcomes if o is not None]


_REQUEST_COLUMNS = list(DeletionRequest.__table__.c)


def cancel(session: Session, tenant: str, request_id: str, *, actor: str) -> DeletionRequest:
    """Withdraw a request no job has claimed yet (the caller commits). A request with a callback_url gets
    a `deletion_request.cancelled` webhook: the row is its outbox, as for completed and failed ones."""
    req = _locked(session, request_id)
    if req is None or req.tenant != tenant:
        raise NotFound(f"deletion request {request_id!r} not found")
    if req.state not in PENDING:
        raise Conflict(
            f"request {request_id} is {req.state}; only received or queued requests can be cancelled"
        )
    req.state = RequestState.CANCELLED
    if req.callback_url:
        req.webhook_state = WebhookState.PENDING
    events.request_cancelled(session, req, actor=actor)
    return req


def withdraw(
    session: Session, celery: Celery, tenant: str, request_id: str, *, actor: str
) -> DeletionRequest:
    """The client's cancel: `cancel`, commit, then send its webhook's delivery task (if the broker is
    down, the reconciler sends it later)."""
    req = cancel(session, tenant, request_id, actor=actor)
    session.commit()
    if req.webhook_state == WebhookState.PENDING:
        send_deliver_webhook(celery, req.id)
    return req
