"""Backends for the tests: the embedded default (SQLite + filesystem broker) always, and PostgreSQL +
Redis where they answer on 127.0.0.1 (skipped with the reason otherwise)."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from service.core.settings import Settings
from tests.helpers import REDIS_URL, migrated, pg_url, services_available

BACKENDS = ["embedded", "postgres"]

# Every live stack registers the demo model; train it once per test session (training is deterministic).
DEMO_CACHE = tempfile.mkdtemp(prefix="unlearn-demo-cache-")
os.environ.setdefault("UNLEARN_DEMO_CACHE", DEMO_CACHE)
# The fault tests' recovery times, from whichever process ran them (tests/e2e/recovery.py): a new file per
# run, named by the process that starts the test processes (pytest-xdist's inherit it).
if "PYTEST_XDIST_WORKER" not in os.environ:
    os.environ["UNLEARN_TEST_RECOVERY_LOG"] = str(Path(DEMO_CACHE) / "recovery.jsonl")


@dataclass
class Backend:
    name: str
    env: dict[str, str]  # environment for subprocesses and Settings

    def settings(self) -> Settings:
        return Settings(**self.env)  # type: ignore[arg-type]


# A test's PostgreSQL database is a copy of a template migrated once per session (tests/helpers.py, migrated).
_PG_TEMPLATE = f"unlearn_template_{uuid.uuid4().hex[:12]}"
_PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=test"


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A migrated PostgreSQL database, the template (CREATE DATABASE ... TEMPLATE) of tests' databases."""
    from service.core.db import migrate

    _create_pg_database(_PG_TEMPLATE, template=None)
    migrate.upgrade(pg_url(_PG_TEMPLATE))  # alembic's engine holds no pool
    yield _PG_TEMPLATE
    _drop_pg_database(_PG_TEMPLATE)


def _create_pg_database(name: str | None = None, template: str | None = None) -> str:
    import psycopg

    name = name or f"unlearn_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    return name


def _drop_pg_database(name: str) -> None:
    import psycopg

    with psycopg.connect(_PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """A fresh state on each backend: a migrated database holding no data, an empty queue and state
    directory."""
    env = {"UNLEARN_VAR_DIR": str(tmp_path / "var"), "UNLEARN_QUEUE": f"q-{uuid.uuid4().hex[:8]}"}
    if request.param == "embedded":
        migrated(Settings(**env).resolved_database_url)  # type: ignore[arg-type]
        yield Backend("embedded", env)
        return
    reason = services_available()
    if reason:
        pytest.skip(reason)
    name = _create_pg_database(template=request.getfixturevalue("pg_template"))
    env["DATABASE_URL"] = pg_url(name)
    env["BROKER_URL"] = REDIS_URL
    try:
        yield Backend("postgres", env)
    finally:
        from service.core.db.engine import engine_for

        engine_for(env["DATABASE_URL"]).dispose()
        engine_for(env["DATABASE_URL"], pre_ping=False).dispose()  # the API's
        _drop_pg_database(name)


@pytest.fixture
def db_url(tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated SQLite database: the domain and the workers' database logic, without processes."""
    from service.core.db.engine import engine_for

    url = f"sqlite:///{tmp_path / 't.db'}"
    migrated(url)
    yield url
    engine_for(url).dispose()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The fault suite's recovery times, as a table (tests/e2e/recovery.py)."""
    from tests.e2e.recovery import table

    lines = table()
    if lines:
        terminalreporter.section("fault recovery times")
        for line in lines:
            terminalreporter.write_line(line)
