"""The audit trail: append-only events, hash-chained per tenant, written in the caller's transaction."""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from service.core.canonical import canonical_json
from service.core.db.engine import is_postgres
from service.core.db.tables import AuditEvent

GENESIS = "0" * 64


def event_body(ev: AuditEvent) -> dict[str, Any]:
    """The fields the hash covers (everything but the hashes themselves and the row id)."""
    return {
        "tenant": ev.tenant,
        "seq": ev.seq,
        "ts": ev.ts,
        "actor": ev.actor,
        "action": ev.action,
        "entity_type": ev.entity_type,
        "entity_id": ev.entity_id,
        "model_id": ev.model_id,
        "data": ev.data,
    }


def chain_hash(prev_hash: str, body: dict[str, Any]) -> str:
    return hashlib.sha256((prev_hash + canonical_json(body)).encode()).hexdigest()


def record(
    session: Session,
    *,
    tenant: str,
    actor: str,
    action: str,
    entity_type: str,
    entity_id: str,
    model_id: str | None = None,
    data: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one event to the tenant's chain. Does not commit: the caller's transaction does, so the
    event exists if and only if the change it records does."""
    if is_postgres(session):
        # Serialise appenders of one tenant's chain until this transaction ends.
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": zlib.crc32(tenant.encode())})
    last = session.execute(
        select(AuditEvent.seq, AuditEvent.hash)
        .where(AuditEvent.tenant == tenant)
        .order_by(AuditEvent.seq.desc())
        .limit(1)
    ).first()
    seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
    ev = AuditEvent(
        tenant=tenant,
        seq=seq,
        ts=datetime.now(UTC).isoformat(timespec="microseconds"),
        actor=actor,
        action=action,
        entity_type=entity_type,
        entity_id=entity_id,
        model_id=model_id,
        data=json.loads(canonical_json(data or {})),
        prev_hash=prev,
        hash="",
    )
    ev.hash = chain_hash(prev, event_body(ev))
    session.add(ev)
    session.flush()
    return ev


def export_dict(ev: AuditEvent) -> dict[str, Any]:
    return {**event_body(ev), "prev_hash": ev.prev_hash, "hash": ev.hash}


def events_page(session: Session, tenant: str, after: int = 0, limit: int = 1000) -> list[AuditEvent]:
    """Up to `limit` of a tenant's events after sequence number `after`, in chain order."""
    return list(
        session.scalars(
            select(AuditEvent)
            .where(AuditEvent.tenant == tenant, AuditEvent.seq > after)
            .order_by(AuditEvent.seq)
            .limit(limit)
        )
    )


def iter_events(session: Session, tenant: str, batch: int = 1000) -> Iterator[AuditEvent]:
    """Stream a tenant's events in chain order without loading them all."""
    after = 0
    while rows := events_page(session, tenant, after, batch):
        yield from rows
        after = rows[-1].seq


def verify_chain(session: Session, tenant: str) -> dict[str, Any]:
    """Recompute the chain; report the first event whose link or hash does not match."""
    prev, count = GENESIS, 0
    for ev in iter_events(session, tenant):
        expected = chain_hash(prev, event_body(ev))
        if ev.prev_hash != prev or ev.hash != expected or ev.seq != count + 1:
            return {"ok": False, "events": count, "first_broken_seq": ev.seq, "expected_hash": expected}
        prev, count = ev.hash, count + 1
    return {"ok": True, "events": count, "head": prev}
