"""Tenant-scoped lookups: an object of another tenant is indistinguishable from a missing one (404)."""

from __future__ import annotations

from functools import lru_cache

from sqlalchemy import Dialect, Engine, bindparam, select
from sqlalchemy.orm import Session

from service.core.db.engine import fetch_one
from service.core.db.tables import DeletionRequest, Job, Model
from service.core.errors import NotFound


def get_model(session: Session, tenant: str, name: str, *, for_update: bool = False) -> Model:
    """``for_update``: the row locked until the transaction ends, read afresh, for a change decided on
    what it holds (two PATCHes at once each merged into the row as it was before the other, and one was
    lost; a checkpoint deletion read the latest version before a publish committed: a probe)."""
    query = select(Model).where(Model.tenant == tenant, Model.name == name)
    if for_update:
        query = query.with_for_update().execution_options(populate_existing=True)
    model = session.scalar(query)
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
_STATUS_NAMES = [c.key for c in _STATUS_COLUMNS]


def request_status(engine: Engine, tenant: str, request_id: str) -> tuple[DeletionRequest, str]:
    """The request and its model's name, for the status poll every product makes, so lean: one SELECT of
    the columns a status shows (not the sample IDs, which may be thousands), no session; on PostgreSQL a
    prepared statement on a `reader_for` connection. The request comes back transient (in no session):
    for reading only."""
    params = {"request_id": request_id, "tenant": tenant}
    if engine.dialect.name == "postgresql":
        row = fetch_one(engine, _compiled_status(engine.dialect), params)
    else:
        with engine.connect() as conn:  # SQLite: the embedded default
            row = conn.execute(_STATUS, params).first()
    if row is None:
        raise NotFound(f"deletion request {request_id!r} not found")
    *fields, model_name = row
    return DeletionRequest(**dict(zip(_STATUS_NAMES, fields, strict=True))), model_name


@lru_cache(maxsize=4)
def _compiled_status(dialect: Dialect) -> str:
    return str(_STATUS.compile(dialect=dialect))


def get_job(session: Session, tenant: str, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None or job.tenant != tenant:
        raise NotFound(f"job {job_id!r} not found")
    return job


def version_label(number: int | None) -> str | None:
    return None if number is None else f"v{number}"
