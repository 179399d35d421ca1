"""How the service connects to its database (`service.core.db.engine`)."""

from __future__ import annotations

import pytest

from service.core.db.engine import CONNECT_TIMEOUT_S, make_engine
from tests.helpers import PG_ADMIN_URL, services_available


def test_a_postgresql_connect_gives_up_after_a_bounded_wait() -> None:
    """Without a connect timeout a server that does not answer (a partition, a failover) held a connect
    for the OS's minutes of SYN retries: a job's check whether the database went away hung with it."""
    reason = services_available()
    if reason:
        pytest.skip(reason)
    engine = make_engine(PG_ADMIN_URL)
    try:
        with engine.connect() as conn:
            dbapi = conn.connection.dbapi_connection
            assert dbapi is not None
            assert dbapi.info.get_parameters()["connect_timeout"] == str(CONNECT_TIMEOUT_S)
    finally:
        engine.dispose()
    own = make_engine(PG_ADMIN_URL + "?connect_timeout=60")  # an operator's own is kept (a review)
    try:
        with own.connect() as conn:
            dbapi = conn.connection.dbapi_connection
            assert dbapi is not None and dbapi.info.get_parameters()["connect_timeout"] == "60"
    finally:
        own.dispose()


def test_an_api_connection_that_died_while_idle_is_replaced_before_a_request_fails_on_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The API's pool pings no connection on every checkout (a round trip per request); one whose server
    end was dropped while it sat idle (a restart, a failover) had failed the next request with a 503."""
    import psycopg

    from service.core.db import engine as engines

    reason = services_available()
    if reason:
        pytest.skip(reason)
    monkeypatch.setattr(engines, "IDLE_PING_S", 0.0)  # every connection that was checked in counts as idle
    engine = make_engine(PG_ADMIN_URL, pre_ping=False)
    try:
        with engine.connect() as conn:
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test", autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", [pid])
        with engine.connect() as conn:  # the same pooled connection, dead: replaced, not raised
            assert conn.exec_driver_sql("SELECT pg_backend_pid()").scalar() != pid
    finally:
        engine.dispose()


def test_a_request_whose_connection_died_under_it_closes_without_raising_and_the_pool_moves_on() -> None:
    """A read leaves its transaction open and its session is closed after the answer has started: a
    rollback over a connection the database dropped raised there, and uvicorn reset the client's
    keep-alive connection with no answer (a probe killed the API's backends under GETs)."""
    import psycopg
    from sqlalchemy import text
    from sqlalchemy.orm import sessionmaker

    from service.api.deps import close

    reason = services_available()
    if reason:
        pytest.skip(reason)
    engine = make_engine(PG_ADMIN_URL, pre_ping=False)
    try:
        session = sessionmaker(engine)()
        pid = session.execute(text("SELECT pg_backend_pid()")).scalar()  # its transaction stays open
        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test", autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", [pid])
        close(session)  # the rollback fails on the dead connection: discarded, not raised
        assert engine.pool.checkedout() == 0  # back to the pool (as an invalidated slot), not leaked
        with sessionmaker(engine)() as fresh:
            assert fresh.execute(text("SELECT pg_backend_pid()")).scalar() != pid
    finally:
        engine.dispose()
