"""Issue-5 contracts through real HTTP (uvicorn in a thread) and the real database: idempotency under
concurrency, cancellation, tenant isolation, the audit chain's tamper detection, pagination, metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, inspect, select, update

from service.api.app import create_app
from service.core import merkle
from service.core.db.engine import session_scope
from service.core.db.tables import AuditEvent, AuditHead, AuditNode, DeletionRequest
from service.core.settings import Settings
from tests.conftest import Backend
from tests.factories import make_key, make_model
from tests.helpers import migrated
from tests.liveapp import prepared, serve


@dataclass
class Live:
    url: str
    db: str
    key: str

    def client(self, key: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {key or self.key}"}, timeout=30
        )


@pytest.fixture
def live(backend: Backend) -> Iterator[Live]:
    settings = backend.settings()
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    db = settings.resolved_database_url
    migrated(db)
    with session_scope(db) as s:
        make_model(s, name="toy", n_train=200)
        key = make_key(s, scopes=("deletion:write", "jobs:read", "audit:read"))
    with serve(settings) as app:
        yield Live(app.url, db, key)


def request_count(db: str) -> int:
    with session_scope(db) as s:
        return len(s.scalars(select(DeletionRequest.id)).all())


def test_idempotency_key_replays_the_original_request(live: Live) -> None:
    body = {"sample_ids": ["toy-0001", "toy-0002"], "reference": "T-1"}
    with live.client() as c:
        first = c.post("/v1/models/toy/deletion-requests", json=body, headers={"Idempotency-Key": "abc"})
        again = c.post("/v1/models/toy/deletion-requests", json=body, headers={"Idempotency-Key": "abc"})
        other = c.post(
            "/v1/models/toy/deletion-requests",
            json={**body, "reference": "T-2"},
            headers={"Idempotency-Key": "abc"},
        )
    assert first.status_code == 202
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert other.status_code == 422 and "Idempotency-Key" in other.json()["detail"]
    assert request_count(live.db) == 1


def test_twenty_concurrent_retries_create_one_request(live: Live) -> None:
    body = {"sample_ids": ["toy-0005"], "reference": "burst"}

    def fire(_: int) -> httpx.Response:
        with live.client() as c:
            return c.post(
                "/v1/models/toy/deletion-requests", json=body, headers={"Idempotency-Key": "burst-1"}
            )

    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(fire, range(20)))
    codes = sorted(r.status_code for r in responses)
    assert set(codes) <= {200, 202, 409}, codes
    assert codes.count(202) == 1
    assert len({r.json()["id"] for r in responses if r.status_code in (200, 202)}) == 1
    assert request_count(live.db) == 1


def test_a_pending_request_can_be_cancelled_once(live: Live) -> None:
    with live.client() as c:
        rid = c.post("/v1/models/toy/deletion-requests", json={"sample_ids": ["toy-0003"]}).json()["id"]
        r = c.post(f"/v1/deletion-requests/{rid}/cancel")
        assert r.status_code == 200 and r.json()["state"] == "cancelled"
        assert c.post(f"/v1/deletion-requests/{rid}/cancel").status_code == 409


def test_a_tenant_never_sees_another_tenants_objects(live: Live) -> None:
    with session_scope(live.db) as s:
        make_model(s, tenant="b", name="toy")  # same name, other tenant
        key_b = make_key(s, tenant="b")
    with live.client() as a, live.client(key_b) as b:
        rid = a.post("/v1/models/toy/deletion-requests", json={"sample_ids": ["toy-0003"]}).json()["id"]
        assert b.get(f"/v1/deletion-requests/{rid}").status_code == 404
        assert b.post(f"/v1/deletion-requests/{rid}/cancel").status_code == 404
        assert b.get(f"/v1/deletion-requests/{rid}/certificate").status_code == 404
        assert rid not in {r["id"] for r in b.get("/v1/deletion-requests").json()["items"]}
        assert all(
            e["tenant"] == "b"
            for e in map(__import__("json").loads, b.get("/v1/audit/export").text.splitlines())
        )


def test_audit_verify_names_the_first_edited_event(live: Live) -> None:
    with live.client() as c:
        for i in range(3):
            assert (
                c.post("/v1/models/toy/deletion-requests", json={"sample_ids": [f"toy-00{i}0"]}).status_code
                == 202
            )
        assert c.get("/v1/audit/verify").json()["ok"] is True
        with session_scope(live.db) as s:
            victim = s.scalars(
                select(AuditEvent).where(AuditEvent.tenant == "default").order_by(AuditEvent.seq)
            ).all()[3]
            s.execute(update(AuditEvent).where(AuditEvent.id == victim.id).values(actor="mallory"))
            seq = victim.seq
        report = c.get("/v1/audit/verify").json()
    assert report["ok"] is False and report["first_broken_seq"] == seq


def test_audit_verify_checks_the_stored_tree_and_the_head_and_signs_nothing_over_a_broken_chain(
    live: Live,
) -> None:
    """A probe zeroed a stored tree node and inserted a head signed "AAAA": verify said ok (and proofs
    built from the tree then failed); an event whose seq it cleared was sequenced again and signed over."""
    with live.client() as c:
        for i in range(3):
            c.post("/v1/models/toy/deletion-requests", json={"sample_ids": [f"toy-00{i}1"]})
        size = c.get("/v1/audit/verify").json()["events"]
        lo, hi = merkle.perfect_parts(0, size)[0]  # the largest stored subtree the root is built from

        def edited(
            table: type, where: object, then: Callable[[], None] = lambda: None, **values: object
        ) -> dict[str, object]:
            with session_scope(live.db) as s:
                row = s.scalars(select(table).where(where)).first()  # type: ignore[arg-type]
                key, kept = inspect(row).identity, {k: getattr(row, k) for k in values}
                for k, v in values.items():
                    setattr(row, k, v)
            then()
            report = c.get("/v1/audit/verify").json()
            with session_scope(live.db) as s:
                row = s.get_one(table, key)
                for k, v in kept.items():
                    setattr(row, k, v)
            return dict(report)

        level, idx = (hi - lo).bit_length() - 1, lo // (hi - lo)
        with session_scope(live.db) as s:
            heads = s.scalar(select(func.count()).select_from(AuditHead))

        def then_an_event() -> None:  # a head would be signed over it: none may be over a broken log
            c.post("/v1/models/toy/deletion-requests", json={"sample_ids": ["toy-0099"]})

        where = (AuditNode.level == level) & (AuditNode.idx == idx)
        node = edited(AuditNode, where, hash="0" * 64, then=then_an_event)
        assert node["ok"] is False and "stored Merkle tree's root" in str(node["detail"]), node
        head = edited(AuditHead, AuditHead.tree_size > 0, signature="AAAA", then=then_an_event)
        assert head["ok"] is False and "does not verify" in str(head["detail"]), head
        unsequenced = edited(AuditEvent, AuditEvent.seq == 2, seq=None)
        assert unsequenced["ok"] is False and unsequenced["first_broken_seq"] == 3, unsequenced
        with session_scope(live.db) as s:
            assert s.scalar(select(func.count()).select_from(AuditHead)) == heads  # none signed over any
        assert c.get("/v1/audit/verify").json()["ok"] is True


def test_request_listing_paginates_without_gaps_or_repeats(live: Live) -> None:
    with live.client() as c:
        made = {
            c.post("/v1/models/toy/deletion-requests", json={"sample_ids": [f"toy-01{i:02d}"]}).json()["id"]
            for i in range(7)
        }
        seen: list[str] = []
        cursor = None
        while True:
            page = c.get(
                "/v1/deletion-requests", params={"limit": 3, **({"cursor": cursor} if cursor else {})}
            ).json()
            seen += [r["id"] for r in page["items"]]
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert len(seen) == len(set(seen)) and set(seen) == made
        assert c.get("/v1/deletion-requests", params={"cursor": "garbage!"}).status_code == 422


def test_too_many_ids_is_413(backend: Backend) -> None:
    env = {**backend.env, "UNLEARN_MAX_SAMPLE_IDS": "3"}
    settings = Backend(backend.name, env).settings()
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    migrated(settings.resolved_database_url)
    with session_scope(settings.resolved_database_url) as s:
        make_model(s, name="toy")
        key = make_key(s)
    from fastapi.testclient import TestClient

    with TestClient(create_app(settings)) as c:
        r = c.post(
            "/v1/models/toy/deletion-requests",
            json={"sample_ids": [f"toy-000{i}" for i in range(5)]},
            headers={"Authorization": f"Bearer {key}"},
        )
    assert r.status_code == 413 and r.json()["limit"] == 3


def test_metrics_count_requests_by_route_and_state(live: Live) -> None:
    with live.client() as c:
        c.post("/v1/models/toy/deletion-requests", json={"sample_ids": ["toy-0009"]})
        text = c.get("/metrics").text
    assert (
        'unlearn_http_requests_total{method="POST",route="/v1/models/{model}/deletion-requests",status="202"}'
        in text
    )
    assert 'unlearn_deletion_requests{state="received",tenant="default"} 1.0' in text
    # Empty states read 0 rather than vanishing, so a drained backlog is a 0, not a gap.
    assert 'unlearn_deletion_requests{state="completed",tenant="default"} 0.0' in text
    assert 'unlearn_jobs{state="running",tenant="default"} 0.0' in text
    assert 'unlearn_job_duration_seconds_count{tenant="default"} 0.0' in text
    # no worker runs beside this API, and no job: what an alert on a stalled service reads
    assert "unlearn_workers_alive 0.0" in text
    assert 'unlearn_running_job_heartbeat_age_seconds{tenant="default"} 0.0' in text


def test_metrics_say_how_many_workers_are_alive_and_how_stale_a_running_job_is(live: Live) -> None:
    """A job frozen by a database outage showed only in its own heartbeat age (a probe): an alert on
    these two reads a stalled service. Another tenant's job is not this tenant's to see."""
    import re
    from datetime import timedelta

    from service.core import liveness
    from service.core.db.tables import Job, Model, utcnow

    with session_scope(live.db) as s:
        model = s.scalars(select(Model)).one()
        for tenant, age in (("default", 40), ("other", 900)):
            s.add(Job(tenant=tenant, model_id=model.id, base_version=1, method="ugradsl_plus",
                      heartbeat_at=utcnow() - timedelta(seconds=age)))  # fmt: skip
        liveness.beat(s, "host:1")
        liveness.beat(s, f"{liveness.BEAT_PREFIX}host:2")  # a beat process is no worker
    with live.client() as c:
        text = c.get("/metrics").text
    assert "unlearn_workers_alive 1.0" in text
    age = re.search(r'unlearn_running_job_heartbeat_age_seconds\{tenant="default"\} ([0-9.]+)', text)
    assert age is not None and 40 <= float(age.group(1)) < 100, text


def test_metrics_count_refusals_made_before_routing_under_their_route(backend: Backend) -> None:
    """A 401 (no key) and a 413 (a declared length over the limit) are answered by middleware before the
    router runs: they were counted as "unmatched", and the 413 not at all."""
    settings = prepared(Settings(**{**backend.env, "UNLEARN_MAX_BODY_BYTES": "100"}))  # type: ignore[arg-type]
    with session_scope(settings.resolved_database_url) as s:
        make_model(s, name="toy", n_train=20)
        key = make_key(s, scopes=("deletion:write",))
    with TestClient(create_app(settings)) as c:
        url = "/v1/models/toy/deletion-requests"
        assert c.post(url, json={"sample_ids": ["toy-0001"]}).status_code == 401
        too_big = c.post(
            url, json={"sample_ids": ["toy-0001"] * 20}, headers={"Authorization": f"Bearer {key}"}
        )
        assert too_big.status_code == 413
        text = c.get("/metrics").text
    route = 'method="POST",route="/v1/models/{model}/deletion-requests"'
    assert f'unlearn_http_requests_total{{{route},status="401"}} 1.0' in text
    assert f'unlearn_http_requests_total{{{route},status="413"}} 1.0' in text
    assert 'route="unmatched"' not in text


def test_a_keyed_scrape_during_a_database_outage_still_gets_the_http_metrics(tmp_path: Path) -> None:
    """The key cannot be checked while the database is down; the HTTP metrics need no key unless one is
    required, so a keyed scraper lost them in the outage, with a 503 that spoke of Idempotency-Keys."""
    down = f"sqlite:///{tmp_path}/no-such-folder/db.sqlite"
    env = {"DATABASE_URL": down, "UNLEARN_VAR_DIR": str(tmp_path / "var")}
    auth = {"Authorization": "Bearer ul_somekey"}
    with TestClient(create_app(Settings(**env))) as c:  # type: ignore[arg-type]
        r = c.get("/metrics", headers=auth)
        assert r.status_code == 200 and "unlearn_http_requests_total" in r.text
    with TestClient(create_app(Settings(**env, UNLEARN_METRICS_REQUIRE_KEY="true"))) as c:  # type: ignore[arg-type]
        r = c.get("/metrics", headers=auth)
        assert r.status_code == 503 and "the key cannot be checked" in r.json()["detail"]
        assert "Idempotency-Key" not in r.json()["detail"]


def test_metrics_show_tenant_counts_only_to_that_tenants_key(live: Live) -> None:
    with live.client() as c:
        c.post("/v1/models/toy/deletion-requests", json={"sample_ids": ["toy-0008"]})
    anonymous = httpx.get(f"{live.url}/metrics")
    assert anonymous.status_code == 200 and "unlearn_http_requests_total" in anonymous.text
    assert "unlearn_deletion_requests" not in anonymous.text and "unlearn_jobs" not in anonymous.text
    with session_scope(live.db) as s:
        other = make_key(s, tenant="other", scopes=("jobs:read",))
    theirs = httpx.get(f"{live.url}/metrics", headers={"Authorization": f"Bearer {other}"}).text
    assert 'tenant="default"' not in theirs and "unlearn_deletion_requests" in theirs
    bad = httpx.get(f"{live.url}/metrics", headers={"Authorization": "Bearer ul_nope"})
    assert bad.status_code == 401
    # a valid key without jobs:read gets what anyone gets, not a 403 for the whole page (a probe)
    with session_scope(live.db) as s:
        writer = make_key(s, scopes=("deletion:write",))
    plain = httpx.get(f"{live.url}/metrics", headers={"Authorization": f"Bearer {writer}"})
    assert plain.status_code == 200 and "unlearn_http_requests_total" in plain.text
    assert "unlearn_deletion_requests" not in plain.text


def test_readyz_reports_database_and_broker(live: Live) -> None:
    r = httpx.get(f"{live.url}/readyz")
    assert r.json()["checks"]["database"] == "ok"
    assert r.status_code in (200, 503)


def test_head_is_answered_wherever_get_is_and_a_405_says_what_is_allowed(live: Live) -> None:
    """Every HEAD was a 405 (monitors probe /healthz with it), and a 405 carried no Allow header, which
    RFC 9110 requires (a probe)."""
    auth = {"Authorization": f"Bearer {live.key}"}
    http = httpx.Client(base_url=live.url, headers=auth, timeout=30)
    for path in ("/healthz", "/v1/models/toy", "/v1/deletion-requests"):
        got, head = http.get(path), http.head(path)
        assert (head.status_code, head.content) == (200, b""), path
        assert head.headers["content-length"] == got.headers["content-length"], path
    wrong = http.delete("/v1/models/toy")  # every route's methods at the path (it named the first's)
    assert wrong.status_code == 405 and wrong.headers["allow"] == "GET, HEAD, PATCH", wrong.headers
    assert wrong.json()["detail"] == "DELETE /v1/models/toy: allowed GET, HEAD, PATCH", wrong.text
    assert http.put("/v1/keys").headers["allow"] == "GET, HEAD, POST"
    assert http.delete("/dashboard/").headers["allow"] == "GET, HEAD"  # outside the schema: was empty
    # a literal route over the template beside it: the upload route's Allow read GET (a probe)
    assert http.put("/v1/datasets/upload").headers["allow"] == "POST"
    for method in ("GET", "HEAD"):  # read as the dataset "upload": a 404 (a probe)
        upload = http.request(method, "/v1/datasets/upload")
        assert upload.status_code == 405 and upload.headers["allow"] == "POST", (method, upload.headers)
    nowhere = http.get("/v1/no-such-thing")
    assert nowhere.status_code == 404 and nowhere.json()["detail"] == "no route here: /v1/no-such-thing"
