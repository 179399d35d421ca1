"""Every state name in one place. They are `StrEnum`s, so a member is stored and compared as its string
(the database columns and the JSON the API returns are unchanged), but a typo is an AttributeError."""

from __future__ import annotations

from enum import StrEnum


class RequestState(StrEnum):
    """received -> queued -> processing -> completed | failed | cancelled (failed -> received on retry)."""

    RECEIVED = "received"
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


PENDING = (RequestState.RECEIVED, RequestState.QUEUED)  # waiting for a job to claim them


class DeletionReason(StrEnum):
    """Why a request deletes its samples, which decides how they are unlearned: erased rows (privacy,
    takedowns) are correctly labelled, and a retrain treats them like unseen data of their class;
    mislabeled rows (label-flipping poison, annotation errors) a retrain predicts as the class of the rows
    around them (``models.unlearning.neighbours``)."""

    ERASURE = "erasure"
    MISLABELED = "mislabeled"


class JobState(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class JobPhase(StrEnum):
    """Where a running job is. Method phases are `unlearn:<method>` and `evaluate:<method>` (see
    `method_phase`), one pair per method of the model's chain."""

    QUEUED = "queued"
    LOAD = "load"
    EVALUATE_BASE = "evaluate_base"
    PUBLISH = "publish"
    DONE = "done"


def method_phase(step: str, method: str) -> str:
    """`unlearn:ugradsl_plus`, `evaluate:retrain`, ...: the phase of one method of the chain."""
    return f"{step}:{method}"


class ModelStatus(StrEnum):
    """validating (registered, a worker is checking its checkpoint) -> ready | invalid."""

    VALIDATING = "validating"
    READY = "ready"
    INVALID = "invalid"


class WebhookState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
