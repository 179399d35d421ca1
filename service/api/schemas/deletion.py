from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from service.core.subjects import stored

NO_NUL = r"^[^\x00]*$"  # PostgreSQL text cannot hold NUL; refuse it at the door (422), never a 500
MAX_CALLBACK_URL = 2048  # characters: what browsers and proxies commonly take
SampleId = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=NO_NUL)]


def _as_datasets_store_them(value: str) -> str:
    """Registration trims subject IDs and composes them (``service.core.subjects.stored``): a request
    naming " alice" found no one, and one naming Zoë in both spellings recorded, and certified, two
    people. Per item, so a refusal names the item's index."""
    normal = stored(value)
    if normal is None:
        raise ValueError("a subject ID must hold more than spaces")
    return normal


SubjectId = Annotated[SampleId, AfterValidator(_as_datasets_store_them)]
RequestState = Literal["received", "queued", "processing", "completed", "failed", "cancelled"]
Reason = Literal["erasure", "mislabeled"]  # service.core.states.DeletionReason
REASON_DOC = (
    "Why the samples go, which decides how they are unlearned. erasure (the default): privacy erasure or "
    "a takedown of correctly labelled samples; each is forgotten as far as a retrain without it would "
    "have it, like unseen data of its class. mislabeled: the samples carry wrong labels (label-flipping "
    "poison, annotation errors); each one whose nearest retained samples hold another class is moved "
    "towards that class, as a retrain has it, for one sized run (a version's flagged_label_accuracy and "
    "its attempt's warnings say how many still hold their label). A job that takes in requests of both kinds "
    "treats each sample as its request says."
)


class DeletionRequestCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sample_ids: list[SampleId] = Field(
        default_factory=list,
        description="Training-sample IDs to forget (duplicates are ignored). This, subject_ids or both; "
        "null is taken as absent.",
    )
    subject_ids: list[SubjectId] = Field(
        default_factory=list,
        description="Data subjects to forget: every training sample the dataset attributes to one of them "
        "is forgotten (with sample_ids, the union). The request records the samples they stand for. null "
        "is taken as absent.",
    )
    reference: Annotated[str, StringConstraints(max_length=500, pattern=NO_NUL)] | None = Field(
        None, description="Your own reference, e.g. a ticket number; echoed back and kept in the audit trail."
    )
    callback_url: AnyHttpUrl | None = Field(
        None,
        description="POSTed (signed as Standard Webhooks describe) when the request completes, fails or is "
        f"cancelled; https, with its host and port on the service's allow-list; at most {MAX_CALLBACK_URL:,} "
        "characters.",
    )
    reason: Reason = Field("erasure", description=REASON_DOC)

    @field_validator("callback_url", mode="before")
    @classmethod
    def _no_control_characters(cls, value: Any) -> Any:
        # The URL parser drops tabs, newlines and a trailing NUL: the URL stored would not be the one sent
        if isinstance(value, str) and any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise ValueError("callback_url holds control characters")
        # A 15 MB URL was stored whole and sent back in every list page holding its request; one over 64 KB
        # can never be sent (httpx refuses it), and its webhook stayed pending for good (a probe)
        if isinstance(value, str) and len(value) > MAX_CALLBACK_URL:
            raise ValueError(f"callback_url is {len(value):,} characters long; at most {MAX_CALLBACK_URL:,}")
        return value

    @field_validator("callback_url", mode="after")
    @classmethod
    def _short_once_encoded(cls, value: AnyHttpUrl | None) -> AnyHttpUrl | None:
        # stored as the parser writes it, with non-ASCII characters percent-encoded: 2,000 emoji are
        # 24,000 characters stored (a review)
        if value is not None and len(str(value)) > MAX_CALLBACK_URL:
            long = len(str(value))
            raise ValueError(
                f"callback_url is {long:,} characters long once encoded; at most {MAX_CALLBACK_URL:,}"
            )
        return value

    @field_validator("sample_ids", "subject_ids", mode="before")
    @classmethod
    def _null_is_absent(cls, value: Any) -> Any:
        # Client libraries often send null for a list they leave out; it names nothing, as an absent one.
        return [] if value is None else value

    @field_validator("reason", mode="before")
    @classmethod
    def _null_is_the_default(cls, value: Any) -> Any:
        return "erasure" if value is None else value  # as the lists: null is taken as absent

    @model_validator(mode="after")
    def _names_something(self) -> DeletionRequestCreate:
        if not self.sample_ids and not self.subject_ids:
            raise ValueError("name at least one sample in sample_ids or one subject in subject_ids")
        return self


class DeletionRequestOut(BaseModel):
    id: str
    model: str
    state: RequestState
    sample_count: int = Field(
        description="Distinct sample IDs in the request, the named subjects' samples included."
    )
    subject_ids: list[str] = Field(description="The data subjects the request named (empty if none).")
    already_forgotten_count: int = Field(description="IDs already forgotten by an earlier version (no-ops).")
    reference: str | None
    reason: Reason = Field(description="erasure or mislabeled: how the request's samples are unlearned.")
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


MAX_BATCH = 1000  # requests per batch POST: one transaction's worth, a few MB of body at most


class DeletionBatchItem(DeletionRequestCreate):
    idempotency_key: (
        Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=NO_NUL)] | None
    ) = Field(None, description="This request's Idempotency-Key: a retried batch replays it (status 200).")


class DeletionBatchCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    requests: list[DeletionBatchItem] = Field(
        min_length=1,
        max_length=MAX_BATCH,
        description=f"1 to {MAX_BATCH} deletion requests for this model, each accepted or refused alone.",
    )


class DeletionBatchResult(BaseModel):
    status: int = Field(
        description="What the single-request route would have answered: 202 (accepted), 200 (an "
        "Idempotency-Key replay) or the 4xx of the problem."
    )
    request: DeletionRequestOut | None = Field(None, description="The request, unless it was refused.")
    problem: dict[str, Any] | None = Field(
        None, description="Why it was refused: an application/problem+json body (RFC 9457)."
    )


class DeletionBatchOut(BaseModel):
    accepted: int = Field(description="Requests created or replayed (status 200 or 202).")
    refused: int
    results: list[DeletionBatchResult] = Field(description="One per request, in the order sent.")
