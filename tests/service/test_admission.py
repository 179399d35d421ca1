"""Admission before bodies: a keyed route answers a missing or invalid key from the headers alone (an
anonymous client cannot make the service receive its upload), and each key's writes are rate limited
(429 + Retry-After), per process or, with Redis, across processes. Real uvicorn, real sockets."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import func, select

from service.core.db.engine import session_scope
from service.core.db.tables import DeletionRequest
from tests.conftest import Backend
from tests.factories import make_key, make_model
from tests.liveapp import LiveApp, prepared, read_response, serve


@dataclass
class Seeded:
    writer: str  # deletion:write + jobs:read
    other: str  # another key of the same tenant
    admin: str


def seed(backend: Backend, **env: str) -> tuple[Backend, Seeded]:
    backend = Backend(backend.name, {**backend.env, **env})
    with session_scope(prepared(backend.settings()).resolved_database_url) as s:
        make_model(s, name="toy", n_train=50)
        scopes = ("deletion:write", "jobs:read")
        keys = Seeded(make_key(s, scopes=scopes), make_key(s, scopes=scopes), make_key(s, scopes=("admin",)))
    return backend, keys


@pytest.fixture
def gated(backend: Backend) -> Iterator[tuple[LiveApp, Seeded]]:
    backend, keys = seed(backend)
    with serve(backend.settings()) as app:
        yield app, keys


def head_only(app: LiveApp, path: str, length: int, auth: str | None) -> tuple[int, dict[str, str], bytes]:
    """Send a request's headers announcing `length` body bytes, and none of the body; read the answer
    (the socket times out after 10 s: a server that waits for the body fails the test)."""
    with app.connect(timeout=10) as sock:
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        if auth is not None:
            head += f"Authorization: {auth}\r\n"
        sock.sendall(f"{head}Content-Length: {length}\r\n\r\n".encode())
        return read_response(sock)


@pytest.mark.parametrize("path", ["/v1/datasets/upload", "/v1/models", "/v1/models/toy/deletion-requests"])
@pytest.mark.parametrize(
    ("auth", "detail"),
    [
        (None, "missing API key: send the header `Authorization: Bearer <key>`"),
        ("Basic dXNlcjpwdw==", "the Authorization header must read `Bearer <key>`, not 'Basic' ..."),
        ("ul_0000_sent-bare", "missing API key: send the header `Authorization: Bearer <key>`"),  # no echo
        ("Bearer ul_0000_not-a-key", "invalid or revoked API key"),
        # two headers (raw: the second line is a header of its own): which key acts would be a guess
        ("Bearer ul_0000_a\r\nAuthorization: Bearer ul_0000_b", "2 Authorization headers: send exactly one"),
    ],
)
def test_a_bad_key_is_answered_401_before_the_body_arrives(
    gated: tuple[LiveApp, Seeded], path: str, auth: str | None, detail: str
) -> None:
    app, _ = gated
    status, headers, body = head_only(app, path, 5_000_000, auth)
    assert status == 401
    assert headers["content-type"].startswith("application/problem+json")
    assert headers["www-authenticate"] == "Bearer"
    assert json.loads(body) == {
        "type": "about:blank",
        "title": "Unauthorized",
        "status": 401,
        "detail": detail,
    }


@pytest.mark.parametrize("path", ["/v1/datasets/upload", "/v1/models"])
def test_a_key_without_admin_is_refused_an_upload_before_the_body_arrives(
    gated: tuple[LiveApp, Seeded], path: str
) -> None:
    """The route's own scope check runs once the form is read: a jobs:read key made the service receive
    a whole upload before hearing 403 (a probe)."""
    app, keys = gated
    status, headers, body = head_only(app, path, 5_000_000, f"Bearer {keys.writer}")
    assert status == 403 and headers["content-type"].startswith("application/problem+json")
    assert json.loads(body)["detail"] == "this API key lacks the scope 'admin'"
    assert json.loads(body)["required_scopes"] == ["admin"]


def test_a_revoked_key_is_refused_before_the_body_and_public_routes_need_none(
    gated: tuple[LiveApp, Seeded],
) -> None:
    app, keys = gated
    with app.client(keys.admin) as c:
        me = c.get("/v1/keys", params={}).json()
        writer_id = next(k["id"] for k in me if "deletion:write" in k["scopes"])
        assert c.post(f"/v1/keys/{writer_id}/revoke").status_code == 200
    status, _, body = head_only(app, "/v1/models/toy/deletion-requests", 1_000_000, f"Bearer {keys.writer}")
    assert status == 401 and json.loads(body)["detail"] == "invalid or revoked API key"
    with app.client() as anonymous:
        for path in ("/healthz", "/metrics", "/openapi.json", "/dashboard/"):
            assert anonymous.get(path).status_code == 200, path


def test_the_interactive_schema_is_served_from_the_service_itself(gated: tuple[LiveApp, Seeded]) -> None:
    """FastAPI's /docs loaded Swagger UI from cdn.jsdelivr.net: blank on a service with no internet, and a
    third party's script on the page where users paste their keys (a probe). No key needed, as the schema;
    a Swagger UI that reads the OpenAPI 3.1 FastAPI writes (4.x showed "Unable to render this definition":
    a review); only its own files, and no framing."""
    app, _ = gated
    with app.client() as anonymous:
        page = anonymous.get("/docs")
        assert page.status_code == 200 and "://" not in page.text, page.text  # nothing from elsewhere
        scripts = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert "/docs/assets/swagger-ui-bundle.js" in scripts, scripts
        for asset in scripts:
            got = anonymous.get(asset)
            assert got.status_code == 200 and len(got.content) > 100, asset
        assert anonymous.get("/openapi.json").json()["openapi"].startswith("3.1")
        assert "isOAS31" in anonymous.get("/docs/assets/swagger-ui-bundle.js").text  # Swagger UI 5
        policy = page.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in policy and "'sha256-" in policy, policy
        assert anonymous.get("/docs/assets/index.html").status_code == 404  # only the page's own files
        assert anonymous.get("/redoc").status_code == 404  # it loaded its script from a CDN too


def test_a_valid_key_is_let_through_to_the_route(gated: tuple[LiveApp, Seeded]) -> None:
    app, keys = gated
    with app.client(keys.writer) as c:
        r = c.post("/v1/models/toy/deletion-requests", json={"sample_ids": ["toy-0001"]})
        assert r.status_code == 202, r.text
        assert c.get("/v1/keys").status_code == 403  # the route still checks the scope


def test_uploads_are_limited_to_512_mib_by_default(gated: tuple[LiveApp, Seeded]) -> None:
    app, keys = gated
    admin = f"Bearer {keys.admin}"
    status, headers, _ = head_only(app, "/v1/datasets/upload", 512 * 1024**2 + 1, admin)
    assert status == 413 and headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize("auth", [None, "Bearer ul_0000_not-a-key", "admin"])
def test_a_declared_body_over_the_limit_is_a_problem_413_whoever_sends_it(
    gated: tuple[LiveApp, Seeded], auth: str | None
) -> None:
    """FastAPI's app-wide body limit answered these first, in plain text ("Content Too Large")."""
    app, keys = gated
    sent = f"Bearer {keys.admin}" if auth == "admin" else auth
    status, headers, body = head_only(app, "/v1/models/toy/deletion-requests", 16 * 1024**2 + 1, sent)
    assert status == 413 and headers["content-type"].startswith("application/problem+json")
    refusal = json.loads(body)  # the limit as a number too, as the sample-ID 413 gives its own (a probe)
    assert (refusal["detail"], refusal["limit_bytes"]) == (
        f"request bodies here are limited to {16 * 1024**2} bytes",
        16 * 1024**2,
    )
    # an upload of that size is within its own limit: an anonymous one is the 401, not a 413
    assert head_only(app, "/v1/datasets/upload", 16 * 1024**2 + 1, None)[0] == 401


