"""PostgreSQL advisory locks, named by text.

Each lock is one 64-bit key taken from a sha256 of its kind and its parts: with CRC32 (32 bits) a probe
found 250 pairs of distinct Idempotency-Keys of one tenant sharing a lock in 1.5M random keys, and each
pair, sent at once, answered one of them "still in flight" (409); the kinds shared that space too.
"""

from __future__ import annotations

import hashlib
import zlib

from sqlalchemy import text
from sqlalchemy.orm import Session


def lock_key(kind: str, *parts: str) -> int:
    """A signed 64-bit advisory lock key for `kind` (idempotency, audit, ...) and its parts."""
    named = "\x00".join((kind, *parts)).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.sha256(named).digest()[:8], "big", signed=True)


def wait_for_lock(session: Session, kind: str, *parts: str, legacy: str | None = None) -> None:
    """Hold the lock until the transaction ends, waiting for it if another transaction holds it.

    ``legacy``: the text whose CRC32 named this lock before (an earlier release's processes may run beside
    these during a rolling upgrade); that lock is taken first, then the new one, always in that order. A
    sequencer of an earlier release and one of this one, each under its own lock, renumbered committed
    audit events and broke the chain (a review). The CRC32 key can go once no earlier release runs."""
    if legacy is not None:
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": zlib.crc32(legacy.encode())})
    session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key(kind, *parts)})


def try_lock(session: Session, kind: str, *parts: str) -> bool:
    """Take the lock until the transaction ends if it is free; False if another transaction holds it.
    (Idempotency takes no legacy lock, which would keep CRC32's false 409s: beside an earlier release,
    two first attempts with one key on processes of both may each proceed, and the unique index on the
    key refuses the second's write, an error its client retries into the first's answer.)"""
    return bool(session.scalar(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": lock_key(kind, *parts)}))
