"""One function per kind of audit event, so a call site reads as a sentence
(`events.request_cancelled(session, req, actor=...)`) and each event's name and fields are written once.

Every function appends to the tenant's chain in the caller's transaction (see `audit.record`): the event
exists if and only if the change it records is committed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from service.core.audit import event_row, record
from service.core.db.tables import (
    ApiKey,
    AuditEvent,
    Dataset,
    DeletionRequest,
    Job,
    Model,
    ModelVersion,
    WebhookSecret,
)
from service.core.proofs import ids_sha256
from service.core.states import JobState, ModelStatus, RequestState

WORKER = "worker"  # the actor of every event a worker writes
OPERATOR = "operator"  # the actor of a change made on the server's command line (`unlearn keys`)
SERVICE = "service"  # the API process acting on its own (e.g. after enqueueing)


def key_actor(key: ApiKey) -> str:
    """How an API key appears in the trail: its public prefix, never the secret."""
    return f"key:{key.prefix}"


def _label(number: int | None) -> str | None:
    return f"v{number}" if number else None


def ids_digest(ids: list[str]) -> str:
    """sha256 of the sorted IDs as a canonical JSON array (what the trail and certificates keep instead
    of the IDs). A JSON array, not a joined string: `["a\\nb"]` and `["a", "b"]` must differ. (The same
    function as `proofs.ids_sha256`, which a client checking a certificate offline uses.)"""
    return ids_sha256(ids)


def subjects_digest(req: DeletionRequest) -> str | None:
    """`ids_digest` of the subjects a request named; None when it named none."""
    return ids_digest(req.subject_ids) if req.subject_ids else None


# -- deletion requests ---------------------------------------------------------------------------------


def _on(
    session: Session,
    row: ApiKey | Dataset | DeletionRequest | Job | Model | WebhookSecret,
    entity_type: str,
    action: str,
    actor: str,
    data: dict[str, Any] | None = None,
    *,
    model_id: str | None = None,
    entity_id: str | None = None,
) -> AuditEvent:
    """Append `<entity_type>.<action>` about `row` to its tenant's chain."""
    return record(
        session,
        tenant=row.tenant,
        actor=actor,
        action=f"{entity_type}.{action}",
        entity_type=entity_type,
        entity_id=entity_id or row.id,
        model_id=model_id,
        data=data,
    )


def _request(
    session: Session, req: DeletionRequest, action: str, actor: str, data: dict[str, Any] | None = None
) -> AuditEvent:
    return _on(session, req, "deletion_request", action, actor, data, model_id=req.model_id)


def _received_data(req: DeletionRequest, model_name: str) -> dict[str, Any]:
    return {
        "model": model_name,
        "sample_count": req.sample_count,
        "sample_ids_sha256": ids_digest(req.sample_ids),
        "subject_count": len(req.subject_ids or ()),
        "subject_ids_sha256": subjects_digest(req),
        "already_forgotten_count": req.already_forgotten_count,
        "reference": req.reference,
        "reason": req.reason,
    }


def request_received(session: Session, req: DeletionRequest, *, model_name: str, actor: str) -> AuditEvent:
    return _request(session, req, RequestState.RECEIVED, actor, _received_data(req, model_name))


def request_received_row(req: DeletionRequest, *, model_name: str, actor: str) -> dict[str, Any]:
    """`request_received` as the row to insert (the same event), for the intake's group commit, which
    inserts the events of many requests in one statement."""
    return event_row(
        tenant=req.tenant,
        actor=actor,
        action=f"deletion_request.{RequestState.RECEIVED}",
        entity_type="deletion_request",
        entity_id=req.id,
        model_id=req.model_id,
        data=_received_data(req, model_name),
    )


def request_cancelled(session: Session, req: DeletionRequest, *, actor: str) -> AuditEvent:
    return _request(session, req, RequestState.CANCELLED, actor)


def request_retried(session: Session, req: DeletionRequest, *, failed_job_id: str, actor: str) -> AuditEvent:
    return _request(session, req, "retried", actor, {"failed_job_id": failed_job_id})


def request_processing(session: Session, req: DeletionRequest, *, job_id: str) -> AuditEvent:
    return _request(session, req, RequestState.PROCESSING, WORKER, {"job_id": job_id})


def request_closed(
    session: Session, req: DeletionRequest, *, job: Job, result_version: int | None, error: str | None
) -> AuditEvent:
    """The request ended with its job: `deletion_request.completed`, `.failed` or `.cancelled`. It carries
    the digests of what was forgotten, so a certificate (which proves this event in the log) is bound to
    the samples and subjects it names, not only signed (`proofs.verify_certificate_binding`)."""
    data = {
        "job_id": job.id,
        "model_version": _label(result_version),
        "error": error,
        "sample_ids_sha256": ids_digest(req.sample_ids),
        "subject_ids_sha256": subjects_digest(req),
    }
    return _request(session, req, req.state, WORKER, data)


def webhook_failed(session: Session, req: DeletionRequest, *, reason: str, attempts: int) -> AuditEvent:
    """The request's webhook was given up on (refused destination, or out of attempts), and why."""
    return _request(session, req, "webhook_failed", WORKER, {"reason": reason, "attempts": attempts})


# -- jobs ----------------------------------------------------------------------------------------------


def _job(
    session: Session, job: Job, action: str, actor: str, data: dict[str, Any] | None = None
) -> AuditEvent:
    return _on(session, job, "job", action, actor, data, model_id=job.model_id)


def job_created(session: Session, job: Job) -> AuditEvent:
    data = {
        "requests": len(job.request_ids),
        "base_version": _label(job.base_version),
        "method": job.method,
        "params": job.params,
    }
    return _job(session, job, "created", WORKER, data)


