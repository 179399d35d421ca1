"""The audit trail: append-only events per tenant, written in the caller's transaction, then sequenced.

Writing an event reads nothing and locks nothing, so concurrent requests never queue behind one another
for the trail. The sequencer (`sequence`) gives committed events their positions in batches, under a
per-tenant lock that only sequencers take: each gets `seq`, its link in the hash chain and its Merkle
leaf, and the tree's new complete subtrees are stored (`AuditNode`). Signed tree heads and proofs over
that tree are in `service.core.transparency`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from service.core import merkle
from service.core.canonical import canonical_json
from service.core.db.clock import utcnow
from service.core.db.engine import is_postgres
from service.core.db.locks import wait_for_lock
from service.core.db.tables import AuditEvent, AuditNode
from service.core.proofs import BODY_KEYS, GENESIS, chain_hash, leaf_of

SEQUENCE_BATCH = 5000


def event_body(ev: AuditEvent) -> dict[str, Any]:
    """The fields the hashes cover (everything but the hashes themselves and the row id)."""
    return {k: getattr(ev, k) for k in BODY_KEYS}


def event_row(
    *,
    tenant: str,
    actor: str,
    action: str,
    entity_type: str,
    entity_id: str,
    model_id: str | None = None,
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The columns of one unsequenced event: what `record` adds, and what a writer that inserts many
    events in one statement (the intake's group commit) inserts."""
    return {
        "tenant": tenant,
        "ts": utcnow().isoformat(timespec="microseconds"),
        "actor": actor,
        "action": action,
        "entity_type": entity_type,
        "entity_id": entity_id,
        "model_id": model_id,
        "data": json.loads(canonical_json(data or {})),
    }


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
    """Append one event, unsequenced. Does not commit: the caller's transaction does, so the event exists
    if and only if the change it records does."""
    ev = AuditEvent(
        **event_row(
            tenant=tenant,
            actor=actor,
            action=action,
            entity_type=entity_type,
            entity_id=entity_id,
            model_id=model_id,
            data=data,
        )
    )
    session.add(ev)
    return ev


def tree_size(session: Session, tenant: str) -> int:
    """How many of the tenant's events are sequenced (the size of its Merkle tree)."""
    last = session.scalar(
        select(AuditEvent.seq)
        .where(AuditEvent.tenant == tenant, AuditEvent.seq.is_not(None))
        .order_by(AuditEvent.seq.desc())
        .limit(1)
    )
    return last or 0


