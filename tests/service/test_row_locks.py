"""Changes decided on a model's row read it locked, as a publish does. Each test holds the lock the way a
publish does, sends the API's calls over real HTTP, waits (with a deadline) until PostgreSQL shows them
waiting for it, then lets go. SQLite's writers run one at a time (BEGIN IMMEDIATE): the race is
PostgreSQL's."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import select, text

from service.core.db.engine import session_scope
from service.core.db.tables import Model
from tests.conftest import Backend
from tests.factories import publish_version
from tests.helpers import wait_until
from tests.liveapp import LiveApp, serve_toy


@pytest.fixture
def live(backend: Backend) -> Iterator[tuple[LiveApp, str]]:
    if backend.name != "postgres":
        pytest.skip("the embedded default's writers run one at a time (SQLite BEGIN IMMEDIATE)")
    with serve_toy(backend.settings()) as served:
        yield served


def _waiting_for_locks(url: str, n: int) -> bool:
    with session_scope(url) as s:
        waiting = s.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'"
            )
        )
    return (waiting or 0) >= n


def test_two_patches_at_once_both_land(live: tuple[LiveApp, str]) -> None:
    """Two PATCHes each merged their gates into the row as it was before the other: one gate was lost in
    10 of 15 rounds, and a method with the other's params was stored, which failed every later job."""
    app, key = live
    calls = [{"gates": {"max_test_accuracy_drop": 0.07}}, {"gates": {"min_mia_score": 0.01}}]
    with ThreadPoolExecutor(2) as pool, session_scope(app.db) as publish:  # the lock goes first
        publish.scalars(select(Model).where(Model.name == "toy").with_for_update()).one()
        sent = [pool.submit(lambda b=b: app.client(key).patch("/v1/models/toy", json=b)) for b in calls]
        wait_until(lambda: _waiting_for_locks(app.db, 2), timeout=20, what="both PATCHes waiting")
    assert [f.result().status_code for f in sent] == [200, 200]
    gates = app.client(key).get("/v1/models/toy").json()["gates"]
    assert gates["max_test_accuracy_drop"] == 0.07 and gates["min_mia_score"] == 0.01, gates


def test_the_checkpoint_of_a_version_published_meanwhile_is_not_deleted(live: tuple[LiveApp, str]) -> None:
    """A deletion of v2's checkpoint read the model before v2's publish committed and the version after it,
    and deleted the new latest checkpoint: every later job of the model failed."""
    app, key = live
    with ThreadPoolExecutor(1) as pool, session_scope(app.db) as publish:  # the lock goes first
        model = publish.scalars(select(Model).where(Model.name == "toy").with_for_update()).one()
        assert publish_version(publish, model, ["toy-0001"]) == 2
        publish.flush()
        sent = pool.submit(lambda: app.client(key).delete("/v1/models/toy/versions/v2/checkpoint"))
        wait_until(lambda: _waiting_for_locks(app.db, 1), timeout=20, what="the deletion waiting")
    refused = sent.result()
    assert refused.status_code == 409 and "latest version" in refused.json()["detail"], refused.text
    assert app.client(key).get("/v1/models/toy/versions/v2").json()["checkpoint_retired_at"] is None
