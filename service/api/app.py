"""The FastAPI application. It never imports torch or the workers: it talks to them only through the
database and the queue (tasks are sent by name)."""

from __future__ import annotations

import asyncio
import gc

from fastapi import Depends, FastAPI, Response
from prometheus_client import CollectorRegistry
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.deps import KeyCache
from service.api.docs import install_docs
from service.api.errors import install_handlers, install_problem_schema, problem, too_large
from service.api.gate import UPLOAD_PATHS, AdmitRequests
from service.api.head import HeadAsGet
from service.api.intake import GroupCommit
from service.api.observability import HttpMetrics
from service.api.ratelimit import make_limiter
from service.api.routes import audit, dashboard, datasets, deletion_requests, health, jobs, keys, models
from service.api.routes.webhooks import router as webhook_secrets_router
from service.api.unicode import utf8_json_body
from service.core.db.engine import reader_for, sessionmaker_for
from service.core.deletions import IntakePolicy
from service.core.lifetimes import die_with_api_supervisor
from service.core.queue import make_celery
from service.core.settings import Settings, get_settings
from service.core.signing import load_or_create_key


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="Unlearning service",
        version="0.1.0",
        description="Make a deployed classifier forget training samples on request, and prove it.",
        dependencies=[Depends(utf8_json_body)],
        docs_url=None,  # served below from the package's copy of Swagger UI
        redoc_url=None,
    )  # no app-wide max_body_size: FastAPI checks it outside every middleware, with a plain-text 413
    app.router.redirect_slashes = False  # its Location named the request's Host: see errors._other_slash
    app.state.settings = settings
    # No pre-ping: a round trip per request saved; a dead connection is a 503 (see make_engine).
    app.state.sessionmaker = sessionmaker_for(settings.resolved_database_url, pre_ping=False)
    app.state.reader = reader_for(settings.resolved_database_url)
    app.state.celery = make_celery(settings, fail_fast=True)
    app.state.signing_key = load_or_create_key(settings.signing_key_path)
    app.state.key_cache = KeyCache(settings.key_cache_seconds)
    app.state.intake = GroupCommit(
        app.state.sessionmaker,
        app.state.celery,
        IntakePolicy(
            max_ids=settings.max_sample_ids,
            allowed_hosts=settings.webhook_allowed_hosts,
            allow_http=settings.webhook_allow_http,
            wake_seconds=settings.wake_seconds,
        ),
    )
    install_handlers(app)
    install_problem_schema(app)
    app.state.metrics_registry = registry = CollectorRegistry()
    # Innermost first: a HEAD no route takes runs as its GET, inside the key (and a write's rate limit),
    # checked before any body is read, inside the screen (NUL bytes, declared lengths: no lookup at all),
    # inside the metrics (every refusal is counted, under the route it was meant for).
    app.add_middleware(HeadAsGet, router=app.router)
    app.add_middleware(
        AdmitRequests,
        key_cache=app.state.key_cache,
        sessions=app.state.sessionmaker,
        limiter=make_limiter(settings),
    )
    app.add_middleware(
        ScreenRequests, max_body_bytes=settings.max_body_bytes, max_upload_bytes=settings.max_upload_bytes
    )
    app.add_middleware(HttpMetrics, registry=registry)
    app.add_middleware(StoppedMidRequest)  # outermost: what the server's shutdown cancels, it answers
    # Declared lengths are screened above; a chunked body is counted as it arrives, per router
    for module in (health, deletion_requests, jobs, models, datasets, audit, keys, dashboard):
        app.include_router(module.router, max_body_size=settings.max_body_bytes)
    app.include_router(webhook_secrets_router, max_body_size=settings.max_body_bytes)
    for module in (models, datasets):
        app.include_router(module.upload_router, max_body_size=settings.max_upload_bytes)
    install_docs(app)
    return app


