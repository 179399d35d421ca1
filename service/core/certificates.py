"""Deletion certificates: what a compliance team hands to a data subject or an auditor. Everything in it
can be checked against the audit trail: it carries the event that recorded the completion, with its
inclusion proof in a signed tree head of the tenant's log."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.core import transparency
from service.core.audit import export_dict
from service.core.db.clock import utcnow
from service.core.db.tables import AuditEvent, DeletionRequest, ForgottenSample, Job, Model, ModelVersion
from service.core.errors import Conflict
from service.core.events import ids_digest, subjects_digest
from service.core.proofs import CERTIFICATE_V3
from service.core.states import RequestState


def _version(session: Session, model_id: str, number: int | None) -> dict[str, Any] | None:
    if number is None:
        return None
    v = session.scalar(
        select(ModelVersion).where(ModelVersion.model_id == model_id, ModelVersion.number == number)
    )
    return None if v is None else {"version": f"v{v.number}", "checkpoint_sha256": v.sha256}


def _forgotten_by(session: Session, req: DeletionRequest) -> list[dict[str, Any]]:
    """How many of the request's samples each version forgot, oldest first. Usually one entry, the
    version this request's job published; earlier ones when another job forgot some of them first (a
    request that arrived while a job was forgetting the same IDs completes on the version after it, and
    `already_forgotten_count`, counted at intake, cannot say so)."""
    counts: dict[int, int] = {}
    ids = list(req.sample_ids)
    for i in range(0, len(ids), 1000):  # bounded IN lists, for SQLite's variable limit
        rows = session.execute(
            select(ForgottenSample.version_number, func.count())
            .where(ForgottenSample.model_id == req.model_id, ForgottenSample.sample_id.in_(ids[i : i + 1000]))
            .group_by(ForgottenSample.version_number)
        )
        for number, n in rows:
            counts[number] = counts.get(number, 0) + n
    return [{"version": f"v{n}", "sample_count": counts[n]} for n in sorted(counts)]


def _iso(ts: datetime | None) -> str | None:
    if ts is None:
        return None
    return (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).isoformat()


def build(session: Session, req: DeletionRequest, key: Ed25519PrivateKey) -> dict[str, Any]:
    """The certificate's content. Its `audit` part carries the completion event itself, its inclusion proof
    and the signed tree head it is proved against, so a third party can check offline that the event is
    in the log (`service.core.proofs`). May sequence and sign a head: the caller commits."""
    if req.state != RequestState.COMPLETED or req.job_id is None:
        raise Conflict(f"request {req.id} is {req.state}; certificates exist only for completed requests")
    job = session.get_one(Job, req.job_id)
    model = session.get_one(Model, req.model_id)
    result = job.metrics.get("result", {}) if job.metrics else {}
    evidence = _evidence(session, req, model, key)
    # v2: sample_ids_sha256 over a JSON array; v3: its `audit` carries the version's event too, which
    # verification then requires (v2 where the log holds no such event)
    v3 = evidence is not None and "version_event" in evidence
    return {
        "type": CERTIFICATE_V3 if v3 else "unlearning-deletion-certificate/v2",
        "request_id": req.id,
        "reference": req.reference,
        "tenant": req.tenant,
        "model": model.name,
        "sample_count": req.sample_count,
        "sample_ids_sha256": ids_digest(req.sample_ids),  # anyone holding the list can recompute it
        # The data subjects the request named (their samples are among those above); null if none. The
        # completion event in `audit` carries both digests, and verification checks they agree.
        "subject_count": len(req.subject_ids or ()),
        "subject_ids_sha256": subjects_digest(req),
        "already_forgotten_count": req.already_forgotten_count,
        "version_before": _version(session, model.id, job.base_version),
        "version_after": _version(session, model.id, req.model_version),
        "forgotten_by": _forgotten_by(session, req),
        "job_id": job.id,
        "method": job.method,
        "params": job.params,
        "metrics": result,
        "requested_at": _iso(req.created_at),
        "completed_at": _iso(req.completed_at),
        "audit": evidence,
        "issued_at": utcnow().isoformat(),
    }


def _evidence(
    session: Session, req: DeletionRequest, model: Model, key: Ed25519PrivateKey
) -> dict[str, Any] | None:
    """The completion event, proved included in a signed tree head (the latest one, if it covers it), and
    the event that recorded the version the request completed on (its publication, or the model's
    registration for v1), proved in the same head: the certificate's version, checkpoint hash, method,
    params and metrics are read from tables an edit of the database changes, and only what the log holds
    can show such an edit (a probe certified v1, the model that still held the samples)."""
    completed = select(AuditEvent).where(
        AuditEvent.tenant == req.tenant,
        AuditEvent.entity_id == req.id,
        AuditEvent.action == f"deletion_request.{RequestState.COMPLETED}",
    )
    event = session.scalar(completed)
    if event is None:
        return None
    recorded = _version_event(session, req, model)
    proved = [e for e in (event, recorded) if e is not None]
    head = transparency.latest_head(session, req.tenant)
    if head is None or any(e.seq is None or head["tree_head"]["tree_size"] < e.seq for e in proved):
        head = transparency.sign_head(session, key, req.tenant)  # one that covers both (a review's
        for e in proved:  # version event, logged after the completion, was left out)
            session.refresh(e)
    assert event.seq is not None
    size = head["tree_head"]["tree_size"]
    evidence = {
        "seq": event.seq,
        "event_hash": event.hash,
        "event": export_dict(event),
        "inclusion_proof": transparency.inclusion_proof(session, req.tenant, event.seq, size),
        "tree_head": head,
    }
    if recorded is not None and recorded.seq is not None:
        evidence["version_event"] = {
            "event": export_dict(recorded),
            "inclusion_proof": transparency.inclusion_proof(session, req.tenant, recorded.seq, size),
        }
    return evidence


def _version_event(session: Session, req: DeletionRequest, model: Model) -> AuditEvent | None:
    """The event that recorded the version the request completed on: `model_version.published`, or
    `model.registered` for v1; found by the model's id and the version its data names, not by the
    model's name (a review renamed a model in the database and the evidence was left out)."""
    if req.model_version is None:
        return None
    action = "model.registered" if req.model_version == 1 else "model_version.published"
    found = session.scalars(
        select(AuditEvent)
        .where(AuditEvent.tenant == req.tenant, AuditEvent.model_id == model.id, AuditEvent.action == action)
        .order_by(AuditEvent.seq)
    )
    return next((e for e in found if (e.data or {}).get("version") == f"v{req.model_version}"), None)
