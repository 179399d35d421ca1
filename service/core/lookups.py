"""Tenant-scoped lookups: an object of another tenant is indistinguishable from a missing one (404)."""

from __future__ import annotations

from sqlalchemy import Engine, bindparam, select
from sqlalchemy.orm import Session

from service.core.db.engine import read_connection
from service.core.db.tables import DeletionRequest, Job, Model
from service.core.errors import NotFound


def get_model(session: Session, tenant: str, name: str) -> Model:
    model = session.scalar(select(Model).where(Model.tenant == tenant, Model.name == name))
    if model is None:
        raise NotFound(f"model {name!r} not found")
    return model


def get_request(session: Session, tenant: str, request_id: str) -> DeletionRequest:
    req = session.get(DeletionRequest, request_id)
    if req is None or req.tenant != tenant:
        raise NotFound(f"deletion request {request_id!r} not found")
    return req


_STATUS_COLUMNS = [c for c in DeletionRequest.__table__.c if c.key != "sample_ids"]
# Built once: constructing it per call cost nearly as much Python time as executing it.
_STATUS = (
    select(*_STATUS_COLUMNS, Model.name.label("model_name"))
    .join(Model, Model.id == DeletionRequest.model_id)
    .where(DeletionRequest.id == bindparam("request_id"), DeletionRequest.tenant == bindparam("tenant"))
)


def request_status(engine: Engine, tenant: str, request_id: str) -> tuple[DeletionRequest, str]:
    """The request and its model's name, for the status poll every product makes, so lean: one autocommit
    SELECT of the columns a status shows (not the sample IDs, which may be thousands) on a bare
    connection, no session. The request comes back transient (in no session): for reading only."""
    with read_connection(engine) as conn:
        row = conn.execute(_STATUS, {"request_id": request_id, "tenant": tenant}).first()
    if row is None:
        raise NotFound(f"deletion request {request_id!r} not found")
    fields = dict(row._mapping)
    return DeletionRequest(**{c.key: fields[c.key] for c in _STATUS_COLUMNS}), fields["model_name"]


def get_job(session: Session, tenant: str, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None or job.tenant != tenant:
        raise NotFound(f"job {job_id!r} not found")
    return job


def version_label(number: int | None) -> str | None:
    return None if number is None else f"v{number}"
