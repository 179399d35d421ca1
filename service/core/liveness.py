"""Which workers are alive: each worker process writes a heartbeat row; readiness reads the newest. Rows
are written and judged by the database's clock (`db_now`), so hosts whose clocks disagree agree on who
is silent."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, delete, exists, func, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session

from service.core.db.clock import db_now
from service.core.db.tables import WorkerHeartbeat

SILENT_HEARTBEATS = 3  # a worker that missed this many heartbeats in a row is taken for dead
# A beat process (the reconciler's scheduler) beats in the same table under names starting so; it is not a
# worker (nothing it could hold is taken over, and it serves no job), so readiness reads it apart.
BEAT_PREFIX = "beat@"


def takeover_seconds(heartbeat_s: float) -> float:
    """How long a worker may be silent before the leases it holds are taken over."""
    return SILENT_HEARTBEATS * heartbeat_s


def owner_is_silent(
    owner: InstrumentedAttribute[str | None], silent_for_s: float, now: datetime
) -> ColumnElement[bool]:
    """SQL: the lease `owner` (`host:pid:suffix`) belongs to a worker process (`host:pid`) whose last
    heartbeat is older than `silent_for_s`. A SIGKILLed worker's lease is then taken over within a few
    heartbeats instead of a whole lease period. An owner with no heartbeat row (it never beat, or shut
    down cleanly) is not presumed dead: its lease simply runs out. `now` is the database's (`db_now`)."""
    cutoff = now - timedelta(seconds=silent_for_s)
    prefix = func.substr(owner, 1, func.length(WorkerHeartbeat.name) + 1)
    return exists().where(prefix == WorkerHeartbeat.name + ":", WorkerHeartbeat.last_seen < cutoff)


def beat(session: Session, name: str) -> None:
    """Record that worker `name` is alive now (the caller commits)."""
    now = db_now(session)
    done = session.execute(update(WorkerHeartbeat).where(WorkerHeartbeat.name == name).values(last_seen=now))
    if done.rowcount == 0:  # type: ignore[attr-defined]
        session.add(WorkerHeartbeat(name=name, started_at=now, last_seen=now))


def refresh(session: Session, owner: str) -> None:
    """The heartbeat row of the worker process behind lease ``owner`` (``host:pid:suffix``), as of now:
    only where it has one (a process that never beat is not judged by its row). A worker that took a lease
    just after a database outage still had the outage's stale row, so another worker judged it silent
    and took the lease from it within a second, recording a death and costing the job an attempt (a
    probe)."""
    process, sep, _ = owner.rpartition(":")
    if sep:
        now = db_now(session)
        session.execute(update(WorkerHeartbeat).where(WorkerHeartbeat.name == process).values(last_seen=now))


def gone(session: Session, name: str) -> None:
    """A worker that shuts down cleanly says so, rather than waiting to be missed."""
    session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.name == name))


def prune(session: Session, older_than_s: float) -> int:
    """Drop the rows of workers silent for `older_than_s` (killed ones: a clean shutdown drops its own), so
    restarts do not pile them up; the caller keeps them at least as long as a lease they held could last,
    which is all `owner_is_silent` reads them for. Returns how many went."""
    cutoff = db_now(session) - timedelta(seconds=older_than_s)
    done = session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.last_seen < cutoff))
    return int(done.rowcount or 0)  # type: ignore[attr-defined]


def alive(session: Session, within_s: float) -> int:
    """Worker processes (not beat processes) heard from within the last `within_s` seconds."""
    cutoff = db_now(session) - timedelta(seconds=within_s)
    heard = ~WorkerHeartbeat.name.startswith(BEAT_PREFIX) & (WorkerHeartbeat.last_seen >= cutoff)
    return int(session.scalar(select(func.count()).select_from(WorkerHeartbeat).where(heard)) or 0)


def age_s(then: datetime | None, now: datetime) -> float | None:
    """Seconds from `then` to `now` (the database's clock, as heartbeats are written by it), or None."""
    if then is None:
        return None
    return max((now - then) / timedelta(seconds=1), 0.0)


def silence(session: Session, *, of_beat: bool = False) -> float | None:
    """Seconds since the most recent heartbeat of any worker (``of_beat``: any beat process); None if none
    was ever seen (or, of a beat, since its row was pruned)."""
    is_beat = WorkerHeartbeat.name.startswith(BEAT_PREFIX)
    last: datetime | None = session.scalar(
        select(func.max(WorkerHeartbeat.last_seen)).where(is_beat if of_beat else ~is_beat)
    )
    return age_s(last, db_now(session))
