"""Per-tenant webhook secrets in the domain core (`service.core.webhook_secrets`): a rotation adds a
Standard Webhooks secret, gives the old ones a bounded grace period, never extends an expiry, touches no
other tenant, and leaves an audit event that never holds the secret. On a fresh SQLite database per test
(the admin routes run on both backends in tests/service/test_api.py)."""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from service.core import webhook_secrets
from service.core.db.engine import session_scope
from service.core.db.tables import AuditEvent, WebhookSecret, utcnow
from service.core.errors import Unprocessable
from tests.factories import verified_log


def rotate(url: str, tenant: str = "default", grace: int = 3600) -> WebhookSecret:
    with session_scope(url) as s:
        return webhook_secrets.rotate(s, tenant, grace, actor="key:admin")


def active_ids(url: str, tenant: str = "default") -> list[str]:
    """The tenant's own active secrets (the service-wide key's row after a first rotation has its test)."""
    with session_scope(url) as s:
        return [w.id for w in webhook_secrets.active(s, tenant) if w.secret != webhook_secrets.SERVICE_WIDE]


def test_a_new_secret_is_standard_webhooks_format_and_random(db_url: str) -> None:
    row = rotate(db_url)
    assert row.secret.startswith("whsec_")
    assert len(base64.b64decode(row.secret.removeprefix("whsec_"), validate=True)) == 32
    assert webhook_secrets.key_bytes(row.secret) == base64.b64decode(row.secret[6:])
    assert rotate(db_url).secret != row.secret  # random, not derived


def test_a_first_rotation_gives_the_service_wide_key_the_grace_period_too(db_url: str) -> None:
    """Until its first rotation a tenant's webhooks are signed with the service-wide key, which its
    receivers hold; switching at once would fail every delivery until they had the new secret."""
    before = utcnow()
    new = rotate(db_url, grace=3600)
    with session_scope(db_url) as s:
        rows = webhook_secrets.active(s, "default")
        assert [r.id for r in rows][0] == new.id
        [wide] = rows[1:]
        assert wide.secret == webhook_secrets.SERVICE_WIDE
        assert webhook_secrets.shown_prefix(wide.secret) == "service-wide"
        assert wide.expires_at is not None
        assert before + timedelta(seconds=3600) <= wide.expires_at <= utcnow() + timedelta(seconds=3600)
    # A second rotation does not bring it back once its grace period is over.
    with session_scope(db_url) as s:
        s.get_one(WebhookSecret, wide.id).expires_at = utcnow() - timedelta(seconds=1)
    newer = rotate(db_url)
    assert active_ids(db_url) == [newer.id, new.id]


def test_rotation_keeps_the_old_secret_active_for_the_grace_period_newest_first(db_url: str) -> None:
    old = rotate(db_url)
    before = utcnow()
    new = rotate(db_url, grace=3600)
    assert active_ids(db_url) == [new.id, old.id]
    with session_scope(db_url) as s:
        old_row, new_row = s.get_one(WebhookSecret, old.id), s.get_one(WebhookSecret, new.id)
        assert old_row.expires_at is not None and new_row.expires_at is None
        assert before + timedelta(seconds=3600) <= old_row.expires_at <= utcnow() + timedelta(seconds=3600)


def test_once_the_grace_period_passes_only_the_new_secret_is_active(db_url: str) -> None:
    old = rotate(db_url)
    new = rotate(db_url, grace=3600)
    with session_scope(db_url) as s:  # an hour later
        s.get_one(WebhookSecret, old.id).expires_at = utcnow() - timedelta(seconds=1)
    assert active_ids(db_url) == [new.id]


def test_a_zero_grace_rotation_retires_the_old_secret_at_once(db_url: str) -> None:
    rotate(db_url)
    new = rotate(db_url, grace=0)
    assert active_ids(db_url) == [new.id]


def test_a_rotation_never_extends_an_expiry_already_set(db_url: str) -> None:
    first = rotate(db_url)
    rotate(db_url, grace=60)
    with session_scope(db_url) as s:
        soon = s.get_one(WebhookSecret, first.id).expires_at
    rotate(db_url, grace=7 * 24 * 3600)
    with session_scope(db_url) as s:
        assert s.get_one(WebhookSecret, first.id).expires_at == soon
    assert len(active_ids(db_url)) == 3


@pytest.mark.parametrize("grace", [-1, 7 * 24 * 3600 + 1])
def test_a_grace_period_out_of_bounds_is_refused_and_writes_nothing(db_url: str, grace: int) -> None:
    rotate(db_url)
    with session_scope(db_url) as s:
        events_before = s.scalar(select(func.count()).select_from(AuditEvent))
        with pytest.raises(Unprocessable, match="grace_seconds must be between 0 and 604800"):
            webhook_secrets.rotate(s, "default", grace, actor="test")
    with session_scope(db_url) as s:
        assert s.scalar(select(func.count()).select_from(WebhookSecret)) == 2  # the first, the service-wide
        assert s.scalar(select(func.count()).select_from(AuditEvent)) == events_before


def test_rotating_one_tenants_secret_leaves_the_others_alone(db_url: str) -> None:
    theirs = rotate(db_url, tenant="other")
    rotate(db_url)
    rotate(db_url, grace=0)
    assert active_ids(db_url, "other") == [theirs.id]
    with session_scope(db_url) as s:
        assert s.get_one(WebhookSecret, theirs.id).expires_at is None


def test_a_rotation_is_audited_by_id_and_never_with_the_secret(db_url: str) -> None:
    old = rotate(db_url)
    new = rotate(db_url, grace=120)
    with session_scope(db_url) as s:
        [first, second] = s.scalars(
            select(AuditEvent).where(AuditEvent.action == "webhook_secret.rotated").order_by(AuditEvent.id)
        ).all()
        assert (second.entity_type, second.entity_id, second.actor) == ("webhook_secret", new.id, "key:admin")
        assert second.data["grace_seconds"] == 120
        [wide] = s.scalars(
            select(WebhookSecret.id).where(WebhookSecret.secret == webhook_secrets.SERVICE_WIDE)
        )
        assert [r["id"] for r in first.data["retiring"]] == [wide]
        assert {r["id"] for r in second.data["retiring"]} == {old.id, wide}
        for event in (first, second):
            text = json.dumps(event.data)
            for secret in (old.secret, new.secret):
                assert secret not in text and secret.removeprefix("whsec_") not in text
        assert verified_log(s)["ok"]
