from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from service.api.schemas.registry import RETRAIN_ABOVE_CLASS_DOC, RETRAIN_ABOVE_DOC


class VersionOut(BaseModel):
    version: str
    number: int
    parent: str | None
    checkpoint_sha256: str
    forgotten_count: int = Field(description="Samples forgotten so far (cumulative).")
    metrics: dict[str, Any]
    job_id: str | None
    created_at: datetime
    checkpoint_retired_at: datetime | None = Field(
        description="when an admin deleted this superseded version's checkpoint file (null: it is kept)"
    )


class ModelOut(BaseModel):
    name: str
    architecture: str
    arch_kwargs: dict[str, Any]
    num_classes: int
    status: str = Field(description="validating (just registered), ready, or invalid (see status_detail)")
    status_detail: str | None
    latest_version: str
    default_method: str
    fallback_methods: list[str]
    default_params: dict[str, Any]
    train_recipe: dict[str, Any] = Field(
        description="how the model was trained, as registered or last PATCHed: what the `retrain` method "
        "follows ({}: its own defaults)"
    )
    gates: dict[str, Any]
    time_limit_seconds: int | None = Field(
        description="a job on this model is stopped after this many seconds (null: the service's limit)"
    )
    retrain_above_share: float | None = Field(description=RETRAIN_ABOVE_DOC)
    retrain_above_class_share: float | None = Field(description=RETRAIN_ABOVE_CLASS_DOC)
    heldout_dataset: str | None = Field(
        description="the dataset the method calibrates on; null: half the test set does, the other half "
        "is scored"
    )
    train_samples: int
    test_samples: int
    pending_requests: int = Field(
        description="requests waiting for a job, counted up to 1,000 (see pending_requests_capped)"
    )
    pending_requests_capped: bool = Field(
        description="true: more requests than pending_requests are waiting (the count stops at 1,000, "
        "so reading a model stays cheap under a backlog)"
    )
    created_at: datetime
