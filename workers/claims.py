"""Claiming work: a job takes every pending request of its model when it starts (coalescing)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import exists, func, or_, select
from sqlalchemy.orm import Session

from service.core import audit
from service.core.db.tables import DeletionRequest, Job, Model, utcnow
from service.core.deletions import PENDING_STATES

ACTOR = "worker"
MAX_ATTEMPTS = 3  # a job whose worker dies this often is failed instead of resumed forever
MAX_REQUESTS_PER_JOB = 1000  # coalescing bound: one job's bookkeeping stays one small transaction


def has_pending(session: Session, model_id: str) -> bool:
    return bool(
        session.scalar(
            select(
                exists().where(
                    DeletionRequest.model_id == model_id, DeletionRequest.state.in_(PENDING_STATES)
                )
            )
        )
    )


def models_needing_work(session: Session) -> list[str]:
    """Models with pending requests or an unfinished job, whose lease is free or lapsed."""
    now = utcnow()
    pending = exists().where(DeletionRequest.model_id == Model.id, DeletionRequest.state.in_(PENDING_STATES))
    unfinished = exists().where(Job.model_id == Model.id, Job.state == "running")
    free = or_(Model.lease_owner.is_(None), Model.lease_expires_at < now)
    return list(session.scalars(select(Model.id).where(or_(pending, unfinished), free)))


def resume_unfinished(session: Session, model_id: str) -> Job | None:
    """A job left `running` by a worker that died; we hold the lease now, so nobody else runs it."""
    job = session.scalar(
        select(Job).where(Job.model_id == model_id, Job.state == "running").order_by(Job.created_at).limit(1)
    )
    if job is None:
        return None
    if job.attempts >= MAX_ATTEMPTS:  # its worker died every time (e.g. killed for memory): stop trying
        finish_job(
            session,
            job,
            state="failed",
            request_state="failed",
            error=f"gave up after {job.attempts} attempts: the worker died each time",
        )
        return None
    job.attempts += 1
    job.progress = 0.0
    job.phase = "queued"
    audit.record(
        session,
        tenant=job.tenant,
        actor=ACTOR,
        action="job.resumed",
        entity_type="job",
        entity_id=job.id,
        model_id=model_id,
        data={"attempt": job.attempts},
    )
    return job


def claim_pending(session: Session, model: Model) -> Job | None:
    """Create a job for every pending request of the model (oldest first)."""
    query = (
        select(DeletionRequest)
        .where(DeletionRequest.model_id == model.id, DeletionRequest.state.in_(PENDING_STATES))
        .order_by(DeletionRequest.created_at)
        .limit(MAX_REQUESTS_PER_JOB)
        .with_for_update(skip_locked=True)
    )
    requests = list(session.scalars(query))
    if not requests:
        return None
    job = Job(
        tenant=model.tenant,
        model_id=model.id,
        state="running",
        request_ids=[r.id for r in requests],
        base_version=model.latest_version,
        method=model.default_method,
        params=dict(model.default_params),
        phase="queued",
    )
    session.add(job)
    session.flush()
    for r in requests:
        r.state, r.job_id = "processing", job.id
        audit.record(
            session,
            tenant=r.tenant,
            actor=ACTOR,
            action="deletion_request.processing",
            entity_type="deletion_request",
            entity_id=r.id,
            model_id=model.id,
            data={"job_id": job.id},
        )
    audit.record(
        session,
        tenant=model.tenant,
        actor=ACTOR,
        action="job.created",
        entity_type="job",
        entity_id=job.id,
        model_id=model.id,
        data={
            "requests": len(requests),
            "base_version": f"v{model.latest_version}",
            "method": job.method,
            "params": job.params,
        },
    )
    return job


def next_job(session: Session, model_id: str) -> str | None:
    model = session.get_one(Model, model_id)
    job = resume_unfinished(session, model_id) or claim_pending(session, model)
    return job.id if job else None


def pending_count(session: Session, model_id: str) -> int:
    return (
        session.scalar(
            select(func.count())
            .select_from(DeletionRequest)
            .where(DeletionRequest.model_id == model_id, DeletionRequest.state.in_(PENDING_STATES))
        )
        or 0
    )


def finish_job(
    session: Session,
    job: Job,
    *,
    state: str,
    request_state: str,
    error: str | None = None,
    result_version: int | None = None,
) -> None:
    """Close a job and every request it claimed, with audit events, in the caller's transaction."""
    now = utcnow()
    job.state, job.error, job.finished_at = state, error, now
    job.result_version = result_version
    if state == "completed":
        job.progress, job.phase = 1.0, "done"
    requests = session.scalars(select(DeletionRequest).where(DeletionRequest.job_id == job.id)).all()
    for r in requests:
        r.state, r.error = request_state, error
        if r.callback_url and request_state in ("completed", "failed"):
            r.webhook_state = "pending"
        if request_state == "completed":
            r.model_version, r.completed_at = result_version, now
        audit.record(
            session,
            tenant=r.tenant,
            actor=ACTOR,
            action=f"deletion_request.{request_state}",
            entity_type="deletion_request",
            entity_id=r.id,
            model_id=job.model_id,
            data={
                "job_id": job.id,
                "model_version": f"v{result_version}" if result_version else None,
                "error": error,
            },
        )
    audit.record(
        session,
        tenant=job.tenant,
        actor=ACTOR,
        action=f"job.{state}",
        entity_type="job",
        entity_id=job.id,
        model_id=job.model_id,
        data={
            "result_version": f"v{result_version}" if result_version else None,
            "error": error,
            "attempts": job.attempts,
        },
    )


def webhooks_of_job(session: Session, job_id: str) -> list[str]:
    return list(
        session.scalars(
            select(DeletionRequest.id).where(
                DeletionRequest.job_id == job_id, DeletionRequest.webhook_state == "pending"
            )
        )
    )


def stale_webhooks(session: Session, older_than_s: float = 600) -> list[str]:
    """Webhooks still pending long after their request finished (their task was lost)."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    return list(
        session.scalars(
            select(DeletionRequest.id).where(
                DeletionRequest.webhook_state == "pending", DeletionRequest.updated_at < cutoff
            )
        )
    )


def models_validating(session: Session) -> list[str]:
    return list(session.scalars(select(Model.id).where(Model.status == "validating")))


class NotOurs(Exception):
    """The job is no longer this worker's to write: its lease moved on, or the job already ended."""


def fenced_job(session: Session, job_id: str, owner: str) -> Job:
    """The job, locked together with its model row, if `owner` still holds the model's lease and the job
    is still running; else NotOurs. Every write of a running job's outcome goes through here.
    Lock order is model then job, as in the heartbeat (lease renewal, then progress): no deadlock."""
    model_id = session.scalar(select(Job.model_id).where(Job.id == job_id))
    if model_id is None:
        raise NotOurs(f"job {job_id} vanished")
    model = session.scalar(
        select(Model).where(Model.id == model_id).with_for_update().execution_options(populate_existing=True)
    )
    job = session.scalar(
        select(Job).where(Job.id == job_id).with_for_update().execution_options(populate_existing=True)
    )
    if model is None or job is None or model.lease_owner != owner or job.state != "running":
        raise NotOurs(f"job {job_id} is no longer ours")
    return job
