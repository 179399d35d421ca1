"""Rendering errors at the HTTP edge: every domain error, validation error and unexpected exception
becomes one `application/problem+json` body (RFC 9457), so no route builds error JSON by hand."""

from __future__ import annotations

import email.message
import json
from typing import Any
from urllib.parse import quote, quote_from_bytes

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.body_limit import MAX_BODY_SIZE_SCOPE_KEY  # where a request's body limit is kept
from starlette.routing import Match, compile_path

from service.core.errors import ProblemError

PROBLEM = "application/problem+json"


class Problem(BaseModel):
    """An error, as RFC 9457 describes it; extra members (e.g. `unknown_ids`) name what was wrong."""

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[dict[str, Any]] | None = None


WHY = {
    400: "The request is malformed",
    401: "No API key, or an invalid or revoked one",
    403: "The key lacks the scope this route needs",
    404: "No such object in the caller's tenant",
    409: "The object's state does not allow this now",
    410: "The object existed and was deleted on purpose (a retired checkpoint)",
    413: "The body, or the list of sample IDs, is over the limit",
    415: "The body came with a Content-Encoding (gzip, ...): bodies are read as sent",
    422: "The input is invalid; the body names the field or the IDs",
    429: "Too many writes with this key (writes only): retry after the `Retry-After` header's seconds",
    503: "A dependency (database, broker) is unavailable",
    507: "An upload could not be stored: the service's storage is full or read-only (nothing was kept)",
}


def body_problem(request: Request, errors: list[dict[str, Any]]) -> str | None:
    """What is wrong with a body a route that reads a JSON object could not read at all, or None. FastAPI
    reports a missing body, and one it never parsed as JSON, as the whole body being one invalid field:
    it parses JSON only under `application/json` or `application/*+json` (its rule, copied here)."""
    kinds = {e["type"] for e in errors if e["loc"] == ["body"]}
    if "missing" in kinds:
        return "the request has no body: send a JSON object, with Content-Type: application/json"
    sent = request.headers.get("content-type")
    message = email.message.Message()
    message["content-type"] = sent or ""
    subtype = message.get_content_subtype()
    json_type = (
        bool(sent)
        and message.get_content_maintype() == "application"
        and (subtype == "json" or subtype.endswith("+json"))
    )
    if kinds and not json_type:
        return f"the body must be JSON sent as Content-Type: application/json (it came as {sent or 'none'})"
    return None