def served_app(settings: Settings | None = None) -> FastAPI:
    """The app a server process runs (``unlearn api``, ``unlearn run``): ``create_app`` with the start-up
    heap frozen. Everything alive once the app is built (modules, routes, schemas, SQLAlchemy metadata:
    ~130k objects) lives as long as the process, yet every full collection walked it again: under load
    each API worker ran a full collection every 2-3 s, each 35-180 ms of wall time on 2 busy cores, and
    those pauses were the p99 of every route. ``gc.freeze`` moves them to the permanent generation, so a
    full collection walks only what requests allocated."""
    die_with_api_supervisor()
    app = create_app(settings)
    gc.collect()
    gc.freeze()
    return app


class StoppedMidRequest:
    """A request the server cancels before its response began (the shutdown grace ran out) is answered
    503, JSON, with ``Retry-After`` and ``Connection: close``; uvicorn answered it with a plain-text 500 (a
    probe's slow upload). Where its body was still arriving, nothing of it ran; where the body had all
    come, its route may still be running in a thread the cancel does not stop, and may yet commit (a
    review): the 503 then says so, and points at ``Idempotency-Key``. Once answered, the request's task
    ends quietly; where the answer cannot be sent, the cancellation goes on up."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, arriving = False, False

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        async def receiving() -> Message:
            nonlocal arriving
            arriving = True  # cancelled in here: the route is still waiting for its body
            message = await receive()
            arriving = False
            return message

        try:
            await self.app(scope, receiving, sending)
        except asyncio.CancelledError:
            if started:
                raise
            try:
                await self._stopping(under_way=not arriving)(scope, receive, send)
            except Exception:  # noqa: BLE001 - the client is gone too: the cancellation goes on up
                raise asyncio.CancelledError from None
            # answered: the request's task ends here, where re-raising had uvicorn log an "Exception in
            # ASGI application" traceback at ERROR for every request a planned stop cut off (a probe)

    @staticmethod
    def _stopping(under_way: bool) -> Response:
        """A route with no body to wait for (a cancel, a revoke, a DELETE) was under way when cancelled."""
        if under_way:
            why = (
                "the server stopped while handling the request, which may have taken effect: retry it "
                "with the same Idempotency-Key, or look before sending it again"
            )
        else:
            why = "the server is stopping, and the request had not all arrived: nothing of it was done"
        response = problem(503, "Service unavailable", why)
        response.headers.update({"Retry-After": "2", "Connection": "close"})
        return response


class ScreenRequests:
    """Refuse what no route can accept before any work: NUL bytes (PostgreSQL cannot store them), a
    declared Content-Length over the limit, an encoded body and a doubled Idempotency-Key. (Chunked
    bodies are counted as they arrive by FastAPI's own body limit.) Pure ASGI: it costs a few dictionary
    lookups per request."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, max_upload_bytes: int) -> None:
        self.app, self.max_body, self.max_upload = app, max_body_bytes, max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = self.refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def refusal(self, scope: Scope) -> Response | None:
        headers = dict(scope["headers"])
        raw = scope.get("raw_path", b"") + b"?" + scope.get("query_string", b"")
        if b"%00" in raw or b"\x00" in raw or b"\x00" in headers.get(b"idempotency-key", b""):
            return problem(422, "Invalid request", "NUL characters are not allowed in paths, queries or keys")
        length = headers.get(b"content-length")
        limit = self.max_upload if scope["path"] in UPLOAD_PATHS else self.max_body
        if length is not None and (not length.isdigit() or int(length) > limit):
            return too_large(limit)
        coding = headers.get(b"content-encoding", b"identity").strip().lower()
        # gzip was read as JSON ("not UTF-8") and br ignored: no body is decoded
        if coding != b"identity" and scope["method"] not in ("GET", "HEAD"):
            return problem(
                415,
                "Unsupported media type",
                "request bodies are not decoded: send the body without Content-Encoding "
                f"({coding.decode('latin-1')!r})",
            )
        keys = sum(name == b"idempotency-key" for name, _ in scope["headers"])
        if keys > 1:  # the first one was used silently: a retry carrying the other wrote the request twice
            return problem(422, "Invalid request", f"{keys} Idempotency-Key headers: send exactly one")
        return None
