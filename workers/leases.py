"""A per-model lease in the database: jobs of one model run one at a time, so versions form a line.

A conditional UPDATE is atomic on PostgreSQL and SQLite alike, so no advisory lock is needed; the
expiry means a killed worker's lease lapses and another worker resumes its job; sooner, when the dead
worker's heartbeat row shows it has gone silent. Expiries are set and read by the database's clock
(`db_now`): workers on hosts whose clocks disagree judge a lease alike.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, or_, update
from sqlalchemy.orm import Session

from service.core.db.clock import db_now
from service.core.db.engine import session_scope
from service.core.db.tables import Model
from service.core.liveness import owner_is_silent, refresh

log = logging.getLogger(__name__)


def worker_identity() -> str:
    """A lease owner name unique to this process and call: host, pid, random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def is_free(now: datetime, takeover_after: float | None = None) -> ColumnElement[bool]:
    """SQL: nobody holds the model's lease, it ran out by `now` (the database's clock: `db_now`), or
    (given `takeover_after`) its holder's worker has not beaten for that long."""
    free = [Model.lease_owner.is_(None), Model.lease_expires_at < now]
    if takeover_after is not None:
        free.append(owner_is_silent(Model.lease_owner, takeover_after, now))
    return or_(*free)


def acquire(
    session: Session, model_id: str, owner: str, seconds: float, takeover_after: float | None = None
) -> bool:
    """Take the model's lease for `seconds` if it is free (see `is_free`) or already ours; the taker's
    heartbeat row is brought up to date with it (``liveness.refresh``), so no one judges the new holder by
    a beat it missed before it took the lease."""
    now = db_now(session)
    result = session.execute(
        update(Model)
        .where(Model.id == model_id, or_(is_free(now, takeover_after), Model.lease_owner == owner))
        .values(lease_owner=owner, lease_expires_at=now + timedelta(seconds=seconds))
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False
    refresh(session, owner)
    return True


def renew(session: Session, model_id: str, owner: str, seconds: float) -> bool:
    """Extend our lease; False means we lost it (it expired and another worker took it). Our heartbeat row
    is refreshed with it, as in ``acquire``: after an outage a holder's row is as stale as a taker's."""
    result = session.execute(
        update(Model)
        .where(Model.id == model_id, Model.lease_owner == owner)
        .values(lease_expires_at=db_now(session) + timedelta(seconds=seconds))
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False
    refresh(session, owner)
    return True


def release(session: Session, model_id: str, owner: str) -> None:
    session.execute(
        update(Model)
        .where(Model.id == model_id, Model.lease_owner == owner)
        .values(lease_owner=None, lease_expires_at=None)
    )


@contextmanager
def kept(url: str, model_id: str, owner: str, seconds: float, interval: float) -> Iterator[None]:
    """Renew our lease every `interval` seconds while the block runs, so long work (validating a large
    model) keeps it and is not taken over, and counted again, while its worker is alive."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            try:
                with session_scope(url) as s:
                    if not renew(s, model_id, owner, seconds):
                        return
            except Exception:  # noqa: BLE001 - a database blip must not end the work; the next beat retries
                log.warning("renewing the lease on model %s failed; retrying", model_id, exc_info=True)

    thread = threading.Thread(target=beat, name=f"lease-{model_id[:8]}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=interval + 30)
