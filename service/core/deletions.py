"""Deletion requests: accepting them (validate every ID against the model's training set, record each with
its audit event, then wake a worker; the API commits the requests that arrive together in one transaction,
`accept_many`) and withdrawing one. Nothing is written for a rejected request.

A request may name data subjects instead of (or as well as) samples: each subject stands for every sample
of the training set the dataset attributes to it, and the request records those samples in `sample_ids`
(so jobs, forgetting and metrics never see subjects) and the subjects as named in `subject_ids`."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from sqlalchemy import and_, exists, func, insert, select
from sqlalchemy.orm import Session

from service.core import callbacks, events
from service.core.canonical import canonical_json
from service.core.db.engine import is_postgres
from service.core.db.locks import try_lock
from service.core.db.tables import (
    ApiKey,
    AuditEvent,
    Dataset,
    DatasetSample,
    DeletionRequest,
    ForgottenSample,
    Model,
    ModelVersion,
    new_id,
    utcnow,
)
from service.core.errors import Conflict, NotFound, PayloadTooLarge, ProblemError, Unprocessable
from service.core.queue import send_deliver_webhook, send_run_model, wake_due
from service.core.states import PENDING, DeletionReason, ModelStatus, RequestState, WebhookState
from service.core.subjects import spellings

MAX_REPORTED_UNKNOWN = 100
_CHUNK = 500
KEY_REUSED = "this Idempotency-Key was already used with a different body; use a new key for a new request"
KEY_OTHER_MODEL = "this Idempotency-Key was already used for another model"


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
    forms = {s: spellings(s) for s in subjects}  # each subject as a dataset may have stored it
    for chunk in _chunks(sorted({f for fs in forms.values() for f in fs})):
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
    unknown = [s for s in subjects if not seen.intersection(forms[s])]
    return [sample_id for _, sample_id in found], unknown


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
    reason: str = DeletionReason.ERASURE,
) -> str:
    """What an Idempotency-Key is bound to: the body as named (subjects, not the samples they stand for).
    A body without subjects, or with the default reason, hashes as it did before requests could name
    them."""
    body: dict[str, object] = {
        "sample_ids": sorted(ids),
        "reference": reference,
        "callback_url": callback_url,
    }
    if subject_ids:
        body["subject_ids"] = sorted(subject_ids)
    if reason != DeletionReason.ERASURE:
        body["reason"] = str(reason)
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
    # Two concurrent first attempts: one proceeds, the other is told to retry (409), never a duplicate.
    if is_postgres(session) and not try_lock(session, "idempotency", tenant, idempotency_key):
        raise Conflict("a request with this Idempotency-Key is still in flight; retry shortly")
    existing = session.scalar(
        select(DeletionRequest).where(
            DeletionRequest.tenant == tenant, DeletionRequest.idempotency_key == idempotency_key
        )
    )
    if existing is not None and existing.body_sha256 != digest:
        raise Unprocessable(KEY_REUSED)
    return existing


def _replay(existing: DeletionRequest, digest: str, model: Model) -> Accepted:
    """The answer to a request whose Idempotency-Key `existing` already holds: that request (a replay),
    or the 422 for a key reused with another body or for another model."""
    if existing.body_sha256 != digest:
        raise Unprocessable(KEY_REUSED)
    if existing.model_id != model.id:
        raise Unprocessable(KEY_OTHER_MODEL)
    return Accepted(existing, model.name, created=False)


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
        if model.status == ModelStatus.INVALID:  # final: an invalid model never becomes ready
            raise Conflict(
                f"model {model.name!r} is invalid{detail}; it will never accept requests: fix what made it "
                "invalid and register the model again (the new registration takes the name)"
            )
        raise Conflict(f"model {model.name!r} is {model.status}{detail}; it accepts requests once ready")
    if callback_url is not None:
        callbacks.check_callback_url(callback_url, allowed_hosts, allow_http=allow_http)
        callbacks.check_no_credentials(callback_url)
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


@dataclass
class _TrainingSet:
    """A model's training-set size and how many of its samples it had forgotten at its latest version,
    read with the model (or by `training_set`): no round trip of their own. The publish that adds forgotten
    samples writes that version's cumulative count in the same transaction, so the count is current; it
    only decides whether a request names enough new samples to empty the set, which `left` then checks
    against the forgotten rows themselves (read once, and only for such a request)."""

    size: int
    forgotten_at_latest: int
    forgotten: int | None = None  # counted, once needed

    def left(self, session: Session, model: Model, new: int) -> int | None:
        """The training samples left unforgotten if `new` more are forgotten, when that is none (else
        None: the ordinary request, decided without a query)."""
        if new == 0 or new < self.size - self.forgotten_at_latest:
            return None
        if self.forgotten is None:
            self.forgotten = (
                session.scalar(
                    select(func.count())
                    .select_from(ForgottenSample)
                    .where(ForgottenSample.model_id == model.id)
                )
                or 0
            )
        remaining = self.size - self.forgotten
        return remaining if new >= remaining else None


def training_set(session: Session, model: Model) -> _TrainingSet:
    """`_TrainingSet` of a model already loaded (`accept_many` reads it with the model instead)."""
    size, forgotten = session.execute(
        select(Dataset.num_samples, func.coalesce(ModelVersion.forgotten_count, 0))
        .select_from(Dataset)
        .outerjoin(
            ModelVersion,
            and_(ModelVersion.model_id == model.id, ModelVersion.number == model.latest_version),
        )
        .where(Dataset.id == model.train_dataset_id)
    ).one()
    return _TrainingSet(size, forgotten)


def _refuse_emptying(model: Model, training: _TrainingSet, remaining: int) -> Unprocessable:
    """The 422 for a request that would forget every sample the model still trains on."""
    return Unprocessable(
        f"this request would forget all {remaining} remaining training sample(s) of model {model.name!r} "
        f"({training.size} in its training set, {training.forgotten} already forgotten): unlearning keeps "
        "a model on the samples it has not forgotten, and none would be left, so its job could only fail. "
        f"To forget every remaining sample, stop serving model {model.name!r} instead (or register a new "
        "model trained without these samples); to keep this model, name fewer samples",
        remaining_training_samples=remaining,
    )


def _new_request(
    session: Session,
    model: Model,
    key: ApiKey,
    named: _Named,
    *,
    unknown: set[str],
    forgotten: set[str],
    training: _TrainingSet,
    reference: str | None,
    idempotency_key: str | None,
    callback_url: str | None,
    reason: str = DeletionReason.ERASURE,
) -> DeletionRequest:
    """The request row (transient, every column set), or the 422 naming what the training set lacks, or
    the 422 for a request that would leave the model no training sample. `unknown` and `forgotten` may
    cover more IDs than this request names (a batch's)."""
    missing = [i for i in named.ids if i in unknown]
    if missing or named.unknown_subjects:
        raise _refuse_unknown(session, model, missing, named.unknown_subjects)
    already = len(forgotten.intersection(named.ids))
    remaining = training.left(session, model, len(named.ids) - already)
    if remaining is not None:
        raise _refuse_emptying(model, training, remaining)
    now = utcnow()
    return DeletionRequest(
        id=new_id(),  # known before the insert, so the request and its event are inserted together
        tenant=model.tenant,
        model_id=model.id,
        sample_ids=named.ids,
        subject_ids=named.subjects or None,
        sample_count=len(named.ids),
        already_forgotten_count=already,
        requester_key_id=key.id,
        idempotency_key=idempotency_key,
        body_sha256=body_digest(named.samples, reference, callback_url, named.subjects, reason),
        reference=reference,
        reason=reason,
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
    reason: str = DeletionReason.ERASURE,
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
        training=training_set(session, model),
        reference=reference,
        idempotency_key=idempotency_key,
        callback_url=callback_url,
        reason=reason,
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
    reason: str = DeletionReason.ERASURE


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


@dataclass(frozen=True)
class _Loaded:
    """A model of the batch and its training set's counts."""

    model: Model
    training: _TrainingSet


def _model(session: Session, models: dict[tuple[str, str], _Loaded], tenant: str, name: str) -> _Loaded:
    """`get_model` and its `_TrainingSet`, in one query, once per (tenant, name) per batch."""
    if (tenant, name) not in models:
        row = session.execute(
            select(Model, Dataset.num_samples, func.coalesce(ModelVersion.forgotten_count, 0))
            .join(Dataset, Dataset.id == Model.train_dataset_id)
            .outerjoin(
                ModelVersion,
                and_(ModelVersion.model_id == Model.id, ModelVersion.number == Model.latest_version),
            )
            .where(Model.tenant == tenant, Model.name == name)
        ).one_or_none()
        if row is None:
            raise NotFound(f"model {name!r} not found")
        model, size, forgotten = row
        models[(tenant, name)] = _Loaded(model, _TrainingSet(size, forgotten))
    return models[(tenant, name)]


@dataclass
class _Intake:
    """One `accept_many` call: the outcomes so far and the rows to write."""

    session: Session
    batch: Sequence[Submission]
    policy: IntakePolicy
    outcomes: list[Accepted | ProblemError | None]
    models: dict[tuple[str, str], _Loaded] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    audit_rows: list[dict[str, Any]] = field(default_factory=list)
    woken: dict[str, Model] = field(default_factory=dict)

    def decide(self, indices: Sequence[int]) -> list[int]:
        """One pass over the requests at `indices`: decide each, except one whose Idempotency-Key an
        earlier request of this pass is creating. That one follows it: a replay of the request it
        creates, or the 422 for a key reused with another body (or model); if the earlier one is refused,
        nothing holds the key, and the indices of its followers are returned for another pass."""
        session, policy = self.session, self.policy
        screened: dict[str, list[tuple[int, _Named]]] = {}  # model id -> (index, what it names)
        loaded: dict[str, _Loaded] = {}
        creating: dict[tuple[str, str], int] = {}  # (tenant, key) -> the index creating that request
        following: list[tuple[int, int, str, Model]] = []  # (index, the index it follows, digest, model)
        for i in indices:
            sub = self.batch[i]
            try:
                entry = _model(session, self.models, sub.key.tenant, sub.model)
                model = entry.model
                held: tuple[str, str] | None = None
                if sub.idempotency_key is not None:
                    held = (sub.key.tenant, sub.idempotency_key)
                    digest = body_digest(
                        dedupe(sub.sample_ids),
                        sub.reference,
                        sub.callback_url,
                        dedupe(sub.subject_ids),
                        sub.reason,
                    )
                    if held in creating:
                        following.append((i, creating[held], digest, model))
                        continue
                    existing = find_idempotent(
                        session, tenant=sub.key.tenant, idempotency_key=sub.idempotency_key, digest=digest
                    )
                    if existing is not None:
                        self.outcomes[i] = _replay(existing, digest, model)
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
                loaded[model.id] = entry
                if held is not None:
                    creating[held] = i
            except ProblemError as exc:
                self.outcomes[i] = exc
        for model_id, group in screened.items():
            self._create(loaded[model_id], group)
        again: list[int] = []
        for i, first, digest, model in following:
            earlier = self.outcomes[first]
            if not isinstance(earlier, Accepted):
                again.append(i)
                continue
            try:
                self.outcomes[i] = _replay(earlier.request, digest, model)
            except ProblemError as exc:
                self.outcomes[i] = exc
        return again

    def _create(self, entry: _Loaded, group: list[tuple[int, _Named]]) -> None:
        """The new requests of one model: one training-set lookup for all their IDs, then each one's row
        and audit event, or its refusal."""
        model = entry.model
        unknown, forgotten = classify_ids(self.session, model, dedupe(i for _, n in group for i in n.ids))
        missing = set(unknown)
        for i, named in group:
            sub = self.batch[i]
            try:
                req = _new_request(
                    self.session,
                    model,
                    sub.key,
                    named,
                    unknown=missing,
                    forgotten=forgotten,
                    training=entry.training,
                    reference=sub.reference,
                    idempotency_key=sub.idempotency_key,
                    callback_url=sub.callback_url,
                    reason=sub.reason,
                )
            except ProblemError as exc:
                self.outcomes[i] = exc
                continue
            self.requests.append({c.key: getattr(req, c.key) for c in _REQUEST_COLUMNS})
            self.audit_rows.append(
                events.request_received_row(req, model_name=model.name, actor=events.key_actor(sub.key))
            )
            self.outcomes[i] = Accepted(req, model.name, created=True)
            self.woken[model.id] = model


def accept_many(
    session: Session, celery: Celery, batch: Sequence[Submission], policy: IntakePolicy
) -> list[Accepted | ProblemError]:
    """The intake of a batch of requests in one transaction (group commit): each one's outcome, in order,
    an accepted request or the error that refused it. A refused request writes nothing and does not
    affect the others: every check (including an Idempotency-Key's) is made before anything is written,
    and then all new requests go in with one INSERT and all their audit events with another. Each model
    gets one training-set lookup for all the batch's IDs and one wake decision (`queue.wake_due`), and
    a worker is woken after the commit; if the broker is down, the reconciler finds the requests.

    A replay of an Idempotency-Key returns the first request (created False). Requests of one batch with
    the same key are answered as if sent one after another: a later one is a replay of the request the
    first creates (created False), or the 422 for a key reused with another body; should the first be
    refused, nothing holds the key and the later ones are checked again on their own (another pass, and
    its training-set lookup, before anything is written)."""
    intake = _Intake(session, batch, policy, outcomes=[None] * len(batch))
    pending: Sequence[int] = range(len(batch))
    while pending:
        pending = intake.decide(pending)
    wakes: list[tuple[str, float | None]] = []
    if intake.requests:
        session.execute(insert(DeletionRequest), intake.requests)
        session.execute(insert(AuditEvent), intake.audit_rows)
        wakes = [(m.id, wake_due(session, m, policy.wake_seconds)) for m in intake.woken.values()]
    session.commit()
    for model_id, countdown in wakes:
        # a broker that failed one send is left alone for the rest: each waited up to its timeout, and
        # a batch waking many models held every request in it for the sum (the reconciler sends them)
        if countdown is not None and not send_run_model(celery, model_id, countdown):
            break
    outcomes = intake.outcomes
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
