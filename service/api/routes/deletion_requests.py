from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Response, status
from sqlalchemy import select

from service.api.deps import CeleryDep, DeletionWriter, RequestReader, SessionDep, SettingsDep
from service.api.pagination import newest_first
from service.api.schemas.common import Page
from service.api.schemas.deletion import DeletionRequestCreate, DeletionRequestOut, RequestState
from service.api.views import request_out
from service.core import audit, deletions
from service.core.db.tables import DeletionRequest, Model
from service.core.errors import Conflict, Unprocessable
from service.core.lookups import get_model, get_request
from service.core.queue import send_run_model

router = APIRouter(tags=["deletion requests"])


@router.post(
    "/v1/models/{model}/deletion-requests",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=DeletionRequestOut,
    summary="Ask the model to forget training samples",
)
def create_deletion_request(
    model: str,
    body: DeletionRequestCreate,
    session: SessionDep,
    settings: SettingsDep,
    celery: CeleryDep,
    key: DeletionWriter,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> DeletionRequestOut:
    m = get_model(session, key.tenant, model)
    callback = str(body.callback_url) if body.callback_url else None
    idempotency_key = idempotency_key or None  # an empty header is no key
    if idempotency_key is not None:
        digest = deletions.body_digest(deletions.dedupe(body.sample_ids), body.reference, callback)
        existing = deletions.find_idempotent(
            session, tenant=key.tenant, idempotency_key=idempotency_key, digest=digest
        )
        if existing is not None:
            if existing.model_id != m.id:
                raise Unprocessable("this Idempotency-Key was already used for another model")
            response.status_code = status.HTTP_200_OK
            return request_out(existing, m.name)
    req = deletions.submit(
        session,
        model=m,
        key=key,
        sample_ids=body.sample_ids,
        reference=body.reference,
        max_ids=settings.max_sample_ids,
        idempotency_key=idempotency_key,
        callback_url=callback,
        allowed_hosts=settings.webhook_allowed_hosts,
    )
    session.commit()  # the request is durable before anything is enqueued
    response.headers["Location"] = f"/v1/deletion-requests/{req.id}"
    if send_run_model(celery, m.id):
        locked = session.scalar(
            select(DeletionRequest)
            .where(DeletionRequest.id == req.id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        if locked is not None:
            deletions.mark_queued(session, locked, actor="service")
            session.commit()
            req = locked
    return request_out(req, m.name)


@router.get(
    "/v1/deletion-requests", response_model=Page[DeletionRequestOut], summary="Requests, newest first"
)
def list_deletion_requests(
    session: SessionDep,
    key: RequestReader,
    model: str | None = None,
    state: RequestState | None = None,
    reference: str | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Page[DeletionRequestOut]:
    query = (
        select(DeletionRequest, Model.name)
        .join(Model, Model.id == DeletionRequest.model_id)
        .where(DeletionRequest.tenant == key.tenant)
    )
    if model is not None:
        query = query.where(DeletionRequest.model_id == get_model(session, key.tenant, model).id)
    if state is not None:
        query = query.where(DeletionRequest.state == state)
    if reference is not None:
        query = query.where(DeletionRequest.reference == reference)
    rows, next_cursor = newest_first(session, query, DeletionRequest, cursor, limit)
    return Page[DeletionRequestOut](items=[request_out(r, n) for r, n in rows], next_cursor=next_cursor)


@router.get("/v1/deletion-requests/{request_id}", response_model=DeletionRequestOut)
def get_deletion_request(request_id: str, session: SessionDep, key: RequestReader) -> DeletionRequestOut:
    req = get_request(session, key.tenant, request_id)
    return request_out(req, session.get_one(Model, req.model_id).name)


@router.post(
    "/v1/deletion-requests/{request_id}/cancel",
    response_model=DeletionRequestOut,
    summary="Withdraw a request that no job has claimed yet",
)
def cancel_deletion_request(request_id: str, session: SessionDep, key: DeletionWriter) -> DeletionRequestOut:
    get_request(session, key.tenant, request_id)  # 404 for other tenants
    req = session.scalar(
        select(DeletionRequest)
        .where(DeletionRequest.id == request_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    assert req is not None
    if req.state not in deletions.PENDING_STATES:
        raise Conflict(
            f"request {request_id} is {req.state}; only received or queued requests can be cancelled"
        )
    req.state = "cancelled"
    audit.record(
        session,
        tenant=key.tenant,
        actor=f"key:{key.prefix}",
        action="deletion_request.cancelled",
        entity_type="deletion_request",
        entity_id=req.id,
        model_id=req.model_id,
    )
    session.commit()
    return request_out(req, session.get_one(Model, req.model_id).name)
