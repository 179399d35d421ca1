from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from service.core.webhook_secrets import DEFAULT_GRACE_SECONDS, MAX_GRACE_SECONDS


class WebhookSecretRotate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grace_seconds: int | None = Field(
        DEFAULT_GRACE_SECONDS,
        ge=0,
        strict=True,  # false was read as 0 and expired every current secret at once (a probe)
        le=MAX_GRACE_SECONDS,
        description="How long the tenant's current secrets keep signing deliveries beside the new one "
        "(0 to 7 days; default 24 h, also when sent as null). Receivers switch to the new secret within it.",
    )


class WebhookSecretOut(BaseModel):
    id: str
    prefix: str = Field(..., description="The secret's first characters, to tell secrets apart.")
    created_at: datetime
    expires_at: datetime | None = Field(..., description="When it stops signing; null: not being replaced.")
    active: bool = Field(..., description="Whether deliveries are signed with it now.")
    secret: str | None = Field(
        None, description="The secret (`whsec_...`), shown once when created and never again."
    )