def job_resumed(session: Session, job: Job) -> AuditEvent:
    return _job(session, job, "resumed", WORKER, {"attempt": job.attempts})


def job_cancel_requested(session: Session, job: Job, *, actor: str) -> AuditEvent:
    return _job(session, job, "cancel_requested", actor)


def job_closed(session: Session, job: Job) -> AuditEvent:
    """`job.completed`, `job.failed` or `job.cancelled`, with the outcome already set on the row."""
    assert job.state != JobState.RUNNING, "a running job is not closed"
    data = {"result_version": _label(job.result_version), "error": job.error, "attempts": job.attempts}
    return _job(session, job, job.state, WORKER, data)


# -- models, versions, datasets, keys --------------------------------------------------------------------


def _model(session: Session, m: Model, action: str, actor: str, data: dict[str, Any]) -> AuditEvent:
    return _on(session, m, "model", action, actor, data, model_id=m.id)


# What decides how a model's deletions are run and judged: its registration records them all, and each
# change records what it changed, so an audit of the export alone tells which applied to a job (a probe
# found only the datasets and the checkpoint there).
POLICY_FIELDS = (
    "default_method",
    "default_params",
    "fallback_methods",
    "gates",
    "train_recipe",
    "time_limit_seconds",
    "retrain_above_share",
    "retrain_above_class_share",
)


def model_registered(session: Session, m: Model, *, checkpoint_sha256: str, actor: str) -> AuditEvent:
    data = {
        "name": m.name,
        "architecture": m.architecture,
        "arch_kwargs": m.arch_kwargs,
        "num_classes": m.num_classes,
        "version": "v1",
        "checkpoint_sha256": checkpoint_sha256,
        "train_dataset": m.train_dataset_id,
        "test_dataset": m.test_dataset_id,
        "heldout_dataset": m.heldout_dataset_id,
        "policy": {f: getattr(m, f) for f in POLICY_FIELDS},  # the gates a spec left out included
    }
    return _model(session, m, "registered", actor, data)


def checkpoint_retired(session: Session, m: Model, v: ModelVersion, *, actor: str) -> AuditEvent:
    """An admin deleted a superseded version's checkpoint file: its digest is kept, the weights are not."""
    data = {"version": f"v{v.number}", "checkpoint_sha256": v.sha256}
    return _on(
        session, m, "model_version", "checkpoint_retired", actor, data, model_id=m.id,
        entity_id=f"{m.name}/v{v.number}",
    )  # fmt: skip


def model_updated(session: Session, m: Model, *, changes: dict[str, Any], actor: str) -> AuditEvent:
    """``changes``: each field that changed, ``{"from": ..., "to": ...}``."""
    return _model(session, m, "updated", actor, changes)


VALIDATION_STARTED = "model.validation_started"


def model_validation_started(session: Session, m: Model, *, attempt: int) -> AuditEvent:
    """A worker took the model's lease and began checking its checkpoint. These events are also the count
    of attempts: a worker that dies while validating (killed for memory) leaves one behind each time."""
    return _model(session, m, "validation_started", WORKER, {"attempt": attempt})


def model_validated(session: Session, m: Model, *, detail: str | None, metrics: dict[str, Any]) -> AuditEvent:
    """`model.ready` or `model.invalid`: the outcome of checking a registered checkpoint."""
    assert m.status in (ModelStatus.READY, ModelStatus.INVALID)
    return _model(session, m, m.status, WORKER, {"detail": detail, "metrics": metrics})


def version_published(
    session: Session, m: Model, v: ModelVersion, *, method: str, params: dict[str, Any]
) -> AuditEvent:
    data = {
        "version": f"v{v.number}",
        "parent": _label(v.parent_number),
        "checkpoint_sha256": v.sha256,
        "forgotten_count": v.forgotten_count,
        "method": method,
        "params": params,
        "metrics": v.metrics,
        "job_id": v.job_id,  # which job published it: what a certificate's method is checked against
    }
    return _on(
        session,
        m,
        "model_version",
        "published",
        WORKER,
        data,
        model_id=m.id,
        entity_id=f"{m.name}/v{v.number}",
    )


def dataset_registered(
    session: Session, ds: Dataset, *, actor: str, subjects: tuple[int, int] | None = None
) -> AuditEvent:
    """`subjects`: (distinct subjects, samples that have one), when the dataset names subjects."""
    data: dict[str, Any] = {"name": ds.name, "kind": ds.kind, "uri": ds.uri, "num_samples": ds.num_samples}
    if ds.sha256 is not None:
        data["sha256"] = ds.sha256
    if ds.features is not None:
        data["features"] = ds.features  # how the samples are read: part of what a model was judged on
    if subjects is not None:
        data["subject_count"], data["samples_with_subject"] = subjects
    return _on(session, ds, "dataset", "registered", actor, data)


def key_created(session: Session, key: ApiKey, *, actor: str) -> AuditEvent:
    return _on(session, key, "api_key", "created", actor, {"scopes": key.scopes, "name": key.name})


def key_revoked(session: Session, key: ApiKey, *, actor: str) -> AuditEvent:
    return _on(session, key, "api_key", "revoked", actor)


def webhook_secret_rotated(
    session: Session,
    secret: WebhookSecret,
    *,
    grace_seconds: int,
    retiring: dict[str, datetime | None],
    actor: str,
) -> AuditEvent:
    """A tenant's new webhook secret (by id: the secret itself never enters the trail) and when each of
    the secrets it replaces stops signing."""
    data = {
        "grace_seconds": grace_seconds,
        "retiring": [
            {"id": i, "expires_at": at.isoformat() if at else None} for i, at in sorted(retiring.items())
        ],
    }
    return _on(session, secret, "webhook_secret", "rotated", actor, data)
