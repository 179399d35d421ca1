from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

JobState = Literal["running", "completed", "failed", "cancelled"]


class JobOut(BaseModel):
    id: str
    model: str
    state: JobState
    phase: str = Field(
        description="queued, load, evaluate_base, then unlearn:<method> and evaluate:<method> for each "
        "method tried, publish, done. A failed or cancelled job keeps the phase it ended in: where it "
        "stopped"
    )
    progress: float = Field(ge=0, le=1)
    method: str
    params: dict[str, Any]
    request_ids: list[str]
    base_version: str
    result_version: str | None
    attempts: int
    heartbeat_at: datetime | None
    heartbeat_age_s: float | None = Field(
        description="Seconds since a running job's last heartbeat; null once it ended."
    )
    metrics: dict[str, Any] = Field(
        description="`base` and `result` metrics (fractions, with counts), every `attempts` entry of the "
        "method chain (one that diverged fails with `gate_failures` `diverged: ...`; one that did not end, "
        "timed out, cancelled or raising, carries its `error`), the `data` that calibrated and scored "
        "them, the `gates` they were judged by, and "
        "`timings` (seconds per phase) once the job has ended, failed or not, and `interrupted`: for each "
        "attempt that ended unfinished, its `cause` (`worker died`; `stopped`, a planned stop; "
        "`database unavailable` or `storage unavailable`, an outage the worker handed the job back after: "
        "all but the first cost no attempt) and the phase and progress of its last heartbeat."
    )
    error: str | None
    retryable: bool = Field(
        False,
        description="a failed job with requests still failed: `POST /v1/jobs/{id}/retry` would send them "
        "round again (false once they were retried, and for every other job)",
    )
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
