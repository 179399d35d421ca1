"""Run Alembic programmatically, so `unlearn db upgrade` works from any directory (no alembic.ini)."""

from __future__ import annotations

import io
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

MIGRATIONS = Path(__file__).resolve().parents[3] / "migrations"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str) -> list[str]:
    """Upgrade to the newest revision; the revisions applied, oldest first (none: it was up to date)."""
    cfg = alembic_config(url)
    before = current(url)
    command.upgrade(cfg, "head")
    after = current(url)
    if after == before or after is None:
        return []
    steps = ScriptDirectory.from_config(cfg).iterate_revisions(after, before)  # newest first
    return [script.revision for script in reversed(list(steps))]


def current(url: str) -> str | None:
    """The database's revision (None where no migration has run on it)."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def check(url: str) -> None:
    """Raise if the tables in service.core.db.tables and the migrations disagree. (Alembic's own "No new
    upgrade operations detected." is kept off stdout: the caller says what it found, once.)"""
    cfg = alembic_config(url)
    cfg.stdout = io.StringIO()  # alembic writes to the stream its Config holds, not to sys.stdout
    command.check(cfg)


def revision(url: str, message: str) -> None:
    command.revision(alembic_config(url), message=message, autogenerate=True)
