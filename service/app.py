"""The FastAPI application. It never imports torch or the workers: it talks to them only through the
database and the queue (tasks are sent by name)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response

from service.api import audit, deletion_requests, health, jobs, models
from service.db.engine import sessionmaker_for
from service.errors import install_handlers, problem
from service.queue import make_celery
from service.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="Unlearning service",
        version="0.1.0",
        description="Make a deployed classifier forget training samples on request, and prove it.",
    )
    app.state.settings = settings
    app.state.sessionmaker = sessionmaker_for(settings.resolved_database_url)
    app.state.celery = make_celery(settings)
    install_handlers(app)

    @app.middleware("http")
    async def limit_body_size(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > settings.max_body_bytes):
            return problem(413, "Payload too large", f"request bodies are limited to {settings.max_body_bytes} bytes")
        return await call_next(request)

    for module in (health, deletion_requests, jobs, models, audit):
        app.include_router(module.router)
    return app
