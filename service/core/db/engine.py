"""Engine and session handling. A request or a task is the unit of work: `session_scope` commits once."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from service.core.db.clock import follow_database_clock

POOL_SIZE, MAX_OVERFLOW = 16, 16
RECYCLE_SECONDS = 1800
CONNECT_TIMEOUT_S = 10


def make_engine(url: str, *, pre_ping: bool = True, **kwargs: Any) -> Engine:
    """Create an engine; SQLite gets WAL, a busy timeout and BEGIN IMMEDIATE.

    `pre_ping` (PostgreSQL): test each pooled connection with a round trip when it is checked out. Workers
    keep it (a long job must not fail on a connection that died while idle). The API turns it off: the
    ping was a round trip per request (6% of a worker's time under load). It pings only a connection that
    sat idle a second or more (`_ping_after_idle`), which is where a restart leaves dead ones; one that
    dies under load fails its request with a 503 the client retries, while SQLAlchemy discards the whole
    pool on that disconnect, so the next requests get fresh connections. `pool_recycle` then replaces
    connections before idle timeouts in between (firewalls, proxies) can cut them.

    The embedded stack has two processes (API, worker) writing one SQLite file. BEGIN IMMEDIATE makes every
    transaction take the write lock up front, so read-then-write sequences (the audit chain's last hash, a
    lease check) cannot interleave, and the busy timeout turns contention into a short wait, not an error.
    """
    if url.startswith("sqlite"):
        connect = {"timeout": 30, "check_same_thread": False}
        parsed = make_url(url)
        in_memory = parsed.database in (None, "", ":memory:") or parsed.query.get("mode") == "memory"
        if not in_memory and "poolclass" not in kwargs:
            kwargs = {"pool_size": POOL_SIZE, "max_overflow": MAX_OVERFLOW, **kwargs}  # as PostgreSQL's
        engine = create_engine(url, connect_args=connect, **kwargs)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # let us emit BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    # Enough pooled connections for the requests one API process serves at once: a connection opened per
    # request beyond the pool (PostgreSQL forks a backend for each) cost more CPU than the query itself.
    # A server that does not answer (a partition, a failover in progress) fails a connect in seconds
    # rather than the OS's minutes of SYN retries, which held a job's outage check and a request's worker
    if "connect_timeout" not in make_url(url).query and "PGCONNECT_TIMEOUT" not in os.environ:  # theirs first
        kwargs.setdefault("connect_args", {"connect_timeout": CONNECT_TIMEOUT_S})
    if not pre_ping:
        kwargs.setdefault("pool_recycle", RECYCLE_SECONDS)
    engine = create_engine(
        url, pool_pre_ping=pre_ping, pool_size=POOL_SIZE, max_overflow=MAX_OVERFLOW, **kwargs
    )
    if not pre_ping:
        _ping_after_idle(engine)
    follow_database_clock(engine)
    return engine


IDLE_PING_S = 1.0


def _ping_after_idle(engine: Engine) -> None:
    """Ping a pooled connection at checkout only when it sat idle at least ``IDLE_PING_S``: under load a
    connection is handed on within milliseconds and never pinged (the round trip per request that
    ``pool_pre_ping`` cost), while one that waited through a database restart or a failover is found dead
    and replaced before a request fails on it. Without it, a client polling every few seconds after an
    outage met a 503 per dead connection (a probe saw two in a row). Raising DisconnectionError at
    checkout makes the pool discard the connection and hand out a fresh one."""

    @event.listens_for(engine, "checkin")
    def _idle_from(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.pop("idle_since", None)
        if since is None or time.monotonic() - since < IDLE_PING_S:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:  # noqa: BLE001 - any failure to answer: a fresh connection instead
            raise DisconnectionError(f"an idle pooled connection did not answer: {exc}") from exc


def engine_for(url: str, *, pre_ping: bool = True) -> Engine:
    """The process's engine for `url` (one per ping setting; SQLite has one, it never pings)."""
    return _engine(url, pre_ping or url.startswith("sqlite"))


@lru_cache(maxsize=8)
def _engine(url: str, pre_ping: bool) -> Engine:
    return make_engine(url, pre_ping=pre_ping)


def sessionmaker_for(url: str, *, pre_ping: bool = True) -> sessionmaker[Session]:
    return _sessionmaker(engine_for(url, pre_ping=pre_ping))


@lru_cache(maxsize=8)
def _sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """One transaction: commit on success, roll back on any error."""
    session = sessionmaker_for(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def reader_for(url: str) -> Engine:
    """The process's engine for one-statement reads (the status poll every product makes). On PostgreSQL
    its connections are in autocommit and are handed back to the pool without a reset: a read is one
    round trip, where a transaction costs three (BEGIN, the query, ROLLBACK). SQLite: the ordinary
    engine (its BEGIN IMMEDIATE hook would be left open in autocommit)."""
    return engine_for(url) if url.startswith("sqlite") else _reader(url)


@lru_cache(maxsize=8)
def _reader(url: str) -> Engine:
    return make_engine(url, pre_ping=False, isolation_level="AUTOCOMMIT", pool_reset_on_return=None)


def fetch_one(engine: Engine, sql: str, params: dict[str, Any]) -> Any:
    """The first row of `sql`, run on a pooled PostgreSQL connection of `reader_for` by psycopg itself,
    as a server-side prepared statement. SQLAlchemy's Connection around the same query cost three times
    the query's own CPU (~250 us against ~80 us per read): that is most of a status poll. A driver error
    invalidates the connection, so a dead one (the database restarted) is not handed out again, and is
    raised as SQLAlchemy's error, which the API answers with a 503."""
    dbapi_error = engine.dialect.loaded_dbapi.Error
    conn = engine.raw_connection()
    try:
        return conn.driver_connection.execute(sql, params, prepare=True).fetchone()  # type: ignore[union-attr]
    except dbapi_error as exc:
        conn.invalidate(exc)
        raise DBAPIError.instance(sql, params, exc, dbapi_error) from exc
    finally:
        conn.close()


def is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"
