"""API keys: generated once, shown once, stored as sha256 only."""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core.db.tables import ApiKey, utcnow
from service.core.errors import Conflict

SCOPES = ("deletion:write", "jobs:read", "audit:read", "admin")
# A tenant is named where keys are made: letters, digits, '-', '_', '.', as long as its columns hold.
TENANT_PATTERN = r"^[A-Za-z0-9_.-]+$"
TENANT_MAX_LENGTH = 100
KEY_NAME_MAX_LENGTH = 200  # the column's length


def check_tenant_name(tenant: str) -> str:
    """The name itself, or ValueError saying what a tenant name may hold."""
    if not (re.fullmatch(TENANT_PATTERN, tenant) and len(tenant) <= TENANT_MAX_LENGTH):
        raise ValueError(
            f"invalid tenant name {tenant!r}: use 1 to {TENANT_MAX_LENGTH} letters, digits, '-', '_' or '.'"
        )
    return tenant


def check_key_name(name: str) -> str:
    """The name itself, or ValueError saying what a key name may hold: the API's schema says it for the
    API; `unlearn keys create --name` wrote a 300-character name into a 200-character column (SQLite) or
    crashed with a traceback (PostgreSQL, or bytes that are not UTF-8)."""
    if len(name) > KEY_NAME_MAX_LENGTH:
        raise ValueError(f"a key name holds at most {KEY_NAME_MAX_LENGTH} characters, not {len(name)}")
    if "\x00" in name or not is_utf8(name):
        raise ValueError("a key name must be UTF-8 text without NUL characters")
    return name


def is_utf8(text: str) -> bool:
    """False for a str holding lone surrogates (bytes a command line could not decode)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def hash_key(plaintext: str) -> str:
    # Keys carry 256 bits of randomness, so a plain (unsalted) sha256 is enough and allows indexed lookup.
    return hashlib.sha256(plaintext.encode()).hexdigest()


def create_key(session: Session, *, tenant: str, scopes: Iterable[str], name: str = "") -> tuple[ApiKey, str]:
    """Create a key and return it with its plaintext (never stored)."""
    check_tenant_name(tenant)
    check_key_name(name)
    scopes = sorted(set(scopes))
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise ValueError(f"unknown scopes {unknown}; known: {list(SCOPES)}")
    prefix = secrets.token_hex(4)
    plaintext = f"ul_{prefix}_{secrets.token_urlsafe(32)}"
    key = ApiKey(tenant=tenant, name=name, prefix=prefix, key_hash=hash_key(plaintext), scopes=scopes)
    session.add(key)
    session.flush()
    return key, plaintext


def find_key(session: Session, plaintext: str) -> ApiKey | None:
    key = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(plaintext)))
    if key is None or key.revoked_at is not None:
        return None
    return key


def revoke_key(session: Session, key_id: str) -> ApiKey | None:
    key = session.get(ApiKey, key_id)
    if key is not None and key.revoked_at is None:
        key.revoked_at = utcnow()
    return key


def refuse_revoking_the_last_admin(session: Session, key: ApiKey) -> None:
    """A tenant must keep a way to manage itself: its last active admin key cannot be revoked through
    the API (an operator can still do it in the database: `unlearn keys revoke`)."""
    if "admin" not in key.scopes or key.revoked_at is not None:
        return
    admins = session.scalars(
        select(ApiKey).where(ApiKey.tenant == key.tenant, ApiKey.revoked_at.is_(None))
    ).all()
    if sum("admin" in k.scopes for k in admins) <= 1:
        raise Conflict(
            f"key {key.id} is tenant {key.tenant!r}'s last admin key; create another admin key first"
        )
