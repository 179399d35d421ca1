"""Advisory locks are 64 bits wide: two Idempotency-Keys a probe found sharing a CRC32 lock each got a
409 "still in flight" when sent at once, though neither had been used."""

from __future__ import annotations

import zlib

import pytest

from service.core.db.engine import session_scope
from service.core.db.locks import lock_key, try_lock
from tests.conftest import Backend

# distinct keys of tenant "acme" whose CRC32 lock keys were equal (a probe's birthday search)
COLLIDED = ("ckd5fd619153ae4159", "ck9131be7c806e5097")


def postgres(backend: Backend) -> str:
    """The backend's database URL, where it is PostgreSQL (the test is skipped otherwise)."""
    if backend.name != "postgres":
        pytest.skip("advisory locks are PostgreSQL's; SQLite serialises writers instead")
    return backend.settings().resolved_database_url


def test_keys_that_shared_a_crc32_lock_take_different_locks() -> None:
    a, b = COLLIDED
    assert zlib.crc32(f"acme\x00{a}".encode()) == zlib.crc32(f"acme\x00{b}".encode())  # the witness
    assert lock_key("idempotency", "acme", a) != lock_key("idempotency", "acme", b)
    assert lock_key("audit", "acme") != lock_key("webhook secrets", "acme")
    assert -(2**63) <= lock_key("idempotency", "acme", a) < 2**63  # PostgreSQL's bigint


def test_a_held_lock_blocks_only_its_own_name(backend: Backend) -> None:
    url = postgres(backend)
    a, b = COLLIDED
    with session_scope(url) as first, session_scope(url) as second:
        assert try_lock(first, "idempotency", "acme", a)
        assert try_lock(second, "idempotency", "acme", b)  # was refused: one CRC32 lock for both
        assert not try_lock(second, "idempotency", "acme", a)


def test_the_audit_sequencer_also_waits_for_the_lock_an_earlier_release_takes(backend: Backend) -> None:
    """During a rolling upgrade an earlier release's sequencer locks the CRC32 key: one of this release
    under another key alone renumbered committed events (a review reproduced a broken chain)."""
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    from service.core.db.locks import wait_for_lock

    url = postgres(backend)
    with session_scope(url) as old, session_scope(url) as new:
        old.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": zlib.crc32(b"audit:acme")})
        new.execute(text("SET LOCAL lock_timeout = '300ms'"))
        with pytest.raises(OperationalError, match="lock timeout"):
            wait_for_lock(new, "audit", "acme", legacy="audit:acme")


def test_find_idempotent_does_not_refuse_a_key_that_shared_a_crc32_lock(backend: Backend) -> None:
    from service.core.deletions import find_idempotent

    url = postgres(backend)
    a, b = COLLIDED
    with session_scope(url) as first, session_scope(url) as second:
        assert find_idempotent(first, tenant="acme", idempotency_key=a, digest="d") is None
        assert find_idempotent(second, tenant="acme", idempotency_key=b, digest="d") is None  # was a 409
