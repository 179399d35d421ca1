from __future__ import annotations

from fastapi import APIRouter

from service.db.tables import Model
from service.deps import JobsReader, SessionDep
from service.lookups import get_job
from service.schemas.jobs import JobOut
from service.views import job_out

router = APIRouter(tags=["jobs"])


@router.get("/v1/jobs/{job_id}", response_model=JobOut)
def get_job_route(job_id: str, session: SessionDep, key: JobsReader) -> JobOut:
    job = get_job(session, key.tenant, job_id)
    return job_out(job, session.get_one(Model, job.model_id).name)