def request_count(app: LiveApp) -> int:
    with session_scope(app.db) as s:
        return s.scalar(select(func.count()).select_from(DeletionRequest)) or 0


@pytest.fixture
def limited(backend: Backend) -> Iterator[tuple[LiveApp, Seeded]]:
    backend, keys = seed(backend, UNLEARN_WRITE_RATE_PER_KEY="0.01", UNLEARN_WRITE_BURST_PER_KEY="3")
    with serve(backend.settings()) as app:
        yield app, keys


def test_a_burst_over_the_limit_is_429_with_retry_after_and_only_for_that_keys_writes(
    limited: tuple[LiveApp, Seeded],
) -> None:
    app, keys = limited
    body = {"sample_ids": ["toy-0001"]}
    with app.client(keys.writer) as c:
        assert [c.post("/v1/models/toy/deletion-requests", json=body).status_code for _ in range(3)] == [
            202
        ] * 3
        before = request_count(app)
        r = c.post("/v1/models/toy/deletion-requests", json=body)
        assert r.status_code == 429, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        wait = r.headers["Retry-After"]
        assert wait.isdigit() and 60 <= int(wait) <= 100  # one token at 0.01/s is ~100 s away
        assert r.json()["retry_after_seconds"] == int(wait) and "3" in r.json()["detail"]
        assert request_count(app) == before  # refused before anything was written
        assert c.get("/v1/models/toy").status_code == 200  # reads are not limited
        assert c.get("/v1/deletion-requests").status_code == 200
    with app.client(keys.other) as c:  # another key has its own bucket
        assert c.post("/v1/models/toy/deletion-requests", json=body).status_code == 202


def test_with_redis_the_limit_is_shared_by_api_processes(backend: Backend) -> None:
    if backend.name != "postgres":
        pytest.skip("buckets are shared through Redis only; the embedded stack runs one API process")
    backend, keys = seed(backend, UNLEARN_WRITE_RATE_PER_KEY="0.01", UNLEARN_WRITE_BURST_PER_KEY="2")
    body = {"sample_ids": ["toy-0002"]}
    with serve(backend.settings()) as one, serve(backend.settings()) as two:
        with one.client(keys.writer) as c:
            assert [c.post("/v1/models/toy/deletion-requests", json=body).status_code for _ in range(2)] == [
                202
            ] * 2
        with two.client(keys.writer) as c:
            r = c.post("/v1/models/toy/deletion-requests", json=body)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 60
