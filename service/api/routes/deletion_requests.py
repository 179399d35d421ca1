from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select

from service.api.deps import CeleryDep, DeletionWriter, RequestReader, SessionDep
from service.api.errors import KEYED, domain_problem, problems
from service.api.intake import GroupCommit
from service.api.pagination import newest_first
from service.api.schemas.common import Page
from service.api.schemas.deletion import (
    DeletionBatchCreate,
    DeletionBatchOut,
    DeletionBatchResult,
    DeletionRequestCreate,
    DeletionRequestOut,
    RequestState,
)
from service.api.views import request_out
from service.core import deletions, events
from service.core.db.tables import DeletionRequest, Model
from service.core.errors import NotFound, ProblemError, Unprocessable
from service.core.lookups import get_model, request_status

router = APIRouter(tags=["deletion requests"], responses=problems(*KEYED))


@router.post(
    "/v1/models/{model}/deletion-requests",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=DeletionRequestOut,
    summary="Ask the model to forget training samples, or everything about named data subjects",
    responses={
        200: {
            "description": "A replay of an earlier Idempotency-Key: the first request",
            "model": DeletionRequestOut,
        }
    },
)
async def create_deletion_request(
    model: str,
    body: DeletionRequestCreate,
    request: Request,
    key: DeletionWriter,
    response: Response,
    # An empty key is refused, as in a batch item: a client sending one meant a key (an unset variable),
    # and taking it for none would create a second request on its retry.
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None,
) -> DeletionRequestOut:
    """Async: the request waits on the event loop for its batch (`service.api.intake`), which is
    written with the others that arrived meanwhile; no thread is held per request."""
    intake: GroupCommit = request.app.state.intake
    accepted = await intake.submit(
        deletions.Submission(
            key=key,
            model=model,
            sample_ids=body.sample_ids,
            subject_ids=body.subject_ids,
            reference=body.reference,
            idempotency_key=idempotency_key,
            callback_url=str(body.callback_url) if body.callback_url else None,
            reason=body.reason,
        )
    )
    if accepted.created:
        response.headers["Location"] = f"/v1/deletion-requests/{accepted.request.id}"
    else:
        response.status_code = status.HTTP_200_OK
    return request_out(accepted.request, accepted.model_name)


@router.post(
    "/v1/models/{model}/deletion-requests/batch",
    response_model=DeletionBatchOut,
    summary="Up to 1,000 deletion requests for one model in one call, each accepted or refused alone",
)
async def create_deletion_requests(
    model: str,
    body: DeletionBatchCreate,
    request: Request,
    key: DeletionWriter,
    # read only to refuse it: not in the schema, which had advertised it, nor bounded, so a long one is
    # told the same (a review)
    idempotency_key: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> DeletionBatchOut:
    """For a product that erases in bulk (a nightly export of account closures): each item is the body
    of a single POST (plus its own `idempotency_key`) and gets the answer that POST would have got, in
    order; the batch is answered 200 once every accepted item is committed. The items go to the intake
    queue together, so they are written in one transaction; one refused item (unknown IDs) refuses only
    itself. A batch is one write for the key's rate limit. A database outage fails the whole call (503):
    retry it with the same idempotency keys and nothing is written twice."""
    if idempotency_key is not None:  # ignored, it let a retried batch write every item twice (a probe)
        raise Unprocessable(
            "the batch route takes no Idempotency-Key header: give each item its own idempotency_key, "
            "and a retried batch writes nothing twice"
        )
    intake: GroupCommit = request.app.state.intake
    submissions = [
        deletions.Submission(
            key=key,
            model=model,
            sample_ids=item.sample_ids,
            subject_ids=item.subject_ids,
            reference=item.reference,
            idempotency_key=item.idempotency_key,
            callback_url=str(item.callback_url) if item.callback_url else None,
            reason=item.reason,
        )
        for item in body.requests
    ]
    outcomes = await asyncio.gather(*(intake.submit(s) for s in submissions), return_exceptions=True)
    missing = outcomes[0]  # the path names no model of the key's tenant: the call's resource is
    if isinstance(missing, NotFound) and all(isinstance(o, NotFound) for o in outcomes):
        raise missing  # missing, not each item's (it was answered 200 with a 404 per item)
    results: list[DeletionBatchResult] = []
    for outcome in outcomes:
        if isinstance(outcome, ProblemError):
            results.append(DeletionBatchResult(status=outcome.status, problem=domain_problem(outcome)))
        elif isinstance(outcome, BaseException):
            raise outcome  # an outage (503) or a fault, answered as the single route would
        else:
            code = status.HTTP_202_ACCEPTED if outcome.created else status.HTTP_200_OK
            results.append(
                DeletionBatchResult(status=code, request=request_out(outcome.request, outcome.model_name))
            )
    accepted = sum(r.request is not None for r in results)
    return DeletionBatchOut(accepted=accepted, refused=len(results) - accepted, results=results)


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
async def get_deletion_request(request_id: str, request: Request, key: RequestReader) -> Response:
    """The status poll every product makes, so the leanest route: one prepared autocommit SELECT in one
    trip to the thread pool, no session, and the body serialised once (returning the model would have FastAPI
    validate it against `response_model` again before serialising it)."""
    req, model_name = await run_in_threadpool(
        request_status, request.app.state.reader, key.tenant, request_id
    )
    body = request_out(req, model_name).model_dump_json(by_alias=True)
    return Response(body, media_type="application/json")


@router.post(
    "/v1/deletion-requests/{request_id}/cancel",
    response_model=DeletionRequestOut,
    summary="Withdraw a request that no job has claimed yet",
)
def cancel_deletion_request(
    request_id: str, session: SessionDep, celery: CeleryDep, key: DeletionWriter
) -> DeletionRequestOut:
    """A request with a callback_url is sent a `deletion_request.cancelled` webhook."""
    req = deletions.withdraw(session, celery, key.tenant, request_id, actor=events.key_actor(key))
    return request_out(req, session.get_one(Model, req.model_id).name)
