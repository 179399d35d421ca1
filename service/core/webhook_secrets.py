"""Per-tenant webhook signing secrets, rotatable without downtime.

A rotation adds a new secret and gives the tenant's other unexpired secrets an expiry a grace period
away. Until then deliveries carry one signature per active secret (Standard Webhooks allows several in
`webhook-signature`), so a receiver can switch to the new secret whenever it likes within the grace
period and never misses a delivery. A tenant that never rotated has no secrets here, and its webhooks are
signed with the service-wide key (`Settings.webhook_key`), as before per-tenant secrets existed. Its
first rotation gives that key a grace period too: a row marked `SERVICE_WIDE` stands for it (the key
itself stays in the settings) and expires like any retiring secret, so receivers holding the
service-wide key keep verifying until they switch.

Secrets are stored as written (`whsec_<base64 of 32 random bytes>`, the Standard Webhooks format):
signing needs the key itself, so unlike API keys they cannot be kept as hashes.
"""

from __future__ import annotations

import base64
import secrets
from datetime import timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from service.core import events
from service.core.db.engine import is_postgres
from service.core.db.locks import wait_for_lock
from service.core.db.tables import WebhookSecret, new_id, utcnow
from service.core.errors import Unprocessable

PREFIX = "whsec_"
SERVICE_WIDE = "service-wide"  # a row's `secret` meaning "the service-wide key" (never a `whsec_` value)
DEFAULT_GRACE_SECONDS = 24 * 3600
MAX_GRACE_SECONDS = 7 * 24 * 3600
SHOWN_CHARS = 10  # `whsec_` and four characters: enough to tell secrets apart, far too few to guess one


def new_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def key_bytes(secret: str) -> bytes:
    """The HMAC key a `whsec_` secret stands for (what receivers' libraries decode it to)."""
    return base64.b64decode(secret.removeprefix(PREFIX))


def shown_prefix(secret: str) -> str:
    return SERVICE_WIDE if secret == SERVICE_WIDE else secret[:SHOWN_CHARS]


def active(session: Session, tenant: str) -> list[WebhookSecret]:
    """The tenant's unexpired secrets, newest first: every one of them signs each delivery."""
    now = utcnow()
    return list(
        session.scalars(
            select(WebhookSecret)
            .where(
                WebhookSecret.tenant == tenant,
                or_(WebhookSecret.expires_at.is_(None), WebhookSecret.expires_at > now),
            )
            .order_by(WebhookSecret.created_at.desc(), WebhookSecret.id)
        )
    )


def listed(session: Session, tenant: str) -> list[WebhookSecret]:
    """All of the tenant's secrets, expired ones too, newest first."""
    return list(
        session.scalars(
            select(WebhookSecret)
            .where(WebhookSecret.tenant == tenant)
            .order_by(WebhookSecret.created_at.desc(), WebhookSecret.id)
        )
    )


def rotate(
    session: Session, tenant: str, grace_seconds: int = DEFAULT_GRACE_SECONDS, *, actor: str
) -> WebhookSecret:
    """Add a new secret; the tenant's other active secrets expire `grace_seconds` from now (an expiry
    already sooner is kept: a rotation never extends an old secret's life). The caller commits; the row
    returned holds the secret, which is shown to the caller once."""
    if not 0 <= grace_seconds <= MAX_GRACE_SECONDS:
        raise Unprocessable(
            f"grace_seconds must be between 0 and {MAX_GRACE_SECONDS} (7 days), not {grace_seconds}",
            errors=[{"loc": ["body", "grace_seconds"], "msg": "out of range", "type": "value_error"}],
        )
    if is_postgres(session):
        # Two concurrent rotations would each expire the other's predecessors but not each other.
        wait_for_lock(session, "webhook secrets", tenant, legacy=f"whsec\x00{tenant}")
    now = utcnow()
    until = now + timedelta(seconds=grace_seconds)
    retiring = active(session, tenant)
    if not listed(session, tenant):  # the first rotation: the service-wide key signed until now
        service_wide = WebhookSecret(id=new_id(), tenant=tenant, secret=SERVICE_WIDE, created_at=now)
        session.add(service_wide)
        retiring.append(service_wide)
        now += timedelta(microseconds=1)  # the new secret is the newer one, whatever the clock resolves
    for old in retiring:
        old.expires_at = until if old.expires_at is None else min(old.expires_at, until)
    row = WebhookSecret(id=new_id(), tenant=tenant, secret=new_secret(), created_at=now)
    session.add(row)
    events.webhook_secret_rotated(
        session,
        row,
        grace_seconds=grace_seconds,
        retiring={old.id: old.expires_at for old in retiring},
        actor=actor,
    )
    return row
