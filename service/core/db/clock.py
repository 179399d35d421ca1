"""The database's clock, for times one host writes and another compares.

Leases, worker heartbeats and job heartbeats are written by one worker and read by other workers and the
API, each on its own host: compared against each host's wall clock, a worker whose clock ran ahead saw
every live worker's heartbeat as old and took over the leases they held, and one behind was itself taken
for dead. PostgreSQL, the one state every host shares, is then the only clock they read: `db_now` asks it.

Every other time a process writes (rows' `created_at`/`updated_at`, the audit log's `ts`, a model's
`woken_at`, a webhook secret's expiry) comes from `utcnow`: this host's clock corrected by its offset from
the database's, measured on each new connection and again at a checkout once the last measure is a minute
old. A worker host five minutes fast wrote jobs created after they started, audit times that ran
backwards by `seq`, and job lists ordered by its skew; now each is within a round trip of the database's
time, without a query per row. The embedded default (SQLite) is one host, whose own clock is the shared
one: no offset.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, event, func, select
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session

REMEASURE_S = 60.0

_offset = timedelta(0)  # the database's clock minus this host's, as last measured
_measured_at: float | None = None  # time.monotonic() of that measure


def utcnow() -> datetime:
    """Now (an aware UTC time), by this host's clock set to the database's as last measured."""
    return datetime.now(UTC) + _offset


def db_now(session: Session) -> datetime:
    """Now, by the database's clock where it has one of its own (an aware UTC time): a query."""
    if session.get_bind().dialect.name != "postgresql":
        return utcnow()
    # the statement's time, not the transaction's (now()): a long transaction must not read a stale one
    now: datetime = session.scalar(select(func.statement_timestamp()))  # type: ignore[assignment]
    return now.astimezone(UTC)


def follow_database_clock(engine: Engine) -> None:
    """Keep `utcnow` on `engine`'s clock (PostgreSQL): measure on connect, and at a checkout once stale."""

    @event.listens_for(engine, "connect")
    def _connected(dbapi_conn: Any, _record: Any) -> None:
        _measure(dbapi_conn)

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        now = time.monotonic()  # behind the last measure: a test's fake clock went back; measure again
        if _measured_at is None or not 0 <= now - _measured_at < REMEASURE_S:
            try:
                _measure(dbapi_conn)
            except Exception as exc:  # noqa: BLE001 - a connection that cannot answer: the pool replaces it
                raise DisconnectionError(f"a pooled connection did not answer: {exc}") from exc


def forget_offset() -> None:
    """Back to this host's own clock until the next measure (tests that fake a host's clock)."""
    global _offset, _measured_at
    _offset, _measured_at = timedelta(0), None


def _measure(dbapi_conn: Any) -> None:
    global _offset, _measured_at
    cursor = dbapi_conn.cursor()
    try:
        before = datetime.now(UTC)
        cursor.execute("SELECT statement_timestamp()")
        (theirs,) = cursor.fetchone()
        after = datetime.now(UTC)
    finally:
        cursor.close()
        dbapi_conn.rollback()  # the driver began a transaction for the query: hand the connection back idle
    measured = theirs.astimezone(UTC) - (before + (after - before) / 2)  # within half the round trip
    # kept where the new one is within its round trip of it: a slow sample (a busy process waiting for
    # the GIL) would otherwise step every time written after it back or forth by its error (a review)
    if _measured_at is None or abs(measured - _offset) > after - before:
        _offset = measured
    _measured_at = time.monotonic()
