"""Intake: one transaction per request, and the request rows are the outbox. A burst of requests for one
model wakes a worker once now and once at the end of the window, not once per request."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from fastapi.testclient import TestClient

from service.api.app import create_app
from service.core.db import migrate
from service.core.db.engine import session_scope
from service.core.db.tables import Model, utcnow
from service.core.queue import wake_due
from service.core.settings import Settings
from tests.factories import make_key, make_model


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
    migrate.upgrade(settings.resolved_database_url)
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
