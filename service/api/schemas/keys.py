from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from service.api.schemas.deletion import NO_NUL
from service.core.keys import KEY_NAME_MAX_LENGTH, TENANT_MAX_LENGTH, TENANT_PATTERN

Scope = Literal["deletion:write", "jobs:read", "audit:read", "admin"]


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: (
        Annotated[
            str,
            StringConstraints(min_length=1, max_length=TENANT_MAX_LENGTH, pattern=TENANT_PATTERN),
        ]
        | None
    ) = Field(None, description="Defaults to the caller's tenant.")
    scopes: list[Scope] = Field(..., min_length=1)
    # NUL: PostgreSQL cannot store it, and the core's check raised a 500 (a probe)
    name: Annotated[str, StringConstraints(max_length=KEY_NAME_MAX_LENGTH, pattern=NO_NUL)] = ""


class KeyOut(BaseModel):
    id: str
    tenant: str
    name: str
    prefix: str
    scopes: list[str]
    created_at: datetime
    revoked_at: datetime | None
    key: str | None = Field(None, description="The secret, shown once at creation and never again.")
