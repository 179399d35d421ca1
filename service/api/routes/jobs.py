from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select

from service.api.deps import Admin, CeleryDep, JobsReader, SessionDep
from service.api.errors import KEYED, problems
from service.api.pagination import newest_first, utc
from service.api.schemas.common import IsoTime, Page
from service.api.schemas.jobs import JobOut, JobState
from service.api.views import job_out
from service.core import events, jobs
from service.core.db.clock import db_now
from service.core.db.tables import Job, Model
from service.core.errors import Unprocessable
from service.core.lookups import get_job, get_model
from service.core.queue import send_run_model

router = APIRouter(tags=["jobs"], responses=problems(*KEYED))


@router.get("/v1/jobs", response_model=Page[JobOut], summary="Jobs, newest first, with filters")
def list_jobs(
    session: SessionDep,
    key: JobsReader,
    model: str | None = None,
    state: JobState | None = None,
    since: Annotated[IsoTime | None, Query(description="only jobs created at or after this time")] = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Page[JobOut]:
    query = select(Job, Model.name).join(Model, Model.id == Job.model_id).where(Job.tenant == key.tenant)
    if model is not None:
        query = query.where(Job.model_id == get_model(session, key.tenant, model).id)
    if state is not None:
        query = query.where(Job.state == state)
    if since is not None:
        if since.tzinfo is None:  # as the audit export: a time without a zone could mean any of 27 hours
            raise Unprocessable("`since` needs a timezone, e.g. 2026-01-01T00:00:00Z")
        query = query.where(Job.created_at >= utc(since))
    rows, next_cursor = newest_first(session, query, Job, cursor, limit)
    again = jobs.retryable(session, [job for job, _ in rows])
    now = _now_if_running(session, [job for job, _ in rows])
    items = [job_out(job, name, retryable=job.id in again, now=now) for job, name in rows]
    return Page[JobOut](items=items, next_cursor=next_cursor)


@router.get("/v1/jobs/{job_id}", response_model=JobOut)
def get_job_route(job_id: str, session: SessionDep, key: JobsReader) -> JobOut:
    job = get_job(session, key.tenant, job_id)
    return _out(session, job)


def _out(session: SessionDep, job: Job) -> JobOut:
    name = session.get_one(Model, job.model_id).name
    retryable = job.id in jobs.retryable(session, [job])
    return job_out(job, name, retryable=retryable, now=_now_if_running(session, [job]))


def _now_if_running(session: SessionDep, listed: list[Job]) -> datetime | None:
    """The database's clock, read only where a running job's heartbeat age is shown."""
    return db_now(session) if any(j.state == "running" for j in listed) else None


@router.post("/v1/jobs/{job_id}/cancel", response_model=JobOut, summary="Ask a running job to stop")
def cancel_job(job_id: str, session: SessionDep, key: Admin) -> JobOut:
    """The worker checks the flag between steps (within a heartbeat interval); the job then ends
    `cancelled` and its requests with it, and no version is published."""
    job = jobs.request_cancel(session, key.tenant, job_id, actor=events.key_actor(key))
    session.commit()
    return _out(session, job)


@router.post(
    "/v1/jobs/{job_id}/retry", response_model=JobOut, summary="Re-queue the requests of a failed job"
)
def retry_job(job_id: str, session: SessionDep, celery: CeleryDep, key: Admin) -> JobOut:
    """After a job fails (e.g. every method missed its gates), an admin may change the model's policy and
    send its failed requests round again; they join the next job with any other pending requests."""
    job = jobs.retry(session, key.tenant, job_id, actor=events.key_actor(key))
    session.commit()
    send_run_model(celery, job.model_id)
    return _out(session, job)
