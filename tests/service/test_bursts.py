"""A burst of requests on one API process, over real HTTP (uvicorn in a thread, the real database)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from service.api.deps import SESSION_SLOTS
from service.core.db.engine import session_scope
from tests.conftest import Backend
from tests.factories import make_key, make_model
from tests.liveapp import LiveApp, prepared, serve


@pytest.fixture
def live(backend: Backend) -> Iterator[tuple[LiveApp, str]]:
    settings = prepared(backend.settings())
    with session_scope(settings.resolved_database_url) as s:
        make_model(s, name="toy")
        key = make_key(s)
    with serve(settings) as app:
        yield app, key


def test_a_burst_of_reads_is_answered_without_waiting_out_the_pool(live: tuple[LiveApp, str]) -> None:
    """300 reads at once held every worker thread with routes waiting for a connection while the
    connections waited for a thread (FastAPI validates a sync route's response in one): most of them
    were 503s "database unavailable" at the pool's 30 s timeout (a probe). Sessions are held to fewer than
    the connections and the threads, and the rest wait their turn."""
    app, key = live
    n = 10 * SESSION_SLOTS

    async def burst() -> Counter[int]:
        limits = httpx.Limits(max_connections=n)
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=app.url, headers=headers, timeout=120, limits=limits) as c:
            answers = await asyncio.gather(*(c.get("/v1/models/toy") for _ in range(n)))
        return Counter(r.status_code for r in answers)

    assert asyncio.run(burst()) == {200: n}
