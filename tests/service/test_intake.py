"""Intake: the requests that arrive together are committed together (group commit), each with its audit
event, and the request rows are the outbox. A burst of requests for one model wakes a worker once now and
once at the end of the window, not once per request."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient
from sqlalchemy import select

from service.api.app import create_app
from service.core import audit
from service.core.db.engine import session_scope
from service.core.db.tables import ApiKey, AuditEvent, DeletionRequest, Model, utcnow
from service.core.deletions import Accepted, IntakePolicy, Submission, accept_many
from service.core.keys import find_key
from service.core.queue import make_celery, wake_due
from service.core.settings import Settings
from service.core.states import ModelStatus
from tests.conftest import Backend
from tests.factories import make_key, make_model
from tests.helpers import migrated


def test_a_model_is_woken_now_then_once_at_the_end_of_the_window(db_url: str) -> None:
    with session_scope(db_url) as s:
        model = make_model(s, name="toy")
        assert wake_due(s, model, 1.0) == 0.0  # the first request: now
    with session_scope(db_url) as s:
        model = s.get_one(Model, model.id)
        countdown = wake_due(s, model, 1.0)  # within the window: one trailing wake
        assert countdown is not None and 0.0 < countdown <= 1.0
    with session_scope(db_url) as s:
        assert wake_due(s, s.get_one(Model, model.id), 1.0) is None  # already on its way
    with session_scope(db_url) as s:
        m = s.get_one(Model, model.id)
        m.woken_at = utcnow() - timedelta(seconds=5)  # long quiet
    with session_scope(db_url) as s:
        assert wake_due(s, s.get_one(Model, model.id), 1.0) == 0.0


def test_a_stale_read_loses_the_compare_and_set(db_url: str) -> None:
    with session_scope(db_url) as s:
        stale = make_model(s, name="toy")  # read before anyone woke it: woken_at is None
        s.expunge(stale)
    with session_scope(db_url) as s:
        assert wake_due(s, s.get_one(Model, stale.id), 1.0) == 0.0  # another request won first
    with session_scope(db_url) as s:
        assert stale.woken_at is None
        assert wake_due(s, stale, 1.0) is None  # decided on the old value: it loses, sends nothing


def test_a_burst_of_requests_sends_at_most_two_broker_messages(tmp_path: Path) -> None:
    settings = Settings(UNLEARN_VAR_DIR=str(tmp_path / "var"), UNLEARN_WAKE_SECONDS=60)  # type: ignore[call-arg]
    settings.var_dir.mkdir(parents=True)
    migrated(settings.resolved_database_url)
    with session_scope(settings.resolved_database_url) as s:
        make_model(s, name="toy", n_train=50)
        key = make_key(s, scopes=("deletion:write",))
    with TestClient(create_app(settings)) as client:
        for i in range(30):
            r = client.post(
                "/v1/models/toy/deletion-requests",
                json={"sample_ids": [f"toy-{i:04d}"]},
                headers={"Authorization": f"Bearer {key}"},
            )
            assert r.status_code == 202 and r.json()["state"] == "received"
    messages = list((settings.broker_folder / "out").iterdir())
    assert 1 <= len(messages) <= 2, messages


# -- group commit -----------------------------------------------------------------------------------------


def _submission(key: ApiKey, ids: list[str], **kw: Any) -> Submission:
    return Submission(key=key, model=kw.pop("model", "toy"), sample_ids=ids, **kw)


def test_one_batch_accepts_the_good_requests_and_refuses_each_bad_one_alone(db_url: str) -> None:
    with session_scope(db_url) as s:
        make_model(s, name="toy", n_train=50)
        make_model(s, name="new", n_train=10).status = ModelStatus.VALIDATING
        plaintext = make_key(s, scopes=("deletion:write",))
        key = find_key(s, plaintext)
        assert key is not None
        s.expunge(key)
    batch = [
        _submission(key, ["toy-0001", "toy-0002"]),
        _submission(key, ["toy-0003", "nope-1"]),  # an unknown ID
        _submission(key, ["toy-0004"], model="missing"),  # no such model
        _submission(key, ["new-0001"], model="new"),  # a model not ready
        _submission(key, ["toy-0002", "toy-0005"], idempotency_key="k-1"),
        _submission(key, ["toy-0006"], idempotency_key="k-1"),  # the same key with another body
        _submission(key, ["toy-0007"], callback_url="https://evil.example/hook"),  # not on the allow-list
    ]
    with session_scope(db_url) as s:
        outcomes = accept_many(s, make_celery(Settings()), batch, IntakePolicy(max_ids=100))
    assert [type(o).__name__ for o in outcomes] == [
        "Accepted", "Unprocessable", "NotFound", "Conflict", "Accepted", "Unprocessable", "Unprocessable",
    ]  # fmt: skip
    accepted = [o for o in outcomes if isinstance(o, Accepted)]
    assert all(a.created for a in accepted)
    with session_scope(db_url) as s:
        rows = {r.id: r for r in s.scalars(select(DeletionRequest))}
        received = list(s.scalars(select(AuditEvent).where(AuditEvent.action == "deletion_request.received")))
        assert set(rows) == {a.request.id for a in accepted}  # nothing written for the refused ones
        assert sorted(rows[a.request.id].sample_ids for a in accepted) == [
            ["toy-0001", "toy-0002"],
            ["toy-0002", "toy-0005"],
        ]
        assert sorted(e.entity_id for e in received) == sorted(rows)  # each request has its event
        assert audit.sequence_all(s, "default") > 0
    with session_scope(db_url) as s:
        assert audit.verify_chain(s, "default")["ok"]
        # A replay of the key in a later batch returns the first request.
        replay = accept_many(s, make_celery(Settings()), [batch[4]], IntakePolicy(max_ids=100))[0]
        assert isinstance(replay, Accepted) and not replay.created
        assert replay.request.id == accepted[1].request.id


def _toy_with_key(backend: Backend, scopes: tuple[str, ...]) -> tuple[Settings, dict[str, str]]:
    """A migrated database holding model `toy` (200 training samples) and the auth header of a new key."""
    settings = backend.settings()
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    migrated(settings.resolved_database_url)
    with session_scope(settings.resolved_database_url) as s:
        make_model(s, name="toy", n_train=200)
        key = make_key(s, scopes=scopes)
    return settings, {"Authorization": f"Bearer {key}"}


def test_concurrent_requests_are_committed_in_batches_each_with_its_audit_event(backend: Backend) -> None:
    settings, auth = _toy_with_key(backend, ("deletion:write", "jobs:read", "audit:read"))
    url = settings.resolved_database_url
    app = create_app(settings)
    n = 40

    async def burst() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=auth) as http:
            await http.get("/v1/audit/head")  # the key is cached before the burst

            def body(i: int) -> dict[str, Any]:
                ids = [f"toy-{i:04d}", f"toy-{i + 100:04d}"]
                return {"sample_ids": ids if i % 10 != 7 else [*ids, "not-in-the-training-set"]}

            posts = [http.post("/v1/models/toy/deletion-requests", json=body(i)) for i in range(n)]
            return await asyncio.gather(*posts)

    responses = asyncio.run(burst())
    refused = {i for i, r in enumerate(responses) if r.status_code == 422}
    assert refused == {7, 17, 27, 37}, [r.text for r in responses if r.status_code != 202][:3]
    assert all(r.status_code == 202 for i, r in enumerate(responses) if i not in refused)
    assert all(
        r.json()["unknown_ids"] == ["not-in-the-training-set"]
        for i, r in enumerate(responses)
        if i in refused
    )
    batches, largest = app.state.intake.stats()
    assert largest > 1 and batches < n  # requests were written together
    ids = {r.json()["id"] for r in responses if r.status_code == 202}
    with session_scope(url) as s:
        assert set(s.scalars(select(DeletionRequest.id))) == ids
        events = s.scalars(select(AuditEvent).where(AuditEvent.action == "deletion_request.received"))
        assert sorted(e.entity_id for e in events) == sorted(ids)
        audit.sequence_all(s, "default")
    with session_scope(url) as s:
        report = audit.verify_chain(s, "default")
        assert report["ok"] and report["events"] >= len(ids)
    with TestClient(app) as client:  # and each one reads back
        for r in responses[:3]:
            got = client.get(r.headers["location"], headers=auth)
            assert got.status_code == 200 and got.json() == r.json()


# -- the batch route --------------------------------------------------------------------------------------


def test_a_batch_post_answers_each_request_as_its_own_post_would(backend: Backend) -> None:
    settings, auth = _toy_with_key(backend, ("deletion:write", "jobs:read"))
    url = settings.resolved_database_url
    items: list[dict[str, Any]] = [
        {"sample_ids": [f"toy-{i:04d}"], "idempotency_key": f"batch-{i}"} for i in range(50)
    ]
    items[3] = {"sample_ids": ["toy-0003", "not-in-the-training-set"], "idempotency_key": "batch-3"}
    items[9] = {"sample_ids": ["toy-0009"], "reference": "ticket-9"}  # no key: a new request each time
    app = create_app(settings)
    with TestClient(app) as client:
        first = client.post("/v1/models/toy/deletion-requests/batch", json={"requests": items}, headers=auth)
        assert first.status_code == 200, first.text
        body = first.json()
        assert (body["accepted"], body["refused"]) == (49, 1)
        statuses = [r["status"] for r in body["results"]]
        assert statuses == [202] * 3 + [422] + [202] * 46
        assert body["results"][3]["problem"]["unknown_ids"] == ["not-in-the-training-set"]
        assert body["results"][3]["request"] is None
        assert body["results"][9]["request"]["reference"] == "ticket-9"
        assert app.state.intake.stats()[0] == 1  # the whole batch in one transaction
        ids = [r["request"]["id"] for r in body["results"] if r["request"]]
        for i in (0, 49):  # each reads back through the single-request route
            got = client.get(f"/v1/deletion-requests/{body['results'][i]['request']['id']}", headers=auth)
            assert got.status_code == 200 and got.json()["sample_count"] == 1
        # A retried batch replays every keyed request and writes only the unkeyed one again.
        again = client.post("/v1/models/toy/deletion-requests/batch", json={"requests": items}, headers=auth)
        results = again.json()["results"]
        assert [r["status"] for r in results] == [200] * 3 + [422] + [200] * 5 + [202] + [200] * 40
        replayed = [r["request"]["id"] for i, r in enumerate(results) if r["request"] and i != 9]
        assert replayed == [x for i, x in enumerate(ids) if i != 8]  # ids skips the refused item 3
    with session_scope(url) as s:
        rows = set(s.scalars(select(DeletionRequest.id)))
        assert rows == set(ids) | {results[9]["request"]["id"]}
        events = s.scalars(select(AuditEvent).where(AuditEvent.action == "deletion_request.received"))
        assert sorted(e.entity_id for e in events) == sorted(rows)


def test_a_batch_repeating_an_idempotency_key_answers_each_item_as_its_own_post_would(
    backend: Backend,
) -> None:
    """Items of one batch sharing a key are answered as if posted one after another: the same body again
    replays the request the first created (200, that request), another body is the 422 of a reused key;
    if the first is refused, nothing holds the key and the next is checked on its own. Once they are
    committed, the same batch again replays (it used to answer 409 'still in flight' for ever)."""
    settings, auth = _toy_with_key(backend, ("deletion:write", "jobs:read"))
    url = settings.resolved_database_url
    items: list[dict[str, Any]] = [
        {"sample_ids": ["toy-0001", "toy-0002"], "reference": "T-1", "idempotency_key": "dup"},
        {"sample_ids": ["toy-0002", "toy-0001"], "reference": "T-1", "idempotency_key": "dup"},  # same body
        {"sample_ids": ["toy-0003"], "reference": "T-1", "idempotency_key": "dup"},  # another body
        {"sample_ids": ["toy-0004", "not-in-the-training-set"], "idempotency_key": "fixed"},  # refused
        {"sample_ids": ["toy-0004"], "idempotency_key": "fixed"},  # the key is free: a new request
        {"sample_ids": ["toy-0004"], "idempotency_key": "fixed"},  # and a replay of that one
        {"sample_ids": ["toy-0005"], "idempotency_key": "other"},
    ]
    app = create_app(settings)
    with TestClient(app) as client:
        first = client.post("/v1/models/toy/deletion-requests/batch", json={"requests": items}, headers=auth)
        assert first.status_code == 200, first.text
        results = first.json()["results"]
        assert [r["status"] for r in results] == [202, 200, 422, 422, 202, 200, 202], results
        assert (first.json()["accepted"], first.json()["refused"]) == (5, 2)
        assert app.state.intake.stats()[0] == 1  # still one transaction
        ids = [r["request"]["id"] if r["request"] else None for r in results]
        assert ids[1] == ids[0] and ids[5] == ids[4]
        assert len({ids[0], ids[4], ids[6]}) == 3
        assert results[1]["request"] == results[0]["request"]
        assert results[3]["problem"]["unknown_ids"] == ["not-in-the-training-set"]
        # The reused key's problem is the one a single POST reusing it gets.
        single = client.post(
            "/v1/models/toy/deletion-requests",
            json={"sample_ids": ["toy-0003"], "reference": "T-1"},
            headers={**auth, "Idempotency-Key": "dup"},
        )
        assert single.status_code == 422
        assert results[2]["problem"] == single.json()
        assert results[2]["request"] is None
        # The batch again: every keyed item replays (or is refused) as before; nothing is written twice.
        again = client.post("/v1/models/toy/deletion-requests/batch", json={"requests": items}, headers=auth)
        results = again.json()["results"]
        assert [r["status"] for r in results] == [200, 200, 422, 422, 200, 200, 200], results
        assert [r["request"]["id"] if r["request"] else None for r in results] == [
            ids[0], ids[0], None, None, ids[4], ids[4], ids[6],
        ]  # fmt: skip
        assert results[2]["problem"] == single.json()
    with session_scope(url) as s:
        rows = {r.id: r for r in s.scalars(select(DeletionRequest))}
        assert set(rows) == {ids[0], ids[4], ids[6]}
        assert rows[ids[4]].sample_ids == ["toy-0004"]
        events = s.scalars(select(AuditEvent).where(AuditEvent.action == "deletion_request.received"))
        assert sorted(e.entity_id for e in events) == sorted(rows)


def test_a_batch_that_is_empty_too_long_or_names_nothing_is_refused_whole(tmp_path: Path) -> None:
    settings = Settings(UNLEARN_VAR_DIR=str(tmp_path / "var"))  # type: ignore[call-arg]
    settings.var_dir.mkdir(parents=True)
    migrated(settings.resolved_database_url)
    with session_scope(settings.resolved_database_url) as s:
        make_model(s, name="toy", n_train=50)
        key = make_key(s, scopes=("deletion:write",))
    auth = {"Authorization": f"Bearer {key}"}
    too_many = [{"sample_ids": ["toy-0001"]}] * 1001
    with TestClient(create_app(settings)) as client:
        for requests, field in (
            ([], "requests"),
            (too_many, "requests"),
            ([{"sample_ids": []}], "requests.0"),
        ):
            r = client.post(
                "/v1/models/toy/deletion-requests/batch", json={"requests": requests}, headers=auth
            )
            assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")
            assert field in r.json()["detail"], r.json()
        missing = client.post(
            "/v1/models/nope/deletion-requests/batch",
            json={"requests": [{"sample_ids": ["x"]}]},
            headers=auth,
        )
        assert missing.status_code == 404 and missing.json()["detail"] == "model 'nope' not found"
    with session_scope(settings.resolved_database_url) as s:
        assert s.scalars(select(DeletionRequest)).first() is None
