"""Claiming work: a job takes every pending request of its model when it starts (coalescing)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import exists, func, or_, select
from sqlalchemy.orm import Session

from service.core import deletions, events, jobs
from service.core.db.clock import db_now
from service.core.db.tables import AuditEvent, DeletionRequest, ForgottenSample, Job, Model, utcnow
from service.core.states import PENDING, JobPhase, JobState, ModelStatus, RequestState, WebhookState
from workers import leases

MAX_ATTEMPTS = 3  # a job (or a validation) whose worker dies this often is failed, not retried forever
MAX_REQUESTS_PER_JOB = 1000  # coalescing bound: one job's bookkeeping stays one small transaction


def has_pending(session: Session, model_id: str) -> bool:
    return bool(
        session.scalar(
            select(exists().where(DeletionRequest.model_id == model_id, DeletionRequest.state.in_(PENDING)))
        )
    )


def has_work(session: Session, model_id: str) -> bool:
    """Pending requests, or a job still running (one handed back at a database outage): without a lease
    holder, a running job waits for the reconciler otherwise."""
    unfinished = exists().where(Job.model_id == model_id, Job.state == JobState.RUNNING)
    return has_pending(session, model_id) or bool(session.scalar(select(unfinished)))


def models_needing_work(session: Session, takeover_after: float | None = None) -> list[str]:
    """Models with pending requests or an unfinished job, whose lease is free, lapsed, or held by a
    worker silent for `takeover_after` seconds."""
    pending = exists().where(DeletionRequest.model_id == Model.id, DeletionRequest.state.in_(PENDING))
    unfinished = exists().where(Job.model_id == Model.id, Job.state == JobState.RUNNING)
    return list(
        session.scalars(
            select(Model.id).where(or_(pending, unfinished), leases.is_free(db_now(session), takeover_after))
        )
    )


def interruption(job: Job, cause: str) -> dict[str, object]:
    """Where an attempt had got to when it ended unfinished, from its last heartbeat: the next one starts
    over at `queued`, and a record showing only the last attempt hid what the interruption threw away."""
    return {
        "attempt": job.attempts,
        "cause": cause,
        "phase": str(job.phase),
        "progress": round(job.progress, 4),
        "heartbeat_at": job.heartbeat_at.isoformat() if job.heartbeat_at else None,
    }


# Causes of an attempt its worker handed back (``JobStore.give_back``): a planned stop, a database outage,
# storage that was full or failing.
STOPPED, DATABASE_GONE, STORAGE_SHORT_CAUSE = "stopped", "database unavailable", "storage unavailable"
OUTAGES = frozenset({DATABASE_GONE, STORAGE_SHORT_CAUSE})  # counted together towards a job's limit


def handed_back(job: Job) -> bool:
    """The job's last attempt ended at a planned stop or an outage (``JobStore.give_back``), which
    recorded where it got to and handed the attempt back, and no attempt has started since: its entry is
    the last one, and names the attempt after the one the job now counts."""
    entries = (job.metrics or {}).get("interrupted") or [{}]
    cause, attempt = entries[-1].get("cause"), entries[-1].get("attempt")
    return cause in (STOPPED, DATABASE_GONE, STORAGE_SHORT_CAUSE) and attempt == job.attempts + 1


def resume_unfinished(session: Session, model_id: str) -> Job | None:
    """A job left `running` by a worker that died; we hold the lease now, so nobody else runs it."""
    job = session.scalar(
        select(Job)
        .where(Job.model_id == model_id, Job.state == JobState.RUNNING)
        .order_by(Job.created_at)
        .limit(1)
    )
    if job is None:
        return None
    if not handed_back(job):  # its worker died: where it had got to, the attempt that exhausts them too
        interrupted = [*(job.metrics or {}).get("interrupted", []), interruption(job, "worker died")]
        job.metrics = {**(job.metrics or {}), "interrupted": interrupted}
    if job.attempts >= MAX_ATTEMPTS:  # its worker died every time (e.g. killed for memory): stop trying
        jobs.close(
            session,
            job,
            JobState.FAILED,
            error=f"gave up after {job.attempts} attempts: the worker died each time",
        )
        return None
    job.attempts += 1
    job.progress = 0.0
    job.phase = JobPhase.QUEUED
    events.job_resumed(session, job)
    return job


def claim_pending(session: Session, model: Model) -> Job | None:
    """Create a job for every pending request of the model (oldest first)."""
    query = (
        select(DeletionRequest)
        .where(DeletionRequest.model_id == model.id, DeletionRequest.state.in_(PENDING))
        .order_by(DeletionRequest.created_at)
        .limit(MAX_REQUESTS_PER_JOB)
        .with_for_update(skip_locked=True)
    )
    requests = _short_of_emptying(session, model, list(session.scalars(query)))
    if not requests:
        return None
    job = Job(
        tenant=model.tenant,
        model_id=model.id,
        state=JobState.RUNNING,
        request_ids=[r.id for r in requests],
        base_version=model.latest_version,
        method=model.default_method,
        params=dict(model.default_params),
        phase=JobPhase.QUEUED,
    )
    session.add(job)
    session.flush()
    for r in requests:
        r.state, r.job_id = RequestState.PROCESSING, job.id
        events.request_processing(session, r, job_id=job.id)
    events.job_created(session, job)
    return job


def _short_of_emptying(
    session: Session, model: Model, requests: list[DeletionRequest]
) -> list[DeletionRequest]:
    """The oldest requests that together leave the model at least one training sample. Intake refuses a
    request that alone would forget them all, but two that each leave some can together leave none; a job
    with nothing to keep the model on fails, and every request coalesced into it failed with it. The
    request that would empty the set waits for the next job, alone (which fails, saying why) unless
    something before it is failed or cancelled. The forgotten IDs are read only when the requests name
    enough samples to empty the set."""
    training = deletions.training_set(session, model)
    left = training.size - training.forgotten_at_latest
    if sum(r.sample_count for r in requests) < left:
        return requests
    forgotten = set(
        session.scalars(select(ForgottenSample.sample_id).where(ForgottenSample.model_id == model.id))
    )
    left = training.size - len(forgotten)
    named: set[str] = set()
    for i, r in enumerate(requests):
        new = {s for s in r.sample_ids if s not in forgotten} - named
        if i > 0 and len(named) + len(new) >= left:
            return requests[:i]
        named |= new
    return requests


def next_job(session: Session, model_id: str) -> str | None:
    model = session.get_one(Model, model_id)
    job = resume_unfinished(session, model_id) or claim_pending(session, model)
    return job.id if job else None


def webhooks_of_job(session: Session, job_id: str) -> list[str]:
    return list(
        session.scalars(
            select(DeletionRequest.id).where(
                DeletionRequest.job_id == job_id, DeletionRequest.webhook_state == WebhookState.PENDING
            )
        )
    )


def stale_webhooks(session: Session, older_than_s: float = 600) -> list[str]:
    """Webhooks still pending long after their request finished (their task was lost)."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    return list(
        session.scalars(
            select(DeletionRequest.id).where(
                DeletionRequest.webhook_state == WebhookState.PENDING, DeletionRequest.updated_at < cutoff
            )
        )
    )


def models_validating(session: Session) -> list[str]:
    return list(session.scalars(select(Model.id).where(Model.status == ModelStatus.VALIDATING)))


def validation_attempts(session: Session, model: Model) -> int:
    """How many times a worker has started validating the model (its `model.validation_started` events)."""
    return (
        session.scalar(
            select(func.count(AuditEvent.id)).where(
                AuditEvent.tenant == model.tenant,
                AuditEvent.entity_id == model.id,
                AuditEvent.action == events.VALIDATION_STARTED,
            )
        )
        or 0
    )
