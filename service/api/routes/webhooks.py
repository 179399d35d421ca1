"""A tenant's webhook signing secrets. Admins rotate them; the new secret is shown once. Until a tenant
first rotates, its webhooks are signed with the service-wide UNLEARN_WEBHOOK_SECRET."""

from __future__ import annotations

from fastapi import APIRouter, status

from service.api.deps import Admin, SessionDep
from service.api.errors import KEYED, problems
from service.api.schemas.webhooks import WebhookSecretOut, WebhookSecretRotate
from service.core import events, webhook_secrets
from service.core.db.tables import WebhookSecret, utcnow
from service.core.webhook_secrets import DEFAULT_GRACE_SECONDS

router = APIRouter(tags=["webhooks"], responses=problems(*KEYED))


def secret_out(row: WebhookSecret, *, plaintext: bool = False) -> WebhookSecretOut:
    return WebhookSecretOut(
        id=row.id,
        prefix=webhook_secrets.shown_prefix(row.secret),
        created_at=row.created_at,
        expires_at=row.expires_at,
        active=row.expires_at is None or row.expires_at > utcnow(),
        secret=row.secret if plaintext else None,
    )


@router.post(
    "/v1/webhook-secrets",
    response_model=WebhookSecretOut,
    status_code=status.HTTP_201_CREATED,
    summary="Rotate the tenant's webhook secret",
)
def rotate_webhook_secret(
    session: SessionDep, caller: Admin, body: WebhookSecretRotate | None = None
) -> WebhookSecretOut:
    """A new secret signs every delivery from now on; the previous ones sign beside it until
    `grace_seconds` have passed, so receivers can switch without missing a delivery."""
    grace = (body or WebhookSecretRotate()).grace_seconds
    grace = DEFAULT_GRACE_SECONDS if grace is None else grace  # null: as left out (client libraries send it)
    row = webhook_secrets.rotate(session, caller.tenant, grace, actor=events.key_actor(caller))
    session.commit()
    return secret_out(row, plaintext=True)


@router.get(
    "/v1/webhook-secrets",
    response_model=list[WebhookSecretOut],
    summary="The tenant's webhook secrets, newest first (never the secrets themselves)",
)
def list_webhook_secrets(session: SessionDep, caller: Admin) -> list[WebhookSecretOut]:
    """Empty until the first rotation: until then webhooks are signed with the service-wide secret, which
    the first rotation lists as the `service-wide` entry, signing beside the new one for its grace."""
    return [secret_out(row) for row in webhook_secrets.listed(session, caller.tenant)]
