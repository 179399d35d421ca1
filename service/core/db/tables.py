"""SQLAlchemy tables. (In this project `models/` means ML; database rows live here.)"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from service.core.db.clock import utcnow
from service.core.states import DeletionReason, JobPhase, JobState, ModelStatus, RequestState

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def new_id() -> str:
    return str(uuid.uuid4())


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps are stored in UTC and always come back timezone-aware (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[str]: JSON, datetime: UTCDateTime()}


class ApiKey(Base):
    """An API key; only its sha256 is stored. Scopes: deletion:write, jobs:read, audit:read, admin."""

    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant: Mapped[str] = mapped_column(String(100), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    prefix: Mapped[str] = mapped_column(String(20))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class Dataset(Base):
    """A registered, immutable list of samples. Sample IDs are mirrored in `dataset_samples`
    so the API can validate deletion requests without loading the data."""

    __tablename__ = "datasets"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant: Mapped[str] = mapped_column(String(100), index=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(50))
    uri: Mapped[str] = mapped_column(Text)
    num_samples: Mapped[int] = mapped_column(Integer)
    # sha256 of the file at registration; the worker refuses a file that no longer matches (null: legacy).
    sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    # How to read the samples (dtype, layout, scale, normalisation, size; or a text tokenizer): the
    # loader applies it. Null: the file's arrays are used as they are (legacy).
    features: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DatasetSample(Base):
    __tablename__ = "dataset_samples"
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), primary_key=True)
    sample_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    label: Mapped[int] = mapped_column(Integer)
    # The person (or other data subject) the sample is about, when the dataset says: a deletion request
    # may then name subjects instead of rows.
    subject_id: Mapped[str | None] = mapped_column(String(200), default=None)
    __table_args__ = (
        Index("ix_dataset_samples_position", "dataset_id", "position"),
        Index("ix_dataset_samples_subject", "dataset_id", "subject_id"),
    )


class Model(Base):
    """A deployed classifier and its unlearning policy. `lease_*` serialise jobs per model."""

    __tablename__ = "models"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(100))
    architecture: Mapped[str] = mapped_column(String(100))
    arch_kwargs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    num_classes: Mapped[int] = mapped_column(Integer)
    train_dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"))
    test_dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"))
    # Data the method may calibrate on (UGradSL+'s held-out bound); null: half the test set calibrates
    # and the other half alone is scored (models.calibration).
    heldout_dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id"), default=None)
    status: Mapped[str] = mapped_column(String(20), default=ModelStatus.READY)
    status_detail: Mapped[str | None] = mapped_column(Text, default=None)
    default_method: Mapped[str] = mapped_column(String(50))
    fallback_methods: Mapped[list[str]] = mapped_column(JSON, default=list)
    default_params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    train_recipe: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    gates: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    latest_version: Mapped[int] = mapped_column(Integer, default=1)
    woken_at: Mapped[datetime | None] = mapped_column(default=None)  # last wake message sent for it
    # A job on this model is stopped after this long (null: the service's UNLEARN_JOB_TIME_LIMIT_SECONDS).
    time_limit_seconds: Mapped[int | None] = mapped_column(Integer, default=None)
    # A deletion taking at least this share of the training samples left is retrained exactly (null: never).
    retrain_above_share: Mapped[float | None] = mapped_column(Float, default=None)
    # A deletion taking at least this share of a class's training samples left, but not the class whole, is
    # retrained exactly (null: never).
    retrain_above_class_share: Mapped[float | None] = mapped_column(Float, default=None)
    lease_owner: Mapped[str | None] = mapped_column(String(200), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    __table_args__ = (UniqueConstraint("tenant", "name", name="uq_models_tenant_name"),)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    parent_number: Mapped[int | None] = mapped_column(Integer, default=None)
    checkpoint_uri: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    forgotten_count: Mapped[int] = mapped_column(Integer, default=0)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    job_id: Mapped[str | None] = mapped_column(String(36), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # When an admin deleted this superseded version's checkpoint file (it still held erased samples);
    # its digest stays here and in the audit log
    checkpoint_retired_at: Mapped[datetime | None] = mapped_column(default=None)
    __table_args__ = (UniqueConstraint("model_id", "number", name="uq_model_versions_model_number"),)


class ForgottenSample(Base):
    """The cumulative forgotten set: a sample is forgotten from `version_number` on."""

    __tablename__ = "forgotten_samples"
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), primary_key=True)
    sample_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    version_number: Mapped[int] = mapped_column(Integer)


class DeletionRequest(Base):
    __tablename__ = "deletion_requests"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant: Mapped[str] = mapped_column(String(100), index=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"))
    sample_ids: Mapped[list[str]] = mapped_column(JSON)  # subjects' samples expanded in, when any named
    subject_ids: Mapped[list[str] | None] = mapped_column(JSON, default=None)
    sample_count: Mapped[int] = mapped_column(Integer)
    already_forgotten_count: Mapped[int] = mapped_column(Integer, default=0)
    requester_key_id: Mapped[str | None] = mapped_column(String(36), default=None)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), default=None)
    body_sha256: Mapped[str] = mapped_column(String(64))
    reference: Mapped[str | None] = mapped_column(String(500), default=None)
    reason: Mapped[str] = mapped_column(
        String(20), default=DeletionReason.ERASURE, server_default=DeletionReason.ERASURE.value
    )
    state: Mapped[str] = mapped_column(String(20), default=RequestState.RECEIVED)
    job_id: Mapped[str | None] = mapped_column(String(36), default=None)
    model_version: Mapped[int | None] = mapped_column(Integer, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    callback_url: Mapped[str | None] = mapped_column(Text, default=None)
    webhook_state: Mapped[str | None] = mapped_column(String(20), default=None)  # states.WebhookState
    webhook_attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(default=None)
    __table_args__ = (
        Index("ix_deletion_requests_model_state", "model_id", "state"),
        UniqueConstraint("tenant", "idempotency_key", name="uq_deletion_requests_tenant_idem"),
    )


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant: Mapped[str] = mapped_column(String(100), index=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"))
    state: Mapped[str] = mapped_column(String(20), default=JobState.RUNNING)
    request_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    base_version: Mapped[int] = mapped_column(Integer)
    result_version: Mapped[int | None] = mapped_column(Integer, default=None)
    method: Mapped[str] = mapped_column(String(50))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    phase: Mapped[str] = mapped_column(String(30), default=JobPhase.QUEUED)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    __table_args__ = (Index("ix_jobs_model_state", "model_id", "state"),)


class AuditEvent(Base):
    """Append-only, per tenant. A writer inserts the event alone (no lock, nothing read); the sequencer
    (`service.core.audit.sequence`) later gives it its position `seq`, its link in the hash chain
    (hash = sha256(prev_hash || canonical_json(event))) and its Merkle leaf hash. Until then those are
    null."""

    __tablename__ = "audit_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(100))
    seq: Mapped[int | None] = mapped_column(Integer, default=None)
    ts: Mapped[str] = mapped_column(String(40))
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(100))
    entity_type: Mapped[str] = mapped_column(String(50))
    entity_id: Mapped[str] = mapped_column(String(200))  # a version's: `<model name, up to 100>/v<n>`
    model_id: Mapped[str | None] = mapped_column(String(36), default=None)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    prev_hash: Mapped[str | None] = mapped_column(String(64), default=None)
    hash: Mapped[str | None] = mapped_column(String(64), default=None)
    leaf_hash: Mapped[str | None] = mapped_column(String(64), default=None)
    __table_args__ = (
        UniqueConstraint("tenant", "seq", name="uq_audit_events_tenant_seq"),
        Index("ix_audit_events_entity", "tenant", "entity_id"),  # a request's events, for certificates
    )


class AuditNode(Base):
    """The hash of each complete subtree of a tenant's Merkle tree: leaves [idx * 2**level, (idx + 1) *
    2**level). Written once by the sequencer; any root or proof is a handful of these."""

    __tablename__ = "audit_nodes"
    tenant: Mapped[str] = mapped_column(String(100), primary_key=True)
    level: Mapped[int] = mapped_column(Integer, primary_key=True)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """A signed tree head: the tenant's tree of `tree_size` events had root `root_hash` at `ts`."""

    __tablename__ = "audit_heads"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(100))
    tree_size: Mapped[int] = mapped_column(Integer)
    root_hash: Mapped[str] = mapped_column(String(64))
    ts: Mapped[str] = mapped_column(String(40))
    signature: Mapped[str] = mapped_column(Text)
    public_key: Mapped[str] = mapped_column(String(64))
    __table_args__ = (Index("ix_audit_heads_tenant_id", "tenant", "id"),)


class WorkerHeartbeat(Base):
    """A worker process's last sign of life, written every heartbeat by a thread of its own (so a busy
    worker still beats). `/readyz` is not ready while no worker has beaten recently."""

    __tablename__ = "worker_heartbeats"
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookSecret(Base):
    """A tenant's webhook signing secret. Rotation adds a new one and gives the old an expiry; until it
    passes, deliveries carry a signature under each (Standard Webhooks allows several), so receivers can
    switch without missing a delivery."""

    __tablename__ = "webhook_secrets"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant: Mapped[str] = mapped_column(String(100), index=True)
    secret: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