def nodes(session: Session, tenant: str, ranges: list[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
    """The stored hashes of complete subtrees, keyed by their leaf range [lo, hi)."""
    keys = {((hi - lo).bit_length() - 1, lo // (hi - lo)): (lo, hi) for lo, hi in ranges}
    found: dict[tuple[int, int], bytes] = {}
    wanted = list(keys)
    for i in range(0, len(wanted), 500):
        chunk = wanted[i : i + 500]
        rows = session.execute(
            select(AuditNode.level, AuditNode.idx, AuditNode.hash).where(
                AuditNode.tenant == tenant,
                AuditNode.level.in_({lvl for lvl, _ in chunk}),
                AuditNode.idx.in_({idx for _, idx in chunk}),
            )
        )
        for level, idx, h in rows:
            if (level, idx) in keys:
                found[keys[(level, idx)]] = bytes.fromhex(h)
    return found


class _TreeAppender:
    """Appends leaves to a tenant's stored tree: keeps the right edge (complete subtrees still waiting
    for a right sibling, by level) and collects the nodes each new leaf completes."""

    def __init__(self, session: Session, tenant: str, leaves: int) -> None:
        self.tenant, self.leaves = tenant, leaves
        self.new: list[dict[str, Any]] = []
        edge = nodes(session, tenant, merkle.perfect_parts(0, leaves)) if leaves else {}
        self.frontier = {(hi - lo).bit_length() - 1: h for (lo, hi), h in edge.items()}

    def append(self, leaf: bytes) -> None:
        h, level, idx = leaf, 0, self.leaves
        self.leaves += 1
        while True:
            self.new.append({"tenant": self.tenant, "level": level, "idx": idx, "hash": h.hex()})
            if idx % 2 == 0:  # a left child: it waits for its sibling
                self.frontier[level] = h
                return
            h, level, idx = merkle.node_hash(self.frontier.pop(level), h), level + 1, idx // 2

    def store(self, session: Session) -> None:
        for i in range(0, len(self.new), 1000):
            session.execute(insert(AuditNode), self.new[i : i + 1000])


def sequence(session: Session, tenant: str, limit: int = SEQUENCE_BATCH) -> int:
    """Give the tenant's committed, unsequenced events their positions (in insertion order), chain
    links, leaves and the tree's new nodes. Returns how many were sequenced. The caller commits.

    Events chained before the log was a Merkle tree (a `seq` but no leaf) get their leaves first, in
    order, so an upgraded deployment's tree covers its whole history."""
    if is_postgres(session):
        # Only sequencers of this tenant wait here; writers never take this lock.
        wait_for_lock(session, "audit", tenant, legacy=f"audit:{tenant}")
    unleafed = list(
        session.scalars(
            select(AuditEvent)
            .where(AuditEvent.tenant == tenant, AuditEvent.seq.is_not(None), AuditEvent.leaf_hash.is_(None))
            .order_by(AuditEvent.seq)
            .limit(limit)
        )
    )
    pending = list(
        session.scalars(
            select(AuditEvent)
            .where(AuditEvent.tenant == tenant, AuditEvent.seq.is_(None))
            .order_by(AuditEvent.id)
            .limit(limit)
        )
    )
    if not unleafed and not pending:
        return 0
    size = tree_size(session, tenant)
    tree = _TreeAppender(session, tenant, size - len(unleafed) if unleafed else size)
    for ev in unleafed:
        leaf = leaf_of(event_body(ev))
        ev.leaf_hash = leaf.hex()
        tree.append(leaf)
    if tree.leaves != size:  # more legacy events than one batch: the next call goes on
        pending = []
    prev = session.scalar(select(AuditEvent.hash).where(AuditEvent.tenant == tenant, AuditEvent.seq == size))
    prev = prev or GENESIS
    for ev in pending:
        size += 1
        ev.seq = size
        body = event_body(ev)
        ev.prev_hash, ev.hash = prev, chain_hash(prev, body)
        prev = ev.hash
        leaf = leaf_of(body)
        ev.leaf_hash = leaf.hex()
        tree.append(leaf)
    session.flush()
    tree.store(session)
    return len(unleafed) + len(pending)


def sequence_all(session: Session, tenant: str) -> int:
    """Sequence everything committed so far (batch after batch)."""
    total = 0
    while n := sequence(session, tenant):
        total += n
    return total


def export_dict(ev: AuditEvent) -> dict[str, Any]:
    return {**event_body(ev), "prev_hash": ev.prev_hash, "hash": ev.hash, "leaf_hash": ev.leaf_hash}


def events_page(session: Session, tenant: str, after: int = 0, limit: int = 1000) -> list[AuditEvent]:
    """Up to `limit` of a tenant's sequenced events after position `after`, in order."""
    return list(
        session.scalars(
            select(AuditEvent)
            .where(AuditEvent.tenant == tenant, AuditEvent.seq > after)
            .order_by(AuditEvent.seq)
            .limit(limit)
        )
    )


def iter_events(session: Session, tenant: str, batch: int = 1000) -> Iterator[AuditEvent]:
    """Stream a tenant's sequenced events in order without loading them all."""
    after = 0
    while rows := events_page(session, tenant, after, batch):
        yield from rows
        after = rows[-1].seq or after


def verify_chain(session: Session, tenant: str, head: dict[str, Any] | None = None) -> dict[str, Any]:
    """Recompute every link and leaf and the root; report the first event that does not match, and
    whether the first `tree_size` events still hash to the root of `head` (a signed head, if given)."""
    prev, count, leaves = GENESIS, 0, []
    for ev in iter_events(session, tenant):
        body = event_body(ev)
        expected = chain_hash(prev, body)
        leaf = leaf_of(body)
        if ev.prev_hash != prev or ev.hash != expected or ev.seq != count + 1 or ev.leaf_hash != leaf.hex():
            return {"ok": False, "events": count, "first_broken_seq": ev.seq, "expected_hash": expected}
        prev, count = expected, count + 1
        leaves.append(leaf)
    report: dict[str, Any] = {
        "ok": True,
        "events": count,
        "head": prev,
        "root_hash": merkle.root_of(leaves).hex(),
    }
    if head is not None:
        size, root = head["tree_head"]["tree_size"], head["tree_head"]["root_hash"]
        report["signed_head"] = {"tree_size": size, "root_hash": root}
        if size > count or merkle.root_of(leaves[:size]).hex() != root:
            report |= {
                "ok": False,
                "detail": f"the events no longer reproduce the signed head of size {size}",
            }
    return report
