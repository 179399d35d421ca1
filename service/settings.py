"""One settings object for every process (API, worker, CLI), read from the environment once.

Defaults describe the embedded stack: a SQLite file and a server-less (filesystem) Celery broker under
the state directory, so a fresh clone runs with no services. Production sets DATABASE_URL and BROKER_URL.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    port: int = Field(8000, validation_alias=_env("PORT"))

    # Worker behaviour.
    device: str = Field("auto", validation_alias=AliasChoices("UNLEARN_DEVICE"))
    lease_seconds: float = Field(120.0, gt=0, validation_alias=AliasChoices("UNLEARN_LEASE_SECONDS"))
    heartbeat_seconds: float = Field(2.0, gt=0, validation_alias=AliasChoices("UNLEARN_HEARTBEAT_SECONDS"))
    reconcile_seconds: float = Field(10.0, gt=0, validation_alias=AliasChoices("UNLEARN_RECONCILE_SECONDS"))

    # Request limits.
    max_sample_ids: int = Field(100_000, gt=0, validation_alias=AliasChoices("UNLEARN_MAX_SAMPLE_IDS"))
    max_body_bytes: int = Field(16 * 1024 * 1024, gt=0, validation_alias=AliasChoices("UNLEARN_MAX_BODY_BYTES"))

    # Demo model registered on first start of the embedded stack.
    demo: bool = Field(True, validation_alias=AliasChoices("UNLEARN_DEMO"))

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
    def dataset_dir(self) -> Path:
        return (self.var_dir / "datasets").resolve()


@lru_cache
def get_settings() -> Settings:
    return Settings()
