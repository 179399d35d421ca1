"""Job transitions that are not a worker's own: an admin cancels a running job or retries a failed one,
and any job ends with its requests (`close`). Each writes its audit events in the caller's transaction."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core import events
from service.core.db.clock import db_now
from service.core.db.tables import DeletionRequest, Job
from service.core.errors import Conflict, NotFound
from service.core.states import JobPhase, JobState, RequestState, WebhookState


def _locked(session: Session, tenant: str, job_id: str) -> Job:
    """The job row, locked and re-read: the worker's publishing transaction and this one cannot interleave."""
    job = session.scalar(
        select(Job).where(Job.id == job_id).with_for_update().execution_options(populate_existing=True)
    )
    if job is None or job.tenant != tenant:
        raise NotFound(f"job {job_id!r} not found")
    return job


def request_cancel(session: Session, tenant: str, job_id: str, *, actor: str) -> Job:
    """Flag a running job; its worker stops between steps (within a heartbeat) and ends it `cancelled`."""
    job = _locked(session, tenant, job_id)
    if job.state != JobState.RUNNING:
        raise Conflict(f"job {job_id} is {job.state}; only a running job can be cancelled")
    if not job.cancel_requested:
        job.cancel_requested = True
        events.job_cancel_requested(session, job, actor=actor)
    return job


def retry(session: Session, tenant: str, job_id: str, *, actor: str) -> Job:
    """Send a failed job's requests round again (`received`); they join the next job of their model."""
    job = _locked(session, tenant, job_id)
    if job.state != JobState.FAILED:
        raise Conflict(f"job {job_id} is {job.state}; only a failed job can be retried")
    requests = session.scalars(
        select(DeletionRequest).where(
            DeletionRequest.job_id == job.id, DeletionRequest.state == RequestState.FAILED
        )
    ).all()
    if not requests:
        raise Conflict(_nothing_to_retry(session, job))
    for r in requests:
        r.state, r.error, r.job_id = RequestState.RECEIVED, None, None
        r.webhook_state, r.webhook_attempts = None, 0  # its next outcome gets a full delivery budget
        events.request_retried(session, r, failed_job_id=job.id, actor=actor)
    return job


def retryable(session: Session, jobs: Sequence[Job]) -> set[str]:
    """The ids of those of ``jobs`` a retry would act on: failed, with requests still failed (one
    query for a page of them, so the dashboard offers Retry only where it would not be a 409)."""
    failed = [j.id for j in jobs if j.state == JobState.FAILED]
    if not failed:
        return set()
    held = select(DeletionRequest.job_id).where(
        DeletionRequest.job_id.in_(failed), DeletionRequest.state == RequestState.FAILED
    )
    return {job_id for job_id in session.scalars(held.distinct()) if job_id is not None}


def _nothing_to_retry(session: Session, job: Job) -> str:
    """Why a failed job has nothing left to retry: its requests were retried already (a retry detaches
    them from the job), so say how many there are, what state each is in now and in which later job (one
    that failed again is retried through that job: "no longer failed (now: 1 failed)" said neither)."""
    states: dict[tuple[str, str | None], int] = {}
    if job.request_ids:
        rows = session.execute(
            select(DeletionRequest.state, DeletionRequest.job_id).where(
                DeletionRequest.id.in_(job.request_ids)
            )
        )
        for state, later in rows:
            states[(str(state), later)] = states.get((str(state), later), 0) + 1
    now = (
        ", ".join(
            f"{n} {state}" + (f" in job {later}" if later else "")
            for (state, later), n in sorted(states.items(), key=lambda kv: (kv[0][0], kv[0][1] or ""))
        )
        or "none left"
    )
    again = sorted({later for (state, later) in states if state == RequestState.FAILED and later})
    retry_there = f"; retry job {', '.join(again)} instead" if again else ""
    return (
        f"job {job.id} has no failed requests left to retry: its {len(job.request_ids)} request(s) "
        f"were already retried (now: {now}){retry_there}"
    )


CANCELLED_BY_ADMIN = "cancelled by an admin"  # a cancelled job's error


def close(
    session: Session,
    job: Job,
    state: JobState,
    *,
    error: str | None = None,
    result_version: int | None = None,
) -> None:
    """End a job and every request it claimed (they take the job's state), with their audit events.

    A job an admin asked to cancel that then fails (its run ended within a heartbeat of the cancel, and
    missed its gates) ends `cancelled`, as a cancel wins over a publish: ended `failed`, it was offered
    for retry, and a retry brought back deletions the admin had cancelled (a probe)."""
    if state == JobState.FAILED and job.cancel_requested:
        error = f"{CANCELLED_BY_ADMIN}; the attempt had failed: {error}" if error else CANCELLED_BY_ADMIN
        state = JobState.CANCELLED
    now = db_now(session)  # the clock its started_at was read from (jobstore): a duration of one clock
    job.state, job.error, job.finished_at, job.result_version = state, error, now, result_version
    if state == JobState.COMPLETED:
        job.progress, job.phase = 1.0, JobPhase.DONE
    request_state = RequestState(state)  # completed, failed and cancelled are request states too
    requests = session.scalars(select(DeletionRequest).where(DeletionRequest.job_id == job.id)).all()
    for r in requests:
        r.state, r.error = request_state, error
        if r.callback_url:  # completed, failed and cancelled are all news to the client
            r.webhook_state = WebhookState.PENDING
        if request_state == RequestState.COMPLETED:
            r.model_version, r.completed_at = result_version, now
        events.request_closed(session, r, job=job, result_version=result_version, error=error)
    events.job_closed(session, job)
