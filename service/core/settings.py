"""One settings object for every process (API, worker, CLI), read from the environment once.

Defaults describe the embedded stack: a SQLite file and a server-less (filesystem) Celery broker under
the state directory, so a fresh clone runs with no services. Production sets DATABASE_URL and BROKER_URL.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.core.callbacks import parse_allowed

# The database URLs the service can use: its drivers are psycopg and Python's sqlite3 (pysqlite).
DATABASE_SCHEMES = ("postgresql+psycopg", "sqlite", "sqlite+pysqlite")


def _env(name: str) -> AliasChoices:
    """Accept both `UNLEARN_NAME` and the conventional bare `NAME` (e.g. DATABASE_URL, PORT)."""
    return AliasChoices(f"UNLEARN_{name}", name)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    var_dir: Path = Field(Path("var"), validation_alias=AliasChoices("UNLEARN_VAR_DIR"))
    database_url: str | None = Field(None, validation_alias=_env("DATABASE_URL"))
    broker_url: str | None = Field(None, validation_alias=_env("BROKER_URL"))
    storage_dir: Path | None = Field(None, validation_alias=AliasChoices("UNLEARN_STORAGE_DIR"))
    queue_name: str = Field("unlearn", validation_alias=AliasChoices("UNLEARN_QUEUE"))
    host: str = Field("127.0.0.1", validation_alias=_env("HOST"))
    # 0 is refused too: the OS would pick a port the service never names (it announces the one it asked for)
    port: int = Field(8000, ge=1, le=65535, validation_alias=_env("PORT"))

    # Worker behaviour.
    device: str = Field("auto", validation_alias=AliasChoices("UNLEARN_DEVICE"))
    precision: Literal["fp32", "bf16"] = Field("fp32", validation_alias=AliasChoices("UNLEARN_PRECISION"))
    # torch's CPU threads per worker process (0: torch's default, one per core). Several workers on one
    # CPU host each take every core by default, and their thread pools then wait on each other
    # (workers.device.cpu_threads).
    torch_threads: int = Field(0, ge=0, validation_alias=AliasChoices("UNLEARN_TORCH_THREADS"))
    lease_seconds: float = Field(120.0, gt=0, validation_alias=AliasChoices("UNLEARN_LEASE_SECONDS"))
    heartbeat_seconds: float = Field(2.0, gt=0, validation_alias=AliasChoices("UNLEARN_HEARTBEAT_SECONDS"))
    # The longest any attempt of a job may run (a model may ask for less, never more), so one tenant
    # cannot hold a worker for days; a job that runs over fails saying so, and can be retried.
    job_time_limit_seconds: float = Field(
        6 * 3600.0, gt=0, validation_alias=AliasChoices("UNLEARN_JOB_TIME_LIMIT_SECONDS")
    )
    reconcile_seconds: float = Field(10.0, gt=0, validation_alias=AliasChoices("UNLEARN_RECONCILE_SECONDS"))
    # A model with new requests gets at most about one wake message per this many seconds (the request
    # rows are the outbox; the reconciler is the safety net).
    wake_seconds: float = Field(1.0, gt=0, validation_alias=AliasChoices("UNLEARN_WAKE_SECONDS"))
    # How often workers sequence new audit events and sign a tree head (heads are also signed on demand).
    audit_head_seconds: float = Field(10.0, gt=0, validation_alias=AliasChoices("UNLEARN_AUDIT_HEAD_SECONDS"))

    # The API remembers a verified key this long per process (a revocation reaches other processes
    # within it); 0 checks the database on every request.
    key_cache_seconds: float = Field(2.0, ge=0, validation_alias=AliasChoices("UNLEARN_KEY_CACHE_SECONDS"))
    # How long a stopping API waits for requests under way (a download a client stopped reading held a
    # SIGTERMed API, bound to its port and answering no one, for as long as the client stayed: a probe)
    shutdown_grace_seconds: int = Field(
        20, ge=1, validation_alias=AliasChoices("UNLEARN_SHUTDOWN_GRACE_SECONDS")
    )

    # Request limits.
    max_sample_ids: int = Field(100_000, gt=0, validation_alias=AliasChoices("UNLEARN_MAX_SAMPLE_IDS"))
    max_body_bytes: int = Field(
        16 * 1024 * 1024, gt=0, validation_alias=AliasChoices("UNLEARN_MAX_BODY_BYTES")
    )
    # Checkpoint and dataset uploads. 512 MiB holds a ~130M-parameter fp32 checkpoint, far beyond the
    # classifiers this service unlearns, and bounds the disk an admin key can fill per request; larger
    # datasets are registered by path (UNLEARN_DATA_ROOTS) rather than uploaded.
    max_upload_bytes: int = Field(
        512 * 1024**2, gt=0, validation_alias=AliasChoices("UNLEARN_MAX_UPLOAD_BYTES")
    )
    # The most samples a dataset may hold. An npz or npy folder declares its row count in a header, and a
    # 684 KB npz of compressed zeros declaring 80 million IDs held the API at 2.4 GB for 36 s reading them
    # (a probe); ImageNet-1k's training set is 1.28 million.
    max_dataset_samples: int = Field(
        5_000_000, gt=0, validation_alias=AliasChoices("UNLEARN_MAX_DATASET_SAMPLES")
    )
    # The most bytes an npz dataset's x may take in a worker's memory: read whole as stored, plus the
    # float32 copy it holds (at a declared resize): 12 MB of compressed zeros declared 12 GB. Fashion-MNIST's
    # 60k images take 235 MB. Larger data is registered as an npy folder or shards, read from disk as needed.
    max_npz_bytes: int = Field(4 * 1024**3, gt=0, validation_alias=AliasChoices("UNLEARN_MAX_NPZ_BYTES"))

    # The most parameters a registered model may have. Built-ins are sized at registration (a 422); the
    # others by the worker, on the meta device, before any weight is allocated (the model is `invalid`).
    # 100M admits ResNet-50 (26M) and ViT-B/16 (87M); it also keeps a checkpoint under the upload limit.
    max_params: int = Field(100_000_000, gt=0, validation_alias=AliasChoices("UNLEARN_MAX_PARAMS"))
    # Processes that read a streamed dataset (npy, webdataset, csv_manifest) ahead of a job's loops, so
    # decoding and disk reads overlap the model's compute. 0 reads in the worker itself. Datasets held in
    # memory do not use them.
    loader_workers: int = Field(2, ge=0, le=64, validation_alias=AliasChoices("UNLEARN_LOADER_WORKERS"))
    # Front outputs of training rows kept in each worker process between jobs, so a job on a model whose
    # versions train only their last layers passes only rows it has not seen through the frozen front
    # (workers/front_cache.py). A 60k-image Fashion-MNIST small_cnn takes 0.75 GB. 0 turns it off.
    feature_cache_bytes: int = Field(
        2 * 1024**3, ge=0, validation_alias=AliasChoices("UNLEARN_FEATURE_CACHE_BYTES")
    )
    # The same rows on disk, shared by every worker process that reads the directory (its default is under
    # UNLEARN_VAR_DIR: the processes of one host), so a job that lands on another process reads the rows
    # the last one computed instead of passing them through the front again. Each file is checked against
    # its SHA-256 at every read (models/unlearning/feature_store.py). 0 turns it off.
    feature_store_bytes: int = Field(
        8 * 1024**3, ge=0, validation_alias=AliasChoices("UNLEARN_FEATURE_STORE_BYTES")
    )
    feature_store_dir: Path | None = Field(None, validation_alias=AliasChoices("UNLEARN_FEATURE_STORE_DIR"))
    # Registered .npz datasets kept loaded in each worker process between jobs (workers/datasets.py):
    # reading and hashing the 60k Fashion-MNIST file was 1.1 s of a 6.4 s job. Files are checked on disk
    # (inode, size, mtime, ctime) at every load and hashed again when they changed. 0 keeps none.
    dataset_cache_bytes: int = Field(
        1024**3, ge=0, validation_alias=AliasChoices("UNLEARN_DATASET_CACHE_BYTES")
    )

    # Writes (POST/PUT/PATCH/DELETE under /v1) per API key: a token bucket refilled at this many per
    # second up to the burst; over it -> 429 with Retry-After. Shared through Redis when the broker is
    # Redis, per process otherwise. 0 turns the limit off.
    write_rate_per_key: float = Field(
        100.0, ge=0, validation_alias=AliasChoices("UNLEARN_WRITE_RATE_PER_KEY")
    )
    write_burst_per_key: int = Field(200, ge=1, validation_alias=AliasChoices("UNLEARN_WRITE_BURST_PER_KEY"))

    # Ed25519 key that signs certificates (PEM; created on first use).
    signing_key_file: Path | None = Field(None, validation_alias=AliasChoices("UNLEARN_SIGNING_KEY_FILE"))

    # Webhooks: deletion requests may name a callback_url on one of these `host[:port]` entries (a bare
    # host allows only the scheme's default port). https only, and never to a private address, unless
    # the two switches below say otherwise (a test receiver on 127.0.0.1 needs both).
    webhook_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias=AliasChoices("UNLEARN_WEBHOOK_ALLOWED_HOSTS")
    )
    webhook_allow_http: bool = Field(False, validation_alias=AliasChoices("UNLEARN_WEBHOOK_ALLOW_HTTP"))
    webhook_allow_private: bool = Field(False, validation_alias=AliasChoices("UNLEARN_WEBHOOK_ALLOW_PRIVATE"))
    # Signs the webhooks of tenants that never rotated a secret of their own (POST /v1/webhook-secrets).
    webhook_secret: str | None = Field(None, validation_alias=AliasChoices("UNLEARN_WEBHOOK_SECRET"))
    webhook_max_attempts: int = Field(8, ge=1, validation_alias=AliasChoices("UNLEARN_WEBHOOK_MAX_ATTEMPTS"))
    # One delivery attempt's whole exchange (connect, send, the full answer); past it the attempt failed.
    webhook_timeout_seconds: float = Field(
        10.0, gt=0, le=300, validation_alias=AliasChoices("UNLEARN_WEBHOOK_TIMEOUT_SECONDS")
    )

    # Where datasets registered by path may live (an admin cannot make the service read arbitrary files).
    data_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=lambda: [Path("/usr/share/datasets")],
        validation_alias=AliasChoices("UNLEARN_DATA_ROOTS"),
    )

    # Observability.
    metrics_require_key: bool = Field(False, validation_alias=AliasChoices("UNLEARN_METRICS_REQUIRE_KEY"))

    # Demo model registered on first start of the embedded stack.
    demo: bool = Field(True, validation_alias=AliasChoices("UNLEARN_DEMO"))
    demo_cache: Path | None = Field(None, validation_alias=AliasChoices("UNLEARN_DEMO_CACHE"))

    @field_validator("webhook_allowed_hosts", "data_roots", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        """Lists come from the environment as `a,b,c` (a JSON list works too)."""
        if isinstance(value, str):
            value = value.strip()
            if value.startswith("["):
                return json.loads(value)
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("database_url", mode="after")
    @classmethod
    def _postgres_driver(cls, value: str | None) -> str | None:
        """`postgres://` (libpq's and many hosts' form) names no SQLAlchemy dialect and stopped every
        process with NoSuchModuleError (a probe), and `postgresql://` picks psycopg2, which is not
        installed: both are read as PostgreSQL through psycopg, the driver the service ships with."""
        for bare in ("postgres://", "postgresql://"):
            if value and value.startswith(bare):
                return "postgresql+psycopg://" + value.removeprefix(bare)
        if value and value.split(":", 1)[0] not in DATABASE_SCHEMES:  # a NoSuchModuleError at first use
            scheme = value.split(":", 1)[0]
            raise ValueError(
                f"the service runs on PostgreSQL (postgresql://..., through psycopg) or SQLite "
                f"(sqlite://...), not {scheme!r}"
            )
        return value

    @field_validator("webhook_allowed_hosts", mode="after")
    @classmethod
    def _host_ports(cls, value: list[str]) -> list[str]:
        """A malformed entry stops the process at start, not a request at 3 a.m."""
        for entry in value:
            parse_allowed(entry)
        return value

    @field_validator("webhook_secret", mode="after")
    @classmethod
    def _secret_format(cls, value: str | None) -> str | None:
        """A `whsec_` secret must be base64, or every delivery would fail to sign."""
        if value and value.startswith("whsec_"):
            import base64
            import binascii

            try:
                if not base64.b64decode(value.removeprefix("whsec_"), validate=True):
                    raise ValueError("UNLEARN_WEBHOOK_SECRET whsec_ value is empty")
            except binascii.Error as exc:
                raise ValueError(f"UNLEARN_WEBHOOK_SECRET whsec_ value is not base64: {exc}") from None
        return value

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.var_dir / 'unlearn.db').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def broker_folder(self) -> Path:
        """Where the filesystem broker keeps messages (used only when no BROKER_URL is set)."""
        return (self.var_dir / "broker").resolve()

    @property
    def checkpoint_dir(self) -> Path:
        return (self.storage_dir or self.var_dir / "checkpoints").resolve()

    @property
    def resolved_feature_store_dir(self) -> Path:
        return (self.feature_store_dir or self.var_dir / "front-rows").resolve()

    @property
    def signing_key_path(self) -> Path:
        return (self.signing_key_file or self.var_dir / "signing-key.pem").resolve()

    @property
    def webhook_key(self) -> bytes:
        """The service-wide HMAC key for webhooks: configured, or generated once under the state directory.
        A `whsec_<base64>` value (the Standard Webhooks format) is the base64-decoded key, as receivers'
        libraries read it; any other value is used as its UTF-8 bytes."""
        if self.webhook_secret:
            if self.webhook_secret.startswith("whsec_"):
                import base64

                return base64.b64decode(self.webhook_secret.removeprefix("whsec_"))
            return self.webhook_secret.encode()
        path = self.var_dir / "webhook-secret"
        if not path.exists():
            import secrets

            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_hex(32))
            path.chmod(0o600)
        return path.read_text().strip().encode()

    @property
    def allowed_data_roots(self) -> list[Path]:
        return [p.resolve() for p in (*self.data_roots, self.dataset_dir)]

    @property
    def dataset_dir(self) -> Path:
        return (self.var_dir / "datasets").resolve()


@lru_cache
def get_settings() -> Settings:
    return Settings()
