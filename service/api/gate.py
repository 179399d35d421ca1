"""Admission of keyed requests before their bodies are read: the caller's API key, then (for writes) the
key's rate limit.

FastAPI reads and parses a request's body before it runs the route's dependencies, so a key checked
there is checked too late: an anonymous client could make the service receive (and spool to disk) a body
of up to UNLEARN_MAX_UPLOAD_BYTES before hearing 401. This middleware answers from the headers alone.

Every route under /v1/ needs a key; the public ones (/healthz, /readyz, /metrics, /dashboard, the OpenAPI
documents) live outside it and pass untouched. Uploads need `admin`, checked here; other scopes are
checked by each route's `require_scope`, which then finds the key in the cache this check filled. Pure
ASGI: a cached key costs a dictionary lookup; a miss reads the database in a worker thread, never on the
event loop.
"""

from __future__ import annotations

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.deps import INVALID_KEY, MISSING_KEY, KeyCache, authenticate
from service.api.errors import problem
from service.api.ratelimit import WriteLimiter, retry_after

KEYED_PREFIX = "/v1/"
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# The routes whose POST bodies are uploads, read up to UNLEARN_MAX_UPLOAD_BYTES; both are admin's: a key
# of a narrower scope is refused here too, since the route's own check runs once the form is read
UPLOAD_PATHS = frozenset({"/v1/models", "/v1/datasets/upload"})
LACKS_ADMIN = "this API key lacks the scope 'admin'"  # as require_scope words it


def bearer_token(scope: Scope) -> str | None:
    """The credentials of an `Authorization: Bearer <key>` header, parsed as FastAPI's HTTPBearer
    parses them (scheme case-insensitive, token stripped), or None."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            token = token.strip()
            return token if scheme.lower() == "bearer" and token else None
    return None


def _missing(header: bytes | None) -> str:
    """Why a request carries no Bearer key: none at all, or another scheme, named only when it looks
    like one (a bare key sent without a scheme must not be echoed back into logs)."""
    scheme = (header or b"").decode("latin-1").partition(" ")[0]
    if scheme.isalpha() and len(scheme) <= 20 and scheme.lower() != "bearer":
        return f"the Authorization header must read `Bearer <key>`, not {scheme!r} ..."
    return MISSING_KEY


class AdmitRequests:
    def __init__(
        self,
        app: ASGIApp,
        *,
        key_cache: KeyCache,
        sessions: sessionmaker[Session],
        limiter: WriteLimiter | None,
    ) -> None:
        self.app, self.key_cache, self.sessions, self.limiter = app, key_cache, sessions, limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(KEYED_PREFIX):
            refusal = await self.refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def refusal(self, scope: Scope) -> Response | None:
        sent = [v for name, v in scope["headers"] if name == b"authorization"]
        if len(sent) > 1:  # which key would act is a guess: the first one, silently, before
            return problem(401, "Unauthorized", f"{len(sent)} Authorization headers: send exactly one")
        token = bearer_token(scope)
        if token is None:
            return problem(401, "Unauthorized", _missing(sent[0] if sent else None))
        try:
            key = await authenticate(self.key_cache, self.sessions, token)
        except SQLAlchemyError as exc:
            response = problem(
                503,
                "Service unavailable",
                f"the database is unavailable, so API keys cannot be checked now ({type(exc).__name__}); "
                "retry shortly",
            )
            response.headers["Retry-After"] = "2"
            return response
        if key is None:
            return problem(401, "Unauthorized", INVALID_KEY)
        if scope["method"] == "POST" and scope["path"] in UPLOAD_PATHS and "admin" not in key.scopes:
            # a jobs:read key made the service receive a whole upload before hearing 403 (a probe)
            return problem(403, "Forbidden", LACKS_ADMIN, required_scopes=["admin"])
        if self.limiter is not None and scope["method"] in WRITE_METHODS:
            wait = await self.limiter.acquire(key.id)
            if wait > 0:
                seconds = retry_after(wait)
                response = problem(
                    429,
                    "Too many requests",
                    f"this API key may make {self.limiter.rate:g} writes a second (bursts of "
                    f"{self.limiter.burst}); retry in {seconds} s",
                    retry_after_seconds=seconds,
                )
                response.headers["Retry-After"] = str(seconds)
                return response
        return None
