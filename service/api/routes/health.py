from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from service.api.deps import SessionDep, SettingsDep, require_scope
from service.api.errors import ANY_ROUTE, problem, problems
from service.api.observability import render
from service.core import liveness
from service.core.errors import Forbidden

router = APIRouter(tags=["health"], responses=problems(*ANY_ROUTE))


@router.get("/healthz", summary="The API process is up")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="The database and the broker are reachable and a worker is alive",
    responses={503: {"description": "Not ready: `checks` names what is down"}},
)
def readyz(request: Request, session: SessionDep) -> JSONResponse:
    checks: dict[str, Any] = {}
    try:
        session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        with request.app.state.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        checks["broker"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["broker"] = f"error: {type(exc).__name__}"
    heartbeat_s = request.app.state.settings.heartbeat_seconds
    checks["workers"] = _heard(session, heartbeat_s, of_beat=False)
    ready = all(v == "ok" for v in checks.values())
    # Reported, not a check: an API without a beat still serves every request the broker takes.
    beat = _heard(session, heartbeat_s, of_beat=True)
    return JSONResponse({"ready": ready, "checks": checks, "beat": beat}, status_code=200 if ready else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses=problems(401, 403),  # a key that is invalid, or none when UNLEARN_METRICS_REQUIRE_KEY is set
)
async def metrics(request: Request, settings: SettingsDep) -> Response:
    """HTTP metrics for anyone (unless a key is required); a key with `jobs:read` adds its own tenant's
    request and job gauges, never another tenant's."""
    header = request.headers.get("authorization")
    tenant = None
    state = request.app.state
    if settings.metrics_require_key or header:
        # Resolved here rather than as a dependency so the setting can switch it off at run time.
        try:
            key = await require_scope("jobs:read")(request, _credentials(header or ""))
            tenant = key.tenant
        except Forbidden:
            # A valid key without jobs:read, where anyone may read the HTTP metrics: those, not a 403 for
            # the whole page (a scraper sharing a deletion:write key lost them all; a probe).
            if settings.metrics_require_key:
                raise
        except SQLAlchemyError as exc:
            # A database outage is when a scraper needs the HTTP metrics most: where anyone may read them,
            # a keyed scrape still gets them (its tenant's gauges need the database); where a key is
            # required, say that it cannot be checked (the generic 503 spoke of Idempotency-Keys).
            if settings.metrics_require_key:
                return _unavailable(exc, "so the key cannot be checked; scrape again shortly")
    try:  # the tenant's gauges read the database: off the event loop
        body = await run_in_threadpool(
            render, state.metrics_registry, state.sessionmaker, tenant, settings.heartbeat_seconds
        )
    except SQLAlchemyError as exc:
        if settings.metrics_require_key:
            return _unavailable(exc, "so the tenant's gauges cannot be read; scrape again shortly")
        body = await run_in_threadpool(
            render, state.metrics_registry, state.sessionmaker, None, settings.heartbeat_seconds
        )
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def _unavailable(exc: Exception, why: str) -> Response:
    response = problem(
        503, "Service unavailable", f"the database is unavailable ({type(exc).__name__}), {why}"
    )
    response.headers["Retry-After"] = "2"
    return response


def _heard(session: Session, heartbeat_s: float, *, of_beat: bool) -> str:
    """ok while some worker beat within a few heartbeats: accepted requests are being served (``of_beat``:
    some beat process, the reconciler's clock; a dead one's row is pruned after an hour)."""
    who = "beat process" if of_beat else "worker"
    try:
        quiet = liveness.silence(session, of_beat=of_beat)
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        return f"error: {type(exc).__name__}"
    # A worker that stops cleanly takes its row with it, so what is on record is the last killed one's or
    # none: the message says what is known, not how long none has run (a probe read "no worker seen for
    # 467s" twelve seconds after stopping the last one cleanly)
    if quiet is None:
        if of_beat:
            return f"no {who} (for an hour, or ever) has been seen"
        return f"no {who} is running (none has a heartbeat on record: none started, or all stopped cleanly)"
    limit = max(3 * heartbeat_s, 10.0)
    return (
        "ok"
        if quiet <= limit
        else f"no {who} heard from within {limit:.0f}s: the latest heartbeat on record is {quiet:.0f}s old"
    )


def _credentials(header: str) -> Any:
    from fastapi.security import HTTPAuthorizationCredentials

    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    return HTTPAuthorizationCredentials(scheme="Bearer", credentials=token)
