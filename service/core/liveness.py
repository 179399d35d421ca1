"""Which workers are alive: each worker process writes a heartbeat row; readiness reads the newest."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from service.core.db.tables import WorkerHeartbeat, utcnow


def beat(session: Session, name: str) -> None:
    """Record that worker `name` is alive now (the caller commits)."""
    now = utcnow()
    done = session.execute(update(WorkerHeartbeat).where(WorkerHeartbeat.name == name).values(last_seen=now))
    if done.rowcount == 0:  # type: ignore[attr-defined]
        session.add(WorkerHeartbeat(name=name, started_at=now, last_seen=now))


def gone(session: Session, name: str) -> None:
    """A worker that shuts down cleanly says so, rather than waiting to be missed."""
    session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.name == name))


def silence(session: Session) -> float | None:
    """Seconds since the most recent heartbeat of any worker; None if no worker was ever seen."""
    last: datetime | None = session.scalar(select(func.max(WorkerHeartbeat.last_seen)))
    if last is None:
        return None
    if last.tzinfo is None:
        last = last.replace(tzinfo=utcnow().tzinfo)
    return max((utcnow() - last) / timedelta(seconds=1), 0.0)