def _plus_read_as_space(error: Any) -> bool:
    """A query time whose `+00:00` arrived as ` 00:00`: curl and browsers leave `+` as it is, and a query
    string reads it as a space (a probe's `since=...T07:41:00+00:00` got a bare datetime error)."""
    loc, value = error.get("loc", ()), error.get("input")
    kind = str(error.get("type", ""))
    return bool(loc) and loc[0] == "query" and kind.startswith("datetime") and " " in str(value).strip()


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` documenting error statuses as `application/problem+json` bodies."""
    return {
        status: {
            "description": WHY[status],
            "content": {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status in statuses
    }


# Every route can meet these: the screen refuses NUL bytes and oversized bodies before routing, and a
# database outage is a 503.
ANY_ROUTE = (413, 422, 503)
# ... and every route behind a key these (429: writes over the key's rate limit, service.api.ratelimit).
KEYED = (400, 401, 403, 404, 409, 413, 422, 429, 503)


def problem_body(status: int, title: str, detail: str, **extra: Any) -> dict[str, Any]:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    body.update({k: v for k, v in extra.items() if v is not None})
    return body


def domain_problem(exc: ProblemError) -> dict[str, Any]:
    """The body a domain error is answered with (also one item of a batch's results)."""
    return problem_body(exc.status, exc.title, exc.detail, errors=exc.errors, **exc.extra)


_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})


def _other_slash(request: Request) -> str | None:
    """The path and query this request's path names with its trailing slash added or taken away, where a
    route takes that, as a relative reference. (Starlette's own redirect, turned off in ``create_app``,
    wrote the request's Host header into ``Location``: anyone who could set that header, a proxy's cache
    included, chose where clients were sent.)"""
    path = request.scope["path"]
    if path == "/":
        return None
    scope = {**request.scope, "path": path.rstrip("/") if path.endswith("/") else path + "/"}
    if not any(route.matches(scope)[0] is not Match.NONE for route in request.app.router.routes):
        return None
    # as sent, percent-escapes kept: raw UTF-8 read as latin-1 and quoted again was garbled (a review)
    query = quote_from_bytes(request.scope.get("query_string", b""), safe="=&;%+/:@!$'()*,?~")
    return quote(scope["path"]) + (f"?{query}" if query else "")


def _allowed(request: Request) -> list[str]:
    """The methods the API takes at this request's path, read off its schema (HEAD wherever GET is:
    ``service.api.head``). Starlette's 405 named the methods of the first route whose path matched."""
    methods: set[str] = set()
    matching = {
        p: o for p, o in request.app.openapi()["paths"].items() if compile_path(p)[0].match(request.url.path)
    }
    literal = {p: o for p, o in matching.items() if "{" not in p}  # /v1/datasets/upload, not /{dataset_id}
    for operations in (literal or matching).values():  # a probe read GET in the upload route's Allow
        methods |= {m.upper() for m in operations if m in _METHODS}
    if not methods:  # a route outside the schema: the documents and the dashboard, all read with GET
        methods = {"GET"}
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


class ProblemResponse(JSONResponse):
    """A problem body that renders whatever text it echoes: a message naming a lone surrogate a client
    sent (a params key "\\ud800") failed UTF-8 encoding and became a 500; such a body is written with
    ASCII escapes instead, which any JSON parser reads back to the same text."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()


def problem(status: int, title: str, detail: str, **extra: Any) -> JSONResponse:
    body = problem_body(status, title, detail, **extra)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return ProblemResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


FORM_FIELD_BYTES = 1024 * 1024  # Starlette's max_part_size, the most a multipart field's text may hold


def too_large(limit: int | None) -> JSONResponse:
    """The 413, the same whether the body declared its length or was counted as it came; its
    ``limit_bytes``, as the sample-ID 413 carries its ``limit`` (a count of IDs, on the same path: hence
    the other name), so a client can split or shrink what it sends."""
    if isinstance(limit, int):
        detail = f"request bodies here are limited to {limit} bytes"
        return problem(413, "Payload too large", detail, limit_bytes=limit)
    detail = "the request body is over its limit (UNLEARN_MAX_BODY_BYTES; uploads: UNLEARN_MAX_UPLOAD_BYTES)"
    return problem(413, "Payload too large", detail)


def unreadable_json(cause: BaseException | None) -> str | None:
    """Why a body FastAPI could not parse, for the ways a JSON body fails other than its syntax (which
    is a validation error with its own message); None for anything else."""
    if isinstance(cause, UnicodeDecodeError):
        return f"it is not UTF-8 ({cause.reason} at byte {cause.start})"
    if isinstance(cause, RecursionError):
        return "it nests arrays or objects too deeply"
    if isinstance(cause, ValueError) and "integer string conversion" in str(cause):  # a probe's 5,000 9s
        return "it holds a number of more than 4,300 digits"
    return None


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ProblemError)
    async def _problem(_: Request, exc: ProblemError) -> JSONResponse:
        return ProblemResponse(domain_problem(exc), status_code=exc.status, media_type=PROBLEM)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        fields = ", ".join(".".join(str(p) for p in e["loc"]) for e in errors)
        detail = f"invalid fields: {fields}"
        for e in exc.errors():
            if e.get("type") == "json_invalid":  # its loc is (body, character offset): not a field
                why = (e.get("ctx") or {}).get("error", "")
                detail = f"the body is not valid JSON: {why} (at character {e['loc'][-1]})"
        detail = body_problem(request, errors) or detail  # "invalid fields: body" named nothing to fix
        if any(_plus_read_as_space(e) for e in exc.errors()):
            detail += " (a '+' in a query string reads as a space: send a time's offset as %2B00:00, or Z)"
        return problem(422, "Invalid request", detail, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        unreadable = unreadable_json(exc.__cause__) if exc.status_code == 400 else None
        if unreadable is not None:  # FastAPI's "There was an error parsing the body" named neither
            return problem(422, "Invalid request", f"the body is not valid JSON: {unreadable}")
        if exc.status_code == 413:  # a chunked body counted past its router's limit: as a declared one
            return too_large(request.scope.get(MAX_BODY_SIZE_SCOPE_KEY))
        if exc.status_code == 400 and str(exc.detail).startswith(("Part exceeded", "Field exceeded")):
            # Starlette's limit on a form field's text (files are not held to it): a generic 400 said less
            why = f"a form field's text (spec, features, ...) is over {FORM_FIELD_BYTES} bytes"
            return problem(413, "Payload too large", why, limit_bytes=FORM_FIELD_BYTES)
        title, detail = "HTTP error", str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":  # the router's: no route has this path
            other = _other_slash(request)
            if other is not None:
                return RedirectResponse(other, status_code=307)
            title, detail = "Not found", f"no route here: {request.url.path}"
        response_headers = dict(exc.headers or {})
        if exc.status_code == 405:  # RFC 9110 requires Allow: every route's on this path, not the first's
            allowed = ", ".join(_allowed(request))
            response_headers["Allow"] = allowed
            title, detail = "Method not allowed", f"{request.method} {request.url.path}: allowed {allowed}"
        response = problem(exc.status_code, title, detail)
        response.headers.update(response_headers)
        return response

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    @app.exception_handler(SQLAlchemyTimeoutError)
    async def _database_down(_: Request, exc: Exception) -> JSONResponse:
        # The database is restarting or unreachable: the client's request is fine and may be retried (a
        # deletion request with the same Idempotency-Key, should the commit itself have been cut off).
        response = problem(
            503,
            "Service unavailable",
            f"the database is unavailable ({type(exc).__name__}); retry shortly, with the same "
            "Idempotency-Key for a deletion request",
        )
        response.headers["Retry-After"] = "2"
        return response

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        return problem(500, "Internal error", f"unexpected {type(exc).__name__}")


def install_problem_schema(app: FastAPI) -> None:
    """Put `Problem` into the OpenAPI components, where `problems()` refers to it, and the 415 that the
    screen in front of the routes gives any request whose body it would have to decode (no route sees
    that request, so none declared it: a probe's schema check)."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = original()
            schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = (
                Problem.model_json_schema()
            )
            for operations in schema["paths"].values():
                for method, operation in operations.items():
                    if method not in ("get", "head"):
                        operation["responses"]["415"] = problems(415)[415]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
