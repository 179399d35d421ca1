"""The database's clock, for times one host writes and another compares.

Leases, worker heartbeats and job heartbeats are written by one worker and read by other workers and the
API, each on its own host: compared against each host's wall clock, a worker whose clock ran ahead saw
every live worker's heartbeat as old and took over the leases they held, and one behind was itself taken
for dead. PostgreSQL, the one state every host shares, is then the only clock they read. The embedded
default (SQLite) is one host, whose own clock is the shared one.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.core.db.tables import utcnow


def db_now(session: Session) -> datetime:
    """Now, by the database's clock where it has one of its own (an aware UTC time)."""
    if session.get_bind().dialect.name != "postgresql":
        return utcnow()
    # the statement's time, not the transaction's (now()): a long transaction must not read a stale one
    now: datetime = session.scalar(select(func.statement_timestamp()))  # type: ignore[assignment]
    return now.astimezone(UTC)
