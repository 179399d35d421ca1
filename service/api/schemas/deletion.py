from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, StringConstraints

NO_NUL = r"^[^\x00]*$"  # PostgreSQL text cannot hold NUL; refuse it at the door (422), never a 500
SampleId = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=NO_NUL)]
RequestState = Literal["received", "queued", "processing", "completed", "failed", "cancelled"]


class DeletionRequestCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sample_ids: list[SampleId] = Field(
        ..., min_length=1, description="Training-sample IDs to forget (duplicates are ignored)."
    )
    reference: Annotated[str, StringConstraints(max_length=500, pattern=NO_NUL)] | None = Field(
        None, description="Your own reference, e.g. a ticket number; echoed back and kept in the audit trail."
    )
    callback_url: AnyHttpUrl | None = Field(
        None,
        description="POSTed (signed as Standard Webhooks describe) when the request completes, fails or is "
        "cancelled; https, with its host and port on the service's allow-list.",
    )


class DeletionRequestOut(BaseModel):
    id: str
    model: str
    state: RequestState
    sample_count: int = Field(description="Distinct sample IDs in the request.")
    already_forgotten_count: int = Field(description="IDs already forgotten by an earlier version (no-ops).")
    reference: str | None
    job_id: str | None
    model_version: str | None = Field(description="The version that forgot these samples, once completed.")
    error: str | None
    callback_url: str | None
    webhook_state: str | None = Field(
        description="pending, delivered or failed, when a callback_url was given"
    )
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
