"""A small HTTP client for the public API (httpx), used by the `unlearn` command line.

Every failure becomes one `ApiError` whose message is a single line a person can act on: the server is
down, the key was rejected or lacks a scope, the object does not exist, or the server's own `detail`.
It imports nothing heavy (no torch, no database), so the CLI starts fast on any machine.
"""

from __future__ import annotations

import math
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import httpx

from service.cli.errors import UsageError
from service.core.states import RequestState

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL_REQUEST_STATES = frozenset({RequestState.COMPLETED, RequestState.FAILED, RequestState.CANCELLED})
T = TypeVar("T")


class ApiError(Exception):
    """A failed call. `kind` is one of: unreachable, auth, forbidden, not_found, conflict, invalid, server."""

    def __init__(
        self,
        message: str,
        *,
        kind: str,
        status: int | None = None,
        body: Any = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.status = status
        self.body = body
        self.retry_after = retry_after  # seconds, where the server said when to try again

    @property
    def temporary(self) -> bool:
        """The server could not be reached, or said it is briefly unavailable (503) or busy (429): the
        same call may well succeed shortly."""
        return self.kind == "unreachable" or self.status in (429, 503)


def retried(call: Callable[[], T], within_s: float, *, unreachable: bool = True) -> T:
    """``call()``, made again while it fails for a reason that passes (``ApiError.temporary``; a server
    that cannot be reached only where ``unreachable``), waiting what the server's Retry-After says (1-10
    s), for up to ``within_s`` seconds; then its error."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            return call()
        except ApiError as exc:
            said = exc.retry_after if exc.retry_after is not None and math.isfinite(exc.retry_after) else 2.0
            wait = min(max(said, 1.0), 10.0)
            passes = exc.temporary and (unreachable or exc.kind != "unreachable")
            if not passes or time.monotonic() + wait > deadline:
                raise
            time.sleep(wait)


def resolve_url(url: str | None) -> str:
    """--url, else UNLEARN_URL, else the local default; one that is not an http(s) address is a usage
    error (exit 2), not a server that cannot be reached (exit 3)."""
    chosen = (url or os.environ.get("UNLEARN_URL") or DEFAULT_URL).rstrip("/")
    try:
        parsed = httpx.URL(chosen)
    except httpx.InvalidURL as exc:
        raise UsageError(f"{chosen!r} is not a URL ({exc}); set --url or UNLEARN_URL") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise UsageError(f"{chosen!r} is not an http(s) URL such as {DEFAULT_URL}; set --url or UNLEARN_URL")
    return chosen


def resolve_key(key: str | None, url: str = DEFAULT_URL) -> str | None:
    """--api-key, else UNLEARN_API_KEY, else (for a server on this machine only, so a local admin key is
    never sent elsewhere) the embedded stack's $UNLEARN_VAR_DIR/admin.key if there is one."""
    if key:
        return key.strip()
    if os.environ.get("UNLEARN_API_KEY"):
        return os.environ["UNLEARN_API_KEY"].strip()
    if httpx.URL(url).host not in ("127.0.0.1", "localhost", "::1"):
        return None
    path = Path(os.environ.get("UNLEARN_VAR_DIR", "var")) / "admin.key"
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _sendable(key: str) -> bool:
    """Whether a key can go in a header as it is: printable ASCII (every key the service issues is)."""
    return key.isascii() and key.isprintable()


def _detail(response: httpx.Response) -> tuple[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return (response.text.strip().splitlines() or [response.reason_phrase])[0][:300], None
    if isinstance(body, dict) and body.get("detail"):
        return str(body["detail"]), body
    return response.reason_phrase, body


def _examples(ids: list[Any]) -> str:
    return f"{', '.join(map(str, ids[:5]))}{', ...' if len(ids) > 5 else ''}"


def _invalid(detail: str, body: dict[str, Any]) -> str:
    """A 422's detail with what its body names: the unknown samples and subjects, and each invalid field's
    reason (the detail of a validation error names only the fields)."""
    samples, subjects = body.get("unknown_ids") or [], body.get("unknown_subject_ids") or []
    if samples and subjects:
        return f"{detail} (e.g. samples {_examples(samples)}; subjects {_examples(subjects)})"
    if samples or subjects:
        return f"{detail} (e.g. {_examples(samples or subjects)})"
    errors = [e for e in body.get("errors") or [] if isinstance(e, dict) and e.get("msg")]
    if not errors:
        return detail
    pairs = [(".".join(map(str, e.get("loc") or [])), str(e["msg"])) for e in errors[:5]]
    more = "; ..." if len(errors) > 5 else ""
    if detail.startswith("invalid fields:"):  # the server's validation error: fields, and why each
        return "invalid fields: " + "; ".join(f"{loc} ({msg})" if loc else msg for loc, msg in pairs) + more
    said = [(loc, msg) for loc, msg in pairs if msg not in detail]  # a domain 422 often says it already
    if not said:
        return detail
    return f"{detail} ({'; '.join(f'{loc}: {msg}' if loc else msg for loc, msg in said)}{more})"


def _one_line(text: str) -> str:
    return " ".join(text.split())


class Client:
    def __init__(self, url: str | None = None, key: str | None = None, *, timeout: float = 30.0) -> None:
        self.url = resolve_url(url)
        self.key = resolve_key(key, self.url)
        headers = {"User-Agent": "unlearn-cli"}
        if self.key and _sendable(self.key):
            headers["Authorization"] = f"Bearer {self.key}"
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- plumbing --------------------------------------------------------------------------------------

    def _check_key(self) -> None:
        if not self.key:
            raise ApiError(
                "no API key: pass --api-key or set UNLEARN_API_KEY (the embedded stack writes one to "
                "var/admin.key)",
                kind="auth",
            )
        if not _sendable(self.key):  # a traceback (non-ASCII) or "cannot reach the server" (a newline)
            raise ApiError(
                "the API key holds characters an HTTP header cannot carry (keys are printable ASCII): "
                "check --api-key, UNLEARN_API_KEY or the key file",
                kind="auth",
            )

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        self._check_key()
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        if not response.is_success:
            self._raise_for(response)
        return response

    def get(self, path: str, **params: Any) -> Any:
        clean = {k: v for k, v in params.items() if v is not None}
        return self._send("GET", path, params=clean).json()

    def post(self, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        return self._send("POST", path, json=body, headers=headers).json()

    # -- the API ---------------------------------------------------------------------------------------

    def models(self) -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], self.get("/v1/models"))

    def datasets(self) -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], self.get("/v1/datasets"))

    def upload(self, path: str, form: dict[str, str], files: dict[str, Any]) -> dict[str, Any]:
        """A multipart POST; the files are streamed (a file object is read in chunks, not loaded)."""
        return cast(dict[str, Any], self._send("POST", path, data=form, files=files).json())

    def versions(self, model: str) -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], self.get(f"/v1/models/{model}/versions"))

    def create_request(
        self,
        model: str,
        sample_ids: list[str],
        reference: str | None = None,
        *,
        subject_ids: list[str] | None = None,
        reason: str = "erasure",
        idempotency_key: str | None = None,
        retry_for: float = 0.0,
    ) -> dict[str, Any]:
        """POST a deletion request under ``idempotency_key`` (one of its own when none is given), sent again
        with the same key while the server is briefly unavailable, for up to ``retry_for`` seconds: an
        answer lost to a 503 or a dropped connection may have been acted on, and the key makes the
        second POST return the first's request instead of a duplicate."""
        body: dict[str, Any] = {"sample_ids": sample_ids}
        if subject_ids:
            body["subject_ids"] = subject_ids
        if reference:
            body["reference"] = reference
        if reason != "erasure":
            body["reason"] = reason
        headers = {"Idempotency-Key": idempotency_key or f"cli-{uuid.uuid4().hex}"}
        path = f"/v1/models/{model}/deletion-requests"
        # a server that cannot be reached at all is not waited for here: most often a wrong --url
        post = retried(lambda: self.post(path, body, headers), retry_for, unreachable=False)
        return cast(dict[str, Any], post)

    def request(self, request_id: str) -> dict[str, Any]:
        return cast(dict[str, Any], self.get(f"/v1/deletion-requests/{request_id}"))

    def requests(self, **filters: Any) -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], self.get("/v1/deletion-requests", **filters)["items"])

    def certificate(self, request_id: str) -> dict[str, Any]:
        return cast(dict[str, Any], self.get(f"/v1/deletion-requests/{request_id}/certificate"))

    def job(self, job_id: str) -> dict[str, Any]:
        return cast(dict[str, Any], self.get(f"/v1/jobs/{job_id}"))

    def jobs(self, **filters: Any) -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], self.get("/v1/jobs", **filters)["items"])

    def audit_verify(self) -> dict[str, Any]:
        return cast(dict[str, Any], self.get("/v1/audit/verify"))

    def public_key(self) -> dict[str, Any]:
        return cast(dict[str, Any], self.get("/v1/audit/public-key"))

    def audit_export(self, fmt: str, out: Any, **filters: Any) -> int:
        """Stream the export into the binary file `out`; returns the number of bytes written."""
        params = {"format": fmt, **{k: v for k, v in filters.items() if v is not None}}
        self._check_key()
        written = 0
        try:
            with self._http.stream("GET", "/v1/audit/export", params=params) as response:
                if not response.is_success:
                    self._raise_for(response)
                for chunk in response.iter_bytes():
                    out.write(chunk)
                    written += len(chunk)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        return written

    def _unreachable(self, exc: httpx.TransportError) -> ApiError:
        if isinstance(exc, httpx.TimeoutException):
            return ApiError(f"the server at {self.url} did not answer in time", kind="unreachable")
        reason = _one_line(str(exc)) or type(exc).__name__
        return ApiError(
            f"cannot reach the unlearning service at {self.url} ({reason}); is it running? "
            "(set --url or UNLEARN_URL)",
            kind="unreachable",
        )

    def _raise_for(self, response: httpx.Response) -> None:
        """Turn an error response into one ApiError with a one-line message."""
        response.read()
        detail, body = _detail(response)
        status = response.status_code
        if not (isinstance(body, dict) and body.get("detail")):
            raise ApiError(
                f"{self.url} answered {status} {response.reason_phrase} to {response.request.method} "
                f"{response.request.url.path} without a problem body: is this the unlearning service? "
                "(check --url / UNLEARN_URL)",
                kind="server",
                status=status,
            )
        if status == 401:
            raise ApiError(
                f"the server rejected the API key: {detail}", kind="auth", status=status, body=body
            )
        kind = {403: "forbidden", 404: "not_found", 409: "conflict", 413: "invalid", 422: "invalid"}.get(
            status, "server"
        )
        message = detail
        if status == 422 and isinstance(body, dict):
            message = _invalid(detail, body)
        if kind == "server":
            message = f"the server answered {status}: {detail}"
        try:
            retry_after: float | None = float(response.headers.get("retry-after", ""))
        except ValueError:
            retry_after = None
        raise ApiError(_one_line(message), kind=kind, status=status, body=body, retry_after=retry_after)

    def create_key(self, scopes: list[str], name: str = "", tenant: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"scopes": scopes, "name": name}
        if tenant:
            body["tenant"] = tenant
        return cast(dict[str, Any], self.post("/v1/keys", body))

    def revoke_key(self, key_id: str) -> dict[str, Any]:
        return cast(dict[str, Any], self.post(f"/v1/keys/{key_id}/revoke"))
