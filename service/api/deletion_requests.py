from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Response, status
from sqlalchemy import select

from service import deletions
from service.db.tables import DeletionRequest, Model
from service.deps import CeleryDep, DeletionWriter, RequestReader, SessionDep, SettingsDep
from service.lookups import get_model, get_request
from service.queue import send_run_model
from service.schemas.deletion import DeletionRequestCreate, DeletionRequestOut
from service.views import request_out

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
    req = deletions.submit(
        session,
        model=m,
        key=key,
        sample_ids=body.sample_ids,
        reference=body.reference,
        max_ids=settings.max_sample_ids,
        idempotency_key=idempotency_key,
    )
    session.commit()  # the request is durable before anything is enqueued
    response.headers["Location"] = f"/v1/deletion-requests/{req.id}"
    if send_run_model(celery, m.id):
        locked = session.scalar(select(DeletionRequest).where(DeletionRequest.id == req.id).with_for_update())
        if locked is not None:
            deletions.mark_queued(session, locked, actor="service")
            session.commit()
            req = locked
    return request_out(req, m.name)


@router.get("/v1/deletion-requests/{request_id}", response_model=DeletionRequestOut)
def get_deletion_request(request_id: str, session: SessionDep, key: RequestReader) -> DeletionRequestOut:
    req = get_request(session, key.tenant, request_id)
    return request_out(req, session.get_one(Model, req.model_id).name)
